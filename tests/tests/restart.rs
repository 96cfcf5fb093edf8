//! The appliance may die at any moment and nothing is lost: a containerVM streams a known 20 MB
//! sequence while the real `appliance serve` process is SIGKILLed ten times at random points and
//! started again. A follower (`appliance logs -f`) rides through every restart; a tty exec is
//! re-attached and used after each one. At the end the log store, `docker logs` and the follower
//! hold byte-identical output, and the tty session still answers.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use appliance::store::logs::{self as logstore, Stream};
use appliance::store::records::NewContainer;
use e2e::Appliance;
use sha2::{Digest, Sha256};

/// 40 chunks of 66,000 numbers: `seq 1 2640000`, 20,011,112 bytes.
const CHUNKS: u64 = 40;
const PER_CHUNK: u64 = 66_000;
const RESTARTS: usize = 10;

fn expected_stream() -> Vec<u8> {
    (1..=CHUNKS * PER_CHUNK)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// xorshift64: enough randomness for kill points, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A client attached to the tty exec; its output is collected by a reader thread.
struct TtyClient {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl TtyClient {
    fn spawn(app: &Appliance, args: &[&str]) -> Self {
        let mut child = app
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let (mut stdout, sink) = (child.stdout.take().unwrap(), out.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, out }
    }

    /// Sends `ping-n`, waits for the shell's `echo:ping-n`, then detaches (ctrl-p ctrl-q).
    /// False if the client ended first (the containerVM has not reconnected yet).
    fn ping(mut self, app: &Appliance, n: usize) -> bool {
        let want = format!("echo:ping-{n}");
        let mut stdin = self.child.stdin.take().unwrap();
        let _ = stdin.write_all(format!("ping-{n}\n").as_bytes());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if String::from_utf8_lossy(&self.out.lock().unwrap()).contains(&want) {
                let _ = stdin.write_all(b"\x10\x11");
                drop(stdin);
                let st = self.child.wait().unwrap();
                assert!(st.success(), "detaching from the tty exec: {st}");
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let seen = String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned();
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        let server =
            std::fs::read_to_string(app.home.root().join("server.log")).unwrap_or_default();
        let consoles: String = std::fs::read_dir(app.home.containers())
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| std::fs::read_to_string(d.path().join("console.log")).unwrap_or_default())
            .collect();
        let tail = |s: &str| {
            s.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "no echo of ping-{n} within 60 s; the client saw {seen:?}, stderr {err:?}\nserver log:\n{}\nconsole:\n{}",
            tail(&server),
            tail(&consoles)
        );
    }
}

/// Re-attaches to the tty exec until ping `n` is echoed (the containerVM may still be
/// reconnecting to the new server).
fn tty_round(app: &Appliance, exec_id: &str, n: usize) {
    let start = Instant::now();
    while !TtyClient::spawn(app, &["attach", "--exec", exec_id]).ping(app, n) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "could not re-attach to the tty exec"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn stdout_len(app: &Appliance, id: &str) -> usize {
    let dir = app
        .home
        .container(id)
        .join("logs")
        .join(app.state(id)["boot"].as_str().unwrap_or(""));
    logstore::stream_bytes(&dir, 1, Stream::Stdout).map_or(0, |b| b.len())
}

#[test]
fn sigkilled_ten_times_the_appliance_loses_and_duplicates_nothing() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("restart test seed {seed}");
    let mut rng = Rng(seed);
    let expected = expected_stream();
    let mut app = Appliance::start_process("restart");
    // Ten restarts and 20 MB under TCG take minutes on a loaded machine.
    app.vm_timeout_secs = 900;
    let script = format!(
        "i=0; while [ $i -lt {CHUNKS} ]; do seq $((i*{PER_CHUNK}+1)) $((i*{PER_CHUNK}+{PER_CHUNK})); \
         i=$((i+1)); sleep 1; done; while [ ! -e /tmp/finish ]; do sleep 0.2; done"
    );
    let id = app.run(NewContainer {
        name: Some("stream".into()),
        args: vec!["/bin/sh".into(), "-c".into(), script],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    });
    app.wait_status(&id, 90, "running");
    let follower_out = app.home.root().join("follower.out");
    let follower_err = app.home.root().join("follower.err");
    let mut follower = app
        .cli()
        .args(["logs", "-f", "stream"])
        .stdout(std::fs::File::create(&follower_out).unwrap())
        .stderr(std::fs::File::create(&follower_err).unwrap())
        .spawn()
        .unwrap();
    // The tty session: an interactive exec that echoes every line it reads.
    let shell = "while read l; do echo \"echo:$l\"; done";
    assert!(
        TtyClient::spawn(&app, &["exec", "-i", "-t", "stream", "sh", "-c", shell]).ping(&app, 0)
    );
    let inspect = app.docker(&["inspect", "-f", "{{json .ExecIDs}}", "stream"]);
    let ids: Vec<String> = serde_json::from_slice(&inspect.stdout).unwrap_or_default();
    assert_eq!(ids.len(), 1, "one running exec: {inspect:?}");
    let exec_id = ids[0].clone();

    let mut kill_points = Vec::new();
    for round in 1..=RESTARTS {
        std::thread::sleep(Duration::from_millis(300 + rng.below(2500)));
        kill_points.push(stdout_len(&app, &id));
        app.kill_server();
        std::thread::sleep(Duration::from_millis(rng.below(800)));
        app.restart_server();
        tty_round(&app, &exec_id, round);
    }
    eprintln!("killed at persisted stdout lengths {kill_points:?}");
    // Let the stream finish, use the tty once more, then let the container end.
    let start = Instant::now();
    while stdout_len(&app, &id) < expected.len() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the stream stalled at {} of {} bytes\nconsole:\n{}",
            stdout_len(&app, &id),
            expected.len(),
            app.console(&id)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    tty_round(&app, &exec_id, RESTARTS + 1);
    assert!(app
        .docker(&["exec", "stream", "touch", "/tmp/finish"])
        .status
        .success());
    app.wait_exit(&id, 120, 0);
    let start = Instant::now();
    while follower.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the follower did not end with the container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let want = sha256(&expected);
    let dir = app
        .home
        .container(&id)
        .join("logs")
        .join(app.state(&id)["boot"].as_str().unwrap());
    let stored = logstore::stream_bytes(&dir, 1, Stream::Stdout).unwrap();
    assert_eq!(
        (stored.len(), sha256(&stored)),
        (expected.len(), want.clone()),
        "the log store"
    );
    let followed = std::fs::read(&follower_out).unwrap();
    let note = std::fs::read_to_string(&follower_err).unwrap();
    assert_eq!(
        (followed.len(), sha256(&followed)),
        (expected.len(), want.clone()),
        "the follower; its stderr:\n{note}\nserver log:\n{}",
        std::fs::read_to_string(app.home.root().join("server.log")).unwrap_or_default()
    );
    assert_eq!(
        note.matches("reconnecting").count(),
        RESTARTS,
        "the follower rode through every restart:\n{note}"
    );
    let logs = app.docker(&["logs", "stream"]);
    assert_eq!(sha256(&logs.stdout), want, "docker logs");
    // The tty exec's output (persisted too) has every echo, once, in order.
    let tty = String::from_utf8_lossy(&logstore::stream_bytes(&dir, 4096, Stream::Stdout).unwrap())
        .into_owned();
    let echoes: Vec<&str> = tty
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("echo:"))
        .collect();
    let pings: Vec<String> = (0..=RESTARTS + 1).map(|n| format!("ping-{n}")).collect();
    assert_eq!(echoes, pings, "the tty session's log:\n{tty}");
    assert_eq!(app.wait_vms_off(120), vec![0]);
}
