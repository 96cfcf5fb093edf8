//! A simulated guest for tests and benchmarks: the guest side of the handshake over any byte
//! stream, as tether does it, without a VM.

use tokio::io::AsyncWriteExt;
use wire::io::MessageStream;
use wire::{
    write_message, ClientHandshake, Message, MessageReader, Role, Secret, StreamConfig, Streams,
};

use crate::store::atomic::random;

/// Runs the guest side of the handshake on `s`; returns the reader (holding anything read past
/// the Welcome) and the guest's streams, resumed.
pub async fn handshake_as<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    id: String,
    secret: Vec<u8>,
) -> (MessageReader, Streams) {
    let (hs, hello) = ClientHandshake::start(id, random(), Secret::new(secret), random());
    let mut out = Vec::new();
    write_message(&Message::Hello(hello), &mut out);
    s.write_all(&out).await.unwrap();
    let mut rd = MessageStream::new(&mut *s);
    let mut streams = Streams::new(Role::Guest, StreamConfig::default());
    let challenge = match rd.next().await.unwrap() {
        Some(Message::Challenge(c)) => c,
        other => panic!("expected Challenge, got {other:?}"),
    };
    let (_, proof) = hs.on_challenge(&challenge, streams.positions()).unwrap();
    out.clear();
    write_message(&Message::Proof(proof), &mut out);
    rd.get_mut().write_all(&out).await.unwrap();
    let welcome = match rd.next().await.unwrap() {
        Some(m) => wire::handshake::client_finish(m).unwrap(),
        None => panic!("server closed during handshake"),
    };
    let (_, reader) = rd.into_parts();
    streams.resume(&welcome.received).unwrap();
    (reader, streams)
}

/// What a simulated guest does once connected.
#[derive(Debug, Clone, Default)]
pub struct GuestBehaviour {
    /// While set, keep the main session's stdout full of 100-byte lines, as fast as the server
    /// takes them (looked at least every half second).
    pub stream_main: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Bytes of that stdout the server has acknowledged (persisted), updated as acks arrive.
    pub acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Plays tether after the handshake, until the server hangs up: answers every `Exec` as `echo`
/// would (Started, its arguments as one line on stdout, both output streams closed, Exited 0),
/// pings every 3 s when idle, retransmits on its timer, and streams if asked.
pub async fn run_guest<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    reader: MessageReader,
    mut streams: Streams,
    behaviour: GuestBehaviour,
) {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    use wire::{Control, Inbound, StreamKey, StreamKind};

    let main_out = StreamKey::new(1, StreamKind::Stdout);
    let block = b"0"
        .repeat(99)
        .into_iter()
        .chain([b'\n'])
        .collect::<Vec<u8>>()
        .repeat(655);
    let start = Instant::now();
    let mut last_sent = Instant::now();
    let mut rd = MessageStream::with_reader(&mut s, reader);
    let mut out = Vec::new();
    loop {
        let streaming = behaviour.stream_main.load(Ordering::Relaxed);
        if streaming {
            let o = streams.open_out(main_out);
            let room = o.writable().min(block.len());
            o.write(&block[..room]);
        }
        streams.write_batch(&mut out);
        if last_sent.elapsed() > Duration::from_secs(3) && out.is_empty() {
            write_message(&Message::Ping { token: 1 }, &mut out);
        }
        if !out.is_empty() {
            if rd.get_mut().write_all(&out).await.is_err() {
                return;
            }
            out.clear();
            last_sent = Instant::now();
        }
        // With more to send, only look at what has already arrived.
        let more = streaming && streams.out(main_out).is_some_and(|o| o.writable() > 0);
        let wait = if more {
            Duration::ZERO
        } else {
            Duration::from_millis(500)
        };
        match tokio::time::timeout(wait, rd.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) | Err(_) => {}
        }
        streams.on_tick(start.elapsed().as_millis() as u64);
        while let Some(m) = rd.try_next() {
            let Ok(inbound) = streams.on_message(m) else {
                return;
            };
            let Inbound::Control(records) = inbound else {
                continue;
            };
            for r in records {
                let Control::Exec {
                    session,
                    name,
                    spec,
                } = r
                else {
                    continue;
                };
                let _ = streams.send_control(&Control::Started {
                    session,
                    name,
                    pid: 1000 + session,
                });
                let line = format!("{}\n", spec.args.get(1..).unwrap_or_default().join(" "));
                let o = streams.open_out(StreamKey::new(session, StreamKind::Stdout));
                o.write(line.as_bytes());
                o.close();
                streams
                    .open_out(StreamKey::new(session, StreamKind::Stderr))
                    .close();
                let _ = streams.send_control(&Control::Exited {
                    session,
                    exit_code: 0,
                    signal: None,
                });
            }
        }
        streams.remove_finished_out();
        if let Some(o) = streams.out(main_out) {
            behaviour.acked.store(o.acked(), Ordering::Relaxed);
        }
    }
}
