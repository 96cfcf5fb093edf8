//! An I/O error on a named path: what was being done, to which file, and the OS's reason. The
//! store, the backend and the daemon wrap it in their own error enums.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `{what} {path}: {source}`, e.g. `reading /home/u/.local/share/tether/images/x/image.json: …`.
#[derive(Debug, Error)]
#[error("{what} {}: {source}", path.display())]
pub struct PathIoError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The `map_err` adapter: `fs::read(p).map_err(io_err("reading", p))?`, which `?` turns into any
/// error that has a `From<PathIoError>`.
pub fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PathIoError {
    let path = path.to_path_buf();
    move |source| PathIoError { what, path, source }
}
