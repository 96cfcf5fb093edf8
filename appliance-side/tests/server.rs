//! The session server against real host-mode tether processes and against many simulated
//! channels: every byte checked in the log store, across a server restart.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use appliance::home::Home;
use appliance::logstore::{stream_bytes, Stream};
use appliance::records::{self, NewContainer};
use appliance::server::Server;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{
    write_message, ClientHandshake, Control, Message, MessageReader, Role, Secret, StreamConfig,
    StreamKey, StreamKind, Streams,
};

struct TempHome(PathBuf);

impl TempHome {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("appliance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn home(&self) -> Home {
        Home::at(&self.0)
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tether binary from this workspace (built on demand when tests run one package).
fn tether_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    let bin = target.join("tether");
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "-p", "tether"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "building tether failed");
    }
    bin
}

fn spawn_tether(home: &Home, id: &str) -> Child {
    Command::new(tether_bin())
        .arg("--config")
        .arg(home.container(id).join("config.vmx"))
        .arg("--channel")
        .arg(home.channel_socket())
        .args(["--drain-timeout", "20"])
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, secs: u64) -> i32 {
    for _ in 0..secs * 20 {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("tether did not exit within {secs} s");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn start_server(rt: &tokio::runtime::Runtime, home: &Home) -> Arc<Server> {
    rt.block_on(async {
        let s = Server::new(home.clone());
        s.listen_unix(&home.channel_socket()).await.unwrap();
        s
    })
}

fn new_container(home: &Home, script: &str) -> String {
    let (record, _) = records::create(
        home,
        &NewContainer {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Default::default()
        },
    )
    .unwrap();
    record.id
}

fn main_log(home: &Home, id: &str, stream: Stream) -> Vec<u8> {
    let boot_dirs: Vec<PathBuf> = std::fs::read_dir(home.container(id).join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(boot_dirs.len(), 1, "one boot");
    stream_bytes(&boot_dirs[0], 1, stream).unwrap()
}

fn state(home: &Home, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.container(id).join("state.json")).unwrap()).unwrap()
}

#[test]
fn several_tethers_stream_into_the_log_store() {
    let t = TempHome::new("several");
    let home = t.home();
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
    let t = TempHome::new("restart");
    let home = t.home();
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

/// A simulated tether over the Unix channel socket.
async fn simulated_tether(sock: PathBuf, id: String, secret: Vec<u8>, data: Vec<u8>) {
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    simulated_tether_on(s, id, secret, data).await
}

/// A simulated tether on any byte stream: handshake, then one stdout stream of `data` and an
/// Exited record.
async fn simulated_tether_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    id: String,
    secret: Vec<u8>,
    data: Vec<u8>,
) {
    let (hs, hello) = ClientHandshake::start(
        id,
        records::random(),
        Secret::new(secret),
        records::random(),
    );
    let mut out = Vec::new();
    write_message(&Message::Hello(hello), &mut out);
    s.write_all(&out).await.unwrap();
    let mut reader = MessageReader::new();
    let mut buf = vec![0u8; 65536];
    let next = |reader: &mut MessageReader| reader.next_message();
    let mut streams = Streams::new(Role::Guest, StreamConfig::default());
    let challenge = loop {
        if let Some(Message::Challenge(c)) = next(&mut reader) {
            break c;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        reader.feed(&buf[..n]);
    };
    let (_, proof) = hs.on_challenge(&challenge, streams.positions()).unwrap();
    out.clear();
    write_message(&Message::Proof(proof), &mut out);
    s.write_all(&out).await.unwrap();
    let welcome = loop {
        if let Some(m) = next(&mut reader) {
            break wire::handshake::client_finish(m).unwrap();
        }
        let n = s.read(&mut buf).await.unwrap();
        reader.feed(&buf[..n]);
    };
    streams.resume(&welcome.received).unwrap();
    let key = StreamKey::new(1, StreamKind::Stdout);
    streams.open_out(key);
    streams
        .send_control(&Control::Started {
            session: 1,
            name: "sim".into(),
            pid: 1,
        })
        .unwrap();
    let mut fed = 0;
    let mut exited = false;
    while streams.unacknowledged() > 0 || fed < data.len() || !exited {
        let o = streams.out_mut(key).unwrap();
        fed += o.write(&data[fed..]);
        if fed == data.len() && !o.is_closed() {
            o.close();
        }
        if fed == data.len() && !exited && streams.out(key).unwrap().is_finished() {
            streams
                .send_control(&Control::Exited {
                    session: 1,
                    exit_code: 0,
                    signal: None,
                })
                .unwrap();
            exited = true;
        }
        out.clear();
        while let Some(m) = streams.poll_transmit() {
            write_message(&m, &mut out);
        }
        if !out.is_empty() {
            s.write_all(&out).await.unwrap();
        }
        let n = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        if let Ok(Ok(n)) = n {
            assert!(n > 0, "server closed the channel");
            reader.feed(&buf[..n]);
            while let Some(m) = reader.next_message() {
                streams.on_message(m).unwrap();
            }
        }
    }
}

#[test]
fn two_hundred_concurrent_channels_every_byte_checked() {
    let t = TempHome::new("scale");
    let home = t.home();
    let rt = runtime();
    let server = start_server(&rt, &home);
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for n in 0..200u32 {
        let (record, spec) = records::create(
            &home,
            &NewContainer {
                args: vec!["/bin/true".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let data: Vec<u8> = (0..40_000u32 + n * 97)
            .map(|i| (i.wrapping_mul(31).wrapping_add(n) % 251) as u8)
            .collect();
        expected.push((record.id.clone(), Sha256::digest(&data)));
        jobs.push(simulated_tether(
            home.channel_socket(),
            record.id,
            spec.secret,
            data,
        ));
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
    let t = TempHome::new("forged");
    let home = t.home();
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
    let t = TempHome::new("tcp");
    let home = t.home();
    let rt = runtime();
    let server = start_server(&rt, &home);
    let addr = rt.block_on(server.listen_tcp("127.0.0.1:0")).unwrap();
    let (record, spec) = records::create(
        &home,
        &NewContainer {
            args: vec!["/bin/true".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(60),
            simulated_tether_on(s, record.id.clone(), spec.secret, data.clone()),
        )
        .await
        .expect("the channel finishes");
    });
    assert_eq!(
        Sha256::digest(main_log(&home, &record.id, Stream::Stdout)),
        Sha256::digest(&data)
    );
}
