//! The error the modules share: an I/O error on a path, naming the path. Each module has its
//! own error type for what else can go wrong there (`disk::Error`, `image::Error`, ...).

use std::io;
use std::path::{Path, PathBuf};

/// An I/O error on `path`: the message names the file and gives the causes (the tar reader's
/// errors say only which entry failed, their cause says why).
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", path.display(), with_causes(source))]
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

/// `e`'s message followed by each of its causes that the message does not already include.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tar_readers_cause_is_given_with_its_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to unpack `x`")]
        struct Unpack(#[source] io::Error);
        let inner = io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected EOF");
        let e = io::Error::other(Unpack(inner));
        let text = IoError::at(Path::new("r.tar"))(e).to_string();
        assert_eq!(text, "r.tar: failed to unpack `x`: unexpected EOF");
    }
}
