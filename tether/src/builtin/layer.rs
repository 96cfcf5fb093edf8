//! What applying an OCI image layer adds to an archive put (`BuiltinOp::ApplyLayer`): the
//! whiteouts and the extended attributes. The OCI image spec's rules:
//!
//! * `.wh.NAME` deletes NAME, which a lower layer made; `.wh..wh..opq` empties its directory of
//!   everything lower layers put there. Neither ever removes what this layer itself holds, so
//!   the order of entries in the tar does not matter: the entries this layer made are
//!   remembered (with every directory above them) and spared.
//! * Other `.wh..wh.` names (aufs' hard-link bookkeeping) are ignored; no whiteout file is ever
//!   written to the filesystem.
//! * PAX `SCHILY.xattr.NAME` records become the extended attribute NAME. They are set after the
//!   owner, mode and content: a chown or a write clears `security.capability`.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::Entry;

use super::error::BuiltinError;

/// The whiteout prefix, and the opaque marker's name.
const WH: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const META: &[u8] = b".wh..wh.";

/// The extended attributes of one entry: name, value.
pub type Xattrs = Vec<(CString, Vec<u8>)>;

/// What a whiteout name asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    No,
    /// Delete this name of the directory.
    Delete(&'a OsStr),
    /// Empty the directory of lower layers' content.
    Opaque,
    /// A `.wh..wh.` name other than the opaque marker: nothing to do.
    Ignore,
}

/// Classifies the last element of an entry's name.
pub fn whiteout(name: &OsStr) -> Whiteout<'_> {
    let b = name.as_bytes();
    if b == OPAQUE {
        Whiteout::Opaque
    } else if b.starts_with(META) {
        Whiteout::Ignore
    } else if let Some(rest) = b.strip_prefix(WH) {
        match rest {
            b"" | b"." | b".." => Whiteout::Ignore,
            _ => Whiteout::Delete(OsStr::from_bytes(rest)),
        }
    } else {
        Whiteout::No
    }
}

/// One layer being applied: the host paths it made (or kept, for directories it names).
#[derive(Debug, Default)]
pub struct Layer {
    ours: HashSet<PathBuf>,
}

impl Layer {
    /// Records that this layer holds `host`, and so every directory above it up to `root`.
    pub fn holds(&mut self, root: &Path, host: &Path) {
        let mut p = Some(host);
        while let Some(path) = p {
            if path == root || !self.ours.insert(path.to_path_buf()) {
                break;
            }
            p = path.parent();
        }
    }

    /// `.wh.NAME` in `dir`: removes NAME unless this layer made it.
    pub fn delete(&self, dir: &Path, name: &OsStr) -> io::Result<()> {
        let target = dir.join(name);
        if self.ours.contains(&target) {
            return Ok(());
        }
        remove_any(&target)
    }

    /// `.wh..wh..opq` in `dir`: removes what lower layers put in it, keeping this layer's own
    /// entries (and, below a directory this layer names, only its entries).
    pub fn opaque(&self, dir: &Path) -> io::Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in entries {
                let e = e?;
                let path = e.path();
                if !self.ours.contains(&path) {
                    remove_any(&path)?;
                } else if e.file_type()?.is_dir() {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }
}

/// Removes a file, a symlink or a whole directory; a missing one is no error.
fn remove_any(path: &Path) -> io::Result<()> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The entry's `SCHILY.xattr.*` PAX records.
pub fn xattrs<R: Read>(entry: &mut Entry<'_, R>, name: &str) -> Result<Xattrs, BuiltinError> {
    let bad = || BuiltinError::io(format!("reading the PAX header of {name}"));
    let Some(exts) = entry.pax_extensions().map_err(bad())? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in exts {
        let ext = ext.map_err(bad())?;
        let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let attr = CString::new(attr).map_err(|_| {
            bad()(io::Error::new(
                io::ErrorKind::InvalidData,
                "an extended attribute's name holds a NUL byte",
            ))
        })?;
        out.push((attr, ext.value_bytes().to_vec()));
    }
    Ok(out)
}

/// Sets the attributes on `host` itself (a symlink's own, not its target's).
pub fn set_xattrs(host: &Path, attrs: &Xattrs) -> io::Result<()> {
    if attrs.is_empty() {
        return Ok(());
    }
    let path = CString::new(host.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))?;
    for (name, value) in attrs {
        // SAFETY: `path` and `name` are NUL-terminated strings that live across the call, and
        // lsetxattr reads `value.len()` bytes from the live slice `value`.
        let r = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            let name = name.to_string_lossy();
            // ext4 takes security.* attributes only with the kernel's CONFIG_EXT4_FS_SECURITY.
            let hint = match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) if name.starts_with("security.") => {
                    " (the containerVM kernel needs CONFIG_EXT4_FS_SECURITY=y)"
                }
                _ => "",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("setting the extended attribute {name}: {e}{hint}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names_are_classified() {
        fn w(s: &str) -> Whiteout<'_> {
            whiteout(OsStr::new(s))
        }
        assert_eq!(w("file"), Whiteout::No);
        assert_eq!(w(".whx"), Whiteout::No);
        assert_eq!(w(".wh.file"), Whiteout::Delete(OsStr::new("file")));
        assert_eq!(w(".wh..hidden"), Whiteout::Delete(OsStr::new(".hidden")));
        assert_eq!(w(".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(w(".wh..wh.plnk"), Whiteout::Ignore);
        assert_eq!(w(".wh."), Whiteout::Ignore);
        assert_eq!(w(".wh..."), Whiteout::Ignore);
    }
}
