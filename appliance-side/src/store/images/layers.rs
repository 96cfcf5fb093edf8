//! The layer store, `$TETHER_HOME/images/layers/<chain id hex>/`: each image layer's filesystem
//! built once, as a qcow2 (`disk.qcow2`) with its record (`layer.json`), keyed by the layer's
//! OCI ChainID (the bottom layer's DiffID; above it sha256 of the parent's ChainID, a space and
//! the layer's DiffID), so every image on the same lower layers shares their disks, as VIC's
//! snapshot chain of read-only VMDKs did.
//!
//! * The bottom layer is an ext4 filesystem made here with the toolchain (mkfs.ext4 -d, labelled
//!   for tether) whose virtual size leaves room for every layer above it and for containers'
//!   writes; the disk is sparse, so the room costs nothing until written.
//! * Each layer above is a qcow2 overlay of its parent's disk (`qemu-img create -b parent`),
//!   into which the layer is applied by a [`LayerApplier`]: in a containerVM, by tether's
//!   `ApplyLayer` built-in (the engine's `engine/layers.rs`). This store never boots a VM.
//!
//! A layer is built in a `.layer-<pid>-<random>.work` directory beside the images and renamed
//! in whole: a layer that fails to apply leaves nothing. Reference counts are not stored: a
//! layer is referenced while an image record (a removed image still kept for a container
//! included) has it in its chain, or a load under way has pinned it; the count is taken under
//! the image lock whenever layers are collected, so no crash can leave it wrong.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::path_io::{io_err, PathIoError};

use guestinfo::contract::DEFAULT_DISK_LABEL;

const LAYER_FILE: &str = "layer.json";
const DISK_FILE: &str = "disk.qcow2";

/// The bottom layer's filesystem size, at least: room for the layers above and for containers'
/// writes. Sparse: an empty 4 GiB ext4 costs about 4 MiB of metadata in its qcow2.
pub const BASE_MIN_MB: u64 = 4096;

/// The qcow2 cluster size of a layer above the bottom: the filesystem's block size. A layer
/// keeps every cluster its apply touched, and the apply touches a few scattered ext4 blocks
/// beside the files (superblock, group descriptors, bitmaps, inode table and directory blocks):
/// at qemu-img's default 64 KiB each of those cost 16 blocks (docs/architecture.md). Bottom
/// layers keep the default: they are written whole.
pub const LAYER_CLUSTER_BYTES: u32 = 4096;

/// Applies one layer to a disk: the VM half of a layer build, which only the engine can do.
pub trait LayerApplier: Sync {
    /// Applies the uncompressed layer tar `tar` to the filesystem on `disk` (a fresh qcow2
    /// overlay of the layer below), which is consistent on disk when this returns `Ok`.
    /// `what` names the layer for messages. The error is one line of reason.
    fn apply(&self, disk: &Path, tar: &Path, what: &str) -> Result<(), String>;
}

/// Why a layer could not be built.
#[derive(Debug, Error)]
pub enum LayerError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error(
        "layer {index} ({file}) does not match its diff id {expected} (got sha256:{actual}): \
         the archive is corrupt or was changed"
    )]
    DiffId {
        index: usize,
        /// The layer's file in the archive.
        file: String,
        expected: String,
        actual: String,
    },
    #[error("layer {0} of the image is zstd-compressed, which is not supported yet; use gzip")]
    Zstd(usize),
    #[error("building layer {index} of the image: {detail}")]
    Build { index: usize, detail: String },
}

/// `layer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub chain_id: String,
    pub diff_id: String,
    /// The chain id of the layer below; `None` for a bottom layer.
    pub parent: Option<String>,
    /// Bytes of the layer's tar, uncompressed.
    pub tar_size: u64,
}

/// The OCI ChainIDs of layers with these DiffIDs, lowest first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let id = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{}",
                bootstrap::digest::sha256_reader(format!("{parent} {d}").as_bytes())
                    .unwrap_or_default()
            ),
        };
        out.push(id);
    }
    out
}

fn hex(chain: &str) -> &str {
    chain.strip_prefix("sha256:").unwrap_or(chain)
}

/// Bytes a file takes on disk (its allocated blocks), 0 if it is not there.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
}

