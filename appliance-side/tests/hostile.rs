//! A hostile guest against the real `appliance serve` process: it claims another container's id,
//! replays an old handshake, sends oversized and malformed frames, acks data never sent, overruns
//! its credit, reports sessions it was never given, and opens hundreds of connections. Each abuse
//! is refused or disconnected, and logged; a well-behaved containerVM streaming beside them loses
//! nothing; and the server's memory stays bounded (measured from /proc).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use appliance::home::Home;
use appliance::store::logs::Stream;
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use wire::{
    encode_frame, write_message, ClientHandshake, Control, Message, MessageReader, Secret,
    StreamKey, StreamKind,
};

/// Resident memory of the server process, in KiB.
trait Rss {
    fn rss_kib(&self) -> u64;
}

impl Rss for ServerProcess {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

fn frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    write_message(msg, &mut out);
    out
}

/// True if the server closes the connection within a few seconds (reading what it sends).
async fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

/// The first message the server answers with.
async fn answer(s: &mut UnixStream) -> Option<Message> {
    let mut reader = MessageReader::new();
    let mut buf = vec![0u8; 4096];
    loop {
        match reader.next_message() {
            // The appliance's clock, sent unasked after every handshake: not an answer.
            Some(Message::Time { .. }) => continue,
            Some(m) => return Some(m),
            None => {}
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        reader.feed(&buf[..n]);
    }
}

async fn authenticated(home: &Home, id: &str, secret: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(home.channel_socket()).await.unwrap();
    let _ = handshake_as(&mut s, id.to_string(), secret.to_vec()).await;
    s
}

/// Whether the server closes an authenticated channel that sends `abuse`.
async fn disconnected_by(home: &Home, id: &str, secret: &[u8], abuse: &Message) -> bool {
    let mut s = authenticated(home, id, secret).await;
    s.write_all(&frame(abuse)).await.unwrap();
    closed_by_server(&mut s).await
}

fn victim_expected() -> Vec<u8> {
    (1..=60_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

/// A real tether streaming beside the abuse; returns it running.
fn start_victim(home: &Home) -> (String, Child) {
    let (id, _) = new_container_with_secret(home,
        "i=0; while [ $i -lt 30 ]; do seq $((i*2000+1)) $((i*2000+2000)); i=$((i+1)); sleep 0.1; done",
    );
    let child = spawn_tether(home, &id);
    (id, child)
}

fn assert_victim_intact(home: &Home, id: &str, child: &mut Child) {
    assert_eq!(wait_exit(child, 60), 0);
    assert_eq!(
        Sha256::digest(main_log(home, id, Stream::Stdout)),
        Sha256::digest(victim_expected()),
        "the well-behaved container lost nothing"
    );
}

#[test]
fn another_containers_id_and_a_replayed_handshake_are_refused() {
    let home = TempHome::new("hostile-id");
    let server = ServerProcess::start(&home);
    let (victim, mut victim_tether) = start_victim(&home);
    // The attacker is a real container with its own real secret.
    let (_attacker, attacker_secret) = new_container_with_secret(&home, "true");
    let rt = runtime();
    rt.block_on(async {
        // Claims the victim's id, proving with its own (real) secret.
        let mut s = UnixStream::connect(home.channel_socket()).await.unwrap();
        let (hs, hello) = ClientHandshake::start(
            victim.clone(),
            [7; 16],
            Secret::new(attacker_secret.clone()),
            [9; 32],
        );
        s.write_all(&frame(&Message::Hello(hello))).await.unwrap();
        let Some(Message::Challenge(c)) = answer(&mut s).await else {
            panic!("expected a challenge")
        };
        // The server's own proof does not verify under the wrong secret: the client sees it...
        assert!(hs.on_challenge(&c, vec![]).is_err());
        // ...and a proof made with it is refused.
        let (hs, hello) = ClientHandshake::start(
            victim.clone(),
            [7; 16],
            Secret::new(attacker_secret),
            [9; 32],
        );
        let mut s = UnixStream::connect(home.channel_socket()).await.unwrap();
        s.write_all(&frame(&Message::Hello(hello))).await.unwrap();
        let Some(Message::Challenge(c)) = answer(&mut s).await else {
            panic!("expected a challenge")
        };
        // Build the proof as if the server's MAC had verified: the wire lets a liar send anything.
        let proof = hs.on_challenge_unchecked(&c, vec![]);
        s.write_all(&frame(&Message::Proof(proof))).await.unwrap();
        match answer(&mut s).await {
            Some(Message::Refused(r)) => assert_eq!(r.reason, wire::RefuseReason::BadProof),
            other => panic!("claiming another id: expected Refused, got {other:?}"),
        }

        // Records a genuine handshake of the attacker's own container, then replays it.
        let (own, own_secret) = new_container_with_secret(&home, "true");
        let mut s = UnixStream::connect(home.channel_socket()).await.unwrap();
        let (hs, hello) =
            ClientHandshake::start(own.clone(), [1; 16], Secret::new(own_secret), [2; 32]);
        let hello_bytes = frame(&Message::Hello(hello));
        s.write_all(&hello_bytes).await.unwrap();
        let Some(Message::Challenge(c)) = answer(&mut s).await else {
            panic!("expected a challenge")
        };
        let (_, proof) = hs.on_challenge(&c, vec![]).unwrap();
        let proof_bytes = frame(&Message::Proof(proof));
        s.write_all(&proof_bytes).await.unwrap();
        assert!(matches!(answer(&mut s).await, Some(Message::Welcome(_))));
        drop(s);
        let mut r = UnixStream::connect(home.channel_socket()).await.unwrap();
        r.write_all(&hello_bytes).await.unwrap();
        let _fresh_challenge = answer(&mut r).await;
        r.write_all(&proof_bytes).await.unwrap();
        match answer(&mut r).await {
            Some(Message::Refused(r)) => assert_eq!(r.reason, wire::RefuseReason::BadProof),
            other => panic!("a replayed handshake: expected Refused, got {other:?}"),
        }
    });
    assert_victim_intact(&home, &victim, &mut victim_tether);
    let log = std::fs::read_to_string(home.root().join("server.log")).unwrap();
    assert_eq!(
        log.matches("reason=BadProof").count(),
        2,
        "each refusal is logged:\n{log}"
    );
    drop(server);
}

#[test]
fn protocol_abuse_disconnects_only_the_abuser_and_memory_stays_bounded() {
    let home = TempHome::new("hostile-abuse");
    let server = ServerProcess::start(&home);
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = server.rss_kib();
    let (victim, mut victim_tether) = start_victim(&home);
    let rt = runtime();
    let mut peak = rss_before;
    rt.block_on(async {
        let (id, secret) = new_container_with_secret(&home, "true");
        let control = StreamKey::CONTROL;

        // Oversized frames (no delimiter for 8 MiB) and malformed ones (good CRC, not a message):
        // dropped and counted; the connection itself survives them.
        let mut s = authenticated(&home, &id, &secret).await;
        let blob: Vec<u8> = (0..8u32 << 20).map(|i| (i % 255 + 1) as u8).collect();
        s.write_all(&blob).await.unwrap();
        s.write_all(&[0]).await.unwrap();
        let mut junk = Vec::new();
        for i in 0..1000u32 {
            encode_frame(&[0xff, 0xfe, (i % 256) as u8, 7, 7, 7], &mut junk).unwrap();
        }
        s.write_all(&junk).await.unwrap();
        s.write_all(&frame(&Message::Ping { token: 5 }))
            .await
            .unwrap();
        match answer(&mut s).await {
            Some(Message::Pong { token: 5 })
            | Some(Message::Ack { .. })
            | Some(Message::Ping { .. }) => {}
            other => panic!("after junk the connection still answers; got {other:?}"),
        }
        drop(s);

        // Acks for data never sent.
        let ack = Message::Ack {
            key: control,
            upto: 1 << 40,
            limit: 1 << 41,
        };
        assert!(
            disconnected_by(&home, &id, &secret, &ack).await,
            "an ack beyond what was sent disconnects"
        );

        // Data beyond the credit the server granted.
        let data = Message::Data {
            key: StreamKey::new(1, StreamKind::Stdout),
            seq: 1 << 30,
            fin: false,
            bytes: vec![1; 100],
        };
        assert!(
            disconnected_by(&home, &id, &secret, &data).await,
            "data beyond the credit disconnects"
        );

        // Thousands of sessions it was never given: output on each, and Started records.
        let mut s = authenticated(&home, &id, &secret).await;
        let mut flood = Vec::new();
        for session in 2..3000u32 {
            let key = StreamKey::new(session, StreamKind::Stdout);
            write_message(
                &Message::Data {
                    key,
                    seq: 0,
                    fin: false,
                    bytes: vec![b'x'; 64],
                },
                &mut flood,
            );
        }
        let _ = s.write_all(&flood).await;
        assert!(
            closed_by_server(&mut s).await,
            "output for unknown sessions disconnects"
        );
        let mut s = authenticated(&home, &id, &secret).await;
        let record = wire::encode_control(&Control::Started {
            session: 77,
            name: "x".into(),
            pid: 1,
        })
        .unwrap();
        let _ = s
            .write_all(&frame(&Message::Data {
                key: control,
                seq: 0,
                fin: false,
                bytes: record,
            }))
            .await;
        assert!(
            closed_by_server(&mut s).await,
            "a Started for an unknown session disconnects"
        );

        // Hundreds of connections that never finish a handshake: past the cap, closed at once.
        let mut idle = Vec::new();
        for _ in 0..1000 {
            if let Ok(s) = UnixStream::connect(home.channel_socket()).await {
                idle.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(server.rss_kib());
        let mut closed = 0;
        for s in idle.iter_mut() {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert!(
            closed >= 1000 - appliance::server::MAX_PENDING_HANDSHAKES as usize - 50,
            "{closed} of 1000 idle connections closed at once"
        );
    });
    assert_victim_intact(&home, &victim, &mut victim_tether);
    peak = peak.max(server.rss_kib());
    let growth = peak.saturating_sub(rss_before);
    eprintln!(
        "server RSS: {rss_before} KiB before, peak {peak} KiB during the abuse (+{growth} KiB)"
    );
    assert!(
        growth < 64 * 1024,
        "server memory grew by {growth} KiB under abuse; it must stay bounded"
    );
    let log = std::fs::read_to_string(home.root().join("server.log")).unwrap();
    assert!(
        log.matches("protocol violation").count() >= 4,
        "each disconnect is logged:\n{log}"
    );
    drop(server);
}
