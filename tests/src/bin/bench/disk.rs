//! Image disk build throughput: a 200 MB rootfs tarball to a raw ext4 disk with the toolchain
//! (`bootstrap-iso disk`), against doing it by hand (`tar x` + `mkfs.ext4 -d`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::util::{release_binary, run};

pub struct DiskRun {
    pub rootfs_bytes: u64,
    /// Seconds per build: the toolchain to raw, by hand to raw, the toolchain to VMDK.
    pub toolchain_raw: Vec<f64>,
    pub by_hand: Vec<f64>,
    pub toolchain_vmdk: Vec<f64>,
}

/// A rootfs of ~200 MB: the busybox image, 190 files of 1 MiB that do not compress and 2,000
/// files of 4 KiB, as a plain tarball. Returns (tarball, bytes of file content).
fn make_rootfs(dir: &Path) -> (PathBuf, u64) {
    let root = dir.join("rootfs200");
    let _ = std::fs::remove_dir_all(&root);
    e2e::busybox_rootfs(&root);
    let data = root.join("data");
    std::fs::create_dir_all(data.join("small")).unwrap();
    let mut x = 0x2545f4914f6cdd1du64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    };
    for i in 0..190 {
        std::fs::write(data.join(format!("blob{i:03}")), noise(1 << 20)).unwrap();
    }
    for i in 0..2000 {
        std::fs::write(data.join("small").join(format!("f{i:04}")), noise(4096)).unwrap();
    }
    let tarball = dir.join("rootfs200.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg("."));
    let bytes = run(Command::new("du").args(["-sb"]).arg(&root))
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(&root);
    (tarball, bytes)
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    run(cmd);
    t.elapsed().as_secs_f64()
}

pub fn disk_build(dir: &Path, runs: usize) -> DiskRun {
    let tool = release_binary("bootstrap-iso", "bootstrap-iso", None);
    let (tarball, rootfs_bytes) = make_rootfs(dir);
    // The same size for both, so mkfs does the same work: what the toolchain picks by default.
    let size_mb = rootfs_bytes * 3 / 2 / (1024 * 1024) + 32 + 2200 / 256;
    let (mut toolchain_raw, mut by_hand, mut toolchain_vmdk) = (vec![], vec![], vec![]);
    let out = dir.join("bench-disk.raw");
    let vmdk = dir.join("bench-disk.vmdk");
    let hand_dir = dir.join("by-hand");
    // Seconds for `bootstrap-iso disk` to build the tarball into `to` as `format`.
    let toolchain = |format: &str, to: &Path| {
        let _ = std::fs::remove_file(to);
        timed(
            Command::new(&tool)
                .args(["disk", "--image"])
                .arg(&tarball)
                .args(["--format", format, "--size", &size_mb.to_string(), "-o"])
                .arg(to),
        )
    };
    for _ in 0..runs {
        toolchain_raw.push(toolchain("raw", &out));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_dir_all(&hand_dir);
        std::fs::create_dir_all(&hand_dir).unwrap();
        let t = Instant::now();
        run(Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&hand_dir));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-L", "containerfs", "-d"])
            .arg(&hand_dir)
            .arg(&out)
            .arg(format!("{size_mb}M")));
        by_hand.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&hand_dir);
        toolchain_vmdk.push(toolchain("vmdk", &vmdk));
    }
    for p in [&out, &vmdk, &tarball] {
        let _ = std::fs::remove_file(p);
    }
    DiskRun {
        rootfs_bytes,
        toolchain_raw,
        by_hand,
        toolchain_vmdk,
    }
}
