//! Faults outside the channel, made for real: a log store whose filesystem fills up (a small
//! tmpfs as TETHER_HOME), a server killed while it is full, and a tether that stops answering
//! (SIGSTOP). The server is the real `appliance serve`, the containers real host-mode tethers,
//! and what the user sees is read with the stock docker CLI.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use appliance::home::Home;
use appliance::store::logs::Stream;
use common::{main_log, new_container, spawn_tether, wait_exit, ServerProcess};
use sha2::{Digest, Sha256};

/// A tmpfs of a few MiB mounted for one test (needs root, as the QEMU tier does); unmounted
/// and removed when dropped, also when the test fails.
struct SmallDisk {
    dir: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    fn mount(tag: &str, mib: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("faults-{tag}-{}", std::process::id()));
        // What a killed earlier run left.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "mount -t tmpfs on {} failed: this test needs root",
            dir.display()
        );
        let filler = dir.join("filler");
        Self { dir, filler }
    }

    fn home(&self) -> Home {
        Home::at(&self.dir)
    }

    /// Fills the disk, then gives back `free` bytes.
    fn fill_leaving(&self, free: u64) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .unwrap();
        let chunk = vec![0x5a; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.filler.display()),
            }
        }
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(free)).unwrap();
    }

    fn free_all(&self) {
        std::fs::remove_file(&self.filler).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn docker(home: &Home, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", home.docker_socket().display()))
        .args(args)
        .output()
        .unwrap()
}

fn inspect(home: &Home, id: &str, format: &str) -> String {
    let out = docker(home, &["inspect", "-f", format, id]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The server's log lives outside the small disk, so it can say what happened while it is full.
fn server_log(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("faults-{tag}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// 6.9 MB in long lines, every one different: a loss or a duplicate changes the digest.
const SCRIPT: &str = "seq 1 1000000 | tr '\\n' ' '; echo";

fn expected_output() -> Vec<u8> {
    let mut s: String = (1..=1_000_000).map(|i| format!("{i} ")).collect();
    s.push('\n');
    s.into_bytes()
}

/// Waits until the store refuses the container's output, then checks that it really stalls:
/// inspect and ps say so, the stored stream stops growing, and the container keeps running.
fn see_it_stall(home: &Home, id: &str, tether: &mut Child) {
    let error = wait_for("inspect reporting the full store", 60, || {
        let e = inspect(home, id, "{{.State.Error}}");
        e.contains("log store full").then_some(e)
    });
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(inspect(home, id, "{{.State.Status}}"), "running");
    let ps = docker(home, &["ps", "--format", "{{.ID}} {{.Status}}"]);
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(ps.contains("(log store full)"), "{ps}");
    let stored = main_log(home, id, Stream::Stdout).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        main_log(home, id, Stream::Stdout).len(),
        stored,
        "output went on"
    );
    assert!(stored < expected_output().len(), "all of it fit");
    assert!(
        tether.try_wait().unwrap().is_none(),
        "the container ended while held back"
    );
}

/// Space back: the stream completes on its own and what docker logs shows is exactly what the
/// container wrote.
fn see_it_complete(home: &Home, id: &str, tether: &mut Child) {
    assert_eq!(wait_exit(tether, 120), 0);
    wait_for("the container to exit", 30, || {
        (inspect(home, id, "{{.State.Status}}") == "exited").then_some(())
    });
    let want = Sha256::digest(expected_output());
    assert_eq!(Sha256::digest(main_log(home, id, Stream::Stdout)), want);
    let logs = docker(home, &["logs", id]);
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    assert_eq!(Sha256::digest(&logs.stdout), want, "docker logs");
    assert_eq!(inspect(home, id, "{{.State.Error}}"), "");
}

/// A container streaming into a server whose home is a small disk, filled until the stream is
/// held back.
struct Stalled {
    disk: SmallDisk,
    home: Home,
    log: PathBuf,
    server: ServerProcess,
    id: String,
    tether: Child,
}

fn stalled(tag: &str) -> Stalled {
    let disk = SmallDisk::mount(tag, 32);
    let home = disk.home();
    let log = server_log(tag);
    let server = ServerProcess::start_with(&home, &[], &log);
    let id = new_container(&home, SCRIPT);
    disk.fill_leaving(2 << 20);
    let mut tether = spawn_tether(&home, &id);
    see_it_stall(&home, &id, &mut tether);
    Stalled {
        disk,
        home,
        log,
        server,
        id,
        tether,
    }
}

#[test]
fn a_full_log_store_holds_output_back_and_takes_it_all_when_space_returns() {
    let Stalled {
        disk,
        home,
        log,
        server: _server,
        id,
        mut tether,
    } = stalled("full");
    disk.free_all();
    see_it_complete(&home, &id, &mut tether);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("the log store refuses output"), "{log}");
    assert!(log.contains("the log store takes output again"), "{log}");
}

/// The log file of the container's main session in its (only) boot.
fn main_log_file(home: &Home, id: &str) -> PathBuf {
    let boots: Vec<PathBuf> = std::fs::read_dir(home.container(id).join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(boots.len(), 1);
    boots[0].join("1.json.log")
}

fn append_torn_line(file: &Path) {
    let mut f = OpenOptions::new().append(true).open(file).unwrap();
    f.write_all(br#"{"log":"a torn entry, never acknowled"#)
        .unwrap();
}

#[test]
fn a_server_killed_while_the_store_is_full_recovers_its_torn_log_and_loses_nothing() {
    let Stalled {
        disk,
        home,
        log,
        server,
        id,
        mut tether,
    } = stalled("restart");
    // The server dies as if mid-write: the log ends in half an entry (room for it is made and
    // taken again), and the disk is still full when the server comes back.
    drop(server);
    disk.fill_leaving(64 * 1024);
    append_torn_line(&main_log_file(&home, &id));
    disk.fill_leaving(0);
    let _server = ServerProcess::start_with(&home, &[], &log);
    // The handshake completes (the store is reported full again: that takes a delivery on an
    // established channel), and the container is still held back, not wedged.
    see_it_stall(&home, &id, &mut tether);
    disk.free_all();
    see_it_complete(&home, &id, &mut tether);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("no handshake within"), "{log}");
}

#[test]
fn a_tether_that_stops_answering_is_unhealthy_until_it_answers_again() {
    let home = common::TempHome::new("unresponsive");
    let log = server_log("unresponsive");
    let _server = ServerProcess::start_with(&home, &["--unresponsive-after", "1"], &log);
    let id = new_container(&home, "echo up; exec sleep 600");
    let mut tether = spawn_tether(&home, &id);
    wait_for("the container to run", 30, || {
        (inspect(&home, &id, "{{.State.Health.Status}}") == "healthy").then_some(())
    });
    let pid = nix::unistd::Pid::from_raw(tether.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The keepalive ends the silent channel after 10 s; one second later it is unhealthy.
    let output = wait_for("inspect reporting unhealthy", 40, || {
        (inspect(&home, &id, "{{.State.Health.Status}}") == "unhealthy")
            .then(|| inspect(&home, &id, "{{(index .State.Health.Log 0).Output}}"))
    });
    assert!(output.contains("no channel from tether for"), "{output}");
    assert_eq!(inspect(&home, &id, "{{.State.Status}}"), "running");
    let ps = docker(&home, &["ps", "--format", "{{.Status}}"]);
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    assert!(ps.contains("(unhealthy)"), "{ps}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for("healthy again after SIGCONT", 30, || {
        (inspect(&home, &id, "{{.State.Health.Status}}") == "healthy").then_some(())
    });
    let exec = docker(&home, &["exec", &id, "echo", "answers"]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "answers\n");
    let _ = tether.kill();
    let _ = tether.wait();
}
