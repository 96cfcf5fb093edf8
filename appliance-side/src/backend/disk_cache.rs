//! Image disks, built once per distinct input and kept under `$TETHER_HOME/images`, keyed by the
//! input's digest. A failed build leaves nothing behind.

use std::path::{Path, PathBuf};

use guestinfo::contract::DEFAULT_DISK_LABEL;

use crate::backend::BackendError;
use crate::home::Home;

/// The image's disk (qcow2), built now if this input has not been seen.
pub fn image_disk(home: &Home, image: &Path) -> Result<PathBuf, BackendError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| BackendError::Io { what, path, source }
    };
    let meta = std::fs::metadata(image).map_err(io("image", image))?;
    let digest = if meta.is_dir() {
        bootstrap::disk::dir_digest(image)
    } else {
        bootstrap::disk::sha256_file(image)
    }
    .map_err(io("reading image", image))?;
    let images = home.root().join("images");
    std::fs::create_dir_all(&images).map_err(io("creating", &images))?;
    let disk = images.join(format!("{}.qcow2", &digest[..32]));
    if disk.exists() {
        return Ok(disk);
    }
    tracing::info!(image = %image.display(), "building the image disk (cached afterwards)");
    let work = images.join(format!("{}.work", &digest[..32]));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let built = build(image, &work, &disk);
    let _ = std::fs::remove_dir_all(&work);
    built.map(|()| disk)
}

fn build(image: &Path, work: &Path, disk: &Path) -> Result<(), BackendError> {
    let rootfs = bootstrap::image::materialize(image, work).map_err(|e| BackendError::Image {
        path: image.to_path_buf(),
        source: Box::new(e),
    })?;
    let raw = work.join("disk.raw");
    let tmp = work.join("disk.qcow2");
    bootstrap::disk::ext4_from_dir(&rootfs, &raw, DEFAULT_DISK_LABEL, 0)
        .and_then(|_| bootstrap::disk::convert(&raw, &tmp, bootstrap::disk::Format::Qcow2))
        .and_then(|_| std::fs::rename(&tmp, disk))
        .map_err(|source| BackendError::DiskBuild {
            path: image.to_path_buf(),
            source,
        })
}
