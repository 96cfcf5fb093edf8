//! The busybox image the QEMU tier boots: its root directory, and a docker-archive of it made
//! by a peer tool (podman).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
