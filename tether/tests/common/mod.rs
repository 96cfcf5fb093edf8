//! A minimal appliance for host-mode tests: listens on a Unix socket, runs the server side of the
//! handshake, persists nothing, releases everything at once, and records what arrives.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use guestinfo::{ContainerSpec, SessionSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use wire::{
    decode, write_message, BuiltinOp, Control, FrameDecoder, Inbound, Message, Role, Secret,
    ServerHandshake, StreamConfig, StreamKey, StreamKind, Streams, Welcome,
};

// The unit tests' helpers, shared: a temporary directory and a tar archive read back.
#[path = "../../src/testing.rs"]
pub mod testing;
pub use testing::TestDir;

pub const SECRET: &[u8] = b"test-secret";
pub const ID: &str = "c0ffee00c0ffee00";

pub fn session(args: &[&str]) -> SessionSpec {
    SessionSpec {
        id: ID.into(),
        name: "main".into(),
        path: args[0].into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/bin:/bin".into()],
        dir: "/".into(),
        stop_signal: "SIGTERM".into(),
        ..Default::default()
    }
}

pub fn spec(main: SessionSpec) -> ContainerSpec {
    ContainerSpec {
        id: ID.into(),
        name: "test".into(),
        debug: 1,
        hostname: Some("testhost".into()),
        domainname: None,
        secret: SECRET.to_vec(),
        channel_device: None,
        disk_label: guestinfo::contract::DEFAULT_DISK_LABEL.into(),
        disk_wait_ms: 1000,
        stop_grace_ms: 1000,
        dns: vec![],
        dns_search: vec![],
        extra_hosts: vec![],
        networks: Default::default(),
        sessions: [(ID.to_string(), main)].into(),
        execs: BTreeMap::new(),
    }
}

/// The appliance side of one tether process.
pub struct Harness {
    pub dir: TestDir,
    listener: std::os::unix::net::UnixListener,
    pub child: Child,
}

impl Harness {
    pub fn start(spec: &ContainerSpec) -> Self {
        Self::start_with(spec, &[])
    }

    /// Runs the sessions chrooted into `root` (tether's `--root`).
    pub fn start_in(spec: &ContainerSpec, root: &std::path::Path) -> Self {
        Self::start_with(spec, &["--root", root.to_str().unwrap()])
    }

