//! The userland proxy for published UDP ports of containers on user networks (docker-proxy's
//! UDP half). One socket on the appliance host takes every client's datagrams; each client
//! address gets its own socket made inside the network's namespace and connected to the
//! container's port, so the container sees one peer per client and its answers find their way
//! back: whatever arrives on a client's inside socket is sent to that client from the host
//! socket. UDP has no end, so a client is forgotten after a time without a datagram either
//! way, and the number of clients at once is bounded (a datagram from one more is dropped, as
//! a full conntrack table drops it).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::backend::net::proxy::Proxy;
use crate::backend::net::tap::in_namespace;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Datagrams queued for a client's inside socket while it is made; more are dropped.
const QUEUE: usize = 16;

/// How long a client is kept and how many are served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLimits {
    /// A client with no datagram either way for this long is forgotten (its inside socket
    /// closed); its next datagram starts afresh.
    pub idle: Duration,
    /// Clients served at once; each holds a socket and a 64 KiB buffer.
    pub max_clients: usize,
}

impl Default for UdpLimits {
    /// docker-proxy's UDP conntrack timeout (90 s); 256 clients (16 MiB of buffers at most).
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(90),
            max_clients: 256,
        }
    }
}

/// Binds `host` now (a taken port fails here, before anything runs) and relays every client's
/// datagrams to `target` inside the namespace at `ns_path`, and the answers back.
pub async fn publish(
    host: SocketAddr,
    ns_path: PathBuf,
    target: SocketAddrV4,
    limits: UdpLimits,
) -> io::Result<Proxy> {
    let outside = Arc::new(UdpSocket::bind(host).await?);
    let host = outside.local_addr()?;
    let task = tokio::spawn(serve(outside, ns_path, target, limits));
    Ok(Proxy::new(host, task))
}

/// The host socket's loop: each datagram to its client's relay, a relay made for a new client.
/// The relays are owned here, so aborting this task ends them all.
async fn serve(outside: Arc<UdpSocket>, ns: PathBuf, target: SocketAddrV4, limits: UdpLimits) {
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut relays = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            got = outside.recv_from(&mut buf) => {
                let Ok((n, client)) = got else { continue };
                let datagram = buf[..n].to_vec();
                let datagram = match clients.get(&client) {
                    None => datagram,
                    Some(tx) => match tx.try_send(datagram) {
                        Ok(()) => continue,
                        // Its relay is still being made and its queue is full: dropped, as a
                        // slow network drops it.
                        Err(mpsc::error::TrySendError::Full(_)) => continue,
                        // Its relay ended (idle) and is not reaped yet: a fresh one below.
                        Err(mpsc::error::TrySendError::Closed(d)) => {
                            clients.remove(&client);
                            d
                        }
                    },
                };
                if clients.len() >= limits.max_clients {
                    tracing::debug!(%client, %target, "published UDP port: too many clients, datagram dropped");
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                // A fresh channel has room for its first datagram.
                let _ = tx.try_send(datagram);
                clients.insert(client, tx);
                relays.spawn(relay(outside.clone(), client, rx, ns.clone(), target, limits.idle));
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {
                // A relay ended: its receiver is gone, so its sender reads closed.
                clients.retain(|_, tx| !tx.is_closed());
            }
        }
    }
}

/// One client: its socket inside the namespace, datagrams relayed both ways until it has been
/// idle for `idle`.
async fn relay(
    outside: Arc<UdpSocket>,
    client: SocketAddr,
    mut from_client: mpsc::Receiver<Vec<u8>>,
    ns: PathBuf,
    target: SocketAddrV4,
    idle: Duration,
) {
    let inside = match connect_inside(ns, target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%client, %target, "published UDP port: a socket in the network: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            d = from_client.recv() => {
                let Some(d) = d else { return };
                if let Err(e) = inside.send(&d).await {
                    tracing::debug!(%client, %target, "published UDP port: to the container: {e}");
                }
            }
            got = inside.recv(&mut buf) => match got {
                Ok(n) => {
                    if let Err(e) = outside.send_to(&buf[..n], client).await {
                        tracing::debug!(%client, "published UDP port: to the client: {e}");
                    }
                }
                // ICMP port unreachable (nothing listens in the container yet) and the like:
                // the client's datagram is lost, as it would be without the proxy.
                Err(e) => tracing::debug!(%client, %target, "published UDP port: from the container: {e}"),
            },
            _ = tokio::time::sleep(idle) => return,
        }
    }
}

/// A UDP socket made in the namespace (on a fresh thread in it) and connected to `target`, so
/// only the container's answers arrive on it.
async fn connect_inside(ns: PathBuf, target: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = tokio::task::spawn_blocking(move || {
        in_namespace(&ns, move || {
            let s = std::net::UdpSocket::bind(SocketAddrV4::new(0.into(), 0))?;
            s.connect(target)?;
            Ok(s)
        })
    })
    .await
    .map_err(io::Error::other)??;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}
