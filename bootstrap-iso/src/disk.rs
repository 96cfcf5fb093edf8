//! Image disks: a root filesystem (directory or plain tarball) becomes an ext4 filesystem labelled
//! [`DEFAULT_DISK_LABEL`](guestinfo::contract::DEFAULT_DISK_LABEL) unless told otherwise, then
//! raw, qcow2 or VMDK. Builds are reproducible: the UUID and directory hash seed derive from the
//! content, mke2fs runs with `E2FSPROGS_FAKE_TIME`, and one debugfs pass sets the times mke2fs
//! copies from the host (ctime, atime) to zero and removes the `lost+found` mke2fs adds (unless
//! the root filesystem has its own).
//!
//! The public functions return [`io::Result`], so callers can chain them with `std::fs` calls;
//! what went wrong is an [`Error`] inside the [`io::Error`] (`e.get_ref()` and `downcast_ref`),
//! and its message names the file or the tool and what to do.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::digest::hex;
pub use crate::digest::sha256_file;
use crate::dirtimes::DirTimes;
use crate::error::IoError;

/// What can go wrong building a disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: cannot run {program}: {source} (install it: `make deps`)")]
    Spawn {
        what: &'static str,
        program: String,
        source: io::Error,
    },
    #[error("{what} failed ({status}): {stderr}{hint}")]
    Failed {
        what: &'static str,
        status: ExitStatus,
        stderr: String,
        /// What to try, when the tool's failure has a usual cause.
        hint: &'static str,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(
        "{}: qemu-img wrote no CID= line in the VMDK descriptor, so the disk cannot be made \
         reproducible; is this a qemu-img whose VMDK output differs? (qemu-img --version)",
        .0.display()
    )]
    NoCid(PathBuf),
    #[error(
        "{}: no room in the VMDK descriptor's padding for an 8-digit CID; qemu-img's VMDK \
         layout differs from the one this build knows (qemu-img --version)",
        .0.display()
    )]
    NoRoomForCid(PathBuf),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Spawn { source, .. } => source.kind(),
            Error::Io(e) => e.source.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
}

/// A disk format name other than `raw`, `qcow2` or `vmdk`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown disk format {0:?}: use raw, qcow2 or vmdk")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            "vmdk" => Ok(Self::Vmdk),
            _ => Err(UnknownFormat(s.to_string())),
        }
    }
}

/// Runs `cmd`; `what` names the step in errors, `hint` says what to try if it fails.
fn run(cmd: &mut Command, what: &'static str, hint: &'static str) -> Result<(), Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        what,
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            what,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            hint,
        });
    }
    Ok(())
}

/// Every path under `root`, sorted, relative with a leading slash, and a content digest.
fn walk(root: &Path) -> Result<(Vec<String>, [u8; 32], u64), IoError> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&full)
            .and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(IoError::at(&full))?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let path = root.join(&child);
            let at = || IoError::at(&path);
            let meta = std::fs::symlink_metadata(&path).map_err(at())?;
            let display = format!("/{}", child.display());
            hasher.update(display.as_bytes());
            hasher.update([0]);
            hasher.update(meta.mode().to_le_bytes());
            hasher.update(meta.uid().to_le_bytes());
            hasher.update(meta.gid().to_le_bytes());
            hasher.update(meta.mtime().to_le_bytes());
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(at())?;
                hasher.update(target.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                std::fs::File::open(&path)
                    .and_then(|mut f| io::copy(&mut f, &mut hasher))
                    .map_err(at())?;
                bytes += meta.len();
            } else if meta.is_dir() {
                stack.push(child.clone());
            }
            paths.push(display);
        }
    }
    paths.sort();
    Ok((paths, hasher.finalize().into(), bytes))
}

/// A digest of a rootfs directory's paths, modes, owners, mtimes and contents: the cache key of
/// the disk built from it.
pub fn dir_digest(root: &Path) -> io::Result<String> {
    let (_, digest, _) = walk(root).map_err(Error::from)?;
    Ok(hex(&digest))
}

