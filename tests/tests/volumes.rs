//! Volumes as disks, with the stock docker CLI against the real `appliance serve` and real
//! containerVMs: a volume written in one container is read in the next (and after an appliance
//! restart); a fresh volume on /etc shows the image's files with their owners, modes, links,
//! holes and xattrs; `:ro` is EROFS; an in-use volume is neither removed nor mounted by a second
//! running container; a non-root user writes to a volume whose image directory it owns; after
//! a containerVM is killed -9 mid-write the volume mounts again and `e2fsck -fn` is clean; a
//! volume whose disk is gone or unreadable is a clear start error (exit 125, naming the label);
//! `docker cp` into a container that never ran reaches its volume. Five container boots and
//! two copy VMs in all (TCG is slow).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{
    busybox_rootfs, host_script, layer_tar, save_archive_with_config, succeeded, text, workspace,
    Appliance,
};
use serde_json::json;

const IMAGE: &str = "localhost/tether-volumes:e2e";

/// The image: busybox, an /etc with files of other owners (a 0640 file of uid 1000 with an
/// xattr, a setuid file, a hard-link pair, a dangling symlink, an 8 MiB file that is all hole
/// but its last bytes, a subdirectory), a home directory uid 1000 owns, and a VOLUME whose
/// image directory holds a file.
fn image_archive() -> PathBuf {
    let work = workspace().join("target/e2e/volumes");
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("rootfs");
    busybox_rootfs(&root);
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
         nobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    let r = root.display();
    host_script(&format!(
        "cd {r}
         printf 'secret=1\\n' > etc/app.conf; chown 1000:1000 etc/app.conf; chmod 0640 etc/app.conf
         python3 -c \"import os; os.setxattr('etc/app.conf', 'user.origin', b'image')\"
         printf '#!/bin/sh\\n' > etc/setuid; chmod 4755 etc/setuid
         echo linked > etc/hl1; ln etc/hl1 etc/hl2
         ln -s /usr/share/zoneinfo/UTC etc/localtime
         truncate -s 8M etc/sparse; printf end >> etc/sparse
         mkdir -p etc/app home/app var/cache/app
         echo nested > etc/app/nested.conf
         echo profile > home/app/.profile
         chown -R 1000:1000 home/app var/cache/app; chmod 0750 home/app
         echo cached > var/cache/app/cached; chown 1000:1000 var/cache/app/cached"
    ));
    let layer = work.join("layer.tar");
    layer_tar(&root, &layer);
    save_archive_with_config(
        &work,
        "image",
        IMAGE,
        &[&layer],
        json!({
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["true"],
            "Volumes": {"/var/cache/app": {}},
        }),
    )
}

