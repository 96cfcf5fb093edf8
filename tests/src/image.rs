//! The busybox image the QEMU tier boots: its root directory, and a docker-archive of it made
//! by a peer tool (podman); and multi-layer `docker save` archives made by hand from layer tars.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::{artifacts, artifacts_rootfs, must, workspace};

/// A minimal image: Debian's static busybox and its applets, passwd and group.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    let list = must(Command::new("/bin/busybox").arg("--list"), "busybox --list");
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// A docker-archive of the busybox image made by a peer tool (podman import + save) with an
/// image config: ENTRYPOINT, CMD, ENV, WORKDIR, USER, LABEL and STOPSIGNAL. Built once per test
/// process; returns the archive and its tag.
pub fn busybox_image_archive() -> (PathBuf, &'static str) {
    const TAG: &str = "localhost/tether-busybox:e2e";
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    let path = ARCHIVE.get_or_init(|| {
        let dir = workspace().join("target/e2e/podman");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rootfs_tar = dir.join("rootfs.tar");
        must(
            Command::new("tar")
                .arg("-C")
                .arg(artifacts_rootfs_built())
                .args(["-cf"])
                .arg(&rootfs_tar)
                .arg("."),
            "tar of the busybox rootfs",
        );
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(dir.join("root"))
                .arg("--runroot")
                .arg(dir.join("run"))
                .args(["--storage-driver", "vfs", "--events-backend", "none"])
                .args(args)
                .env("HOME", &dir);
            must(&mut c, &format!("podman {}", args.join(" ")))
        };
        let rootfs = rootfs_tar.to_string_lossy().into_owned();
        podman(&[
            "import",
            "--change",
            r#"ENTRYPOINT ["/bin/sh", "-c"]"#,
            "--change",
            r#"CMD ["echo $GREETING from $(pwd) as $(id -u)"]"#,
            "--change",
            "ENV GREETING=hello",
            "--change",
            "WORKDIR /tmp",
            "--change",
            "USER 65534",
            "--change",
            "LABEL tier=e2e",
            "--change",
            "STOPSIGNAL SIGTERM",
            &rootfs,
            TAG,
        ]);
        let archive = dir.join("busybox-image.tar");
        let out = archive.to_string_lossy().into_owned();
        podman(&["save", "--format", "docker-archive", "-o", &out, TAG]);
        archive
    });
    (path.clone(), TAG)
}

/// The busybox rootfs of [`artifacts`], built.
fn artifacts_rootfs_built() -> PathBuf {
    artifacts();
    artifacts_rootfs()
}

fn shell(script: &str) {
    must(Command::new("sh").args(["-ec", script]), script);
}

fn sha256_file(p: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(p).unwrap()))
}

/// GNU tar of the directory `dir` (POSIX format, with extended attributes) at `out`: one image
/// layer.
pub fn layer_tar(dir: &Path, out: &Path) {
    shell(&format!(
        "tar --format=posix --xattrs --xattrs-include='*' --numeric-owner -C {} -cf {} .",
        dir.display(),
        out.display()
    ));
}

/// A `docker save` archive at `work/<name>.tar` of one image tagged `tag` whose layers are the
/// tars given, lowest first.
pub fn save_archive(work: &Path, name: &str, tag: &str, layers: &[&Path]) -> PathBuf {
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]});
    save_archive_with_config(work, name, tag, layers, config)
}

/// [`save_archive`] with `config` as the image's config (Entrypoint, User, Volumes, ...).
pub fn save_archive_with_config(
    work: &Path,
    name: &str,
    tag: &str,
    layers: &[&Path],
    image_config: serde_json::Value,
) -> PathBuf {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut diff_ids = Vec::new();
    let mut files = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let rel = format!("{i}/layer.tar");
        std::fs::create_dir_all(dir.join(i.to_string())).unwrap();
        std::fs::copy(l, dir.join(&rel)).unwrap();
        diff_ids.push(format!("sha256:{}", sha256_file(l)));
        files.push(rel);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T00:00:00Z",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let bytes = serde_json::to_vec(&config).unwrap();
    let hex = format!("{:x}", Sha256::digest(&bytes));
    std::fs::write(dir.join(format!("{hex}.json")), &bytes).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{hex}.json"), "RepoTags": [tag], "Layers": files,
    }]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let out = work.join(format!("{name}.tar"));
    shell(&format!("tar -C {} -cf {} .", dir.display(), out.display()));
    out
}

/// A static program for containerVMs, built from `tests/fixtures/NAME.rs` (std only) with rustc
/// for x86_64-unknown-linux-musl, once per test process; for `docker cp` into a container, where
/// busybox has no applet that does the job (a UDP server, ...).
pub fn guest_program(name: &str) -> PathBuf {
    let out = workspace().join("target/e2e/fixtures").join(name);
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|n| n == name) {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let src = workspace()
            .join("tests/fixtures")
            .join(format!("{name}.rs"));
        must(
            Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "--target",
                    "x86_64-unknown-linux-musl",
                ])
                .arg(&src)
                .arg("-o")
                .arg(&out),
            &format!("building {}", src.display()),
        );
        built.push(name.to_string());
    }
    out
}
