//! Copy-on-first-use: the image's files under a volume's destination copied into the empty
//! volume with everything a container can tell apart: owners, modes (setuid and sticky bits
//! too), times, extended attributes (file capabilities included), symlinks as symlinks, hard
//! links as links, device nodes, fifos, and the holes of sparse files. A filesystem mounted
//! inside the source is not entered (its mount point is copied empty), as `cp -ax` does.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use crate::builtin::layer::{set_xattrs, Xattrs};

/// Bytes copied per read of a file's data.
const CHUNK: usize = 128 * 1024;

/// Copies the directory `from` to `to`, which must not exist; `to` gets `from`'s owner, mode,
/// attributes and times too.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", from.display()),
        ));
    }
    let mut copy = Copy {
        device: meta.dev(),
        links: HashMap::new(),
    };
    copy.dir(from, to, &meta)
}

struct Copy {
    /// The source's filesystem: another one mounted inside is not entered.
    device: u64,
    /// The first copy of each multiply-linked inode, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
}

/// An error that names the file it happened on.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Copy {
    fn dir(&mut self, from: &Path, to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
        // Owner-only until its own metadata is applied, after its entries.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(to)
            .map_err(|e| at(to, e))?;
        if meta.dev() == self.device {
            let mut names: Vec<_> = std::fs::read_dir(from)
                .map_err(|e| at(from, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(|e| at(from, e))?;
            names.sort();
            for name in names {
                self.entry(&from.join(&name), &to.join(&name))?;
            }
        }
        apply_metadata(from, to, meta)
    }

    fn entry(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let meta = std::fs::symlink_metadata(from).map_err(|e| at(from, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            return self.dir(from, to, &meta);
        }
        if meta.dev() != self.device {
            // A file mounted over one of the image's (a bind of a single file): skipped.
            return Ok(());
        }
        if meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&inode) {
                return std::fs::hard_link(first, to).map_err(|e| at(to, e));
            }
            self.links.insert(inode, to.to_path_buf());
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(from).map_err(|e| at(from, e))?;
            std::os::unix::fs::symlink(target, to).map_err(|e| at(to, e))?;
        } else if kind.is_file() {
            copy_file(from, to, meta.len())?;
        } else {
            let node = if kind.is_char_device() {
                SFlag::S_IFCHR
            } else if kind.is_block_device() {
                SFlag::S_IFBLK
            } else if kind.is_fifo() {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            nix::sys::stat::mknod(to, node, Mode::from_bits_truncate(0o600), meta.rdev())
                .map_err(|e| at(to, e.into()))?;
        }
        apply_metadata(from, to, &meta)
    }
}

/// A regular file's bytes, its holes kept as holes: only the ranges `SEEK_DATA` finds are
/// written, and the length is set at the end.
fn copy_file(from: &Path, to: &Path, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let src = File::open(from).map_err(|e| at(from, e))?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| at(to, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let seek = |from: u64, whence| {
            // SAFETY: lseek on a descriptor this function owns; no memory is involved.
            let r = unsafe { libc::lseek(src.as_raw_fd(), from as libc::off_t, whence) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as u64)
            }
        };
        let start = match seek(offset, libc::SEEK_DATA) {
            Ok(s) => s,
            // No data after `offset`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // A filesystem without hole reporting: all of it is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => offset,
            Err(e) => return Err(at(from, e)),
        };
        let end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = src
                .read_at(&mut buf[..want], pos)
                .map_err(|e| at(from, e))?;
            if n == 0 {
                break; // the file shrank meanwhile
            }
            dst.write_all_at(&buf[..n], pos).map_err(|e| at(to, e))?;
            pos += n as u64;
        }
        offset = pos.max(start + 1);
    }
    dst.set_len(len).map_err(|e| at(to, e))
}

/// Owner, then mode (a chown clears setuid bits), then extended attributes (a chown clears
/// `security.capability` too), then times (every step before changes the ctime only).
fn apply_metadata(from: &Path, to: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    let symlink = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(|e| at(to, e))?;
    if !symlink {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| at(to, e))?;
    }
    set_xattrs(to, &xattrs(from)?).map_err(|e| at(to, e))?;
    let time = |secs: i64, nanos: i64| TimeSpec::new(secs, nanos);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &time(meta.atime(), meta.atime_nsec()),
        &time(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| at(to, e.into()))
}

/// The extended attributes of `path` itself (not a symlink's target).
fn xattrs(path: &Path) -> io::Result<Xattrs> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))?;
    let names = read_sized(|buf, len| {
        // SAFETY: `c` is NUL-terminated and lives across the call; llistxattr writes at most
        // `len` bytes into `buf`, which holds `len` bytes (or is null with `len` 0).
        unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }
    })
    .map_err(|e| at(path, e))?;
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).expect("split at NUL");
        let value = read_sized(|buf, len| {
            // SAFETY: as for llistxattr: both strings are NUL-terminated and live, and at most
            // `len` bytes are written into `buf`.
            unsafe { libc::lgetxattr(c.as_ptr(), name.as_ptr(), buf.cast(), len) }
        })
        .map_err(|e| at(path, e))?;
        out.push((name, value));
    }
    Ok(out)
}

/// Calls `f(buf, len)` the way the xattr calls want: first for the size, then for the bytes
/// (again if they grew in between). ENOTSUP and ENODATA are an empty value list.
fn read_sized(f: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = f(std::ptr::null_mut(), 0);
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) | Some(libc::ENODATA) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; size as usize];
        let got = f(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests;