fn uuid_from(digest: &[u8; 32]) -> String {
    let h = hex(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Builds a raw ext4 image of `rootfs` at `out`, labelled `label`. `size_mb` of 0 sizes it from
/// the content (one and a half times, plus 32 MiB of room).
pub fn ext4_from_dir(rootfs: &Path, out: &Path, label: &str, size_mb: u64) -> io::Result<()> {
    Ok(ext4(rootfs, out, label, size_mb)?)
}

fn ext4(rootfs: &Path, out: &Path, label: &str, size_mb: u64) -> Result<(), Error> {
    let (paths, digest, bytes) = walk(rootfs)?;
    let size_mb = if size_mb == 0 {
        (bytes * 3 / 2) / (1024 * 1024) + 32 + paths.len() as u64 / 256
    } else {
        size_mb
    };
    let uuid = uuid_from(&digest);
    let _ = std::fs::remove_file(out);
    run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args(["-q", "-F", "-b", "4096", "-L", label, "-U", &uuid])
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg("-d")
            .arg(rootfs)
            .arg(out)
            .arg(format!("{size_mb}M")),
        "mkfs.ext4",
        " (if the disk is full, give a larger size, or 0 to size it from the content)",
    )?;
    // mke2fs -d adds an empty /lost+found that the root filesystem did not have: a container
    // would see a directory its image lacks (docker shows none), so it goes unless the rootfs
    // has one of its own. e2fsck makes one again when it needs it.
    let mut script = String::new();
    if std::fs::symlink_metadata(rootfs.join("lost+found")).is_err() {
        script.push_str("rmdir /lost+found\n");
    }
    // mke2fs copies ctime and atime from the host's files; pin them.
    script.push_str("sif / ctime 0\nsif / atime 0\n");
    for p in &paths {
        script.push_str(&format!("sif \"{p}\" ctime 0\nsif \"{p}\" atime 0\n"));
    }
    let cmds = out.with_extension("debugfs");
    std::fs::write(&cmds, script).map_err(IoError::at(&cmds))?;
    let r = run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args(["-w", "-f"])
            .arg(&cmds)
            .arg(out),
        "debugfs",
        "",
    );
    let _ = std::fs::remove_file(&cmds);
    r
}

/// An empty ext4 filesystem of `bytes` (sparse) labelled `label` as a qcow2 at `out`: a volume's
/// disk. Its root and `lost+found` belong to root; inode tables and the journal are left for
/// the kernel to initialise lazily, so an empty 1 GiB volume costs a few MiB on disk.
pub fn empty_ext4_qcow2(out: &Path, label: &str, bytes: u64) -> io::Result<()> {
    Ok(empty_ext4(out, label, bytes)?)
}

fn empty_ext4(out: &Path, label: &str, bytes: u64) -> Result<(), Error> {
    let raw = out.with_extension("raw");
    let sized = std::fs::File::create(&raw).and_then(|f| f.set_len(bytes));
    let made = sized
        .map_err(IoError::at(&raw))
        .map_err(Error::from)
        .and_then(|()| {
            run(
                Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-b", "4096", "-m", "0", "-L", label])
                    .args([
                        "-E",
                        "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
                    ])
                    .arg(&raw),
                "mkfs.ext4",
                "",
            )
        });
    let converted = made.and_then(|()| convert_to(&raw, out, Format::Qcow2));
    let _ = std::fs::remove_file(&raw);
    converted
}

/// Extracts a plain rootfs tarball into `dir` (ownership, modes and mtimes as recorded, those of
/// directories included).
pub fn extract_tar(tarball: &Path, dir: &Path) -> io::Result<()> {
    Ok(unpack(tarball, dir)?)
}

fn unpack(tarball: &Path, dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(IoError::at(dir))?;
    let file = std::fs::File::open(tarball).map_err(IoError::at(tarball))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.unpack(dir).map_err(IoError::at(tarball))?;
    Ok(DirTimes::of_tarball(tarball, dir)?.apply()?)
}

/// Converts a raw image to `format` (a no-op copy for raw).
pub fn convert(raw: &Path, out: &Path, format: Format) -> io::Result<()> {
    Ok(convert_to(raw, out, format)?)
}

