//! One VM's serial port on the vSPC: the byte stream between the VM's current host connection
//! and a session-server connection (`Server::serve` over an in-memory duplex), and the vMotion
//! state machine that moves it between host connections.
//!
//! * VM -> server: the connections' data comes to the port's task as events, in order, and goes
//!   up to the server.
//! * server -> VM: the downlink task reads the server and writes to the current connection,
//!   under a lock the port takes to change where it writes; while a vMotion is in flight the
//!   bytes are held instead (VMware: after GOAHEAD "the proxy must buffer"), and the new
//!   connection gets them first.
//!
//! A vMotion: BEGIN on the current (source) connection -> the downlink is parked, then GOAHEAD
//! with a fresh secret; the destination host's new connection brings PEER with that secret ->
//! PEER-OK; COMPLETE on it -> it becomes current, the held bytes go out on it, the source is
//! closed. ABORT on the source, or no COMPLETE within [`MIGRATION_LIMIT`] while the source
//! lives -> the destination is closed and the port goes on relaying on the source.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::time::Instant;

use super::handle::ConnHandle;
use super::vmware::{self, HostCommand, SECRET_LEN};
use super::{Vspc, MIGRATION_LIMIT};

/// Server-to-VM bytes a port holds while a vMotion is in flight. The wire protocol's credit
/// keeps that direction small (acks, control, granted stdin); past this they are dropped and
/// the protocol resends them.
const HOLD_LIMIT: usize = 1 << 20;
/// The in-memory pipe between the port and its server connection, per direction.
const DUPLEX_BUFFER: usize = 64 * 1024;
const EVENT_QUEUE: usize = 64;
/// A server connection that ended is replaced after this (its end may repeat at once).
const RELINK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
pub(super) enum PortEvent {
    Data {
        conn: u64,
        bytes: Vec<u8>,
    },
    Host {
        conn: u64,
        cmd: HostCommand,
    },
    /// A destination host's connection presented this port's cookie.
    Peer {
        conn: ConnHandle,
        sequence: Vec<u8>,
    },
    Closed {
        conn: u64,
    },
    /// The server connection `link` ended (the guest's handshake failed, or it broke).
    ServerGone {
        link: u64,
    },
}

/// Where server-to-VM bytes go right now.
#[derive(Default)]
struct Downlink {
    /// `None` while a vMotion is in flight.
    target: Option<ConnHandle>,
    held: Vec<u8>,
}

impl Downlink {
    /// Points the downlink at `to` and gives it what was held.
    async fn resume(&mut self, to: &ConnHandle) {
        self.target = Some(to.clone());
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            to.data(held).await;
        }
    }
}

struct Migration {
    sequence: Vec<u8>,
    cookie: Vec<u8>,
    secret: [u8; SECRET_LEN],
    dest: Option<ConnHandle>,
    /// The destination's data before its COMPLETE, sent up after the source's.
    dest_early: Vec<u8>,
    source_closed: bool,
    deadline: Instant,
}

/// The session-server connection a port feeds.
struct Link {
    id: u64,
    uplink: mpsc::Sender<Vec<u8>>,
}

struct Port {
    vspc: Arc<Vspc>,
    me: mpsc::Sender<PortEvent>,
    current: ConnHandle,
    migration: Option<Migration>,
    downlink: Arc<Mutex<Downlink>>,
    link: Link,
    /// Tells the server connection a vMotion ended: the guest is sent the time again.
    resync: Arc<Notify>,
    vm: String,
}

/// Starts a port whose first connection is `first`; its event queue.
pub(super) fn spawn(vspc: Arc<Vspc>, first: ConnHandle) -> mpsc::Sender<PortEvent> {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    vspc.stats.ports.fetch_add(1, Ordering::Relaxed);
    let downlink = Arc::new(Mutex::new(Downlink {
        target: Some(first.clone()),
        held: Vec::new(),
    }));
    let resync = Arc::new(Notify::new());
    let link = start_link(&vspc, &tx, &downlink, &first, &resync);
    let port = Port {
        resync,
        vspc,
        me: tx.clone(),
        current: first,
        migration: None,
        downlink,
        link,
        vm: String::new(),
    };
    tokio::spawn(port.run(rx));
    tx
}

