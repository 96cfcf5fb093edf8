//! One connection to the vSPC: its telnet (or its absence), and whose port it is. A connection
//! belongs to no port until it sends data (a VM's port, new) or a VMOTION-PEER (the destination
//! of a vMotion in flight, claiming that port); until then it only negotiates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

use super::handle::{ConnHandle, Outbound};
use super::port::{self, PortEvent};
use super::telnet::{self, Decoder, Event, Options, IAC, OPT_BINARY, OPT_VMWARE};
use super::vmware::{self, HostCommand};
use super::Vspc;

/// A telnet client that says nothing for this long after connecting is sent our options first
/// (VMware's VMX offers its extension itself; a silent raw client gets harmless bytes).
const OPEN_AFTER: Duration = Duration::from_secs(1);
const READ_SIZE: usize = 16 * 1024;
/// Writes queued to one connection; past this the sender waits (the host's TCP pushes back).
const WRITE_QUEUE: usize = 64;

/// Serves one accepted connection until it closes.
pub(super) async fn run(vspc: Arc<Vspc>, sock: tokio::net::TcpStream, peer: SocketAddr) {
    let id = vspc.next_id();
    let (mut rd, wr) = sock.into_split();
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let send_binary = Arc::new(AtomicBool::new(false));
    let telnet_mode = Arc::new(AtomicBool::new(true));
    let end = Arc::new(watch::Sender::new(false));
    let writer = tokio::spawn(write_loop(
        wr,
        rx,
        send_binary.clone(),
        telnet_mode.clone(),
        end.subscribe(),
    ));
    let mut ended = end.subscribe();
    let handle = ConnHandle::new(id, peer, tx, end.clone());
    let mut c = Conn {
        vspc,
        handle,
        options: Options::for_concentrator(),
        decoder: Decoder::default(),
        opened: false,
        port: None,
        send_binary,
    };
    let mut buf = vec![0u8; READ_SIZE];
    // Until the first byte: is this telnet at all?
    let first = tokio::select! {
        r = tokio::time::timeout(OPEN_AFTER, rd.read(&mut buf)) => r,
        _ = ended_signal(&mut ended) => Ok(Ok(0)),
    };
    let mut n = match first {
        Ok(r) => r.unwrap_or(0),
        Err(_) => {
            c.open_negotiation().await;
            tokio::select! {
                r = rd.read(&mut buf) => r.unwrap_or(0),
                _ = ended_signal(&mut ended) => 0,
            }
        }
    };
    if n > 0 && buf[0] != IAC {
        telnet_mode.store(false, Ordering::Relaxed);
        tracing::info!(%peer, "vSPC: a client that speaks no telnet; relayed raw");
    } else if n > 0 {
        c.open_negotiation().await;
    }
    let raw = !telnet_mode.load(Ordering::Relaxed);
    while n > 0 {
        if !c.take(&buf[..n], raw).await {
            break;
        }
        n = tokio::select! {
            r = rd.read(&mut buf) => r.unwrap_or(0),
            _ = ended_signal(&mut ended) => 0,
        };
    }
    if let Some(port) = &c.port {
        let _ = port.send(PortEvent::Closed { conn: id }).await;
    }
    // The writer ends once every handle is dropped (ours now, the port's when it lets go) or
    // the connection is ended.
    drop(c);
    let _ = writer.await;
}

struct Conn {
    vspc: Arc<Vspc>,
    handle: ConnHandle,
    options: Options,
    decoder: Decoder,
    opened: bool,
    /// The port this connection belongs to, once it does.
    port: Option<mpsc::Sender<PortEvent>>,
    send_binary: Arc<AtomicBool>,
}

impl Conn {
    async fn open_negotiation(&mut self) {
        if std::mem::replace(&mut self.opened, true) {
            return;
        }
        let mut out = Vec::new();
        self.options.open(&mut out);
        self.handle.command(out).await;
    }

