//! The docker Engine API subset this layer owns, on `$TETHER_HOME/docker.sock`, so the stock
//! docker CLI works against it. One file per resource (as Firecracker's api_server does);
//! `router` maps requests to them, `http` holds what they share, `stdcopy` is docker's stream
//! framing. Errors are docker's: `{"message": ...}` with 404 for an unknown id and 409 for a
//! container that is not running.

mod archive;
pub mod attach;
pub mod body;
mod containers;
mod df;
mod events;
pub mod exec;
pub mod http;
mod images;
mod lifecycle;
pub mod logs;
mod networks;
mod pull;
mod router;
mod stats;
mod status;
pub mod stdcopy;
mod system;
pub mod tls;
mod volumes;

use std::sync::Arc;

use crate::api::http::ApiError;
use crate::engine::Engine;
use crate::server::container::Container;
use crate::server::Server;
use crate::store::records::Record;
use crate::store::state::State;

pub use http::{ApiResponse, API_VERSION, MIN_API_VERSION};

pub struct Api {
    pub engine: Arc<Engine>,
}

impl Api {
    /// An API over an engine that cannot launch VMs (tests, fuzzing). Needs a tokio runtime.
    pub fn new(server: Arc<Server>) -> Arc<Self> {
        Self::with_engine(Engine::new(server))
    }

    pub fn with_engine(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self { engine })
    }

    pub fn resolve(&self, reference: &str) -> Result<Record, ApiError> {
        Ok(self.engine.resolve(reference)?)
    }

    /// The container's state: live if it connected since the server started, else from disk.
    pub fn state(&self, id: &str) -> State {
        self.engine.state(id)
    }

    /// The live runtime of a running container, or docker's 409.
    pub fn running(&self, rec: &Record) -> Result<Arc<Container>, ApiError> {
        Ok(self.engine.running(rec)?)
    }

    /// [`Api::running`], riding through a reconnect of the container's channel.
    pub async fn running_soon(&self, rec: &Record) -> Result<Arc<Container>, ApiError> {
        Ok(self.engine.running_soon(rec).await?)
    }
}

/// Serves the API on a Unix socket until the process ends. The socket is made 0600 before the
/// first connection is accepted (`appliance serve`'s umask of 0077 has it owner-only from the
/// bind on: see docs/security.md).
pub async fn serve_api(api: Arc<Api>, path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(serve_connection(api.clone(), sock));
        }
    });
    Ok(())
}

/// Serves HTTP/1 requests (with upgrades for attach and exec) on one connection.
pub async fn serve_connection<IO>(api: Arc<Api>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| api.clone().handle(req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades()
        .await;
}
