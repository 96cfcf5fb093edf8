//! The docker Engine API client the verbs share: HTTP/1.1 over `$TETHER_HOME/docker.sock`, plain
//! requests and the hijacked streams of attach and exec start, and the CLI's one error type.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::home::Home;

/// Any error a transport or parser gives us, kept as the cause of a [`CliError::Protocol`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a verb failed. `main` prints it as it displays and exits 1, docker's code for an error
/// response (the verbs' own usage errors are clap's, and exit 125 before any of this runs).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API socket did not accept a connection: the server is not running (or not here).
    #[error(
        "cannot reach the appliance at unix://{}: {source}. Is it running? Start it with `appliance serve --detach`",
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The server answered with an error status; `message` is its own text.
    #[error("Error response from daemon: {message}")]
    Server { message: String },
    /// The HTTP exchange itself failed: handshake, request, upgrade, body, JSON.
    #[error("{what}: {source}")]
    Protocol {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// A local file operation (the container record `appliance create` writes).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// An exec's stream ended but its exit code never came.
    #[error(
        "exec {exec_id}: the connection ended without its exit code ({reason}); if it still runs, `appliance attach --exec {exec_id}` re-attaches"
    )]
    ExecLost { exec_id: String, reason: String },
    /// Anything else, in words (a lost log follower, `appliance run`'s local steps).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn protocol(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Protocol {
            what,
            source: source.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

/// Talks to the server's docker API. Cheap to clone: it holds only the socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(home: &Home) -> Self {
        Self {
            socket: home.docker_socket(),
        }
    }

    pub(crate) async fn sender(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| CliError::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::protocol("HTTP handshake", e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    pub(crate) fn request(
        method: &str,
        path: &str,
        body: Option<Value>,
        upgrade: bool,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "tether");
        if upgrade {
            b = b.header("Connection", "Upgrade").header("Upgrade", "tcp");
        }
        let bytes = match body {
            Some(v) => {
                b = b.header("Content-Type", "application/json");
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        b.body(Full::new(bytes)).expect("static request parts")
    }

    /// A plain request; the whole body, or the server's error message.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Bytes> {
        let mut sender = self.sender().await?;
        let resp = sender
            .send_request(Self::request(method, path, body, false))
            .await
            .map_err(|e| CliError::protocol("request failed", e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError::protocol("reading the response", e))?
            .to_bytes();
        if !status.is_success() {
            return Err(server_error(&bytes));
        }
        Ok(bytes)
    }

    pub async fn json(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let bytes = self.call(method, path, body).await?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CliError::protocol("bad JSON from the server", e))
    }

    /// A hijacked stream (attach, exec start).
    pub async fn hijack(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
        let mut sender = self.sender().await?;
        let resp = sender
            .send_request(Self::request("POST", path, body, true))
            .await
            .map_err(|e| CliError::protocol("request failed", e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_answer(resp).await);
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| CliError::protocol("upgrading the connection", e))?;
        Ok(TokioIo::new(up))
    }
}

/// The server's error message from a response it answered with an error.
pub(crate) async fn error_answer(resp: hyper::Response<hyper::body::Incoming>) -> CliError {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    server_error(&bytes)
}

/// The error an error response's body carries: docker's `{"message": ...}`, else the raw text.
pub fn server_error(bytes: &[u8]) -> CliError {
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    CliError::Server { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_reads_as_dockers() {
        let e = server_error(br#"{"message":"No such container: ghost"}"#);
        assert_eq!(
            e.to_string(),
            "Error response from daemon: No such container: ghost"
        );
        let raw = server_error(b"plain words");
        assert_eq!(raw.to_string(), "Error response from daemon: plain words");
    }

    #[test]
    fn unreachable_names_the_socket_and_how_to_start_the_server() {
        let e = CliError::Unreachable {
            socket: "/x/docker.sock".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        let text = e.to_string();
        assert!(text.starts_with("cannot reach the appliance at unix:///x/docker.sock: "));
        assert!(text.ends_with("Start it with `appliance serve --detach`"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
