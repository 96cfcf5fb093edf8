//! Image layers shared on disk: multi-layer `docker save` archives made here (GNU tar of real
//! files: whiteouts, an opaque directory, a hard-link pair, a device node, a file capability, a
//! 200-character name, 10,000 small files), loaded with the stock docker CLI into the real
//! `appliance serve`, run as containerVMs, then removed; the layer store counted and measured
//! at each step.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use e2e::{
    busybox_rootfs, host_script, layer_tar, save_archive, succeeded, text, workspace, Appliance,
};

/// The layer directories in the store, and the bytes each takes on disk.
fn layers(app: &Appliance) -> Vec<(String, u64)> {
    let root = app.home.root().join("images/layers");
    let mut v: Vec<(String, u64)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let blocks = std::fs::metadata(e.path().join("disk.qcow2")).map_or(0, |m| m.blocks());
            (e.file_name().to_string_lossy().into_owned(), blocks * 512)
        })
        .collect();
    v.sort();
    v
}

fn names(v: &[(String, u64)]) -> BTreeSet<String> {
    v.iter().map(|(n, _)| n.clone()).collect()
}

fn docker_ok(app: &Appliance, args: &[&str]) -> String {
    let log = std::fs::read_to_string(app.home.root().join("server.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    succeeded(
        &app.docker(args),
        &format!("docker {args:?}"),
        &format!("server log tail:\n{}", tail.join("\n")),
    )
}

#[test]
fn layered_images_share_their_layers_and_each_entry_kind_survives() {
    let work = workspace().join("target/e2e/layers");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let long = "n".repeat(200);
    // Layer 1, the base: busybox and what the next layer deletes or replaces.
    let l1 = work.join("l1");
    busybox_rootfs(&l1);
    for d in ["old", "opq/sub"] {
        std::fs::create_dir_all(l1.join(d)).unwrap();
    }
    std::fs::write(l1.join("old/gone.txt"), "deleted by layer 2").unwrap();
    std::fs::write(l1.join("old/kept.txt"), "kept").unwrap();
    std::fs::write(l1.join("opq/old1"), "hidden by the opaque directory").unwrap();
    std::fs::write(l1.join("opq/sub/old2"), "hidden too").unwrap();
    // Layer 2: a whiteout, an opaque directory, hard links, a device, a file capability, a
    // long name.
    let l2 = work.join("l2");
    for d in ["old", "opq", "links", "devs", "long"] {
        std::fs::create_dir_all(l2.join(d)).unwrap();
    }
    std::fs::write(l2.join("old/.wh.gone.txt"), "").unwrap();
    std::fs::write(l2.join("opq/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("opq/new"), "new").unwrap();
    std::fs::write(l2.join("links/a"), "linked").unwrap();
    std::fs::hard_link(l2.join("links/a"), l2.join("links/b")).unwrap();
    std::fs::write(l2.join("long").join(&long), "long name").unwrap();
    host_script(&format!("mknod {}/devs/null c 1 3", l2.display()));
    // A layer with a file capability (its own image, see the end).
    let l5 = work.join("l5");
    std::fs::create_dir_all(l5.join("caps")).unwrap();
    std::fs::copy("/bin/busybox", l5.join("caps/cat")).unwrap();
    host_script(&format!(
        "setcap cap_net_bind_service+ep {}/caps/cat",
        l5.display()
    ));
    // Layer 3: 10,000 small files.
    let l3 = work.join("l3");
    for i in 0..10_000 {
        let d = l3.join(format!("many/{:02}", i % 100));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), "x").unwrap();
    }
    // Image B's own layer.
    let l4 = work.join("l4");
    std::fs::create_dir_all(l4.join("b")).unwrap();
    std::fs::write(l4.join("b/hello"), "image b").unwrap();
    let tars: Vec<PathBuf> = [&l1, &l2, &l3, &l4, &l5]
        .iter()
        .map(|d| {
            let t = d.with_extension("tar");
            layer_tar(d, &t);
            t
        })
        .collect();
    // A layer that cannot apply: an entry leading out of the root.
    let bad = work.join("bad.tar");
    host_script(&format!(
        "cd {0} && mkdir -p badroot && echo x > escape && cd badroot && tar -P -cf {1} ../escape",
        work.display(),
        bad.display()
    ));
    let a = save_archive(&work, "a", "layers-a:1", &[&tars[0], &tars[1], &tars[2]]);
    let b = save_archive(&work, "b", "layers-b:1", &[&tars[0], &tars[1], &tars[3]]);
    let c = save_archive(&work, "c", "layers-c:1", &[&tars[0], &tars[1], &bad]);
    let cap = save_archive(&work, "cap", "layers-cap:1", &[&tars[0], &tars[4]]);

    let app = Appliance::start_process("layers");
    docker_ok(&app, &["load", "-i", a.to_str().unwrap()]);
    let after_a = layers(&app);
    assert_eq!(after_a.len(), 3, "one disk per layer: {after_a:?}");

    let script = "ls -A /old; echo --; ls -A /opq; echo --; stat -c '%i %h' /links/a /links/b; \
                  echo --; stat -c '%F %t %T' /devs/null; echo --; ls /long; echo --; \
                  find /many -type f | wc -l";
    let out = docker_ok(&app, &["run", "--rm", "layers-a:1", "sh", "-c", script]);
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts.len(), 6, "{out}");
    assert_eq!(parts[0], "kept.txt\n", "the whiteout deleted gone.txt only");
    assert_eq!(
        parts[1], "new\n",
        "the opaque directory hid the base's entries"
    );
    let inodes: Vec<&str> = parts[2].lines().collect();
    assert_eq!(inodes.len(), 2, "{out}");
    assert_eq!(inodes[0], inodes[1], "one inode for the hard-link pair");
    assert!(inodes[0].ends_with(" 2"), "two links: {}", inodes[0]);
    assert_eq!(parts[3], "character special file 1 3\n");
    assert_eq!(parts[4].trim_end(), long, "the 200-character name");
    assert_eq!(parts[5].trim(), "10000");
    // A second image on the same two lower layers adds its own layer only.
    docker_ok(&app, &["load", "-i", b.to_str().unwrap()]);
    let after_b = layers(&app);
    assert_eq!(after_b.len(), 4, "{after_b:?}");
    let new: Vec<_> = after_b.iter().filter(|l| !after_a.contains(l)).collect();
    assert_eq!(
        new.len(),
        1,
        "the shared layers are untouched: {after_a:?} -> {after_b:?}"
    );
    let base = after_a.iter().map(|l| l.1).max().unwrap();
    assert!(
        new[0].1 * 10 < base,
        "image b's own layer ({} bytes) is small beside the base ({base} bytes)",
        new[0].1
    );
    let hello = docker_ok(
        &app,
        &[
            "run",
            "--rm",
            "layers-b:1",
            "cat",
            "/b/hello",
            "/old/kept.txt",
        ],
    );
    assert_eq!(hello, "image bkept");

    // A layer that fails to apply: a clear error, no layer or work directory left behind.
    let failed = app.docker(&["load", "-i", c.to_str().unwrap()]);
    let said = format!("{}{}", text(&failed.stdout), text(&failed.stderr));
    assert!(!failed.status.success(), "{said}");
    assert!(said.contains("leads out of the destination"), "{said}");
    assert_eq!(layers(&app), after_b, "nothing half-built in the store");
    let leftovers: Vec<_> = std::fs::read_dir(app.home.root().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".work"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // docker system df counts the shared layers once.
    let df = docker_ok(
        &app,
        &[
            "system",
            "df",
            "--format",
            "{{.Type}} {{.TotalCount}} {{.Size}}",
        ],
    );
    assert!(df.contains("Images 2 "), "{df}");

    // Export for vSphere: one streamOptimized VMDK that qemu-img reads back.
    let vmdk_dir = work.join("vmdk");
    let out = app
        .cli()
        .args(["image", "export-vmdk", "layers-b:1"])
        .arg(&vmdk_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vmdk = PathBuf::from(text(&out.stdout).trim());
    let head = std::fs::read(&vmdk).unwrap();
    assert_eq!(&head[..4], b"KDMV", "a sparse VMDK's magic");
    let descriptor = String::from_utf8_lossy(&head[512..4096]);
    assert!(
        descriptor.contains("createType=\"streamOptimized\""),
        "{descriptor}"
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&vmdk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "vmdk");
    assert_eq!(
        info["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );

    // The file capability (the kernel has CONFIG_EXT4_FS_SECURITY, kernel-config/): run as
    // nobody, the capability-carrying busybox has exactly CAP_NET_BIND_SERVICE (bit 10)
    // effective, which only security.capability can give it.
    let before_cap = layers(&app);
    let loaded = app.docker(&["load", "-i", cap.to_str().unwrap()]);
    assert!(
        loaded.status.success(),
        "{}{}",
        text(&loaded.stdout),
        text(&loaded.stderr)
    );
    let caps = docker_ok(
        &app,
        &[
            "run",
            "--rm",
            "--user",
            "65534",
            "layers-cap:1",
            "/caps/cat",
            "/proc/self/status",
        ],
    );
    let eff = caps
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or("");
    assert_eq!(
        eff.split_whitespace().nth(1),
        Some("0000000000000400"),
        "{caps}"
    );
    docker_ok(&app, &["rmi", "layers-cap:1"]);
    assert_eq!(
        layers(&app),
        before_cap,
        "the capability layer is collected or never built"
    );

    // rmi counts references: a's own layer goes, the shared ones stay for b.
    docker_ok(&app, &["rmi", "layers-a:1"]);
    let after_rmi_a = layers(&app);
    assert!(
        names(&after_rmi_a).is_subset(&names(&after_b)),
        "{after_b:?} -> {after_rmi_a:?}"
    );
    assert_eq!(after_rmi_a.len(), 3, "{after_rmi_a:?}");
    assert!(after_rmi_a.contains(new[0]), "b's own layer stays");
    docker_ok(&app, &["rmi", "layers-b:1"]);
    assert!(layers(&app).is_empty(), "{:?}", layers(&app));
}

/// `debugfs -R "stat PATH"` on the raw filesystem `raw`: the inode's mode (octal, as debugfs
/// prints it) and its owner `uid:gid`.
fn debugfs_stat(raw: &std::path::Path, path: &str) -> (String, String) {
    let out = Command::new("debugfs")
        .args(["-R", &format!("stat {path}")])
        .arg(raw)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    let after = |key: &str| {
        let mut words = said.split_whitespace();
        words.find(|w| *w == key);
        words
            .next()
            .unwrap_or_else(|| panic!("no {key} for {path}: {said}"))
            .to_string()
    };
    (
        after("Mode:"),
        format!("{}:{}", after("User:"), after("Group:")),
    )
}

/// A layer above the bottom that carries `proc/`, `sys/` and `dev/` (every `podman build` layer
/// does): the VM that applies it mounts no kernel filesystem over them, so the directories'
/// metadata and a file inside one land on the layer's disk, beside the layer's other files; a
/// container on the image still gets its /proc and /sys.
#[test]
fn a_layer_carrying_proc_sys_and_dev_lands_on_its_disk() {
    let work = workspace().join("target/e2e/layers-mounts");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let l1 = work.join("l1");
    busybox_rootfs(&l1);
    let l2 = work.join("l2");
    for d in ["proc", "sys", "dev", "app"] {
        std::fs::create_dir_all(l2.join(d)).unwrap();
    }
    std::fs::write(l2.join("sys/marker"), "on the layer's disk\n").unwrap();
    std::fs::write(l2.join("app/hello"), "beside them\n").unwrap();
    host_script(&format!(
        "cd {} && chmod 0711 sys && chown 101:102 sys && chmod 0600 sys/marker && \
         chown 101:102 sys/marker && chmod 0750 dev && chown 0:5 dev && chmod 0555 proc && \
         chmod 0640 app/hello && chown 7:8 app/hello",
        l2.display()
    ));
    let tars: Vec<PathBuf> = [&l1, &l2]
        .iter()
        .map(|d| {
            let t = d.with_extension("tar");
            layer_tar(d, &t);
            t
        })
        .collect();
    let archive = save_archive(&work, "mounts", "layers-mounts:1", &[&tars[0], &tars[1]]);

    let app = Appliance::start_process("layers-mounts");
    docker_ok(&app, &["load", "-i", archive.to_str().unwrap()]);
    let store = app.home.root().join("images/layers");
    let top: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|d| {
            let record = std::fs::read_to_string(d.join("layer.json")).unwrap_or_default();
            !record.contains("\"parent\": null")
        })
        .collect();
    assert_eq!(top.len(), 1, "one layer above the bottom: {top:?}");
    // The layer's disk read through its chain, as a raw filesystem debugfs reads.
    let raw = work.join("top.raw");
    let out = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(top[0].join("disk.qcow2"))
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        debugfs_stat(&raw, "/sys"),
        ("0711".into(), "101:102".into())
    );
    assert_eq!(debugfs_stat(&raw, "/dev"), ("0750".into(), "0:5".into()));
    assert_eq!(debugfs_stat(&raw, "/proc"), ("0555".into(), "0:0".into()));
    assert_eq!(
        debugfs_stat(&raw, "/sys/marker"),
        ("0600".into(), "101:102".into())
    );
    assert_eq!(
        debugfs_stat(&raw, "/app/hello"),
        ("0640".into(), "7:8".into())
    );
    let marker = Command::new("debugfs")
        .args(["-R", "cat /sys/marker"])
        .arg(&raw)
        .output()
        .unwrap();
    assert_eq!(text(&marker.stdout), "on the layer's disk\n");
    let _ = std::fs::remove_file(&raw);

    // A container on it: the layer's file, and the kernel's /proc and /sys mounted over the
    // layer's directories.
    let out = docker_ok(
        &app,
        &[
            "run",
            "--rm",
            "layers-mounts:1",
            "sh",
            "-c",
            "stat -c '%a %u:%g' /app/hello; cat /app/hello; cat /proc/self/comm; \
             test -d /sys/kernel && test ! -e /sys/marker && echo sysfs",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["640 7:8", "beside them", "cat", "sysfs"], "{out}");
    docker_ok(&app, &["rmi", "layers-mounts:1"]);
}
