//! The virtual serial port concentrator (vSPC): where vSphere's network serial ports connect.
//!
//! An ESXi host connects a containerVM's serial port (URI backing, `proxyURI` = this listener)
//! as a telnet client speaking VMware's extension (option 232). Each VM's connection becomes a
//! *port* ([`port`]): a byte stream handed to the session server exactly as a TCP channel is
//! (`Server::serve`: handshake, resume, persistence). A vMotion moves the VM to another host,
//! whose new connection claims the port with the secret this vSPC gave the source; the port
//! switches to it and the server's connection never notices. An aborted vMotion leaves the
//! port on its source connection, relaying as before (VIC's concentrator stopped relaying for
//! good after one).
//!
//! Routing needs no VM UUID: the channel's own handshake names and authenticates the container,
//! and a vMotion's second connection is matched by its secret.
//!
//! Clients that speak no telnet at all (QEMU's `-chardev socket,server=off,telnet=on` sends and
//! takes raw bytes; see docs/vsphere.md) are accepted too: a connection whose first byte is not
//! IAC is relayed raw.

mod conn;
mod handle;
mod port;
pub mod telnet;
pub mod vmware;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::server::Server;
use port::PortEvent;

/// Connections open at once; more are closed at accept (each costs two tasks and a socket).
pub const MAX_CONNECTIONS: u64 = 4096;
/// How long a vMotion may stay between GOAHEAD and COMPLETE or ABORT. ESXi's switch-over takes
/// well under this; past it the port goes back to its source connection if that still lives.
pub const MIGRATION_LIMIT: Duration = Duration::from_secs(30);

/// What the vSPC has done, for diagnostics and tests.
#[derive(Debug, Default)]
pub struct VspcStats {
    pub connections: AtomicU64,
    pub ports: AtomicU64,
    pub vmotions_begun: AtomicU64,
    pub vmotions_completed: AtomicU64,
    pub vmotions_aborted: AtomicU64,
    /// Server-to-VM bytes dropped because a vMotion held more than the port buffers (the wire
    /// protocol resends them).
    pub held_bytes_dropped: AtomicU64,
}

pub struct Vspc {
    server: Arc<Server>,
    /// vMotions in flight, by the cookie (sequence + secret) their destination must present.
    migrations: Mutex<HashMap<Vec<u8>, mpsc::Sender<PortEvent>>>,
    next_id: AtomicU64,
    open: AtomicU64,
    pub stats: VspcStats,
}

impl Vspc {
    /// Listens on `addr` (VIC's port was 2377); returns the bound address.
    pub async fn listen(
        server: &Arc<Server>,
        addr: &str,
    ) -> std::io::Result<(Arc<Self>, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let vspc = Arc::new(Self {
            server: server.clone(),
            migrations: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open: AtomicU64::new(0),
            stats: VspcStats::default(),
        });
        let v = vspc.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => v.accepted(sock, peer),
                    Err(e) => {
                        tracing::warn!("accept on the vSPC port: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok((vspc, local))
    }

    fn accepted(self: &Arc<Self>, sock: tokio::net::TcpStream, peer: SocketAddr) {
        if self.open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            self.open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, "vSPC connection closed at once: {MAX_CONNECTIONS} are open");
            return;
        }
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        let v = self.clone();
        tokio::spawn(async move {
            conn::run(v.clone(), sock, peer).await;
            v.open.fetch_sub(1, Ordering::Relaxed);
        });
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a vMotion's cookie for the destination's connection to claim.
    fn expect_peer(&self, cookie: Vec<u8>, port: mpsc::Sender<PortEvent>) {
        self.migrations.lock().expect("lock").insert(cookie, port);
    }

    /// The port a destination's cookie belongs to (once: a cookie claims one connection).
    fn claim_peer(&self, cookie: &[u8]) -> Option<mpsc::Sender<PortEvent>> {
        self.migrations.lock().expect("lock").remove(cookie)
    }

    fn forget_peer(&self, cookie: &[u8]) {
        self.migrations.lock().expect("lock").remove(cookie);
    }
}
