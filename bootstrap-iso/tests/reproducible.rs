//! Same inputs, same bytes: the initramfs and image disks are reproducible.

mod common;

use std::path::Path;
use std::process::Command;

use bootstrap::disk::{self, Format};
use common::scratch;

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("bin/tool"), vec![7u8; 300_000]).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("tool", root.join("bin/alias")).unwrap();
    // Same mtimes on both copies (as a tarball would give them); ctimes and atimes differ.
    for p in ["bin/tool", "etc/passwd", "bin", "etc", ""] {
        Command::new("touch")
            .args(["-h", "-d", "@1000000000"])
            .arg(root.join(p))
            .status()
            .unwrap();
    }
    Command::new("touch")
        .args(["-h", "-d", "@1000000000"])
        .arg(root.join("bin/alias"))
        .status()
        .unwrap();
}

#[test]
fn initramfs_is_byte_identical_across_builds() {
    let a = bootstrap::initramfs::build(b"pretend tether").unwrap();
    let b = bootstrap::initramfs::build(b"pretend tether").unwrap();
    assert_eq!(a, b);
    assert_ne!(a, bootstrap::initramfs::build(b"another tether").unwrap());
}

#[test]
fn disks_from_the_same_content_are_byte_identical_raw_qcow2_and_vmdk() {
    let d = scratch("disk");
    tree(&d.join("one"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    tree(&d.join("two")); // created a second later: different ctimes
    let mut sums = Vec::new();
    for name in ["one", "two"] {
        // Each build in its own directory under the same file names: a VMDK descriptor names
        // its own file, so "same inputs" includes the output's name.
        let out = d.join(format!("out-{name}"));
        std::fs::create_dir_all(&out).unwrap();
        let raw = out.join("disk.raw");
        disk::ext4_from_dir(&d.join(name), &raw, "containerfs", 0).unwrap();
        let (qcow, vmdk) = (out.join("disk.qcow2"), out.join("disk.vmdk"));
        disk::convert(&raw, &qcow, Format::Qcow2).unwrap();
        disk::convert(&raw, &vmdk, Format::Vmdk).unwrap();
        sums.push([&raw, &qcow, &vmdk].map(|p| disk::sha256_file(p).unwrap()));
    }
    assert_eq!(sums[0], sums[1]);
    // The label the guest looks for is there.
    let label = Command::new("e2label")
        .arg(d.join("out-one/disk.raw"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "containerfs");
}

/// A rootfs tarball unpacked twice, a second apart, gives the same disk, and the same disk as
/// the directory it was made from: directory mtimes come from the tarball, not the unpacking.
#[test]
fn disks_from_the_same_rootfs_tarball_are_byte_identical() {
    let d = scratch("tarball");
    tree(&d.join("src"));
    let tarball = d.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(d.join("src"))
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let mut sums = Vec::new();
    for name in ["one", "two"] {
        let root = d.join(format!("unpacked-{name}"));
        disk::extract_tar(&tarball, &root).unwrap();
        let raw = d.join(format!("out-{name}/disk.raw"));
        std::fs::create_dir_all(raw.parent().unwrap()).unwrap();
        disk::ext4_from_dir(&root, &raw, "containerfs", 0).unwrap();
        sums.push(disk::sha256_file(&raw).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let from_dir = d.join("out-dir/disk.raw");
    std::fs::create_dir_all(from_dir.parent().unwrap()).unwrap();
    disk::ext4_from_dir(&d.join("src"), &from_dir, "containerfs", 0).unwrap();
    assert_eq!(sums[0], sums[1], "two unpackings of one tarball");
    assert_eq!(
        sums[0],
        disk::sha256_file(&from_dir).unwrap(),
        "tarball vs its directory"
    );
}

#[test]
fn the_bootstrap_iso_is_byte_identical_across_builds() {
    let d = scratch("iso");
    std::fs::write(d.join("kernel"), vec![1u8; 100_000]).unwrap();
    std::fs::write(
        d.join("initramfs"),
        bootstrap::initramfs::build(b"tether").unwrap(),
    )
    .unwrap();
    let mut sums = Vec::new();
    for n in 0..2 {
        let out = d.join(format!("{n}.iso"));
        bootstrap::iso::build(
            &d.join("kernel"),
            &d.join("initramfs"),
            "console=ttyS0",
            &out,
        )
        .unwrap();
        sums.push(disk::sha256_file(&out).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(sums[0], sums[1]);
    // It is an El Torito ISO: the boot record volume descriptor is at sector 17.
    let iso = std::fs::read(d.join("0.iso")).unwrap();
    assert_eq!(
        &iso[17 * 2048 + 7..17 * 2048 + 30],
        b"EL TORITO SPECIFICATION"
    );
}
