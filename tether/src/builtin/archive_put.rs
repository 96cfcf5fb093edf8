//! docker's `PUT /containers/{id}/archive`: a tar from stdin, extracted into a directory of the
//! container, as docker's `archive.Unpack` does it. Entry names are cleaned; one that leads out
//! of the directory (`../x`) is refused. Directories on the way are resolved inside the root,
//! symlinks included, as docker (chrooted into the container) resolves them. An existing entry
//! is replaced unless both are directories; with `no_overwrite_dir_non_dir`, replacing a
//! directory with a non-directory or the reverse is an error. Modes, mtimes and (as root)
//! owners are the archive's; directories get theirs last, deepest first, so that a read-only
//! one can still be filled.
//!
//! With `layer` the tar is an OCI image layer applied over the directory (`layer.rs`):
//! whiteouts, extended attributes, and any existing entry replaced.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::{Entry, EntryType, Header};

use super::error::{is_missing, BuiltinError};
use super::layer::{self, Layer, Whiteout, Xattrs};
use super::scope::Scope;

/// What an entry's inode gets from its header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn of(h: &Header) -> io::Result<Self> {
        let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::other("uid or gid too large"));
        Ok(Self {
            mode: h.mode()? & 0o7777,
            uid: id(h.uid()?)?,
            gid: id(h.gid()?)?,
            mtime: i64::try_from(h.mtime()?).unwrap_or(i64::MAX),
        })
    }
}

pub struct Extract<'a> {
    pub scope: &'a Scope,
    /// The container path of the directory to extract into.
    pub path: &'a str,
    pub no_overwrite_dir_non_dir: bool,
    /// Give entries the archive's owners (only root may).
    pub owners: bool,
    /// Apply the tar as an OCI image layer (see `layer.rs`).
    pub layer: bool,
}

/// A directory whose metadata is set once everything inside it is.
struct Dir {
    host: PathBuf,
    name: String,
    meta: Meta,
    xattrs: Xattrs,
}

/// What one extraction remembers between entries.
struct Pass {
    dirs: Vec<Dir>,
    /// `Some` when applying a layer.
    layer: Option<Layer>,
}

/// The elements of an entry's name below the destination, cleaned as docker cleans them: a
/// leading `/` is the destination, and a `..` removes the element before it. `None` when the
/// name leads out of the destination.
fn below(name: &[u8]) -> Option<Vec<OsString>> {
    let absolute = name.starts_with(b"/");
    let mut out: Vec<OsString> = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && !absolute {
                    return None;
                }
            }
            p => out.push(OsStr::from_bytes(p).to_os_string()),
        }
    }
    Some(out)
}

