//! The session server against real host-mode tether processes and against many simulated
//! channels: every byte checked in the log store, across a server restart.

mod common;

use std::process::Child;
use std::time::Duration;

use appliance::store::logs::Stream;
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{write_message, ClientHandshake, Message, MessageReader, Secret};

#[test]
fn several_tethers_stream_into_the_log_store() {
    let home = TempHome::new("several");
    let rt = runtime();
    let _server = start_server(&rt, &home);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            new_container(
                &home,
                &format!("seq 1 {}; echo oops >&2; exit {n}", 20000 * (n + 1)),
            )
        })
        .collect();
    let mut children: Vec<Child> = ids.iter().map(|id| spawn_tether(&home, id)).collect();
    for (n, child) in children.iter_mut().enumerate() {
        assert_eq!(wait_exit(child, 30), n as i32);
    }
    for (n, id) in ids.iter().enumerate() {
        let expected: String = (1..=20000 * (n + 1)).map(|i| format!("{i}\n")).collect();
        let got = main_log(&home, id, Stream::Stdout);
        assert_eq!(
            Sha256::digest(&got),
            Sha256::digest(expected.as_bytes()),
            "container {n}"
        );
        assert_eq!(main_log(&home, id, Stream::Stderr), b"oops\n");
        let st = state(&home, id);
        assert_eq!(st["sessions"]["1"]["exit_code"], n as i64);
        assert_eq!(st["status"], "exited");
    }
}

#[test]
fn server_restart_keeps_logs_and_loses_nothing() {
    let home = TempHome::new("restart");
    let id = new_container(
        &home,
        "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); [ $((i % 100)) = 0 ] && sleep 0.1; done; exit 5",
    );
    let rt = runtime();
    start_server(&rt, &home);
    let mut child = spawn_tether(&home, &id);
    // Let some output land, then kill the server (all its tasks and sockets) mid-stream.
    let before = loop {
        std::thread::sleep(Duration::from_millis(100));
        let dir = home.container(&id).join("logs");
        if dir.exists() && main_log(&home, &id, Stream::Stdout).len() > 5_000 {
            break main_log(&home, &id, Stream::Stdout);
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    // A new server process would read only the store: so does this one.
    let rt2 = runtime();
    start_server(&rt2, &home);
    assert_eq!(wait_exit(&mut child, 60), 5);
    let after = main_log(&home, &id, Stream::Stdout);
    assert!(
        after.starts_with(&before),
        "logs written before the restart are kept"
    );
    let expected: String = (0..3000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        String::from_utf8(after).unwrap(),
        expected,
        "nothing lost or duplicated"
    );
    assert_eq!(state(&home, &id)["sessions"]["1"]["exit_code"], 5);
}

#[test]
fn two_hundred_concurrent_channels_every_byte_checked() {
    let home = TempHome::new("scale");
    let rt = runtime();
    let server = start_server(&rt, &home);
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for n in 0..200u32 {
        let (id, secret) = simulated_container(&home);
        let data: Vec<u8> = (0..40_000u32 + n * 97)
            .map(|i| (i.wrapping_mul(31).wrapping_add(n) % 251) as u8)
            .collect();
        expected.push((id.clone(), Sha256::digest(&data)));
        jobs.push(simulated_tether(home.channel_socket(), id, secret, data));
    }
    rt.block_on(async {
        let handles: Vec<_> = jobs.into_iter().map(tokio::spawn).collect();
        for h in handles {
            tokio::time::timeout(Duration::from_secs(120), h)
                .await
                .expect("every channel finishes")
                .unwrap();
        }
    });
    for (id, digest) in expected {
        assert_eq!(
            Sha256::digest(main_log(&home, &id, Stream::Stdout)),
            digest,
            "{id}"
        );
        assert_eq!(state(&home, &id)["sessions"]["1"]["exit_code"], 0);
    }
    assert_eq!(server.refused.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_forged_id_is_refused_and_others_are_unaffected() {
    let home = TempHome::new("forged");
    let rt = runtime();
    let server = start_server(&rt, &home);
    let victim = new_container(&home, "seq 1 1000");
    // The attacker knows the victim's id but not its secret.
    let forged = async {
        let mut s = tokio::net::UnixStream::connect(home.channel_socket())
            .await
            .unwrap();
        let (hs, hello) = ClientHandshake::start(
            victim.clone(),
            [1; 16],
            Secret::new(b"guess".to_vec()),
            [2; 32],
        );
        let mut out = Vec::new();
        write_message(&Message::Hello(hello), &mut out);
        s.write_all(&out).await.unwrap();
        let mut reader = MessageReader::new();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        reader.feed(&buf[..n]);
        let Some(Message::Challenge(c)) = reader.next_message() else {
            panic!("expected a challenge")
        };
        // The server's proof does not verify with the wrong secret: the client side sees that.
        assert!(hs.on_challenge(&c, vec![]).is_err());
        // Send a garbage proof anyway: the server must refuse.
        out.clear();
        write_message(
            &Message::Proof(wire::message::Proof {
                mac: [0; 32],
                received: vec![],
            }),
            &mut out,
        );
        s.write_all(&out).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        reader.feed(&buf[..n]);
        match reader.next_message() {
            Some(Message::Refused(r)) => assert_eq!(r.reason, wire::RefuseReason::BadProof),
            other => panic!("expected Refused, got {other:?}"),
        }
    };
    rt.block_on(forged);
    assert_eq!(server.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
    let mut child = spawn_tether(&home, &victim);
    assert_eq!(wait_exit(&mut child, 30), 0);
    let expected: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        main_log(&home, &victim, Stream::Stdout),
        expected.as_bytes()
    );
}

#[test]
fn the_tcp_transport_carries_a_channel_like_the_unix_one() {
    let home = TempHome::new("tcp");
    let rt = runtime();
    let server = start_server(&rt, &home);
    let addr = rt.block_on(server.listen_tcp("127.0.0.1:0")).unwrap();
    let (id, secret) = simulated_container(&home);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            simulated_tether_on(s, id.clone(), secret, data.clone()),
        )
        .await
        .expect("the channel finishes");
    });
    assert_eq!(
        Sha256::digest(main_log(&home, &id, Stream::Stdout)),
        Sha256::digest(&data)
    );
}