impl LayerStore {
    /// The store under `images` (`images/layers`).
    pub fn new(images: &Path) -> Self {
        Self {
            root: images.join("layers"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, chain: &str) -> PathBuf {
        self.root.join(hex(chain))
    }

    pub fn disk(&self, chain: &str) -> PathBuf {
        self.dir(chain).join(DISK_FILE)
    }

    /// The record of a built layer.
    pub fn get(&self, chain: &str) -> Option<LayerRecord> {
        let bytes = std::fs::read(self.dir(chain).join(LAYER_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every built layer.
    pub fn list(&self) -> Vec<LayerRecord> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| super::reference::is_hex64(&e.file_name().to_string_lossy()))
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()))
            .collect()
    }

    /// Builds layer `index` (1-based, for messages) with chain id `chain` from the layer file
    /// `blob` (as stored in the archive, gzip or not), which must have `diff_id`, on the layer
    /// `parent` (built already), working in `work` (a directory of its own); then renames it
    /// into the store. Another load may have built it meanwhile: then that one stays.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        index: usize,
        chain: &str,
        diff_id: &str,
        parent: Option<&str>,
        blob: &Path,
        work: &Path,
        applier: &dyn LayerApplier,
    ) -> Result<(), LayerError> {
        std::fs::create_dir_all(work).map_err(io_err("creating", work))?;
        let tar = work.join("layer.tar");
        let tar_size = uncompressed(index, blob, &tar)?;
        let actual = bootstrap::digest::sha256_file(&tar).map_err(io_err("reading", &tar))?;
        if format!("sha256:{actual}") != diff_id {
            return Err(LayerError::DiffId {
                index,
                file: blob
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                expected: diff_id.to_string(),
                actual,
            });
        }
        let out = work.join("layer");
        std::fs::create_dir_all(&out).map_err(io_err("creating", &out))?;
        let disk = out.join(DISK_FILE);
        let build_err = |detail: String| LayerError::Build { index, detail };
        match parent {
            None => base_disk(&tar, work, &disk).map_err(|e| build_err(e.to_string()))?,
            Some(p) => {
                overlay(&self.disk(p), &disk).map_err(build_err)?;
                applier
                    .apply(&disk, &tar, &format!("layer {index} ({diff_id})"))
                    .map_err(build_err)?;
                sparse_l1(&disk).map_err(|e| build_err(format!("{}: {e}", disk.display())))?;
            }
        }
        let _ = std::fs::remove_file(&tar);
        let record = LayerRecord {
            chain_id: chain.to_string(),
            diff_id: diff_id.to_string(),
            parent: parent.map(str::to_string),
            tar_size,
        };
        let path = out.join(LAYER_FILE);
        let bytes = serde_json::to_vec_pretty(&record).map_err(|e| build_err(e.to_string()))?;
        std::fs::write(&path, bytes).map_err(io_err("writing", &path))?;
        std::fs::create_dir_all(&self.root).map_err(io_err("creating", &self.root))?;
        let dest = self.dir(chain);
        if self.get(chain).is_some() {
            return Ok(());
        }
        if dest.exists() {
            // A directory without a readable record is no layer: replace it.
            let _ = std::fs::remove_dir_all(&dest);
        }
        match std::fs::rename(&out, &dest) {
            Ok(()) => Ok(()),
            Err(_) if self.get(chain).is_some() => Ok(()),
            Err(e) => Err(io_err("installing the layer at", &dest)(e).into()),
        }
    }

    /// Removes every layer not in `referenced`, each renamed out of the way (`gone` gives a
    /// work path) before its removal; returns the chain ids removed.
    pub fn collect(&self, referenced: &HashSet<String>, gone: &dyn Fn() -> PathBuf) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return removed;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !super::reference::is_hex64(&name) || referenced.contains(&format!("sha256:{name}"))
            {
                continue;
            }
            let to = gone();
            if std::fs::rename(e.path(), &to).is_ok() {
                let _ = std::fs::remove_dir_all(&to);
                removed.push(format!("sha256:{name}"));
            }
        }
        removed
    }
}

/// Writes the layer file at `blob` uncompressed to `tar`; returns its size.
fn uncompressed(index: usize, blob: &Path, tar: &Path) -> Result<u64, LayerError> {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(blob)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io_err("reading", blob))?;
    let f = std::fs::File::open(blob).map_err(io_err("reading", blob))?;
    let mut reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(f)),
        [0x28, 0xb5, 0x2f, 0xfd] => return Err(LayerError::Zstd(index)),
        _ => Box::new(f),
    };
    let mut out = std::fs::File::create(tar).map_err(io_err("creating", tar))?;
    io::copy(&mut reader, &mut out).map_err(|e| LayerError::Build {
        index,
        detail: format!("decompressing the layer: {e}"),
    })
}

