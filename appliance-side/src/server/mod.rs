//! The session server: accepts tether channels on a Unix socket (QEMU `-chardev socket`) and on
//! TCP (vSphere network serial, QEMU `-serial tcp:`), one task per connection. Each connection
//! proves it knows its container's secret, resumes the container's streams from the log store,
//! and then has every byte persisted before it is acknowledged.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use wire::keepalive::{DEAD_AFTER_MS, PING_INTERVAL_MS};
use wire::message::Hello;
use wire::{
    write_message, Inbound, Keepalive, Liveness, Message, MessageReader, RefuseReason, Refused,
    Secret, ServerHandshake, Welcome,
};

pub mod container;
pub mod follow;

use crate::home::Home;
use crate::server::container::Container;
use crate::store::logs::Rotation;
use crate::store::records;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections still in their handshake at once; more are closed at accept. A guest has one
/// channel; this bounds what anyone who can reach the TCP port can make the server hold.
pub const MAX_PENDING_HANDSHAKES: u64 = 256;
const TICK: Duration = Duration::from_millis(100);
/// Read size of an established channel.
const READ_BUFFER: usize = 16 * 1024;

/// One connection's byte pipes and read state, lent to the established-channel loop.
struct Io<'a, R, W> {
    rd: &'a mut R,
    wr: &'a mut W,
    reader: &'a mut MessageReader,
    buf: &'a mut [u8],
}

/// How an established channel ended.
enum End {
    Error(String),
    /// The guest began a new handshake on the same connection.
    Hello(Hello),
}