impl Extract<'_> {
    /// Extracts the tar read from `input`; then reads `input` to its end.
    pub fn run<R: Read>(&self, input: R) -> Result<(), BuiltinError> {
        let missing = |e: io::Error| match is_missing(&e) {
            true => BuiltinError::NotFound(self.path.to_string()),
            false => BuiltinError::io(format!("resolving {}", self.path))(e),
        };
        let dest = self.scope.resolve(Path::new(self.path)).map_err(missing)?;
        let meta = std::fs::symlink_metadata(self.scope.host(&dest)).map_err(missing)?;
        if !meta.is_dir() {
            return Err(BuiltinError::NotADirectory);
        }
        let mut archive = tar::Archive::new(input);
        let mut pass = Pass {
            dirs: Vec::new(),
            layer: self.layer.then(Layer::default),
        };
        let reading = || BuiltinError::io("reading the archive");
        for entry in archive.entries().map_err(reading())? {
            let mut entry = entry.map_err(reading())?;
            self.entry(&dest, &mut entry, &mut pass)?;
        }
        for d in pass.dirs.iter().rev() {
            self.apply(&d.host, &d.meta, false)
                .and_then(|()| layer::set_xattrs(&d.host, &d.xattrs))
                .map_err(BuiltinError::io(format!(
                    "setting the metadata of {}",
                    d.name
                )))?;
        }
        // What follows the end-of-archive blocks is read and dropped, so the sender finishes.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(reading())?;
        Ok(())
    }

    fn entry<R: Read>(
        &self,
        dest: &Path,
        entry: &mut Entry<'_, R>,
        pass: &mut Pass,
    ) -> Result<(), BuiltinError> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(()); // read into the entries they describe
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let io_err = |what: &str| BuiltinError::io(format!("{what} {name}"));
        let elements = below(&raw).ok_or_else(|| BuiltinError::Escapes(name.clone()))?;
        let Some((last, parents)) = elements.split_last() else {
            // The destination itself: a directory entry for it changes nothing (as in docker).
            return match kind {
                EntryType::Directory => Ok(()),
                _ => Err(BuiltinError::ReplacesDestination(name)),
            };
        };
        let meta = Meta::of(entry.header()).map_err(io_err("reading the header of"))?;
        let parent = self
            .scope
            .resolve(&dest.join(parents.iter().collect::<PathBuf>()))
            .map_err(io_err("resolving the directory of"))?;
        let parent_host = self.scope.host(&parent);
        let xattrs = match &pass.layer {
            Some(l) => {
                let removed = match layer::whiteout(last) {
                    Whiteout::No => None,
                    Whiteout::Ignore => Some(Ok(())),
                    Whiteout::Delete(target) => Some(l.delete(&parent_host, target)),
                    Whiteout::Opaque => Some(l.opaque(&parent_host)),
                };
                if let Some(r) = removed {
                    return r.map_err(io_err("applying the whiteout"));
                }
                layer::xattrs(entry, &name)?
            }
            None => Vec::new(),
        };
        std::fs::create_dir_all(&parent_host).map_err(io_err("creating the directory of"))?;
        let host = parent_host.join(last);
        if let Some(l) = pass.layer.as_mut() {
            l.holds(&self.scope.host(dest), &host);
        }
        let inner = parent.join(last).to_string_lossy().into_owned();
        let is_dir = kind == EntryType::Directory;
        let mut keep_dir = false;
        match std::fs::symlink_metadata(&host) {
            Ok(existing) => {
                let was_dir = existing.is_dir();
                if self.no_overwrite_dir_non_dir && was_dir != is_dir {
                    let (path, entry) = (inner, name);
                    return Err(match was_dir {
                        true => BuiltinError::DirWithNonDir { path, entry },
                        false => BuiltinError::NonDirWithDir { path, entry },
                    });
                }
                keep_dir = was_dir && is_dir;
                let removed = match (keep_dir, was_dir) {
                    (true, _) => Ok(()),
                    (false, true) => std::fs::remove_dir_all(&host),
                    (false, false) => std::fs::remove_file(&host),
                };
                removed.map_err(io_err("replacing"))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("lstat")(e)),
        }
        match kind {
            EntryType::Directory => {
                if !keep_dir {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&host)
                        .map_err(io_err("creating"))?;
                }
                pass.dirs.push(Dir {
                    host,
                    name,
                    meta,
                    xattrs,
                });
                Ok(())
            }
            EntryType::Symlink => {
                let target = link_name(entry, &name)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &host)
                    .and_then(|()| self.apply(&host, &meta, true))
                    .and_then(|()| layer::set_xattrs(&host, &xattrs))
                    .map_err(io_err("creating the symlink"))
            }
            EntryType::Link => {
                let target = link_name(entry, &name)?;
                let source = self.link_source(dest, &target, &name)?;
                std::fs::hard_link(source, &host)
                    .and_then(|()| layer::set_xattrs(&host, &xattrs))
                    .map_err(io_err("creating the hard link"))
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let dev = nix::sys::stat::makedev(major.into(), minor.into());
                nix::sys::stat::mknod(&host, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(io::Error::from)
                    .and_then(|()| self.apply(&host, &meta, false))
                    .and_then(|()| layer::set_xattrs(&host, &xattrs))
                    .map_err(io_err("creating the device or fifo"))
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // A new file, never one a symlink points to: what was there was removed above.
                let mut file = File::options()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&host)
                    .map_err(io_err("creating"))?;
                io::copy(entry, &mut file).map_err(io_err("writing"))?;
                self.apply_to_file(&file, &meta)
                    .and_then(|()| layer::set_xattrs(&host, &xattrs))
                    .map_err(io_err("setting the metadata of"))
            }
            other => Err(BuiltinError::EntryType {
                entry: name,
                kind: char::from(other.as_byte()),
            }),
        }
    }

    /// A hard link's source: named in the archive, so inside the destination too.
    fn link_source(&self, dest: &Path, target: &[u8], name: &str) -> Result<PathBuf, BuiltinError> {
        let elements = below(target).unwrap_or_default();
        let Some((last, parents)) = elements.split_last() else {
            return Err(BuiltinError::Escapes(name.to_string()));
        };
        let dir = self
            .scope
            .resolve(&dest.join(parents.iter().collect::<PathBuf>()))
            .map_err(BuiltinError::io(format!("resolving the hard link {name}")))?;
        Ok(self.scope.host(&dir).join(last))
    }

    /// Owner, mode and mtime by path, never following a symlink at the end (a symlink gets
    /// only the first and the last).
    fn apply(&self, host: &Path, m: &Meta, symlink: bool) -> io::Result<()> {
        let cwd = nix::fcntl::AT_FDCWD;
        if self.owners {
            let flag = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
            let (uid, gid) = (Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)));
            nix::unistd::fchownat(cwd, host, uid, gid, flag)?;
        }
        if !symlink {
            std::fs::set_permissions(host, std::fs::Permissions::from_mode(m.mode))?;
        }
        let t = TimeSpec::new(m.mtime, 0);
        nix::sys::stat::utimensat(cwd, host, &t, &t, UtimensatFlags::NoFollowSymlink)?;
        Ok(())
    }

    /// The same through an open file. The owner first: chown clears setuid and setgid.
    fn apply_to_file(&self, f: &File, m: &Meta) -> io::Result<()> {
        if self.owners {
            nix::unistd::fchown(f, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(m.mode))?;
        let t = TimeSpec::new(m.mtime, 0);
        nix::sys::stat::futimens(f, &t, &t)?;
        Ok(())
    }
}

fn link_name<R: Read>(entry: &Entry<'_, R>, name: &str) -> Result<Vec<u8>, BuiltinError> {
    match entry.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(t.into_owned()),
        _ => Err(BuiltinError::io(format!("reading the link of {name}"))(
            io::Error::new(io::ErrorKind::InvalidData, "the entry names no target"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &str) -> Option<Vec<String>> {
        below(n.as_bytes()).map(|v| v.iter().map(|s| s.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn names_are_cleaned_and_escapes_refused() {
        assert_eq!(
            names("a/./b//c/"),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(names("a/../b"), Some(vec!["b".into()]));
        assert_eq!(
            names("/etc/passwd"),
            Some(vec!["etc".into(), "passwd".into()])
        );
        assert_eq!(
            names("/../x"),
            Some(vec!["x".into()]),
            "docker cleans /.. to /"
        );
        assert_eq!(names("./"), Some(vec![]));
        assert_eq!(names("../x"), None);
        assert_eq!(names("a/../../x"), None);
        assert_eq!(names(".."), None);
    }
}