fn server_log_tail(app: &Appliance) -> String {
    let log = std::fs::read_to_string(app.home.root().join("server.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn ok(app: &Appliance, args: &[&str]) -> String {
    succeeded(
        &app.docker(args),
        &format!("docker {args:?}"),
        &format!("server log tail:\n{}", server_log_tail(app)),
    )
}

/// `docker run` that must fail with `code`; its stderr.
fn fails(app: &Appliance, args: &[&str], code: i32) -> String {
    let out = app.docker(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "docker {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn volume_field(app: &Appliance, name: &str, format: &str) -> String {
    ok(app, &["volume", "inspect", "-f", format, name])
        .trim()
        .to_string()
}

fn disk(app: &Appliance, name: &str) -> PathBuf {
    PathBuf::from(volume_field(app, name, "{{.Mountpoint}}"))
}

/// The volume's disk as a raw image (for e2fsprogs), in `dir`.
fn raw_copy(qcow2: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join(format!(
        "{}.raw",
        qcow2
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
    ));
    let _ = std::fs::remove_file(&raw);
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow2)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    raw
}

/// `e2fsck -fn` on the volume's disk: its exit code and output.
fn fsck(qcow2: &Path, dir: &Path) -> (i32, String) {
    let raw = raw_copy(qcow2, dir);
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&raw);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// An e2fsprogs `tool ARGS` on the volume's disk: its output.
fn e2fs_tool(qcow2: &Path, dir: &Path, tool: &str, args: &[&str]) -> String {
    let raw = raw_copy(qcow2, dir);
    let out = Command::new(tool).args(args).arg(&raw).output().unwrap();
    let _ = std::fs::remove_file(&raw);
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn wait_logs(app: &Appliance, name: &str, want: &str, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let logs = text(&app.docker(&["logs", name]).stdout);
        if logs.contains(want) {
            return logs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{name} never printed {want:?}: {logs}\n{}",
            server_log_tail(app)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The QEMU process of a container (State.Pid is `timeout`'s under the tests' VM limit).
fn qemu_pid(app: &Appliance, name: &str) -> i32 {
    let pid = ok(app, &["inspect", "-f", "{{.State.Pid}}", name])
        .trim()
        .to_string();
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let qemu = if comm(&pid).trim() == "timeout" {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap()
            .split_whitespace()
            .find(|c| comm(c).starts_with("qemu"))
            .map(str::to_string)
    } else {
        Some(pid.clone())
    };
    qemu.unwrap_or_else(|| panic!("no QEMU under pid {pid}"))
        .parse()
        .unwrap()
}

#[test]
fn volumes_keep_data_ownership_and_their_filesystem_across_containers_kills_and_restarts() {
    let archive = image_archive();
    let mut app = Appliance::start_process("volumes");
    let scratch = workspace().join("target/e2e/volumes");
    ok(&app, &["load", "-i", archive.to_str().unwrap()]);
    ok(&app, &["volume", "create", "--opt", "size=64m", "home"]);

    // Boot 1, as uid 1000: fresh volumes on /etc (and one nested in it) and on the user's home,
    // a fresh one where the image has nothing (root's, so not writable by uid 1000), the
    // image's VOLUME (anonymous), and tmpfs mounts.
    let script = "stat -c '%u:%g %a %n' /etc/app.conf /etc/passwd /etc/setuid /home/app \
        /home/app/.profile /var/cache/app/cached /etc/app/nested.conf; \
        stat -c '%i' /etc/hl1 /etc/hl2 | uniq | wc -l; readlink /etc/localtime; \
        stat -c 'sparse %s %b' /etc/sparse; tail -c 3 /etc/sparse; echo; \
        ls -a /home/app /data; echo hello > /home/app/note && echo wrote; \
        touch /data/x 2>&1; grep -E ' /(t|t2) ' /proc/mounts";
    let out = ok(
        &app,
        &[
            "run",
            "--rm",
            "-u",
            "1000:1000",
            "-v",
            "etc:/etc",
            "-v",
            "appconf:/etc/app",
            "-v",
            "home:/home/app",
            "-v",
            "data:/data",
            "--tmpfs",
            "/t:size=1m",
            "--mount",
            "type=tmpfs,target=/t2,tmpfs-mode=1770",
            IMAGE,
            script,
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..7],
        [
            "1000:1000 640 /etc/app.conf",
            "0:0 644 /etc/passwd",
            "0:0 4755 /etc/setuid",
            "1000:1000 750 /home/app",
            "1000:1000 644 /home/app/.profile",
            "1000:1000 644 /var/cache/app/cached",
            "0:0 644 /etc/app/nested.conf",
        ],
        "{out}"
    );
    assert_eq!(lines[7], "1", "the hard links share an inode: {out}");
    assert_eq!(lines[8], "/usr/share/zoneinfo/UTC");
    let sparse: Vec<u64> = lines[9]
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(sparse[0], (8 << 20) + 3);
    assert!(
        sparse[1] <= 16,
        "the hole stayed a hole: {} blocks",
        sparse[1]
    );
    assert_eq!(lines[10], "end");
    assert!(!out.contains("lost+found"), "lost+found is hidden: {out}");
    assert!(
        out.contains("\nwrote\n"),
        "uid 1000 writes to the home it owns: {out}"
    );
    assert!(
        out.contains("touch: /data/x: Permission denied"),
        "a volume where the image has nothing is root's: {out}"
    );
    // tmpfs: docker's nosuid,nodev,noexec, and each one's own size or mode.
    let tmpfs = |dest: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("tmpfs {dest} tmpfs ")))
            .unwrap_or_else(|| panic!("no tmpfs on {dest}: {out}"))
            .split(' ')
            .nth(3)
            .unwrap()
            .split(',')
            .collect::<Vec<_>>()
    };
    for dest in ["/t", "/t2"] {
        let opts = tmpfs(dest);
        assert!(
            ["rw", "nosuid", "nodev", "noexec"]
                .iter()
                .all(|o| opts.contains(o)),
            "{dest}: {opts:?}"
        );
    }
    assert!(tmpfs("/t").contains(&"size=1024k"), "{out}");
    assert!(tmpfs("/t2").contains(&"mode=1770"), "{out}");
    // --rm removed the anonymous volume; the named ones stay.
    let names = ok(&app, &["volume", "ls", "-q"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, ["appconf", "data", "etc", "home"]);
    // Stopped cleanly: each volume's filesystem is clean, and the copy kept the xattr.
    for v in ["etc", "home", "appconf"] {
        let (code, report) = fsck(&disk(&app, v), &scratch);
        assert_eq!(code, 0, "e2fsck -fn on {v}: {report}");
    }
    let attrs = e2fs_tool(
        &disk(&app, "etc"),
        &scratch,
        "debugfs",
        &["-R", "ea_list /data/app.conf"],
    );
    assert!(
        attrs.contains("user.origin") && attrs.contains("image"),
        "{attrs}"
    );

    // `docker cp` into a container that never ran, to a path on its volume: the copy's
    // maintenance VM mounts the container's volumes, so the file lands in the volume.
    ok(
        &app,
        &[
            "create",
            "--name",
            "never-ran",
            "-v",
            "home:/home/app",
            IMAGE,
            "true",
        ],
    );
    let copied = scratch.join("copied");
    std::fs::write(&copied, "from cp\n").unwrap();
    ok(
        &app,
        &["cp", copied.to_str().unwrap(), "never-ran:/home/app/copied"],
    );
    ok(&app, &["rm", "-v", "never-ran"]);

    // Boot 2: the next container reads what the first wrote, through a read-only mount that
    // even root cannot write. While it runs, the volume is in use.
    let id = ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "holder",
            "-u",
            "0",
            "-v",
            "home:/home/app:ro",
            IMAGE,
            "cat /home/app/note /home/app/copied; touch /home/app/y 2>&1; echo ready; \
             exec sleep 600",
        ],
    )
    .trim()
    .to_string();
    let logs = wait_logs(&app, "holder", "ready", 120);
    assert!(logs.starts_with("hello\nfrom cp\n"), "{logs}");
    assert!(
        logs.contains("touch: /home/app/y: Read-only file system"),
        "EROFS: {logs}"
    );
    let e = fails(&app, &["volume", "rm", "home"], 1);
    assert!(
        e.contains(&format!("remove home: volume is in use - [{id}]")),
        "{e}"
    );
    let e = fails(&app, &["run", "--rm", "-v", "home:/h", IMAGE, "true"], 125);
    assert!(
        e.contains(&format!("volume home is in use by running container {id}"))
            && e.contains("one writer"),
        "{e}"
    );
    ok(&app, &["rm", "-f", "-v", "holder"]);

    // Boot 3: killed -9 (its QEMU) in the middle of writing to a volume.
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "writer",
            "-u",
            "0",
            "-v",
            "data:/data",
            IMAGE,
            "echo durable > /data/first; sync; \
             i=0; while :; do echo \"line $i\" >> /data/log; \
             dd if=/dev/urandom of=/data/blob.$((i % 4)) bs=64k count=4 2>/dev/null; \
             i=$((i + 1)); [ $i = 20 ] && echo busy; done",
        ],
    );
    wait_logs(&app, "writer", "busy", 120);
    let qemu = qemu_pid(&app, "writer");
    // SAFETY: kill(2) on the pid of this test's own containerVM's QEMU, read just now.
    assert_eq!(unsafe { libc::kill(qemu, libc::SIGKILL) }, 0);
    let start = Instant::now();
    while ok(&app, &["inspect", "-f", "{{.State.Status}}", "writer"]).trim() != "exited" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the kill was never noticed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&app, &["rm", "-v", "writer"]);
    // Killed, not unmounted: the filesystem still says its journal needs recovery.
    let header = e2fs_tool(&disk(&app, "data"), &scratch, "dumpe2fs", &["-h"]);
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_default();
    assert!(features.contains("needs_recovery"), "{header}");

    // The appliance restarts; boot 4 mounts the volume again (its journal replayed) and reads
    // it; stopped cleanly, the filesystem checks clean. (Before that mount it needed recovery.)
    app.kill_server();
    app.restart_server();
    let out = ok(
        &app,
        &[
            "run",
            "--rm",
            "-u",
            "0",
            "-v",
            "data:/data",
            IMAGE,
            "cat /data/first; ls /data",
        ],
    );
    // What was synced before the kill is there; what was not may or may not be (ext4 commits
    // every 5 s): either way the filesystem is whole.
    assert!(out.starts_with("durable\n"), "{out}");
    let (code, report) = fsck(&disk(&app, "data"), &scratch);
    assert_eq!(
        code, 0,
        "e2fsck -fn after kill -9 and a clean remount: {report}"
    );

    // A volume whose disk is unreadable (no ext4 on it): boot 5 fails at tether's bounded wait,
    // and docker run says which label it waited for (exit 125). A disk that is gone fails at
    // the engine before any boot.
    ok(&app, &["volume", "create", "--opt", "size=32m", "broken"]);
    let label = volume_field(&app, "broken", "{{.Status.Label}}");
    let broken = disk(&app, "broken");
    std::fs::remove_file(&broken).unwrap();
    let e = fails(
        &app,
        &["run", "--rm", "-v", "broken:/b", IMAGE, "true"],
        125,
    );
    assert!(
        e.contains(&format!("volume broken (disk label \"{label}\"): its disk"))
            && e.contains("is missing"),
        "{e}"
    );
    host_script(&format!(
        "qemu-img create -q -f qcow2 {} 32M",
        broken.display()
    ));
    let e = fails(
        &app,
        &["run", "--rm", "-v", "broken:/b", IMAGE, "true"],
        125,
    );
    assert!(
        e.contains(&format!(
            "volume for /b: no disk labelled \"{label}\" appeared within"
        )),
        "{e}"
    );
    // Every container is gone, and so is every anonymous volume (`--rm`, `rm -v`).
    assert_eq!(ok(&app, &["ps", "-aq"]), "");
    let names = ok(&app, &["volume", "ls", "-q"]);
    assert!(names.lines().all(|n| n.len() < 64), "{names}");
    let used = std::fs::metadata(disk(&app, "data")).unwrap().blocks() * 512;
    assert!(used < 64 << 20, "the 1 GiB volume is sparse: {used} bytes");
}