struct Live {
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
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        })
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
                        eprintln!("appliance: accept on the channel socket: {e}");
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
                        eprintln!("appliance: accept on the channel port: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(local)
    }

    fn refuse(&self, peer: &str, r: &Refused) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "appliance: refused channel from {peer} ({:?}): {}",
            r.reason, r.detail
        );
    }

    /// Serves one channel until it breaks.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self: Arc<Self>, sock: S, peer: String) {
        let pending = self.pending_handshakes.fetch_add(1, Ordering::Relaxed);
        if pending >= MAX_PENDING_HANDSHAKES {
            self.pending_handshakes.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "appliance: channel from {peer} closed at once: {MAX_PENDING_HANDSHAKES} others are still in their handshake"
            );
            return;
        }
        let (mut rd, mut wr) = tokio::io::split(sock);
        let mut reader = MessageReader::new();
        // Small until the peer has proved who it is: an unauthenticated connection costs little.
        let mut buf = vec![0u8; 4 * 1024];
        let mut first_hello = None;
        let mut counted = true;
        loop {
            let handshake = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                self.handshake(&mut rd, &mut wr, &mut reader, &mut buf, first_hello.take()),
            )
            .await;
            if std::mem::take(&mut counted) {
                self.pending_handshakes.fetch_sub(1, Ordering::Relaxed);
            }
            let (container, hello) = match handshake {
                Ok(Ok(done)) => done,
                Ok(Err(r)) => {
                    self.refuse(&peer, &r);
                    let mut out = Vec::new();
                    write_message(&Message::Refused(r), &mut out);
                    let _ = wr.write_all(&out).await;
                    return;
                }
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    eprintln!("appliance: channel from {peer}: no handshake within 10 s; dropped");
                    return;
                }
            };
            // Reads need not hold a whole frame (the reader reassembles): 16 KiB keeps an idle
            // channel cheap (server memory per channel is a benchmark goal) and reads big enough.
            buf.resize(READ_BUFFER, 0);
            match self
                .established(&container, &hello, &mut rd, &mut wr, &mut reader, &mut buf)
                .await
            {
                // The guest saw a break we did not (a serial line has no hangup): it starts over
                // on this same connection.
                End::Hello(h) => first_hello = Some(h),
                End::Error(why) => {
                    eprintln!(
                        "appliance: container {} channel closed: {why}",
                        container.id
                    );
                    return;
                }
            }
        }
    }

    /// Registers the authenticated channel as its container's live one and runs it.
    async fn established<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        container: &Arc<Container>,
        hello: &Hello,
        rd: &mut R,
        wr: &mut W,
        reader: &mut MessageReader,
        buf: &mut [u8],
    ) -> End {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        {
            let mut live = self.live.lock().expect("lock");
            if let Some(old) = live.insert(
                container.id.clone(),
                Live {
                    conn,
                    kick: kick.clone(),
                },
            ) {
                // The newest channel wins: the old one is a broken link not yet noticed.
                old.kick.notify_one();
            }
        }
        container.set_connected(true);
        let end = self
            .run(container, hello, (rd, wr), reader, buf, &kick)
            .await;
        let mut live = self.live.lock().expect("lock");
        if live.get(&container.id).is_some_and(|l| l.conn == conn) {
            live.remove(&container.id);
            container.set_connected(false);
        }
        end
    }

    async fn next_message<R: AsyncRead + Unpin>(
        rd: &mut R,
        reader: &mut MessageReader,
        buf: &mut [u8],
    ) -> Option<Message> {
        loop {
            if let Some(m) = reader.next_message() {
                return Some(m);
            }
            let n = rd.read(buf).await.ok()?;
            if n == 0 {
                return None;
            }
            reader.feed(&buf[..n]);
        }
    }

    async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        rd: &mut R,
        wr: &mut W,
        reader: &mut MessageReader,
        buf: &mut [u8],
        first_hello: Option<Hello>,
    ) -> Result<(Arc<Container>, Hello), Refused> {
        let violation = |detail: &str| Refused {
            reason: RefuseReason::ProtocolViolation,
            detail: detail.to_string(),
        };
        // A serial line has no connection boundaries: bytes from before a break (old data, an
        // earlier handshake) may arrive first. Skip to a Hello; while waiting for the Proof,
        // answer a repeated Hello with the same Challenge and a new one with a new Challenge.
        let mut hello = match first_hello {
            Some(h) => h,
            None => loop {
                match Self::next_message(rd, reader, buf).await {
                    Some(Message::Hello(h)) => break h,
                    Some(_) => continue,
                    None => return Err(violation("closed before Hello")),
                }
            },
        };
        let home = &self.home;
        let lookup = |id: &str| records::load(home, id).map(|r| Secret::new(r.secret_bytes()));
        let (mut hs, mut challenge) =
            ServerHandshake::on_hello(hello.clone(), records::random(), lookup)?;
        let proof = loop {
            let mut out = Vec::new();
            write_message(&Message::Challenge(challenge.clone()), &mut out);
            wr.write_all(&out)
                .await
                .map_err(|e| violation(&format!("writing Challenge: {e}")))?;
            let next = loop {
                match Self::next_message(rd, reader, buf).await {
                    Some(Message::Proof(p)) => break Ok(p),
                    Some(Message::Hello(h)) => break Err(h),
                    Some(_) => continue,
                    None => return Err(violation("closed before Proof")),
                }
            };
            match next {
                Ok(p) => break p,
                // The guest repeated its Hello (our Challenge may have been lost): same answer.
                Err(h) if h == hello => continue,
                // The guest started over.
                Err(h) => {
                    hello = h;
                    (hs, challenge) =
                        ServerHandshake::on_hello(hello.clone(), records::random(), lookup)?;
                }
            }
        };
        let auth = hs.on_proof(proof)?;
        let boot = hex(&auth.boot_id);
        let container = self
            .open_container(&auth.container_id, &boot)
            .map_err(|e| violation(&format!("the server cannot open its store: {e}")))?;
        let mut out = Vec::new();
        let positions = {
            let mut inner = container.inner.lock().expect("lock");
            inner
                .streams
                .resume(&auth.peer_received)
                .map_err(|e| violation(&format!("resume: {e}")))?;
            inner.streams.positions()
        };
        write_message(
            &Message::Welcome(Welcome {
                received: positions,
            }),
            &mut out,
        );
        wr.write_all(&out)
            .await
            .map_err(|e| violation(&format!("writing Welcome: {e}")))?;
        Ok((container, hello))
    }

    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        c: &Arc<Container>,
        hello: &Hello,
        (rd, wr): (&mut R, &mut W),
        reader: &mut MessageReader,
        buf: &mut [u8],
        kick: &Notify,
    ) -> End {
        let io = Io {
            rd,
            wr,
            reader,
            buf,
        };
        match self.run_until_end(c, hello, io, kick).await {
            Ok(()) => End::Error("closed".into()),
            Err(end) => end,
        }
    }

    async fn run_until_end<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        c: &Arc<Container>,
        hello: &Hello,
        io: Io<'_, R, W>,
        kick: &Notify,
    ) -> Result<(), End> {
        let Io {
            rd,
            wr,
            reader,
            buf,
        } = io;
        let start = Instant::now();
        let mut keepalive = Keepalive::new(0, PING_INTERVAL_MS, DEAD_AFTER_MS);
        let mut tick = tokio::time::interval(TICK);
        // Grows to what a burst needs; an idle channel holds nothing.
        let mut out = Vec::new();
        // Messages already read past the handshake.
        self.absorb(c, hello, reader, &mut keepalive, 0)?;
        let mut meter = LinkMeter::default();
        loop {
            meter.update(c, reader);
            flush(c, wr, &mut out).await.map_err(End::Error)?;
            tokio::select! {
                r = rd.read(buf) => {
                    let n = r.map_err(|e| End::Error(format!("read: {e}")))?;
                    if n == 0 {
                        return Err(End::Error("tether closed the channel".into()));
                    }
                    reader.feed(&buf[..n]);
                    self.absorb(c, hello, reader, &mut keepalive, start.elapsed().as_millis() as u64)?;
                    // A channel with data always ready would otherwise keep its worker for up to
                    // tokio's whole budget (128 reads, 2 MiB here) per turn; with 100 such, an
                    // exec round trip on another channel waited ~300 ms (`make bench`).
                    tokio::task::yield_now().await;
                }
                _ = c.tx_wake.notified() => {}
                _ = tick.tick() => {
                    let now = start.elapsed().as_millis() as u64;
                    let mut inner = c.inner.lock().expect("lock");
                    inner.streams.on_tick(now);
                    match keepalive.poll(now) {
                        Liveness::Alive => {}
                        Liveness::SendPing(token) => write_message(&Message::Ping { token }, &mut out),
                        Liveness::Dead => return Err(End::Error("no traffic from tether for 10 s".into())),
                    }
                }
                _ = kick.notified() => return Err(End::Error("replaced by a newer channel".into())),
            }
        }
    }

    /// Handles every decoded message: output and control are persisted before `flush` sends the
    /// acks. A protocol violation ends the connection (and only it).
    fn absorb(
        &self,
        c: &Container,
        hello: &Hello,
        reader: &mut MessageReader,
        keepalive: &mut Keepalive,
        now: u64,
    ) -> Result<(), End> {
        while let Some(msg) = reader.next_message() {
            keepalive.on_receive(now);
            match msg {
                // A late repeat of the Hello this channel was opened with.
                Message::Hello(h) if h == *hello => continue,
                Message::Hello(h) => return Err(End::Hello(h)),
                _ => {}
            }
            let inbound = c.inner.lock().expect("lock").streams.on_message(msg);
            if let Err(e) = inbound
                .as_ref()
                .map(|i| c.check_sessions(i))
                .unwrap_or(Ok(()))
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(End::Error(format!("protocol violation, disconnected: {e}")));
            }
            match inbound {
                Ok(Inbound::Data { key, bytes, fin }) => c
                    .on_output(key, &bytes, fin)
                    .map_err(|e| End::Error(format!("log store: {e}")))?,
                Ok(Inbound::Control(records)) => c
                    .on_control(records)
                    .map_err(|e| End::Error(format!("state store: {e}")))?,
                Ok(Inbound::Goodbye(reason)) => {
                    return Err(End::Error(format!("tether said goodbye: {reason}")))
                }
                Ok(_) => {}
                Err(e) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(End::Error(format!("protocol violation, disconnected: {e}")));
                }
            }
        }
        Ok(())
    }
}