/// The bottom layer's disk: its files as an ext4 filesystem (the toolchain's, as a flattened
/// image's), sized for the layers and containers above it, as a sparse qcow2.
fn base_disk(tar: &Path, work: &Path, disk: &Path) -> io::Result<()> {
    let rootfs = work.join("rootfs");
    extract_base(tar, &rootfs)?;
    let bytes = super::build::content_size(&rootfs);
    let size_mb = (bytes * 2 / (1024 * 1024) + 1024).max(BASE_MIN_MB);
    let raw = work.join("disk.raw");
    bootstrap::disk::ext4_from_dir(&rootfs, &raw, DEFAULT_DISK_LABEL, size_mb)?;
    let _ = std::fs::remove_dir_all(&rootfs);
    bootstrap::disk::convert(&raw, disk, bootstrap::disk::Format::Qcow2)?;
    std::fs::remove_file(&raw)
}

/// Unpacks the bottom layer into `rootfs` with its owners, modes, mtimes (directories' last)
/// and extended attributes, which mkfs.ext4 -d copies into the filesystem. Whiteouts in a
/// bottom layer have nothing below them to delete and are skipped.
fn extract_base(tar: &Path, rootfs: &Path) -> io::Result<()> {
    std::fs::create_dir_all(rootfs)?;
    let mut archive = tar::Archive::new(std::fs::File::open(tar)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let whiteout = entry
            .path()?
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".wh."));
        if !whiteout {
            entry.unpack_in(rootfs)?;
        }
    }
    bootstrap::dirtimes::DirTimes::of_tarball(tar, rootfs)
        .and_then(|t| t.apply())
        .map_err(io::Error::other)
}

/// Punches holes where a qcow2's L1 table holds only zeros. qemu-img writes the whole table,
/// sized for the disk (16 KiB for 4 GiB of 4 KiB clusters), and a small layer uses a few of
/// its entries; a hole reads back as the zeros it held, and a layer's disk is never written
/// again (only read, as a backing file).
fn sparse_l1(disk: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let mut header = [0u8; 48];
    file.read_exact_at(&mut header, 0)?;
    if header[..4] != *b"QFI\xfb" {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a qcow2"));
    }
    let entries = u32::from_be_bytes(header[36..40].try_into().expect("4 bytes"));
    let offset = u64::from_be_bytes(header[40..48].try_into().expect("8 bytes"));
    let block = 4096u64;
    let start = offset.div_ceil(block) * block;
    let end = (offset + u64::from(entries) * 8) / block * block;
    let mut buf = vec![0u8; block as usize];
    let mut at = start;
    while at < end {
        file.read_exact_at(&mut buf, at)?;
        if buf.iter().all(|&b| b == 0) {
            nix::fcntl::fallocate(
                &file,
                nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                    | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                block as libc::off_t,
            )?;
        }
        at += block;
    }
    Ok(())
}

/// A qcow2 overlay at `disk` whose backing file is `parent` (a qcow2).
fn overlay(parent: &Path, disk: &Path) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-o"])
        .arg(format!("cluster_size={LAYER_CLUSTER_BYTES}"))
        .arg("-b")
        .arg(parent)
        .arg(disk)
        .output()
        .map_err(|e| format!("qemu-img: {e} (run `make deps`)"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a, "the bottom layer's chain id is its diff id");
        let want = bootstrap::digest::sha256_reader(format!("{a} {b}").as_bytes()).unwrap();
        assert_eq!(ids[1], format!("sha256:{want}"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn an_overlays_zero_l1_blocks_become_holes_and_it_still_reads() {
        let dir = std::env::temp_dir().join(format!("sparse-l1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (base, top) = (dir.join("base.qcow2"), dir.join("top.qcow2"));
        let run = |tool: &str, args: &[&str]| {
            let out = Command::new(tool).args(args).output().unwrap();
            assert!(out.status.success(), "{tool} {args:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let top_s = top.to_str().unwrap();
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "4G"],
        );
        overlay(&base, &top).unwrap();
        // One cluster written at 3 GiB: L1 entry 1536 of 2048 (2 MiB each), in the table's
        // last 4 KiB; the three blocks before it stay zero.
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x55 3G 4k", top_s],
        );
        sparse_l1(&top).unwrap();
        // The L1 table of a fresh 4 KiB-cluster qcow2 starts at 12 KiB, after the header and
        // the refcount table and block: its first three blocks are holes now, its last not.
        let file = std::fs::File::open(&top).unwrap();
        let next_data =
            |at: i64| nix::unistd::lseek(&file, at, nix::unistd::Whence::SeekData).unwrap();
        for block in [12 << 10, 16 << 10, 20 << 10] {
            assert!(
                next_data(block) >= (24 << 10),
                "L1 block at {block} is not a hole"
            );
        }
        assert_eq!(next_data(24 << 10), 24 << 10);
        let read = run(
            "qemu-io",
            &["-f", "qcow2", "-c", "read -P 0x55 3G 4k", top_s],
        );
        assert!(read.contains("read 4096/4096"), "{read}");
        run("qemu-img", &["check", "-q", top_s]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
