//! Directory mtimes as the archives recorded them.
//!
//! Unpacking a file into a directory sets that directory's mtime to now, and the `tar` crate
//! does not set a directory's recorded mtime even when asked to preserve mtimes. So a rootfs
//! unpacked from a tarball or from layers carries the time of the build on every directory:
//! unfaithful to the image, and it made disks from the same tarball differ from build to build
//! (the content digest that seeds the filesystem UUID covers mtimes). The recorded times are
//! collected while unpacking and set once every entry is in place; setting a directory's times
//! does not touch its parent's.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::IoError;
use crate::paths::safe_join;

#[derive(Debug, Default)]
pub struct DirTimes {
    /// Destination path -> mtime in seconds; a later layer's entry replaces an earlier one's.
    times: BTreeMap<PathBuf, u64>,
}

impl DirTimes {
    /// Notes `entry`'s mtime if it is a directory that unpacks to `dest`.
    pub fn record<R: Read>(&mut self, dest: PathBuf, entry: &tar::Entry<'_, R>) {
        if entry.header().entry_type().is_dir() {
            if let Ok(t) = entry.header().mtime() {
                self.times.insert(dest, t);
            }
        }
    }

    /// Every directory entry of the tarball at `path`, unpacked under `root`.
    pub fn of_tarball(path: &Path, root: &Path) -> Result<Self, IoError> {
        let at = || IoError::at(path);
        let mut times = Self::default();
        let mut archive = tar::Archive::new(std::fs::File::open(path).map_err(at())?);
        // Seeking skips file contents instead of reading them.
        for entry in archive.entries_with_seek().map_err(at())? {
            let entry = entry.map_err(at())?;
            let rel = entry.path().map_err(at())?.into_owned();
            if let Some(dest) = safe_join(root, &rel) {
                times.record(dest, &entry);
            }
        }
        Ok(times)
    }

    /// Sets each recorded directory's mtime. A path a later layer removed or turned into
    /// something else is skipped.
    pub fn apply(&self) -> Result<(), IoError> {
        for (dir, secs) in &self.times {
            match std::fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            std::fs::File::open(dir)
                .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(*secs)))
                .map_err(IoError::at(dir))?;
        }
        Ok(())
    }
}