/// Moves this connection's loss counters into the container's totals as they grow.
#[derive(Default)]
struct LinkMeter {
    rejected: u64,
    dropped: u64,
    undecodable: u64,
    gaps: u64,
    retransmits: u64,
}

impl LinkMeter {
    fn update(&mut self, c: &Container, reader: &MessageReader) {
        let (frames, undecodable) = reader.stats();
        let (gaps, retransmits) = c.inner.lock().expect("lock").streams.loss_counters();
        let now = [
            frames.rejected_frames,
            frames.dropped_bytes,
            undecodable,
            gaps,
            retransmits,
        ];
        let last = [
            self.rejected,
            self.dropped,
            self.undecodable,
            self.gaps,
            self.retransmits,
        ];
        if now == last {
            return;
        }
        // Finished streams are forgotten with their counts: a total can shrink; never subtract.
        let d: Vec<u64> = now
            .iter()
            .zip(last)
            .map(|(n, l)| n.saturating_sub(l))
            .collect();
        c.add_link(|l| {
            l.frames_rejected += d[0];
            l.bytes_dropped += d[1];
            l.messages_undecodable += d[2];
            l.gaps += d[3];
            l.retransmits += d[4];
        });
        [
            self.rejected,
            self.dropped,
            self.undecodable,
            self.gaps,
            self.retransmits,
        ] = now;
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    c: &Container,
    wr: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    {
        let mut inner = c.inner.lock().expect("lock");
        while out.len() < 256 * 1024 && inner.streams.write_next(out) {}
    }
    if !out.is_empty() {
        wr.write_all(out).await.map_err(|e| format!("write: {e}"))?;
        out.clear();
    }
    Ok(())
}
