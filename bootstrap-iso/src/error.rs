//! The error the modules share: an I/O error on a path, naming the path. Each module has its
//! own error type for what else can go wrong there (`disk::Error`, `image::Error`, ...).

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error on `path`: the message names the file, the kind is the underlying error's.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl IoError {
    /// Attaches `path` to an I/O error: `std::fs::read(p).map_err(IoError::at(p))`.
    pub fn at(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_path_buf(),
            source,
        }
    }
}
