//! Helpers shared by the server-side integration tests: temporary homes, real host-mode tether
//! processes, an in-process server, and a simulated tether for scale and abuse tests.

#![allow(dead_code)]

pub mod detached;
pub mod test_ca;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use appliance::home::Home;
use appliance::server::Server;
use appliance::store::logs::{stream_bytes, Stream};
use appliance::store::records::{self, NewContainer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{write_message, Control, StreamKey, StreamKind};

/// A fresh `$TETHER_HOME` in the temporary directory, removed on drop; it derefs to its [`Home`].
pub struct TempHome(Home);

impl TempHome {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("appliance-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(Home::at(&p))
    }
}

impl std::ops::Deref for TempHome {
    type Target = Home;

    fn deref(&self) -> &Home {
        &self.0
    }
}

impl Drop for TempHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tether binary from this workspace (built on demand when tests run one package).
pub fn tether_bin() -> PathBuf {
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

pub fn spawn_tether(home: &Home, id: &str) -> Child {
    spawn_tether_on(home, id, &home.channel_socket())
}

/// A tether whose channel goes to `channel` (a proxy in line-abuse tests).
pub fn spawn_tether_on(home: &Home, id: &str, channel: &std::path::Path) -> Child {
    Command::new(tether_bin())
        .arg("--config")
        .arg(home.container(id).join("config.vmx"))
        .arg("--channel")
        .arg(channel)
        .args(["--drain-timeout", "20"])
        .spawn()
        .unwrap()
}

pub fn wait_exit(child: &mut Child, secs: u64) -> i32 {
    for _ in 0..secs * 20 {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("tether did not exit within {secs} s");
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn start_server(rt: &tokio::runtime::Runtime, home: &Home) -> Arc<Server> {
    rt.block_on(async {
        let s = Server::new(home.clone());
        s.listen_unix(&home.channel_socket()).await.unwrap();
        s
    })
}

pub fn new_container(home: &Home, script: &str) -> String {
    new_container_with_secret(home, script).0
}

/// A container running `script`: its id and its channel secret.
pub fn new_container_with_secret(home: &Home, script: &str) -> (String, Vec<u8>) {
    let (record, spec) = records::create(
        home,
        &NewContainer {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Default::default()
        },
    )
    .unwrap();
    (record.id, spec.secret)
}

/// A container for a simulated tether (its program never runs): its id and its channel secret.
pub fn simulated_container(home: &Home) -> (String, Vec<u8>) {
    let (record, spec) = records::create(
        home,
        &NewContainer {
            args: vec!["/bin/true".into()],
            ..Default::default()
        },
    )
    .unwrap();
    (record.id, spec.secret)
}

pub fn main_log(home: &Home, id: &str, stream: Stream) -> Vec<u8> {
    let boot_dirs: Vec<PathBuf> = std::fs::read_dir(home.container(id).join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(boot_dirs.len(), 1, "one boot");
    stream_bytes(&boot_dirs[0], 1, stream).unwrap()
}

pub fn state(home: &Home, id: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(home.container(id).join("state.json")).unwrap()).unwrap()
}

/// A simulated tether over the Unix channel socket.
pub async fn simulated_tether(sock: PathBuf, id: String, secret: Vec<u8>, data: Vec<u8>) {
    let s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    simulated_tether_on(s, id, secret, data).await
}

pub use appliance::testing::sim::handshake_as;

/// A simulated tether on any byte stream: handshake, then one stdout stream of `data` and an
/// Exited record.
pub async fn simulated_tether_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    id: String,
    secret: Vec<u8>,
    data: Vec<u8>,
) {
    let (mut reader, mut streams) = handshake_as(&mut s, id, secret).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
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

/// `appliance serve` in the foreground (its log in `server.log`), ready when its API answers;
/// killed on drop.
pub struct ServerProcess(pub std::process::Child);

impl ServerProcess {
    pub fn start(home: &Home) -> Self {
        Self::start_with(home, &[], &home.root().join("server.log"))
    }

    /// `serve` with more flags, its log (appended to) at `log`.
    pub fn start_with(home: &Home, args: &[&str], log: &std::path::Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_appliance"))
            .arg("serve")
            .args(args)
            .env("TETHER_HOME", home.root())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        // The API socket is bound after the channel socket: both are up when it answers.
        while std::os::unix::net::UnixStream::connect(home.docker_socket()).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self(child)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
