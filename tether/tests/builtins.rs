//! tether's built-ins end to end in host mode: a real tether with `--root DIR` (its sessions
//! and built-ins chrooted into DIR, whose programs are a static busybox), driven by `Builtin`
//! records from a minimal appliance, as the appliance drives `docker cp` and `docker top`.
//! Like any `--root` run they need root (chroot), as CI and the developers' machines have.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::testing::{tar_entries, TarWriter};
use common::{session, spec, Conn, Harness, Seen, TestDir};
use wire::{BuiltinOp, Control, ExecSpec};

const BUSYBOX: &str = "/bin/busybox";
const MTIME: u64 = 1_650_000_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A container root: busybox as sh, sleep and cat, an /etc of its own, an empty /target, and
/// `/evil`, an absolute symlink to `/etc` (the container's, never the host's).
fn image() -> TestDir {
    assert!(
        Path::new(BUSYBOX).exists(),
        "these tests need a static busybox at {BUSYBOX} (scripts/install-deps.sh system)"
    );
    let root = TestDir::new("root");
    let p = |rel: &str| root.path().join(rel);
    for dir in ["bin", "etc", "target", "tmp"] {
        std::fs::create_dir_all(p(dir)).unwrap();
    }
    std::fs::copy(BUSYBOX, p("bin/busybox")).unwrap();
    for tool in ["sh", "sleep", "cat"] {
        std::os::unix::fs::symlink("busybox", p(&format!("bin/{tool}"))).unwrap();
    }
    std::fs::write(p("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(p("etc/hostname"), "inside-the-container\n").unwrap();
    std::os::unix::fs::symlink("/etc", p("evil")).unwrap();
    root
}

/// A tether in a fresh [`image`], its main session waiting for a line on its stdin.
fn start_in_image() -> (TestDir, Harness) {
    let root = image();
    let mut main = session(&["/bin/sh", "-c", "read x"]);
    main.open_stdin = true;
    let h = Harness::start_in(&spec(main), root.path());
    (root, h)
}

fn tar() -> TarWriter {
    TarWriter::new(MTIME, (1000, 1000))
}

fn blob() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// What `docker cp ./tree c:/target` sends: a file, a symlink, nested directories.
fn tree() -> Vec<u8> {
    tar()
        .file("file.txt", 0o640, b"hello from the host\n")
        .symlink("link", "file.txt")
        .dir("nested/", 0o750)
        .dir("nested/deep/", 0o700)
        .file("nested/deep/data.bin", 0o600, &blob())
        .finish()
}

/// A `docker cp` into the container: an archive extracted at `path`.
fn put(path: &str, no_overwrite_dir_non_dir: bool) -> BuiltinOp {
    BuiltinOp::ArchivePut {
        path: path.into(),
        no_overwrite_dir_non_dir,
    }
}

async fn run_builtin(c: &mut Conn, session: u32, op: BuiltinOp, stdin: Option<&[u8]>) {
    c.builtin(session, &format!("builtin-{session}"), op).await;
    if let Some(bytes) = stdin {
        c.stdin(session, bytes, true).await;
    }
    c.until(20, |s| s.done(session)).await;
    assert_eq!(
        c.seen.started_pid(session),
        Some(0),
        "a built-in reports pid 0"
    );
}

/// The session exited 0; if not, its stderr says why.
fn assert_succeeded(seen: &Seen, session: u32) {
    let why = text(seen.stderr(session));
    assert_eq!(seen.exit(session), Some((0, None)), "{why}");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn archive_put_then_get_round_trips_a_tree_inside_the_root() {
    let (root, mut h) = start_in_image();
    let sent = tree();
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.started_pid(1).is_some()).await;
        run_builtin(&mut c, 4096, put("/target", true), Some(&sent)).await;
        run_builtin(
            &mut c,
            4097,
            BuiltinOp::ArchiveGet {
                path: "/target".into(),
            },
            None,
        )
        .await;
        run_builtin(
            &mut c,
            4098,
            BuiltinOp::ArchiveGet {
                path: "/target/nested/deep/data.bin".into(),
            },
            None,
        )
        .await;
        // Through an absolute symlink: the container's /etc, not the host's.
        run_builtin(
            &mut c,
            4099,
            BuiltinOp::ArchiveGet {
                path: "/evil/hostname".into(),
            },
            None,
        )
        .await;
        run_builtin(
            &mut c,
            4100,
            BuiltinOp::Stat {
                path: "/evil".into(),
            },
            None,
        )
        .await;
        run_builtin(
            &mut c,
            4101,
            BuiltinOp::Stat {
                path: "/no/such/file".into(),
            },
            None,
        )
        .await;
        // The same tree again, now that it exists: a file may not replace a directory.
        let file_over_dir = tar().file("nested", 0o644, b"x").finish();
        run_builtin(&mut c, 4102, put("/target", true), Some(&file_over_dir)).await;
        run_builtin(
            &mut c,
            4103,
            put("/target/file.txt", false),
            Some(&file_over_dir),
        )
        .await;
        c.stdin(1, b"\n", true).await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(h.wait(), 0);

    // The put: exit 0, nothing on stderr, the tree on disk with its modes and mtimes.
    assert_eq!(
        (seen.exit(4096), text(seen.stderr(4096))),
        (Some((0, None)), String::new())
    );
    let t = root.path().join("target");
    let meta = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap();
    assert_eq!(
        std::fs::read(t.join("file.txt")).unwrap(),
        b"hello from the host\n"
    );
    assert_eq!(
        std::fs::read(t.join("nested/deep/data.bin")).unwrap(),
        blob()
    );
    assert_eq!(
        std::fs::read_link(t.join("link")).unwrap(),
        Path::new("file.txt")
    );
    assert_eq!(meta("file.txt").permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta("nested").permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta("nested/deep").mtime(), MTIME as i64);
    if nix_is_root() {
        assert_eq!(
            (meta("file.txt").uid(), meta("file.txt").gid()),
            (1000, 1000)
        );
    }

    // The get of the directory: `target/` first, then the tree, byte for byte and mode for mode.
    assert_succeeded(&seen, 4097);
    let (order, got) = tar_entries(seen.stdout(4097));
    assert_eq!(
        order,
        [
            "target/",
            "target/file.txt",
            "target/link",
            "target/nested/",
            "target/nested/deep/",
            "target/nested/deep/data.bin"
        ]
    );
    let (_, want) = tar_entries(&sent);
    for name in [
        "file.txt",
        "link",
        "nested/",
        "nested/deep/",
        "nested/deep/data.bin",
    ] {
        assert_eq!(got[&format!("target/{name}")], want[name], "{name}");
    }
    // A file by itself is named after its last element.
    let (order, got) = tar_entries(seen.stdout(4098));
    assert_eq!(order, ["data.bin"]);
    assert_eq!(got["data.bin"].4, blob());
    let (_, got) = tar_entries(seen.stdout(4099));
    assert_eq!(got["hostname"].4, b"inside-the-container\n");

    // Stat: docker's JSON; a missing path is exit 1 with docker's message.
    let stat: serde_json::Value = serde_json::from_slice(seen.stdout(4100)).unwrap();
    assert_eq!(stat["name"], "evil");
    assert_eq!(stat["linkTarget"], "/etc");
    assert_eq!(stat["mode"], (1u64 << 27) | 0o777);
    assert!(stat["mtime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(seen.exit(4101), Some((1, None)));
    assert_eq!(
        text(seen.stderr(4101)),
        "Could not find the file /no/such/file in container\n"
    );
    assert!(seen.stdout(4101).is_empty());

    // The refusals, each with its message.
    assert_eq!(seen.exit(4102), Some((1, None)));
    assert_eq!(
        text(seen.stderr(4102)),
        "cannot overwrite directory \"/target/nested\" with non-directory \"nested\"\n"
    );
    assert!(t.join("nested/deep/data.bin").exists());
    assert_eq!(
        (seen.exit(4103), text(seen.stderr(4103))),
        (
            Some((1, None)),
            "extraction point is not a directory\n".to_string()
        )
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn processes_lists_an_exec_and_refuses_other_ps_args() {
    let (_root, mut h) = start_in_image();
    let tether_pid = h.child.id();
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.started_pid(1).is_some()).await;
        c.control(Control::Exec {
            session: 4096,
            name: "sleeper".into(),
            spec: ExecSpec {
                path: "sleep".into(),
                args: vec!["sleep".into(), "30".into()],
                env: vec!["PATH=/bin".into()],
                dir: "/".into(),
                ..Default::default()
            },
        })
        .await;
        c.until(10, |s| s.started_pid(4096).is_some()).await;
        run_builtin(
            &mut c,
            4097,
            BuiltinOp::Processes {
                ps_args: String::new(),
            },
            None,
        )
        .await;
        run_builtin(
            &mut c,
            4098,
            BuiltinOp::Processes {
                ps_args: "aux".into(),
            },
            None,
        )
        .await;
        c.stdin(1, b"\n", true).await;
        c.until(10, |s| s.exit(1).is_some() && s.exit(4096).is_some())
            .await;
        c.seen
    });
    assert_eq!(h.wait(), 0);
    assert_succeeded(&seen, 4097);
    let top: serde_json::Value = serde_json::from_slice(seen.stdout(4097)).unwrap();
    assert_eq!(
        top["Titles"],
        serde_json::json!(["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"])
    );
    let rows = top["Processes"].as_array().unwrap();
    let cell = |row: &serde_json::Value, i: usize| row[i].as_str().unwrap().to_string();
    let sleeper = seen.started_pid(4096).unwrap().to_string();
    let main = seen.started_pid(1).unwrap().to_string();
    let row = rows
        .iter()
        .find(|r| cell(r, 1) == sleeper)
        .unwrap_or_else(|| panic!("no row for the exec's pid {sleeper}: {top}"));
    assert_eq!(cell(row, 7), "sleep 30");
    assert_eq!(cell(row, 2), tether_pid.to_string(), "its parent is tether");
    assert_eq!(
        cell(row, 0),
        "root",
        "named from the container's /etc/passwd"
    );
    assert_eq!(cell(row, 6), "00:00:00");
    assert!(rows
        .iter()
        .any(|r| cell(r, 1) == main && cell(r, 7) == "/bin/sh -c read x"));
    // Neither tether nor the built-in itself is listed: every row is a session's.
    assert_eq!(rows.len(), 2, "{top}");

    assert_eq!(seen.exit(4098), Some((1, None)));
    assert!(
        text(seen.stderr(4098)).starts_with("unsupported ps_args \"aux\""),
        "{}",
        text(seen.stderr(4098))
    );
}

/// Feeds `bytes` to a session's stdin as the stream's buffer allows, taking the acks that make
/// room, then ends the stream.
async fn stdin_streamed(c: &mut Conn, session: u32, bytes: &[u8]) {
    let key = wire::StreamKey::new(session, wire::StreamKind::Stdin);
    let mut at = 0;
    while at < bytes.len() {
        at += c.streams.open_out(key).write(&bytes[at..]);
        c.flush().await;
        let since = std::time::Instant::now();
        c.until(5, |_| {
            since.elapsed() >= std::time::Duration::from_millis(20)
        })
        .await;
    }
    c.streams.open_out(key).close();
    c.flush().await;
}

#[test]
fn archives_larger_than_every_buffer_stream_both_ways_and_a_signal_cancels() {
    use sha2::{Digest, Sha256};
    let (root, mut h) = start_in_image();
    // 6 MiB: past the 1 MiB stream buffers and the 64 KiB pipes, in both directions.
    let big: Vec<u8> = (0..6u32 << 20)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8)
        .collect();
    let sent = tar().file("big.bin", 0o644, &big).finish();
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.started_pid(1).is_some()).await;
        c.builtin(4096, "put", put("/tmp", false)).await;
        stdin_streamed(&mut c, 4096, &sent).await;
        c.until(30, |s| s.done(4096)).await;
        let get = BuiltinOp::ArchiveGet {
            path: "/tmp/big.bin".into(),
        };
        run_builtin(&mut c, 4097, get, None).await;
        // A put that waits for more of its archive, cancelled as the appliance cancels a cp
        // (into another directory: it may have replaced big.bin by then).
        c.builtin(4098, "cancelled", put("/target", false)).await;
        c.stdin(4098, &sent[..10_000], false).await;
        c.until(10, |s| s.started_pid(4098).is_some()).await;
        c.signal(4098, libc::SIGKILL).await;
        c.until(10, |s| s.done(4098)).await;
        c.stdin(1, b"\n", true).await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(h.wait(), 0);
    assert_succeeded(&seen, 4096);
    let on_disk = std::fs::read(root.path().join("tmp/big.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&big));
    assert_succeeded(&seen, 4097);
    assert_eq!(
        Sha256::digest(seen.stdout(4097)),
        Sha256::digest(&sent),
        "the get is the very tar that was put"
    );
    assert_eq!(seen.exit(4098), Some((137, Some(libc::SIGKILL))));
}
