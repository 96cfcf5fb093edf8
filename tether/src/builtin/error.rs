//! Why a built-in failed: one line on the session's stderr, exit code 1. The first three are
//! docker's own messages, which the appliance maps to docker's status codes.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BuiltinError {
    /// docker's 404.
    #[error("Could not find the file {0} in container")]
    NotFound(String),
    /// docker's 400 for an archive put.
    #[error("extraction point is not a directory")]
    NotADirectory,
    #[error("unsupported ps_args {0:?}: the built-in process list shows `ps -ef` only")]
    PsArgs(String),
    #[error("{path}: not a directory")]
    PathNotADirectory { path: String },
    #[error("refusing to extract {0:?}: it leads out of the destination directory")]
    Escapes(String),
    #[error("refusing to extract {0:?}: it would replace the destination directory")]
    ReplacesDestination(String),
    #[error("cannot extract {entry:?}: unsupported tar entry type {kind:?}")]
    EntryType { entry: String, kind: char },
    #[error("cannot overwrite directory {path:?} with non-directory {entry:?}")]
    DirWithNonDir { path: String, entry: String },
    #[error("cannot overwrite non-directory {path:?} with directory {entry:?}")]
    NonDirWithDir { path: String, entry: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl BuiltinError {
    /// `map_err(BuiltinError::io("reading the archive"))`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

/// Missing, or a file where a directory was needed on the way there.
pub fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}
