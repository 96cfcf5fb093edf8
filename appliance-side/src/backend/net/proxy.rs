//! The userland proxy for published ports of containers on user networks (docker-proxy's
//! role): a listener on the appliance host, and for each connection a socket made inside the
//! network's namespace to the container's address. Such containers have no QEMU user-mode
//! network whose `hostfwd` could do it, and the namespace has no route to the host (nothing in
//! the host's routing table changes for a network). TCP here; UDP in `udp_proxy.rs`.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::backend::net::tap::in_namespace;

/// How long a connection into the namespace may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A published port being served; dropping it stops the listener and its connections.
#[derive(Debug)]
pub struct Proxy {
    pub host: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A handle on `task`, which serves `host` (the UDP proxy's constructor too).
    pub(crate) fn new(host: SocketAddr, task: tokio::task::JoinHandle<()>) -> Self {
        Self { host, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `host` now (a taken port fails here, before anything runs) and forwards every
/// connection to `target` inside the namespace at `ns_path`.
pub async fn publish(
    host: SocketAddr,
    ns_path: PathBuf,
    target: SocketAddrV4,
) -> io::Result<Proxy> {
    let listener = TcpListener::bind(host).await?;
    let host = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Owned by the accept loop: aborting the loop aborts every connection with it.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else { continue };
                    let ns = ns_path.clone();
                    connections.spawn(async move {
                        if let Err(e) = forward(client, ns, target).await {
                            tracing::debug!(%target, "published port connection: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    });
    Ok(Proxy { host, task })
}

async fn forward(mut client: TcpStream, ns: PathBuf, target: SocketAddrV4) -> io::Result<()> {
    let inside = tokio::task::spawn_blocking(move || {
        in_namespace(&ns, move || {
            std::net::TcpStream::connect_timeout(&SocketAddr::V4(target), CONNECT_TIMEOUT)
        })
    })
    .await
    .map_err(io::Error::other)??;
    inside.set_nonblocking(true)?;
    let mut inside = TcpStream::from_std(inside)?;
    tokio::io::copy_bidirectional(&mut client, &mut inside).await?;
    Ok(())
}
