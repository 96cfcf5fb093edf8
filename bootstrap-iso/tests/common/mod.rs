//! What the integration tests share: a scratch directory, fresh when made and removed on drop
//! (also when the test fails), and the smallest image directory.

#![allow(dead_code)]

use std::ops::Deref;
use std::path::{Path, PathBuf};

pub struct Scratch(PathBuf);

/// A fresh directory for one test.
pub fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("bootstrap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

impl Scratch {
    /// `rootfs/` here: an image directory holding only `/etc/hostname`.
    pub fn rootfs(&self) -> PathBuf {
        let root = self.0.join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "box\n").unwrap();
        root
    }
}

impl Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