/// A new server connection for the port: `Server::serve` on one end of a duplex, the uplink
/// and downlink tasks on the other.
fn start_link(
    vspc: &Arc<Vspc>,
    port: &mpsc::Sender<PortEvent>,
    downlink: &Arc<Mutex<Downlink>>,
    conn: &ConnHandle,
    resync: &Arc<Notify>,
) -> Link {
    let id = vspc.next_id();
    let (server_end, mine) = tokio::io::duplex(DUPLEX_BUFFER);
    let (from_server, to_server) = tokio::io::split(mine);
    let server = vspc.server.clone();
    let peer = format!("vspc {}", conn.peer);
    tokio::spawn(server.serve_resyncing(server_end, peer, Some(resync.clone())));
    let (uplink, up_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(uplink_loop(to_server, up_rx));
    tokio::spawn(downlink_loop(
        from_server,
        downlink.clone(),
        port.clone(),
        id,
        vspc.clone(),
    ));
    Link { id, uplink }
}

async fn uplink_loop(mut to_server: WriteHalf<DuplexStream>, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = rx.recv().await {
        if to_server.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

async fn downlink_loop(
    mut from_server: ReadHalf<DuplexStream>,
    downlink: Arc<Mutex<Downlink>>,
    port: mpsc::Sender<PortEvent>,
    link: u64,
    vspc: Arc<Vspc>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = from_server.read(&mut buf) => r.unwrap_or(0),
            // The port ended: let go of the server connection.
            _ = port.closed() => return,
        };
        if n == 0 {
            let _ = port.send(PortEvent::ServerGone { link }).await;
            return;
        }
        let mut d = downlink.lock().await;
        match d.target.clone() {
            // Under the lock: once the port holds it, nothing more goes to the old target.
            Some(t) => {
                t.data(buf[..n].to_vec()).await;
            }
            None if d.held.len() + n <= HOLD_LIMIT => d.held.extend_from_slice(&buf[..n]),
            None => {
                vspc.stats
                    .held_bytes_dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

impl Port {
    async fn run(mut self, mut rx: mpsc::Receiver<PortEvent>) {
        tracing::info!(peer = %self.current.peer, "vSPC: a VM's serial port opened");
        loop {
            let deadline = self.migration.as_ref().map(|m| m.deadline);
            let go_on = tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => false,
                },
                _ = sleep_until(deadline) => self.migration_expired().await,
            };
            if !go_on {
                break;
            }
        }
        if let Some(m) = self.migration.take() {
            self.vspc.forget_peer(&m.cookie);
            if let Some(d) = m.dest {
                d.close();
            }
        }
        self.current.close();
        tracing::info!(peer = %self.current.peer, vm = %self.vm, "vSPC: the VM's serial port closed");
    }

    /// Handles one event; false once the port is done.
    async fn on_event(&mut self, ev: PortEvent) -> bool {
        match ev {
            PortEvent::Data { conn, bytes } if conn == self.current.id => {
                let _ = self.link.uplink.send(bytes).await;
            }
            PortEvent::Data { conn, bytes } => {
                if let Some(m) = self.migration.as_mut() {
                    if m.dest.as_ref().is_some_and(|d| d.id == conn)
                        && m.dest_early.len() + bytes.len() <= HOLD_LIMIT
                    {
                        m.dest_early.extend_from_slice(&bytes);
                    }
                }
            }
            PortEvent::Host { conn, cmd } => return self.host(conn, cmd).await,
            PortEvent::Peer { conn, sequence } => match self.migration.as_mut() {
                Some(m) if m.dest.is_none() && m.sequence == sequence => {
                    tracing::info!(vm = %self.vm, from = %self.current.peer, to = %conn.peer, "vSPC: vMotion destination connected");
                    conn.command(vmware::peer_ok(&sequence)).await;
                    m.dest = Some(conn);
                }
                _ => conn.close(),
            },
            PortEvent::Closed { conn } if conn == self.current.id => {
                match self.migration.as_mut() {
                    // The source host closes its connection around COMPLETE; which arrives first
                    // is up to two TCP connections. Wait for the destination's word.
                    Some(m) => m.source_closed = true,
                    None => return false,
                }
            }
            PortEvent::Closed { conn } => {
                if let Some(m) = self.migration.as_mut() {
                    if m.dest.as_ref().is_some_and(|d| d.id == conn) {
                        m.dest = None;
                        m.dest_early.clear();
                        if m.source_closed {
                            return false;
                        }
                    }
                }
            }
            PortEvent::ServerGone { link } if link == self.link.id => {
                tokio::time::sleep(RELINK_AFTER).await;
                self.downlink.lock().await.held.clear();
                let conn = self.current.clone();
                self.link = start_link(&self.vspc, &self.me, &self.downlink, &conn, &self.resync);
            }
            PortEvent::ServerGone { .. } => {}
        }
        true
    }

    async fn host(&mut self, conn: u64, cmd: HostCommand) -> bool {
        let from_current = conn == self.current.id;
        match cmd {
            HostCommand::VmotionBegin { sequence } if from_current => self.begin(sequence).await,
            HostCommand::VmotionBegin { sequence } => {
                // Only the VM's current connection may move it.
                self.current.command(vmware::notnow(&sequence)).await;
            }
            HostCommand::VmotionComplete { .. } => {
                let from_dest = self
                    .migration
                    .as_ref()
                    .and_then(|m| m.dest.as_ref())
                    .is_some_and(|d| d.id == conn);
                if from_dest {
                    self.complete().await;
                }
            }
            HostCommand::VmotionAbort { .. } if from_current && self.migration.is_some() => {
                self.abort("the source host aborted it").await;
            }
            HostCommand::VmUuid(uuid) => {
                tracing::info!(peer = %self.current.peer, %uuid, "vSPC: the VM's vCenter UUID");
                self.vm = uuid;
            }
            HostCommand::VmName(name) => {
                tracing::debug!(peer = %self.current.peer, %name, "vSPC: the VM's name");
            }
            _ => {}
        }
        true
    }

    async fn begin(&mut self, sequence: Vec<u8>) {
        if let Some(m) = &self.migration {
            // A repeated BEGIN gets the same answer; another one while this runs must wait.
            let reply = if m.sequence == sequence {
                vmware::goahead(&sequence, &m.secret)
            } else {
                vmware::notnow(&sequence)
            };
            self.current.command(reply).await;
            return;
        }
        let secret: [u8; SECRET_LEN] = crate::store::atomic::random();
        let cookie = [sequence.as_slice(), &secret].concat();
        // Parked before GOAHEAD: nothing more reaches the source once it is sent.
        self.downlink.lock().await.target = None;
        self.vspc.expect_peer(cookie.clone(), self.me.clone());
        self.migration = Some(Migration {
            sequence: sequence.clone(),
            cookie,
            secret,
            dest: None,
            dest_early: Vec::new(),
            source_closed: false,
            deadline: Instant::now() + MIGRATION_LIMIT,
        });
        self.vspc
            .stats
            .vmotions_begun
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(vm = %self.vm, peer = %self.current.peer, "vSPC: vMotion begins");
        self.current
            .command(vmware::goahead(&sequence, &secret))
            .await;
    }

    async fn complete(&mut self) {
        let Some(m) = self.migration.take() else {
            return;
        };
        let Some(dest) = m.dest else { return };
        self.vspc.forget_peer(&m.cookie);
        self.downlink.lock().await.resume(&dest).await;
        if !m.dest_early.is_empty() {
            let _ = self.link.uplink.send(m.dest_early).await;
        }
        let source = std::mem::replace(&mut self.current, dest);
        source.close();
        // The VM was stopped for the switch-over: its clock is set again.
        self.resync.notify_one();
        self.vspc
            .stats
            .vmotions_completed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(vm = %self.vm, from = %source.peer, to = %self.current.peer, "vSPC: vMotion complete; the port moved");
    }

    async fn abort(&mut self, why: &str) {
        let Some(m) = self.migration.take() else {
            return;
        };
        self.vspc.forget_peer(&m.cookie);
        if let Some(d) = m.dest {
            d.close();
        }
        let current = self.current.clone();
        self.downlink.lock().await.resume(&current).await;
        self.vspc
            .stats
            .vmotions_aborted
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(vm = %self.vm, peer = %self.current.peer, "vSPC: vMotion aborted ({why}); the port stays on its source and goes on relaying");
    }

    /// No COMPLETE or ABORT in time: back to the source if it lives, on to the destination if
    /// only it does, else the port is done.
    async fn migration_expired(&mut self) -> bool {
        let Some(m) = &self.migration else {
            return true;
        };
        match (m.source_closed, m.dest.is_some()) {
            (false, _) => self.abort("no VMOTION-COMPLETE in time").await,
            (true, true) => self.complete().await,
            (true, false) => return false,
        }
        true
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
