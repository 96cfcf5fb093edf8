//! The channel driver: connect, handshake, then move frames both ways until the link breaks;
//! then do it again, forever. Streams outlive connections: what the appliance has not
//! acknowledged is still buffered and is resent after the next handshake.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::keepalive::{DEAD_AFTER_MS, PING_INTERVAL_MS};
use wire::{
    write_message, BootId, ClientHandshake, Inbound, Keepalive, Liveness, Message, MessageReader,
    Secret, StreamKind,
};

use crate::channel::{self, ChannelSpec};
use crate::state::{Ctx, Event};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unanswered Hello is repeated within the handshake timeout.
const HELLO_REPEAT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);

pub struct Identity {
    pub container_id: String,
    pub secret: Secret,
    pub boot_id: BootId,
}

/// Reads the channel and yields decoded messages.
struct FrameReader<R> {
    rd: R,
    messages: MessageReader,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(rd: R) -> Self {
        Self {
            rd,
            messages: MessageReader::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The next message; `None` at end of stream.
    async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(m) = self.messages.next_message() {
                return Ok(Some(m));
            }
            let n = self.rd.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.messages.feed(&self.buf[..n]);
        }
    }
}

/// Random bytes from the kernel; `flags` as for getrandom(2).
fn getrandom<const N: usize>(flags: u32) -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, flags) };
        if n > 0 {
            filled += n as usize;
        }
    }
    out
}

/// Unpredictable bytes (handshake nonces): waits, early in boot, until the kernel's random
/// generator is seeded.
fn random_bytes<const N: usize>() -> [u8; N] {
    getrandom(0)
}

/// The boot id only has to differ between boots, so it does not wait for the generator to be
/// seeded: that wait took a second of a TCG boot, ahead of starting the container.
pub fn new_boot_id() -> BootId {
    getrandom(libc::GRND_INSECURE)
}

