//! The library as other crates call it: appliance-side's image cache (`run.rs`, `image_disk`) and
//! the QEMU harness in tests/ (`Artifacts`). The calls are written here as they are written there,
//! so a change to the library that would break those crates fails to compile in this one.

mod common;

use common::scratch;
use std::path::{Path, PathBuf};

/// appliance-side's `image_disk`, with its error type reduced to a String.
fn image_disk(images: &Path, image: &Path) -> Result<PathBuf, String> {
    let err = |s: String| s;
    let meta =
        std::fs::metadata(image).map_err(|e| err(format!("image {}: {e}", image.display())))?;
    let digest = if meta.is_dir() {
        bootstrap::disk::dir_digest(image)
    } else {
        bootstrap::disk::sha256_file(image)
    }
    .map_err(|e| err(format!("reading image {}: {e}", image.display())))?;
    let disk = images.join(format!("{}.qcow2", &digest[..32]));
    let work = images.join(format!("{}.work", &digest[..32]));
    std::fs::create_dir_all(&work).map_err(|e| err(e.to_string()))?;
    let rootfs = bootstrap::image::materialize(image, &work)
        .map_err(|e| err(format!("image {}: {e}", image.display())))?;
    let raw = work.join("disk.raw");
    let tmp = work.join("disk.qcow2");
    bootstrap::disk::ext4_from_dir(&rootfs, &raw, "containerfs", 0)
        .and_then(|_| bootstrap::disk::convert(&raw, &tmp, bootstrap::disk::Format::Qcow2))
        .and_then(|_| std::fs::rename(&tmp, &disk))
        .map_err(|e| err(format!("building the image disk: {e}")))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(disk)
}

#[test]
fn the_appliances_image_cache_builds_a_qcow2_and_names_a_bad_image() {
    let d = scratch("appliance");
    let root = d.rootfs();
    let disk = image_disk(&d, &root).unwrap();
    assert!(disk.exists());
    let accel_digest =
        bootstrap::disk::sha256_file(&disk.with_extension("none")).unwrap_or_default();
    assert!(accel_digest.is_empty());

    let empty = d.join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let e = image_disk(&d, &empty).unwrap_err();
    assert!(
        e.contains("empty file") && e.contains(&*empty.to_string_lossy()),
        "{e}"
    );
}

/// The harness's `Artifacts` and the benchmarks: initramfs, a disk labelled by name, the ISO.
#[test]
fn the_harness_builds_initramfs_disk_and_iso() {
    let d = scratch("harness");
    let initramfs = d.join("initramfs.gz");
    std::fs::write(&initramfs, bootstrap::initramfs::build(b"tether").unwrap()).unwrap();
    let rootfs = d.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let disk_label: &str = "other";
    bootstrap::disk::ext4_from_dir(&rootfs, &d.join("busybox.raw"), disk_label, 0).unwrap();
    let kernel = d.join("bzImage");
    std::fs::write(&kernel, vec![1u8; 4096]).unwrap();
    let iso = d.join("bootstrap.iso");
    bootstrap::iso::build(&kernel, &initramfs, bootstrap::iso::DEFAULT_APPEND, &iso).unwrap();
    let mut args: Vec<String> = Vec::new();
    let mut push = |s: &str| args.push(s.to_string());
    push(bootstrap::iso::DEFAULT_APPEND);
    assert_eq!(args, ["console=ttyS0 panic=-1 no_timer_check quiet"]);
}
