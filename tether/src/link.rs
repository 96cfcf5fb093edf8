//! The channel driver: connect, handshake, then move frames both ways until the link breaks;
//! then do it again, forever. Streams outlive connections: what the appliance has not
//! acknowledged is still buffered and is resent after the next handshake.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wire::io::MessageStream;
use wire::keepalive::{DEAD_AFTER_MS, PING_INTERVAL_MS};
use wire::{
    write_message, BootId, ClientHandshake, Inbound, Keepalive, Liveness, Message, MuxError,
    RefuseReason, Secret, StreamKind,
};

use crate::channel::{self, ChannelSpec};
use crate::state::{Ctx, Event};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unanswered Hello is repeated within the handshake timeout.
const HELLO_REPEAT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(100);
/// How long the Goodbye after a protocol violation may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Identity {
    pub container_id: String,
    pub secret: Secret,
    pub boot_id: BootId,
}

/// Why a connection could not be made, or ended. Shown on the console as it is.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("cannot open channel {channel}: {source}")]
    Open { channel: String, source: io::Error },
    #[error("sending {what}: {source}")]
    Send {
        what: &'static str,
        source: io::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: io::Error,
    },
    #[error("no answer to Hello within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout,
    #[error("channel closed during the handshake")]
    ClosedInHandshake,
    #[error("appliance refused ({reason:?}): {detail}")]
    Refused {
        reason: RefuseReason,
        detail: String,
    },
    #[error("resume refused: {0}")]
    Resume(#[source] MuxError),
    #[error("the appliance closed the channel")]
    Closed,
    #[error("writing the channel: {0}")]
    Write(#[source] io::Error),
    #[error("appliance said goodbye: {0}")]
    Goodbye(String),
    #[error("protocol violation by the appliance: {0}")]
    Protocol(#[source] MuxError),
    #[error("no traffic from the appliance for {} s", DEAD_AFTER_MS / 1000)]
    Silent,
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
            Err(source) => {
                let msg = LinkError::Open {
                    channel: spec.describe(),
                    source,
                }
                .to_string();
                if msg != last_error {
                    crate::log::warn(&msg);
                    last_error = msg;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let reason = connection(&ctx, conn, &id).await.to_string();
        let was_up = ctx.shared.borrow().connected;
        ctx.shared.borrow_mut().connected = false;
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

/// Sends one handshake message; `what` names it in the error.
async fn send_step<W: AsyncWrite + Unpin>(
    wr: &mut W,
    msg: &Message,
    what: &'static str,
) -> Result<(), LinkError> {
    send(wr, msg)
        .await
        .map_err(|source| LinkError::Send { what, source })
}

/// What one read during the handshake gave while `awaiting` a reply: a message to look at,
/// or why the handshake is over (refused, closed, or the read failed).
fn handshake_reply(
    next: io::Result<Option<Message>>,
    awaiting: &'static str,
) -> Result<Message, LinkError> {
    match next {
        Ok(Some(Message::Refused(r))) => Err(LinkError::Refused {
            reason: r.reason,
            detail: r.detail,
        }),
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(LinkError::ClosedInHandshake),
        Err(source) => Err(LinkError::Read {
            what: awaiting,
            source,
        }),
    }
}

async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    reader: &mut MessageStream<R>,
    wr: &mut W,
    id: &Identity,
) -> Result<(), LinkError> {
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
        send_step(wr, &hello, "Hello").await?;
        let Ok(next) = tokio::time::timeout(HELLO_REPEAT, reader.next()).await else {
            continue;
        };
        if let Message::Challenge(c) = handshake_reply(next, "Challenge")? {
            let positions = ctx.shared.borrow().streams.positions();
            // A Challenge for an earlier Hello (or from an impostor) is not ours: skip it.
            if let Ok(answer) = client.on_challenge(&c, positions) {
                break answer;
            }
        }
    };
    send_step(wr, &Message::Proof(proof), "Proof").await?;
    // Skipped on the way: a second Challenge answering a repeated Hello, or old bytes.
    let welcome = loop {
        if let Message::Welcome(w) = handshake_reply(reader.next().await, "Welcome")? {
            break w;
        }
    };
    ctx.shared
        .borrow_mut()
        .streams
        .resume(&welcome.received)
        .map_err(LinkError::Resume)
}

/// One connection, from the handshake until it breaks; what broke it.
async fn connection(ctx: &Ctx, conn: Box<dyn channel::Duplex>, id: &Identity) -> LinkError {
    let (rd, mut wr) = tokio::io::split(conn);
    let mut reader = MessageStream::new(rd);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(ctx, &mut reader, &mut wr, id)).await {
        Err(_elapsed) => return LinkError::HandshakeTimeout,
        Ok(Err(e)) => return e,
        Ok(Ok(())) => {}
    }
    {
        let mut sh = ctx.shared.borrow_mut();
        sh.connected = true;
        // Pings (and anything else) queued for the last connection mean nothing on this one.
        sh.link_out.clear();
    }
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
                Ok(None) => return LinkError::Closed,
                Err(source) => {
                    return LinkError::Read {
                        what: "the channel",
                        source,
                    }
                }
            };
            keepalive.borrow_mut().on_receive(now_ms());
            let inbound = ctx.shared.borrow_mut().streams.on_message(msg);
            match inbound {
                Ok(Inbound::Goodbye(reason)) => return LinkError::Goodbye(reason),
                Ok(inbound) => dispatch(ctx, inbound),
                Err(e) => return LinkError::Protocol(e),
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
                sh.streams.write_batch(&mut buf);
            }
            if buf.is_empty() {
                ctx.tx_wake.notified().await;
                continue;
            }
            if let Err(e) = wr.write_all(&buf).await {
                return LinkError::Write(e);
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
                Liveness::Dead => return LinkError::Silent,
            }
            ctx.tx_wake.notify_one();
        }
    };
    let end = tokio::select! {
        e = read_side => e,
        e = write_side => e,
        e = ticker => e,
    };
    if let LinkError::Protocol(e) = &end {
        // Say why before hanging up; bounded, as the line itself may be what is stuck.
        let bye = Message::Goodbye {
            reason: e.to_string(),
        };
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, send(&mut wr, &bye)).await;
    }
    end
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
        Inbound::Time(unix_nanos) => crate::clock::on_server_time(unix_nanos),
        Inbound::Control(records) => {
            for r in records {
                // The stdin queue must exist before the stdin bytes that follow an Exec (or a
                // Builtin) arrive, and the controller handles the record only later.
                if let wire::Control::Exec { session, .. }
                | wire::Control::Builtin { session, .. } = &r
                {
                    ctx.shared.borrow_mut().stdin.entry(*session).or_default();
                }
                let _ = ctx.events.send(Event::Control(r));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
    use wire::{Refused, ServerHandshake, StreamKey, Welcome};

    const SECRET: &[u8] = b"link-test";

    fn identity() -> Identity {
        Identity {
            container_id: "c1".into(),
            secret: Secret::new(SECRET.to_vec()),
            boot_id: [7; 16],
        }
    }

    fn ctx() -> Ctx {
        Ctx::new(tokio::sync::mpsc::unbounded_channel().0)
    }

    async fn write(wr: &mut WriteHalf<DuplexStream>, msg: Message) {
        send(wr, &msg).await.unwrap();
    }

    /// The appliance's half of a good handshake, over `rd`/`wr`.
    async fn accept(
        rd: &mut MessageStream<ReadHalf<DuplexStream>>,
        wr: &mut WriteHalf<DuplexStream>,
    ) {
        let Some(Message::Hello(hello)) = rd.next().await.unwrap() else {
            panic!("expected Hello");
        };
        let (server, challenge) =
            ServerHandshake::on_hello(hello, [2; 32], |_| Some(Secret::new(SECRET.to_vec())))
                .unwrap();
        write(wr, Message::Challenge(challenge)).await;
        let proof = loop {
            match rd.next().await.unwrap() {
                Some(Message::Proof(p)) => break p,
                Some(_) => continue, // a repeated Hello
                None => panic!("tether hung up"),
            }
        };
        server.on_proof(proof).unwrap();
        write(wr, Message::Welcome(Welcome { received: vec![] })).await;
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_naming_the_reason() {
        let (guest, appliance) = tokio::io::duplex(64 * 1024);
        let (grd, mut gwr) = tokio::io::split(guest);
        let (ard, mut awr) = tokio::io::split(appliance);
        let mut guest_rd = MessageStream::new(grd);
        let mut appliance_rd = MessageStream::new(ard);
        let ctx = ctx();
        let appliance = async {
            let Some(Message::Hello(_)) = appliance_rd.next().await.unwrap() else {
                panic!("expected Hello");
            };
            let refused = Message::Refused(Refused {
                reason: RefuseReason::UnknownContainer,
                detail: "who?".into(),
            });
            write(&mut awr, refused).await;
        };
        let id = identity();
        let (result, ()) = tokio::join!(handshake(&ctx, &mut guest_rd, &mut gwr, &id), appliance);
        let e = result.unwrap_err();
        assert!(
            matches!(&e, LinkError::Refused { reason: RefuseReason::UnknownContainer, detail } if detail == "who?"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "appliance refused (UnknownContainer): who?");
    }

    #[tokio::test]
    async fn a_hangup_in_the_handshake_is_its_own_error() {
        let (guest, appliance) = tokio::io::duplex(64 * 1024);
        let (grd, mut gwr) = tokio::io::split(guest);
        let mut guest_rd = MessageStream::new(grd);
        drop(appliance);
        let e = handshake(&ctx(), &mut guest_rd, &mut gwr, &identity())
            .await
            .unwrap_err();
        // The Hello cannot even be written to a closed pipe, or the read sees the end.
        assert!(
            matches!(
                e,
                LinkError::ClosedInHandshake | LinkError::Send { what: "Hello", .. }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_protocol_violation_is_answered_with_goodbye_before_the_hangup() {
        let (guest, appliance) = tokio::io::duplex(256 * 1024);
        let (ard, mut awr) = tokio::io::split(appliance);
        let mut appliance_rd = MessageStream::new(ard);
        let ctx = ctx();
        let appliance = async {
            accept(&mut appliance_rd, &mut awr).await;
            // Stdout flows guest -> appliance only: the guest must refuse this.
            write(
                &mut awr,
                Message::Data {
                    key: StreamKey::new(1, StreamKind::Stdout),
                    seq: 0,
                    fin: false,
                    bytes: b"wrong way".to_vec(),
                },
            )
            .await;
            loop {
                match appliance_rd.next().await.unwrap() {
                    Some(Message::Goodbye { reason }) => break reason,
                    Some(_) => continue,
                    None => panic!("tether hung up without a Goodbye"),
                }
            }
        };
        let id = identity();
        let (end, reason) = tokio::join!(connection(&ctx, Box::new(guest), &id), appliance);
        assert!(
            matches!(
                end,
                LinkError::Protocol(MuxError::WrongDirection {
                    kind: StreamKind::Stdout
                })
            ),
            "{end:?}"
        );
        assert!(reason.contains("Stdout"), "{reason}");
        assert!(
            ctx.shared.borrow().link_out.is_empty(),
            "nothing is left to go out on the next connection"
        );
    }
}
