//! The home as `appliance serve` keeps it, with real server processes and the stock docker CLI:
//! one server per home (a second is refused and the first keeps serving), what a server killed
//! with SIGKILL leaves is cleaned by the next, every file holding a secret and every socket is
//! owner-only, and temporary work directories do not outlive a failure or a crash.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn appliance(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(args)
        .env("TETHER_HOME", home)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn docker(home: &Path, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", home.join("docker.sock").display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker CLI is installed")
}

/// The server's version as the docker CLI reads it: proof the API answers.
fn server_answers(home: &Path) -> bool {
    let out = docker(home, &["version", "--format", "{{.Server.Version}}"]);
    out.status.success() && !text(&out.stdout).trim().is_empty()
}

fn lock_pid(home: &Path) -> u32 {
    std::fs::read_to_string(home.join("appliance.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A detached server, stopped (by its pid file) on drop.
struct Detached(PathBuf);

impl Detached {
    fn start(home: &Path) -> Self {
        let out = appliance(home, &["serve", "--detach"]);
        assert!(
            out.status.success(),
            "serve --detach: {}",
            text(&out.stderr)
        );
        Self(home.to_path_buf())
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("appliance.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn a_second_serve_is_refused_naming_the_first_which_keeps_serving() {
    let t = TempHome::new("second-serve");
    let home = t.root().to_path_buf();
    let _first = Detached::start(&home);
    let pid: u32 = std::fs::read_to_string(home.join("appliance.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(lock_pid(&home), pid, "the lock names the server holding it");
    let files = [
        "docker.sock",
        "channel.sock",
        "channel.tcp",
        "appliance.pid",
    ];
    let before: Vec<(u64, Vec<u8>)> = files
        .iter()
        .map(|f| {
            let p = home.join(f);
            let bytes = if f.ends_with(".sock") {
                Vec::new()
            } else {
                std::fs::read(&p).unwrap()
            };
            (ino(&p), bytes)
        })
        .collect();

    for args in [&["serve"][..], &["serve", "--detach"][..]] {
        let out = appliance(&home, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(
            err.contains(&format!("another appliance server (pid {pid}")),
            "{args:?} names the holder: {err}"
        );
        assert!(
            err.contains(&format!("`kill {pid}`")) && err.contains("its own TETHER_HOME"),
            "{args:?} says what to do: {err}"
        );
        assert!(text(&out.stdout).is_empty(), "{args:?} printed no pid");
    }

    // Nothing of the first server's was replaced, and its API still answers.
    for (f, (ino_before, bytes)) in files.iter().zip(&before) {
        let p = home.join(f);
        assert_eq!(ino(&p), *ino_before, "{f} was replaced");
        if !f.ends_with(".sock") {
            assert_eq!(&std::fs::read(&p).unwrap(), bytes, "{f} was rewritten");
        }
    }
    assert_eq!(lock_pid(&home), pid);
    assert!(server_answers(&home), "the first server stopped answering");
    UnixStream::connect(home.join("channel.sock")).expect("the channel socket still accepts");
}

#[test]
fn a_server_killed_with_sigkill_leaves_sockets_that_the_next_start_replaces() {
    let t = TempHome::new("sigkill");
    let home = (*t).clone();
    let mut first = ServerProcess::start(&home);
    let first_pid = first.0.id();
    first.0.kill().unwrap(); // SIGKILL: no cleanup runs.
    first.0.wait().unwrap();
    let stale = [home.docker_socket(), home.channel_socket()];
    for s in &stale {
        assert!(s.exists(), "{} outlived its server", s.display());
        let refused = UnixStream::connect(s).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    assert_eq!(
        lock_pid(t.root()),
        first_pid,
        "the dead server's pid is still written"
    );

    // The lock died with the process: the next server takes it and listens where the dead
    // one's sockets were.
    let second = ServerProcess::start(&home);
    assert_eq!(lock_pid(t.root()), second.0.id());
    for s in &stale {
        UnixStream::connect(s).unwrap_or_else(|e| panic!("{}: {e}", s.display()));
    }
    assert!(server_answers(t.root()));
}

#[test]
fn the_home_its_secrets_and_its_sockets_are_owner_only() {
    let t = TempHome::new("modes");
    // A home that exists with looser bits is tightened.
    std::fs::set_permissions(t.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = (*t).clone();
    let mut server = ServerProcess::start(&home);
    assert!(server_answers(t.root()));
    assert_eq!(mode(t.root()), 0o700, "TETHER_HOME");
    for s in [home.docker_socket(), home.channel_socket()] {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&s)
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(mode(&s), 0o600, "{}", s.display());
    }
    for f in ["appliance.lock", "channel.tcp"] {
        assert_eq!(mode(&t.root().join(f)), 0o600, "{f}");
    }
    // A container's record and config (its channel secret) and everything the server writes
    // for it while it runs: state, logs.
    let id = new_container(&home, "echo out; echo err >&2");
    let mut tether = spawn_tether(&home, &id);
    assert_eq!(wait_exit(&mut tether, 30), 0);
    let dir = home.container(&id);
    assert_eq!(mode(&dir), 0o700);
    for f in ["record.json", "config.vmx"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let mut seen = 0;
    let mut stack = vec![dir.join("logs")];
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d) & 0o077, 0, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                seen += 1;
            }
        }
    }
    assert!(seen >= 1, "the logs were written");
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    server.0.kill().unwrap();
    server.0.wait().unwrap();

    // A home that serve makes itself is 0700 from the start, and so is what it makes in it.
    let fresh = t.root().join("nested/fresh-home");
    let _again = Detached::start(&fresh);
    assert!(server_answers(&fresh));
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join("containers")), 0o700);
    for f in [
        "appliance.lock",
        "appliance.pid",
        "appliance.log",
        "channel.tcp",
    ] {
        assert_eq!(mode(&fresh.join(f)), 0o600, "{f}");
    }
}

/// POST /images/load with a body longer than what is sent, so the load is mid-upload.
fn start_slow_load(home: &Path) -> UnixStream {
    let mut s = UnixStream::connect(home.join("docker.sock")).unwrap();
    write!(
        s,
        "POST /images/load HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {}\r\n\r\n",
        64 << 20
    )
    .unwrap();
    s.write_all(&vec![0u8; 256 << 10]).unwrap();
    s
}

fn work_dirs(images: &Path) -> Vec<String> {
    std::fs::read_dir(images)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".work"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn work_directories_of_a_killed_server_are_swept_at_the_next_start() {
    let t = TempHome::new("sweep");
    let home = (*t).clone();
    let images = t.root().join("images");
    let mut server = ServerProcess::start(&home);
    let _upload = start_slow_load(t.root());
    // The load's work directory fills with the archive as it arrives.
    let start = Instant::now();
    let archive = loop {
        let found = work_dirs(&images)
            .into_iter()
            .map(|w| images.join(w).join("archive.tar"))
            .find(|a| std::fs::metadata(a).is_ok_and(|m| m.len() > 0));
        if let Some(a) = found {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no load started");
        std::thread::sleep(Duration::from_millis(20));
    };
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    assert!(archive.exists(), "SIGKILL left the load's work directory");
    // What a disk build (`<digest>.work`) and a container removal cut short leave, as a
    // server killed in the middle of them would.
    let build = images.join("0123456789abcdef0123456789abcdef.work");
    std::fs::create_dir_all(build.join("rootfs/etc")).unwrap();
    std::fs::write(build.join("disk.raw"), [0u8; 4096]).unwrap();
    let removing = t.root().join("containers/.removing-0123abcd");
    std::fs::create_dir_all(removing.join("logs")).unwrap();
    let kept = t.root().join("containers/0123abcd");
    std::fs::create_dir_all(&kept).unwrap();

    let _next = ServerProcess::start(&home);
    assert!(
        work_dirs(&images).is_empty(),
        "left: {:?}",
        work_dirs(&images)
    );
    assert!(!removing.exists(), "the cut-short removal is finished");
    assert!(kept.exists(), "a container directory is not a leftover");
}

#[test]
fn an_image_disk_build_that_fails_leaves_no_work_directory() {
    let t = TempHome::new("build-fails");
    let home = (*t).clone();
    let _server = ServerProcess::start(&home);
    let images = t.root().join("images");
    for (name, bytes, says) in [
        ("empty.tar", &b""[..], "is an empty file, not an image"),
        ("garbage.tar", &[0x5au8; 3000][..], "not a tar archive"),
    ] {
        let input = t.root().join(name);
        std::fs::write(&input, bytes).unwrap();
        let out = appliance(t.root(), &["run", "-d", input.to_str().unwrap(), "true"]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err:?} should say {says:?}");
        assert!(
            err.contains("docker save tarball") && err.contains("rootfs"),
            "{name}: {err:?} says what to give"
        );
        assert!(
            work_dirs(&images).is_empty(),
            "{name} left {:?}",
            work_dirs(&images)
        );
    }
}

#[test]
fn an_empty_or_non_archive_load_is_refused_saying_what_is_expected_and_leaves_nothing() {
    let t = TempHome::new("bad-load");
    let home = (*t).clone();
    let _server = ServerProcess::start(&home);
    let gzip_of_text = gzip(b"just some text, not a tar archive\n");
    for (name, bytes, says) in [
        (
            "empty",
            Vec::new(),
            "empty archive: the request body had no bytes",
        ),
        ("text", b"hello\n".to_vec(), "not a tar archive"),
        ("garbage", vec![0xa5u8; 10_000], "not a tar archive"),
        ("gzip-of-text", gzip_of_text, "not a tar archive"),
    ] {
        let input = t.root().join(name);
        std::fs::write(&input, &bytes).unwrap();
        let out = docker(t.root(), &["load", "-i", input.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{name}: {}", text(&out.stdout));
        assert!(err.contains(says), "{name}: {err:?} should say {says:?}");
        assert!(
            err.contains("a tar archive, optionally gzipped"),
            "{name}: {err:?} says what is expected"
        );
        let left: Vec<String> = std::fs::read_dir(t.root().join("images"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?} in images/");
    }
    let out = docker(t.root(), &["images", "-q"]);
    assert_eq!(text(&out.stdout), "", "no image appeared");
}

/// `gzip -c`.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    out
}