fn convert_to(raw: &Path, out: &Path, format: Format) -> Result<(), Error> {
    let fmt = match format {
        Format::Raw => {
            if raw != out {
                std::fs::copy(raw, out).map_err(IoError::at(out))?;
            }
            return Ok(());
        }
        Format::Qcow2 => "qcow2",
        Format::Vmdk => "vmdk",
    };
    run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", fmt])
            .arg(raw)
            .arg(out),
        "qemu-img convert",
        "",
    )?;
    if format == Format::Vmdk {
        pin_vmdk_cid(out, &sha256_file(raw).map_err(IoError::at(raw))?)?;
    }
    Ok(())
}

/// qemu-img writes a random content id into the VMDK's text descriptor, in hex without leading
/// zeros (`CID=%x`: one build in sixteen has a shorter line). Replace it with eight hex digits of
/// the raw image's digest, re-laying the rest of the descriptor into its zero padding, so the
/// same content always gives the same VMDK whatever CID qemu-img drew.
fn pin_vmdk_cid(vmdk: &Path, raw_digest: &str) -> Result<(), Error> {
    let at = || IoError::at(vmdk);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vmdk)
        .map_err(at())?;
    let mut head = vec![0u8; 64 * 1024];
    let n = f.read(&mut head).map_err(at())?;
    head.truncate(n);
    match pin_cid_in(&mut head, &raw_digest[..8]) {
        Ok(()) => {}
        Err(CidError::Missing) => return Err(Error::NoCid(vmdk.to_path_buf())),
        Err(CidError::NoRoom) => return Err(Error::NoRoomForCid(vmdk.to_path_buf())),
    }
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&head))
        .map_err(at())?;
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum CidError {
    Missing,
    NoRoom,
}

/// Rewrites `CID=<hex>\n` in a descriptor held in `head` to `CID=<cid>\n`; the text after it
/// moves within the zero padding that follows the descriptor.
fn pin_cid_in(head: &mut [u8], cid: &str) -> Result<(), CidError> {
    let at = head
        .windows(4)
        .position(|w| w == b"CID=")
        .ok_or(CidError::Missing)?
        + 4;
    let nl = at
        + head[at..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(CidError::Missing)?;
    let text_end = nl
        + head[nl..]
            .iter()
            .position(|b| *b == 0)
            .ok_or(CidError::Missing)?;
    let mut text = cid.as_bytes().to_vec();
    text.extend_from_slice(&head[nl..text_end]);
    let region_end = at + text.len().max(text_end - at);
    if region_end > head.len() || head[text_end..region_end].iter().any(|b| *b != 0) {
        return Err(CidError::NoRoom);
    }
    head[at..region_end].fill(0);
    head[at..at + text.len()].copy_from_slice(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(cid: &str) -> Vec<u8> {
        let mut d = format!("# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\n")
            .into_bytes();
        d.resize(512, 0);
        d
    }

    #[test]
    fn any_cid_qemu_img_draws_gives_the_same_bytes() {
        let mut short = descriptor("5d0ef9");
        let mut full = descriptor("bc5d0ef9");
        pin_cid_in(&mut short, "0123abcd").unwrap();
        pin_cid_in(&mut full, "0123abcd").unwrap();
        assert_eq!(short, full);
        assert!(String::from_utf8_lossy(&full).contains("CID=0123abcd\nparentCID=ffffffff\n"));
    }

    #[test]
    fn a_descriptor_without_a_cid_or_room_is_refused() {
        let mut none = b"# Disk DescriptorFile\nversion=1\n\0\0\0\0".to_vec();
        assert_eq!(pin_cid_in(&mut none, "0123abcd"), Err(CidError::Missing));
        let mut full = b"CID=1\nx".to_vec();
        full.push(0);
        assert_eq!(pin_cid_in(&mut full, "0123abcd"), Err(CidError::NoRoom));
    }

    #[test]
    fn formats_parse_by_name_and_others_are_named() {
        assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
        let e = "vhd".parse::<Format>().unwrap_err().to_string();
        assert!(
            e.contains("\"vhd\"") && e.contains("raw, qcow2 or vmdk"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_rootfs_is_an_error_naming_it_with_the_kind_kept() {
        let missing = std::env::temp_dir().join(format!("no-rootfs-{}", std::process::id()));
        let e = ext4_from_dir(&missing, &missing.with_extension("raw"), "x", 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<Error>());
        assert!(matches!(inner, Some(Error::Io(_))), "{e:?}");
    }
}