    /// Handles bytes read; false once the connection should end.
    async fn take(&mut self, bytes: &[u8], raw: bool) -> bool {
        if raw {
            return self.data(bytes.to_vec()).await;
        }
        let mut events = Vec::new();
        let binary = self.options.remote_on(OPT_BINARY);
        self.decoder.decode(bytes, binary, &mut events);
        for e in events {
            let ok = match e {
                Event::Data(d) => self.data(d).await,
                Event::Negotiate { verb, option } => {
                    let mut reply = Vec::new();
                    self.options.on_negotiate(verb, option, &mut reply);
                    self.send_binary
                        .store(self.options.local_on(OPT_BINARY), Ordering::Relaxed);
                    reply.is_empty() || self.handle.command(reply).await
                }
                Event::Subnegotiation {
                    option: OPT_VMWARE,
                    payload,
                } => match HostCommand::parse(&payload) {
                    Some(cmd) => self.host(cmd).await,
                    None => true,
                },
                Event::Subnegotiation { option, .. } => {
                    tracing::debug!(peer = %self.handle.peer, option, "vSPC: subnegotiation ignored");
                    true
                }
                Event::Command(_) => true,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    async fn data(&mut self, bytes: Vec<u8>) -> bool {
        let port = match &self.port {
            Some(p) => p.clone(),
            None => self.new_port(),
        };
        port.send(PortEvent::Data {
            conn: self.handle.id,
            bytes,
        })
        .await
        .is_ok()
    }

    fn new_port(&mut self) -> mpsc::Sender<PortEvent> {
        let p = port::spawn(self.vspc.clone(), self.handle.clone());
        self.port = Some(p.clone());
        p
    }

    /// A VMware-extension command from the host.
    async fn host(&mut self, cmd: HostCommand) -> bool {
        let h = &self.handle.clone();
        match cmd {
            HostCommand::KnownSuboptions(theirs) => {
                let mut out = vmware::known_suboptions();
                // The VM's vCenter UUID names it in our logs.
                if theirs.contains(&vmware::VM_VC_UUID) && theirs.contains(&vmware::GET_VM_VC_UUID)
                {
                    out.extend(vmware::command(vmware::GET_VM_VC_UUID, &[]));
                }
                h.command(out).await
            }
            HostCommand::DoProxy {
                direction,
                service_uri,
            } => {
                tracing::debug!(peer = %h.peer, direction = %char::from(direction), %service_uri, "vSPC: DO-PROXY");
                h.command(vmware::command(vmware::WILL_PROXY, &[])).await
            }
            HostCommand::Unknown(code) => {
                h.command(vmware::command(vmware::UNKNOWN_SUBOPTION_RCVD_2, &[code]))
                    .await
            }
            HostCommand::UnknownSuboptionReceived(code) => {
                tracing::debug!(peer = %h.peer, code, "vSPC: the host did not know a suboption");
                true
            }
            HostCommand::VmotionPeer { cookie } if self.port.is_none() => self.peer(cookie).await,
            HostCommand::VmotionBegin { sequence } if self.port.is_none() => {
                // No port yet (the VM has said nothing): nothing to move, but nothing to hold
                // either. Go ahead as a port with nothing in it.
                let p = self.new_port();
                p.send(PortEvent::Host {
                    conn: h.id,
                    cmd: HostCommand::VmotionBegin { sequence },
                })
                .await
                .is_ok()
            }
            cmd => match &self.port {
                Some(p) => p.send(PortEvent::Host { conn: h.id, cmd }).await.is_ok(),
                None => true,
            },
        }
    }

    /// A destination host's connection, claiming its VM's port.
    async fn peer(&mut self, cookie: Vec<u8>) -> bool {
        let sequence = vmware::split_cookie(&cookie)
            .map_or(cookie.as_slice(), |(s, _)| s)
            .to_vec();
        match self.vspc.claim_peer(&cookie) {
            Some(port) => {
                self.port = Some(port.clone());
                port.send(PortEvent::Peer {
                    conn: self.handle.clone(),
                    sequence,
                })
                .await
                .is_ok()
            }
            None => {
                // Not a vMotion we know: this appliance restarted since it began, or the
                // source's port is gone. Accept the VM as a new port; its tether starts a new
                // handshake once it notices the silence.
                tracing::warn!(peer = %self.handle.peer, "vSPC: VMOTION-PEER for no vMotion in flight; taken as a new port");
                self.new_port();
                self.handle.command(vmware::peer_ok(&sequence)).await
            }
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outbound>,
    send_binary: Arc<AtomicBool>,
    telnet_mode: Arc<AtomicBool>,
    mut end: watch::Receiver<bool>,
) {
    let mut out = Vec::new();
    loop {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = ended_signal(&mut end) => None,
        };
        let Some(m) = next else {
            // Ended (or every handle dropped): write what is queued, then close.
            rx.close();
            while let Ok(m) = rx.try_recv() {
                encode(m, &send_binary, &telnet_mode, &mut out);
            }
            let _ = wr.write_all(&out).await;
            break;
        };
        encode(m, &send_binary, &telnet_mode, &mut out);
        while let Ok(m) = rx.try_recv() {
            encode(m, &send_binary, &telnet_mode, &mut out);
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    let _ = wr.shutdown().await;
}

/// Resolves once the connection is to end (at once if it already is).
async fn ended_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|e| *e).await;
}

fn encode(m: Outbound, binary: &AtomicBool, telnet_mode: &AtomicBool, out: &mut Vec<u8>) {
    match m {
        Outbound::Data(d) if telnet_mode.load(Ordering::Relaxed) => {
            telnet::escape_into(&d, binary.load(Ordering::Relaxed), out)
        }
        Outbound::Data(d) => out.extend_from_slice(&d),
        // A raw client gets no telnet commands.
        Outbound::Command(_) if !telnet_mode.load(Ordering::Relaxed) => {}
        Outbound::Command(c) => out.extend_from_slice(&c),
    }
}