/// Runs the channel forever.
pub async fn run(ctx: Ctx, spec: ChannelSpec, device: Option<OwnedFd>, id: Identity) {
    let mut backoff = Duration::from_millis(100);
    let mut last_error = String::new();
    loop {
        let conn = match channel::connect(&spec, device.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot open channel {}: {e}", spec.describe());
                if msg != last_error {
                    crate::log::warn(&msg);
                    last_error = msg;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let outcome = connection(&ctx, conn, &id).await;
        let was_up = ctx.shared.borrow().connected;
        ctx.shared.borrow_mut().connected = false;
        let reason = match outcome {
            Ok(()) => "closed by the appliance".to_string(),
            Err(e) => e,
        };
        if was_up {
            let _ = ctx.events.send(Event::ChannelDown(reason.clone()));
            backoff = Duration::from_millis(100);
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        if reason != last_error {
            crate::log::info(&format!("channel: {reason}; reconnecting"));
            last_error = reason;
        }
        tokio::time::sleep(backoff).await;
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, msg: &Message) -> io::Result<()> {
    let mut buf = Vec::new();
    write_message(msg, &mut buf);
    wr.write_all(&buf).await?;
    wr.flush().await
}

async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    reader: &mut FrameReader<R>,
    wr: &mut W,
    id: &Identity,
) -> Result<(), String> {
    let (client, hello) = ClientHandshake::start(
        id.container_id.clone(),
        id.boot_id,
        id.secret.clone(),
        random_bytes(),
    );
    // A serial line has no connection boundaries: what arrives first may be left over from
    // before the break (data, an old Challenge or Welcome). Skip it; only a Challenge that
    // proves the appliance saw *this* Hello counts. Until one comes, say Hello again every
    // second: the appliance may have been down when the first one went out.
    let hello = Message::Hello(hello);
    let (_version, proof) = loop {
        send(wr, &hello)
            .await
            .map_err(|e| format!("sending Hello: {e}"))?;
        let Ok(next) = tokio::time::timeout(HELLO_REPEAT, reader.next()).await else {
            continue;
        };
        match next {
            Ok(Some(Message::Challenge(c))) => {
                let positions = ctx.shared.borrow().streams.positions();
                match client.on_challenge(&c, positions) {
                    Ok(answer) => break answer,
                    // A Challenge for an earlier Hello (or from an impostor): not ours.
                    Err(_) => continue,
                }
            }
            Ok(Some(Message::Refused(r))) => {
                return Err(format!("appliance refused ({:?}): {}", r.reason, r.detail))
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Err("channel closed during the handshake".into()),
            Err(e) => return Err(format!("reading Challenge: {e}")),
        }
    };
    send(wr, &Message::Proof(proof))
        .await
        .map_err(|e| format!("sending Proof: {e}"))?;
    let welcome = loop {
        match reader.next().await {
            Ok(Some(Message::Welcome(w))) => break w,
            Ok(Some(Message::Refused(r))) => {
                return Err(format!("appliance refused ({:?}): {}", r.reason, r.detail))
            }
            // A second Challenge answering a repeated Hello, or old bytes.
            Ok(Some(_)) => continue,
            Ok(None) => return Err("channel closed during the handshake".into()),
            Err(e) => return Err(format!("reading Welcome: {e}")),
        }
    };
    ctx.shared
        .borrow_mut()
        .streams
        .resume(&welcome.received)
        .map_err(|e| format!("resume refused: {e}"))?;
    Ok(())
}

async fn connection(
    ctx: &Ctx,
    conn: Box<dyn channel::Duplex>,
    id: &Identity,
) -> Result<(), String> {
    let (rd, mut wr) = tokio::io::split(conn);
    let mut reader = FrameReader::new(rd);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(ctx, &mut reader, &mut wr, id))
        .await
        .map_err(|_| "no answer to Hello within 10 s".to_string())??;
    ctx.shared.borrow_mut().connected = true;
    let _ = ctx.events.send(Event::ChannelUp);
    ctx.space.notify_waiters();
    ctx.tx_wake.notify_one();
    let start = Instant::now();
    let keepalive = std::cell::RefCell::new(Keepalive::new(0, PING_INTERVAL_MS, DEAD_AFTER_MS));
    let now_ms = || start.elapsed().as_millis() as u64;

    let read_side = async {
        loop {
            let msg = match reader.next().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err("the appliance closed the channel".to_string()),
                Err(e) => return Err(format!("reading the channel: {e}")),
            };
            keepalive.borrow_mut().on_receive(now_ms());
            let inbound = ctx.shared.borrow_mut().streams.on_message(msg);
            match inbound {
                Ok(Inbound::Goodbye(reason)) => {
                    return Err(format!("appliance said goodbye: {reason}"))
                }
                Ok(inbound) => dispatch(ctx, inbound),
                Err(e) => {
                    let _ = send_goodbye(ctx, &e.to_string());
                    return Err(format!("protocol violation by the appliance: {e}"));
                }
            }
            ctx.space.notify_waiters();
            ctx.tx_wake.notify_one();
        }
    };
    let write_side = async {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            {
                let mut sh = ctx.shared.borrow_mut();
                while let Some(m) = sh.link_out.pop_front() {
                    write_message(&m, &mut buf);
                }
                while buf.len() < 256 * 1024 && sh.streams.write_next(&mut buf) {}
            }
            if buf.is_empty() {
                ctx.tx_wake.notified().await;
                continue;
            }
            if let Err(e) = wr.write_all(&buf).await {
                return Err(format!("writing the channel: {e}"));
            }
            buf.clear();
            // Streams drained into the buffer may now accept more from the processes.
            ctx.space.notify_waiters();
        }
    };
    let ticker = async {
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            let now = now_ms();
            ctx.shared.borrow_mut().streams.on_tick(now);
            let liveness = keepalive.borrow_mut().poll(now);
            match liveness {
                Liveness::Alive => {}
                Liveness::SendPing(token) => {
                    ctx.shared
                        .borrow_mut()
                        .link_out
                        .push_back(Message::Ping { token });
                }
                Liveness::Dead => {
                    return Err(format!(
                        "no traffic from the appliance for {} s",
                        DEAD_AFTER_MS / 1000
                    ))
                }
            }
            ctx.tx_wake.notify_one();
        }
    };
    tokio::select! {
        r = read_side => r,
        r = write_side => r,
        r = ticker => r,
    }
}

fn send_goodbye(ctx: &Ctx, reason: &str) -> Option<()> {
    ctx.shared
        .borrow_mut()
        .link_out
        .push_back(Message::Goodbye {
            reason: reason.to_string(),
        });
    Some(())
}

fn dispatch(ctx: &Ctx, inbound: Inbound) {
    match inbound {
        Inbound::Data { key, bytes, fin } if key.kind == StreamKind::Stdin => {
            let mut sh = ctx.shared.borrow_mut();
            match sh.stdin.get_mut(&key.session) {
                Some(q) => {
                    q.bytes.extend(bytes);
                    q.closing |= fin;
                    drop(sh);
                    ctx.stdin_wake.notify_waiters();
                }
                None => {
                    // No such session (it ended): the bytes have nowhere to go; free the credit.
                    sh.streams.release(key, bytes.len() as u64);
                }
            }
        }
        Inbound::Control(records) => {
            for r in records {
                // The stdin queue must exist before the stdin bytes that follow an Exec arrive,
                // and the controller handles the Exec only later.
                if let wire::Control::Exec { session, .. } = &r {
                    ctx.shared.borrow_mut().stdin.entry(*session).or_default();
                }
                let _ = ctx.events.send(Event::Control(r));
            }
        }
        _ => {}
    }
}
