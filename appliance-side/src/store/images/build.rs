//! An image's disk, built once when the image is loaded, with the toolchain library as
//! `backend/disk_cache.rs` builds one: the layers become a root filesystem (every digest
//! verified), the root filesystem an ext4 filesystem labelled for tether, that a qcow2.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use guestinfo::contract::DEFAULT_DISK_LABEL;
use thiserror::Error;

/// Why an image's disk could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("creating {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The layers or the tools failed; the message names the layer or the tool.
    #[error("building the image disk: {0}")]
    Disk(String),
}

/// Builds the disk of the single-image layout at `layout` into `disk`, working in `work`;
/// returns the size of the root filesystem's content. Messages name the archive's files,
/// not the work directory (`scrub` lists the prefixes to take off).
pub(super) fn disk(
    layout: &Path,
    work: &Path,
    disk: &Path,
    scrub: &[PathBuf],
) -> Result<u64, BuildError> {
    let clean = |msg: String| {
        scrub
            .iter()
            .fold(msg, |m, p| m.replace(&format!("{}/", p.display()), ""))
    };
    std::fs::create_dir_all(work).map_err(|source| BuildError::Io {
        path: work.to_path_buf(),
        source,
    })?;
    let rootfs = bootstrap::image::materialize(layout, work)
        .map_err(|e| BuildError::Disk(clean(bootstrap::error::with_causes(&e))))?;
    let size = content_size(&rootfs);
    let raw = work.join("disk.raw");
    bootstrap::disk::ext4_from_dir(&rootfs, &raw, DEFAULT_DISK_LABEL, 0)
        .and_then(|()| bootstrap::disk::convert(&raw, disk, bootstrap::disk::Format::Qcow2))
        .map_err(|e| BuildError::Disk(clean(bootstrap::error::with_causes(&e))))?;
    Ok(size)
}

/// What docker calls an image's size: the bytes of its files (a hard link counted once,
/// a symlink as its target's length), directories not counted.
pub(super) fn content_size(root: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.nlink() < 2 || seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_files_once_and_not_directories() {
        let dir = std::env::temp_dir().join(format!("img-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), [0u8; 1000]).unwrap();
        std::fs::hard_link(dir.join("a/b/f"), dir.join("g")).unwrap();
        std::os::unix::fs::symlink("a/b/f", dir.join("l")).unwrap();
        assert_eq!(content_size(&dir), 1000 + 5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
