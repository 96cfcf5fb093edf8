//! The session server: accepts tether channels on a Unix socket (QEMU `-chardev socket`) and on
//! TCP (vSphere network serial, QEMU `-serial tcp:`), one task per connection. Each connection
//! proves it knows its container's secret, resumes the container's streams from the log store,
//! and then has every byte persisted before it is acknowledged.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use tokio::sync::Notify;
use wire::message::Hello;
use wire::Refused;

mod connection;
pub mod container;
pub mod events;
pub mod follow;
mod handshake;
pub mod vspc;

use crate::home::Home;
use crate::server::container::Container;
use crate::store::logs::Rotation;

pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still in their handshake at once; more are closed at accept. A guest has one
/// channel; this bounds what anyone who can reach the TCP port can make the server hold.
pub const MAX_PENDING_HANDSHAKES: u64 = 256;
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Read size of an established channel. Reads need not hold a whole frame (the reader
/// reassembles); the buffer is one per worker thread, shared by every channel (`wire::io`), so
/// an idle channel holds none. 16 KiB a read bounds what one streaming channel does per turn of
/// the scheduler, which the other channels' latency waits on.
pub(crate) const READ_BUFFER: usize = 16 * 1024;
/// Read size before the peer has proved who it is.
pub(crate) const HANDSHAKE_READ: usize = 4 * 1024;

/// How an established channel ended.
pub(crate) enum End {
    Error(String),
    /// The guest began a new handshake on the same connection.
    Hello(Hello),
}

pub(crate) struct Live {
    conn: u64,
    kick: Arc<Notify>,
}

pub struct Server {
    pub home: Home,
    rotation: Rotation,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    live: Mutex<HashMap<String, Live>>,
    next_conn: AtomicU64,
    pending_handshakes: AtomicU64,
    /// Refused or dropped connections, for diagnostics and tests.
    pub refused: AtomicU64,
    /// Lifecycle news for the engine: a main process ended, a channel came up.
    lifecycle: broadcast::Sender<Lifecycle>,
    /// When this server started: a container that has not connected since has had no channel
    /// for that long.
    pub started: std::time::Instant,
}

/// What the server tells the engine about a container's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// A VM's channel completed its handshake (a new boot, or a reconnect).
    Connected { id: String },
    /// The main process ended (or could not start): docker's `die`.
    MainExited { id: String, exit_code: i32 },
}

impl Server {
    pub fn new(home: Home) -> Arc<Self> {
        Arc::new(Self {
            home,
            rotation: Rotation::default(),
            containers: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            pending_handshakes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            lifecycle: broadcast::channel(1024).0,
            started: std::time::Instant::now(),
        })
    }

    /// Lifecycle news from here on.
    pub fn lifecycle(&self) -> broadcast::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    pub(crate) fn announce(&self, news: Lifecycle) {
        let _ = self.lifecycle.send(news);
    }

    /// Drops the in-memory runtime of a removed container (its channel, if any, is kicked).
    pub fn forget(&self, id: &str) {
        self.containers.lock().expect("lock").remove(id);
        if let Some(live) = self.live.lock().expect("lock").remove(id) {
            live.kick.notify_one();
        }
    }

    /// Whether the container's VM has a channel up right now.
    pub fn is_connected(&self, id: &str) -> bool {
        self.live.lock().expect("lock").contains_key(id)
    }

    /// The container's runtime, if it has connected since the server started.
    pub fn container(&self, id: &str) -> Option<Arc<Container>> {
        self.containers.lock().expect("lock").get(id).cloned()
    }

    /// The runtime for `id` at `boot`: the one in memory if the boot matches, else rebuilt from
    /// the store (a server restart, or a new boot of the VM).
    fn open_container(&self, id: &str, boot: &str) -> io::Result<Arc<Container>> {
        let mut map = self.containers.lock().expect("lock");
        if let Some(c) = map.get(id) {
            if c.state().boot == boot {
                return Ok(c.clone());
            }
        }
        let c = Container::open(id, self.home.container(id), boot, self.rotation)?;
        map.insert(id.to_string(), c.clone());
        Ok(c)
    }

    pub async fn listen_unix(self: &Arc<Self>, path: &Path) -> io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, _)) => {
                        let s = server.clone();
                        tokio::spawn(async move { s.serve(sock, "unix".into()).await });
                    }
                    Err(e) => {
                        tracing::warn!("accept on the channel socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    pub async fn listen_tcp(self: &Arc<Self>, addr: &str) -> io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let s = server.clone();
                        tokio::spawn(async move { s.serve(sock, peer.to_string()).await });
                    }
                    Err(e) => {
                        tracing::warn!("accept on the channel port: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(local)
    }

    fn refuse(&self, peer: &str, r: &Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, reason = ?r.reason, "refused channel: {}", r.detail);
    }
}