    fn start_with(spec: &ContainerSpec, extra: &[&str]) -> Self {
        let dir = TestDir::new("h");
        let sock = dir.path().join("channel.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let config = dir.path().join("config.vmx");
        std::fs::write(&config, guestinfo::spec_to_vmx(spec)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["--config", config.to_str().unwrap()])
            .args(["--channel", sock.to_str().unwrap()])
            .args(["--drain-timeout", "5"])
            .args(extra)
            .spawn()
            .unwrap();
        Self {
            dir,
            listener,
            child,
        }
    }

    pub async fn accept(&self) -> Conn {
        self.accept_restored(
            Streams::new(Role::Appliance, StreamConfig::default()),
            Seen::default(),
        )
        .await
    }

    /// Accepts as a restarted appliance that knows only `seen` (what it had persisted).
    pub async fn accept_restored(&self, streams: Streams, seen: Seen) -> Conn {
        let listener = UnixListener::from_std(self.listener.try_clone().unwrap()).unwrap();
        let (sock, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("tether connects within 10 s")
            .unwrap();
        Conn::handshake(sock, streams, seen).await
    }

    /// Accepts after sending `stale` bytes ahead of the Challenge.
    pub async fn accept_after_stale_bytes(&self, stale: &[u8]) -> Conn {
        let listener = UnixListener::from_std(self.listener.try_clone().unwrap()).unwrap();
        let (sock, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("tether connects within 10 s")
            .unwrap();
        Conn::handshake_after(
            sock,
            Streams::new(Role::Appliance, StreamConfig::default()),
            Seen::default(),
            stale,
        )
        .await
    }

    /// Waits for tether to exit; returns its exit code.
    pub fn wait(&mut self) -> i32 {
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("tether did not exit within 10 s");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
pub struct Seen {
    pub out: BTreeMap<StreamKey, Vec<u8>>,
    pub fins: Vec<StreamKey>,
    pub control: Vec<Control>,
}

impl Seen {
    pub fn stdout(&self, session: u32) -> &[u8] {
        self.out
            .get(&StreamKey::new(session, StreamKind::Stdout))
            .map_or(&[], |v| v.as_slice())
    }

    pub fn stderr(&self, session: u32) -> &[u8] {
        self.out
            .get(&StreamKey::new(session, StreamKind::Stderr))
            .map_or(&[], |v| v.as_slice())
    }

    /// The pid a session's Started reported.
    pub fn started_pid(&self, session: u32) -> Option<u32> {
        self.control.iter().find_map(|c| match c {
            Control::Started {
                session: s, pid, ..
            } if *s == session => Some(*pid),
            _ => None,
        })
    }

    /// Both output streams of the session have ended and its exit is in.
    pub fn done(&self, session: u32) -> bool {
        self.exit(session).is_some()
            && [StreamKind::Stdout, StreamKind::Stderr]
                .iter()
                .all(|&k| self.fins.contains(&StreamKey::new(session, k)))
    }

    pub fn exit(&self, session: u32) -> Option<(i32, Option<i32>)> {
        testing::exit_in(&self.control, session)
    }
}

pub struct Conn {
    sock: UnixStream,
    dec: FrameDecoder,
    pub streams: Streams,
    pub seen: Seen,
}

impl Conn {
    async fn next_msgs(sock: &mut UnixStream, dec: &mut FrameDecoder) -> Vec<Message> {
        let mut buf = vec![0u8; 65536];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "tether closed the channel");
        let mut msgs = Vec::new();
        dec.feed(&buf[..n], |f| {
            msgs.push(decode::<Message>(f.unwrap()).unwrap())
        });
        msgs
    }

    async fn handshake(sock: UnixStream, streams: Streams, seen: Seen) -> Self {
        Self::handshake_after(sock, streams, seen, &[]).await
    }

    /// The handshake, with `stale` bytes sent first: what a serial line may still hold from
    /// before a break.
    async fn handshake_after(
        mut sock: UnixStream,
        mut streams: Streams,
        seen: Seen,
        stale: &[u8],
    ) -> Self {
        let mut dec = FrameDecoder::new();
        let mut msgs = Vec::new();
        while msgs.is_empty() {
            msgs = Self::next_msgs(&mut sock, &mut dec).await;
        }
        let Message::Hello(hello) = msgs.remove(0) else {
            panic!("expected Hello")
        };
        assert_eq!(hello.container_id, ID);
        let (server, challenge) =
            ServerHandshake::on_hello(hello, [9; 32], |_| Some(Secret::new(SECRET.to_vec())))
                .unwrap();
        let mut out = stale.to_vec();
        write_message(&Message::Challenge(challenge), &mut out);
        sock.write_all(&out).await.unwrap();
        // Tether repeats its Hello until it sees our Challenge: skip the repeats.
        let proof = loop {
            while msgs.is_empty() {
                msgs = Self::next_msgs(&mut sock, &mut dec).await;
            }
            match msgs.remove(0) {
                Message::Hello(_) => continue,
                Message::Proof(p) => break p,
                other => panic!("expected Proof, got {other:?}"),
            }
        };
        let auth = server.on_proof(proof).unwrap();
        streams.resume(&auth.peer_received).unwrap();
        out.clear();
        write_message(
            &Message::Welcome(Welcome {
                received: streams.positions(),
            }),
            &mut out,
        );
        sock.write_all(&out).await.unwrap();
        let mut conn = Self {
            sock,
            dec,
            streams,
            seen,
        };
        for m in msgs {
            conn.apply(m);
        }
        conn
    }

    fn apply(&mut self, m: Message) {
        match self
            .streams
            .on_message(m)
            .expect("tether speaks the protocol")
        {
            Inbound::Data { key, bytes, fin } => {
                self.seen
                    .out
                    .entry(key)
                    .or_default()
                    .extend_from_slice(&bytes);
                if fin {
                    self.seen.fins.push(key);
                }
                self.streams.release(key, bytes.len() as u64);
            }
            Inbound::Control(records) => self.seen.control.extend(records),
            _ => {}
        }
    }

    /// Dies like a killed appliance: the connection drops; what was received is what a real
    /// appliance would have persisted. Returns the streams a restarted appliance rebuilds from it.
    pub fn crash(self) -> (Streams, Seen) {
        let mut restored = Streams::new(Role::Appliance, StreamConfig::default());
        for (key, bytes) in &self.seen.out {
            restored.restore_in(*key, bytes.len() as u64, self.seen.fins.contains(key));
        }
        let control = self
            .streams
            .in_stream(StreamKey::CONTROL)
            .unwrap()
            .released();
        restored.restore_in(StreamKey::CONTROL, control, false);
        (restored, self.seen)
    }

    pub async fn flush(&mut self) {
        let mut out = Vec::new();
        while let Some(m) = self.streams.poll_transmit() {
            write_message(&m, &mut out);
        }
        if !out.is_empty() {
            self.sock.write_all(&out).await.unwrap();
        }
    }

    pub async fn control(&mut self, record: Control) {
        self.streams.send_control(&record).unwrap();
        self.flush().await;
    }

    /// Asks for the built-in `op` as session `session`.
    pub async fn builtin(&mut self, session: u32, name: &str, op: BuiltinOp) {
        self.control(Control::Builtin {
            session,
            name: name.into(),
            op,
        })
        .await;
    }

    /// Sends `signal` to the session's process (not its group).
    pub async fn signal(&mut self, session: u32, signal: i32) {
        self.control(Control::Signal {
            session,
            signal,
            group: false,
        })
        .await;
    }

    pub async fn stdin(&mut self, session: u32, bytes: &[u8], fin: bool) {
        let s = self
            .streams
            .open_out(StreamKey::new(session, StreamKind::Stdin));
        assert_eq!(s.write(bytes), bytes.len());
        if fin {
            s.close();
        }
        self.flush().await;
    }

    /// Exchanges traffic until `done` holds; panics after `secs` seconds.
    pub async fn until(&mut self, secs: u64, mut done: impl FnMut(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !done(&self.seen) {
            let mut buf = vec![0u8; 65536];
            tokio::select! {
                r = self.sock.read(&mut buf) => {
                    let n = r.unwrap();
                    assert!(n > 0, "tether closed the channel; seen so far: {:?}", self.seen.control);
                    let mut msgs = Vec::new();
                    self.dec.feed(&buf[..n], |f| msgs.push(decode::<Message>(f.unwrap()).unwrap()));
                    for m in msgs {
                        self.apply(m);
                    }
                }
                _ = tick.tick() => {
                    self.streams.on_tick(0);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    panic!("timed out; control seen: {:?}\nstdout: {:?}",
                        self.seen.control, String::from_utf8_lossy(self.seen.stdout(1)));
                }
            }
            self.flush().await;
        }
    }
}
