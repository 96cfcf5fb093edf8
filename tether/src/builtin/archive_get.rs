//! docker's `GET /containers/{id}/archive`: a tar of a path, written as it is read. The top
//! entry is named after the path's last element (`hosts`; `dir/`, then `dir/a`, ...), and a
//! directory is archived recursively, in name order, without following its symlinks. Files are
//! streamed: memory stays bounded whatever their size, and the writer blocks when the session's
//! stdout stream has no room.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::error::{is_missing, BuiltinError};
use super::scope::Scope;

/// Writes the tar of `path` (a container path) to `out`.
pub fn archive<W: Write>(scope: &Scope, path: &str, out: W) -> Result<(), BuiltinError> {
    let missing = |e: io::Error, what: &str| match is_missing(&e) {
        true => BuiltinError::NotFound(path.to_string()),
        false => BuiltinError::Io {
            what: format!("{what} {path}"),
            source: e,
        },
    };
    let target = scope.target(path).map_err(|e| missing(e, "resolving"))?;
    let host = scope.host(&target.inner);
    let meta = std::fs::symlink_metadata(&host).map_err(|e| missing(e, "lstat"))?;
    if target.dir_only && !meta.is_dir() {
        return Err(BuiltinError::PathNotADirectory {
            path: path.to_string(),
        });
    }
    // The root is archived as `.`: tar names are relative.
    let top = match target.name.as_bytes() {
        b"/" => OsString::from("."),
        _ => target.name,
    };
    let mut w = Writer {
        tar: Builder::new(out),
        links: BTreeMap::new(),
    };
    // Depth first, a directory's entries in name order: (host path, archive name, lstat).
    let mut todo: Vec<(PathBuf, PathBuf, Option<Metadata>)> =
        vec![(host, PathBuf::from(top), Some(meta))];
    while let Some((host, name, meta)) = todo.pop() {
        let meta = match meta.map_or_else(|| std::fs::symlink_metadata(&host), Ok) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(BuiltinError::io(format!("lstat {}", name.display()))(e)),
        };
        w.append(&host, &name, &meta)?;
        if meta.is_dir() {
            let read = BuiltinError::io(format!("reading the directory {}", name.display()));
            let mut children = std::fs::read_dir(&host)
                .map_err(read)?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect::<Vec<_>>();
            children.sort_unstable();
            for c in children.into_iter().rev() {
                todo.push((host.join(&c), name.join(&c), None));
            }
        }
    }
    let finish = BuiltinError::io("writing the archive");
    w.tar
        .into_inner()
        .map_err(finish)?
        .flush()
        .map_err(BuiltinError::io("writing the archive"))
}

struct Writer<W: Write> {
    tar: Builder<W>,
    /// Files with more than one link, by (device, inode): the name of the first archived, which
    /// the others become hard links to.
    links: BTreeMap<(u64, u64), PathBuf>,
}

impl<W: Write> Writer<W> {
    fn append(&mut self, host: &Path, name: &Path, meta: &Metadata) -> Result<(), BuiltinError> {
        let err = || BuiltinError::io(format!("archiving {}", name.display()));
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid().into());
        h.set_gid(meta.gid().into());
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let ft = meta.file_type();
        let written = if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            let mut dir = name.as_os_str().to_os_string();
            if !dir.as_bytes().ends_with(b"/") {
                dir.push("/");
            }
            self.tar.append_data(&mut h, Path::new(&dir), io::empty())
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = std::fs::read_link(host).map_err(err())?;
            self.tar.append_link(&mut h, name, target)
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    return self.tar.append_link(&mut h, name, first).map_err(err());
                }
                self.links.insert(key, name.to_path_buf());
            }
            h.set_entry_type(EntryType::Regular);
            h.set_size(meta.len());
            // Not following a symlink that replaced the file since the lstat.
            let file = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(host)
                .map_err(err())?;
            self.tar
                .append_data(&mut h, name, Exact::new(file, meta.len()))
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            });
            let rdev = meta.rdev();
            let major = nix::sys::stat::major(rdev) as u32;
            let minor = nix::sys::stat::minor(rdev) as u32;
            h.set_device_major(major)
                .and_then(|()| h.set_device_minor(minor))
                .map_err(err())?;
            self.tar.append_data(&mut h, name, io::empty())
        } else {
            return Ok(()); // a socket: tar has no type for it (docker skips them too)
        };
        written.map_err(err())
    }
}

/// Exactly `left` bytes of a file: the header promised the size lstat saw, so a file that grows
/// meanwhile is cut there and one that shrinks is padded with zeros (the archive stays valid).
struct Exact<R> {
    inner: R,
    left: u64,
    ended: bool,
}

impl<R: Read> Exact<R> {
    fn new(inner: R, len: u64) -> Self {
        Self {
            inner,
            left: len,
            ended: false,
        }
    }
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.ended {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.ended = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_cuts_a_grown_file_and_pads_a_shrunk_one() {
        let mut out = Vec::new();
        Exact::new(&b"abcdef"[..], 4).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abcd");
        out.clear();
        Exact::new(&b"ab"[..], 5).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab\0\0\0");
    }
}
