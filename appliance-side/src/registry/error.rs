//! Why a pull failed, and the bounded retry of what may succeed on another try.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::config::ATTEMPTS;

/// Why a pull (or a login) failed. The message names the image and the cause.
#[derive(Debug, Error)]
#[error("{image}: {cause}")]
pub struct PullError {
    /// The reference as docker shows it, or the registry for a login.
    pub image: String,
    pub cause: Cause,
}

/// The cause of a [`PullError`].
#[derive(Debug, Error)]
pub enum Cause {
    #[error("cannot reach the registry at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the registry at {url} did not answer within {secs} s ({what})")]
    Timeout {
        url: String,
        secs: f64,
        what: &'static str,
    },
    #[error(
        "unauthorized: {detail} (`docker login {registry}` with credentials that may pull it)"
    )]
    Unauthorized { registry: String, detail: String },
    #[error("manifest unknown: the registry has no such image ({detail})")]
    NotFound { detail: String },
    #[error("no linux/amd64 image: the registry has {available} only; containerVMs here run linux/amd64")]
    Platform { available: String },
    #[error(
        "unsupported media type {media:?} for {what}; a pull takes OCI and docker schema 2 images"
    )]
    MediaType { what: String, media: String },
    #[error(
        "{what} {digest} does not match its digest: the registry sent content with sha256:{actual}"
    )]
    DigestMismatch {
        what: String,
        digest: String,
        actual: String,
    },
    #[error("{what} {digest} is truncated: {got} of {want} bytes arrived{after}")]
    Truncated {
        what: String,
        digest: String,
        got: u64,
        want: u64,
        after: String,
    },
    #[error("{what} {digest} is larger than the {want} bytes its manifest says")]
    TooLarge {
        what: String,
        digest: String,
        want: u64,
    },
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("the registry failed: {0}")]
    Registry(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Cause {
    /// Worth another try: the network's failures, not the registry's lies.
    pub(super) fn retryable(&self) -> bool {
        matches!(
            self,
            Cause::Unreachable { .. } | Cause::Timeout { .. } | Cause::Truncated { .. }
        ) || matches!(self, Cause::Registry(m) if m.starts_with('5') || m.starts_with("429"))
    }

    /// `Truncated` gains the number of tries it took.
    pub(super) fn after_attempts(self, n: u32) -> Self {
        match self {
            Cause::Truncated {
                what,
                digest,
                got,
                want,
                after,
            } if n > 1 => Cause::Truncated {
                what,
                digest,
                got,
                want,
                after: format!("{after} (in each of {n} tries)"),
            },
            c => c,
        }
    }
}

/// Runs `f` up to [`ATTEMPTS`] times while it fails for a reason worth retrying, waiting
/// 0.25 s, then 0.5 s, between tries.
pub(super) async fn retry<T, F, Fut>(mut f: F) -> Result<T, Cause>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Cause>>,
{
    let mut wait = Duration::from_millis(250);
    let mut n = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && n < ATTEMPTS => {
                tracing::info!(error = %e, attempt = n, "registry request failed; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
                n += 1;
            }
            Err(e) => return Err(e.after_attempts(n)),
        }
    }
}
