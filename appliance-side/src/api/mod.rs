//! The docker Engine API subset this layer owns, on `$TETHER_HOME/docker.sock`, so the stock
//! docker CLI works against it: _ping, version, ps, inspect, logs, kill, wait, resize, attach, and
//! exec create/start/inspect/resize. Errors are docker's: `{"message": ...}` with 404 for an
//! unknown id and 409 for a container that is not running.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use wire::{Control, SessionId};

pub mod attach;
pub mod body;
pub mod exec;
pub mod logs;
pub mod stdcopy;

use self::body::ApiBody;
use crate::server::container::{self, Event, State};
use crate::server::Server;
use crate::store::execs::ExecStore;
use crate::store::records::{self, Record};

pub const API_VERSION: &str = "1.45";
pub const MIN_API_VERSION: &str = "1.24";

pub struct Api {
    pub server: Arc<Server>,
    pub execs: ExecStore,
}

pub type ApiResponse = Response<ApiBody>;

/// An error as docker reports it: a status and `{"message": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> ApiResponse {
        error(self.status, self.message)
    }
}

pub fn error(status: StatusCode, message: impl Into<String>) -> ApiResponse {
    json_response(status, &json!({ "message": message.into() }))
}

pub fn json_response(status: StatusCode, v: &Value) -> ApiResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Api-Version", API_VERSION)
        .body(body::full(serde_json::to_vec(v).unwrap_or_default()))
        .expect("static response parts")
}

pub fn no_content() -> ApiResponse {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(body::empty())
        .expect("static response parts")
}

/// Query parameters (docker's values are simple; no repeated keys needed here).
pub fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(
        q.get(key).map(String::as_str),
        Some("1") | Some("true") | Some("True")
    )
}

/// Strips docker's `/v1.45` version prefix.
fn route_path(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(i) = rest.find('/') {
            if rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[i..];
            }
        }
    }
    path
}

impl Api {
    pub fn new(server: Arc<Server>) -> Arc<Self> {
        Arc::new(Self {
            execs: ExecStore::new(server.home.clone()),
            server,
        })
    }

    pub fn resolve(&self, reference: &str) -> Result<Record, ApiError> {
        records::resolve(&self.server.home, reference).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("No such container: {reference}"),
            )
        })
    }

    /// The container's state: live if it connected since the server started, else from disk.
    pub fn state(&self, id: &str) -> State {
        match self.server.container(id) {
            Some(c) => c.state(),
            None => std::fs::read(self.server.home.container(id).join("state.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default(),
        }
    }

    /// The live runtime of a running container, or docker's 409.
    pub fn running(&self, rec: &Record) -> Result<Arc<container::Container>, ApiError> {
        let conflict = || {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("container {} is not running", rec.id),
            )
        };
        let c = self.server.container(&rec.id).ok_or_else(conflict)?;
        if c.state().status != "running" {
            return Err(conflict());
        }
        Ok(c)
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<ApiResponse, Infallible> {
        let path = route_path(req.uri().path()).to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let resp = match (&method, parts.as_slice()) {
            (&Method::GET, ["_ping"]) | (&Method::HEAD, ["_ping"]) => Response::builder()
                .header("Api-Version", API_VERSION)
                .header("Ostype", "linux")
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(body::full(if method == Method::HEAD { "" } else { "OK" }))
                .expect("static"),
            (&Method::GET, ["version"]) => json_response(StatusCode::OK, &version()),
            (&Method::GET, ["info"]) => self.info(),
            (&Method::GET, ["containers", "json"]) => self.list(&query(&req)),
            (&Method::GET, ["containers", id, "json"]) => self.inspect(id),
            (&Method::GET, ["containers", id, "logs"]) => {
                crate::api::logs::logs(&self, id, &query(&req))
            }
            (&Method::POST, ["containers", id, "kill"]) => self.kill(id, &query(&req)),
            (&Method::POST, ["containers", id, "wait"]) => self.wait(id, &query(&req)),
            (&Method::POST, ["containers", id, "resize"]) => {
                self.resize_container(id, &query(&req))
            }
            (&Method::POST, ["containers", id, "attach"]) => {
                let id = id.to_string();
                crate::api::attach::attach(self.clone(), &id, req).await
            }
            (&Method::POST, ["containers", id, "exec"]) => {
                let id = id.to_string();
                match read_json(req).await {
                    Ok(v) => self.exec_create(&id, &v),
                    Err(r) => r.into_response(),
                }
            }
            (&Method::POST, ["exec", id, "start"]) => {
                let id = id.to_string();
                crate::api::attach::exec_start(self.clone(), &id, req).await
            }
            (&Method::GET, ["exec", id, "json"]) => self.exec_inspect(id),
            (&Method::POST, ["exec", id, "resize"]) => self.exec_resize(id, &query(&req)),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("page not found: {method} {path} is not part of this engine's API subset"),
            ),
        };
        Ok(resp)
    }

    fn info(&self) -> ApiResponse {
        let all = records::list(&self.server.home);
        let running = all
            .iter()
            .filter(|r| self.state(&r.id).status == "running")
            .count();
        json_response(
            StatusCode::OK,
            &json!({
                "ID": "tether",
                "Containers": all.len(),
                "ContainersRunning": running,
                "ContainersPaused": 0,
                "ContainersStopped": all.len() - running,
                "Images": 0,
                "Driver": "containervm",
                "LoggingDriver": "json-file",
                "OperatingSystem": "tether containerVMs",
                "OSType": "linux",
                "Architecture": "x86_64",
                "Name": "tether",
                "ServerVersion": env!("CARGO_PKG_VERSION"),
                "DockerRootDir": self.server.home.root(),
            }),
        )
    }

    fn list(&self, q: &HashMap<String, String>) -> ApiResponse {
        let all = flag(q, "all");
        let mut out = Vec::new();
        for rec in records::list(&self.server.home).into_iter().rev() {
            let st = self.state(&rec.id);
            let running = st.status == "running";
            if !all && !running {
                continue;
            }
            out.push(json!({
                "Id": rec.id,
                "Names": [format!("/{}", rec.name)],
                "Image": rec.image,
                "ImageID": "",
                "Command": command_line(&rec),
                "Created": created_unix(&rec),
                "State": docker_status(&st),
                "Status": status_text(&st),
                "Ports": [],
                "Labels": {},
                "HostConfig": {"NetworkMode": "default"},
                "NetworkSettings": {"Networks": {}},
                "Mounts": [],
            }));
        }
        json_response(StatusCode::OK, &Value::Array(out))
    }

    fn inspect(&self, reference: &str) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let st = self.state(&rec.id);
        let main = st.main().cloned().unwrap_or_default();
        let running = st.status == "running";
        json_response(
            StatusCode::OK,
            &json!({
                "Id": rec.id,
                "Created": rec.created,
                "Path": rec.path,
                "Args": rec.args.iter().skip(1).collect::<Vec<_>>(),
                "Name": format!("/{}", rec.name),
                "Image": rec.image,
                "State": {
                    "Status": docker_status(&st),
                    "Running": running,
                    "Paused": false,
                    "Restarting": false,
                    "OOMKilled": false,
                    "Dead": false,
                    "Pid": if running { main.pid.unwrap_or(0) } else { 0 },
                    "ExitCode": main.exit_code.unwrap_or(0),
                    "Error": if main.error.is_empty() { st.detail.clone() } else { main.error.clone() },
                    "StartedAt": or_zero_time(&main.started_at),
                    "FinishedAt": or_zero_time(&main.finished_at),
                },
                "Config": {
                    "Hostname": &rec.id[..12.min(rec.id.len())],
                    "Tty": rec.tty,
                    "OpenStdin": rec.open_stdin,
                    "StdinOnce": rec.open_stdin,
                    "AttachStdin": rec.open_stdin,
                    "AttachStdout": true,
                    "AttachStderr": true,
                    "Env": rec.env,
                    "Cmd": rec.args,
                    "Image": rec.image,
                    "Labels": {},
                },
                "HostConfig": {"NetworkMode": "default", "LogConfig": {"Type": "json-file", "Config": {}}},
                "Mounts": [],
                "NetworkSettings": {"Networks": {}},
                "ExecIDs": self.running_execs(&rec.id),
                // Extension: what the serial channel lost and repaired (see docs/protocol.md).
                "TetherLink": st.link,
            }),
        )
    }

    fn kill(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let signal_text = q.get("signal").map_or("SIGKILL", String::as_str);
        let Some(signal) = wire::message::parse_signal(signal_text) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid signal: {signal_text}"),
            );
        };
        let c = match self.running(&rec) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        match c.send_control(Control::Signal {
            session: 1,
            signal,
            group: false,
        }) {
            Ok(()) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    fn wait(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let next_exit = q.get("condition").is_some_and(|c| c == "next-exit");
        let st = self.state(&rec.id);
        let finished = |st: &State| {
            st.main()
                .and_then(|m| m.exit_code)
                .filter(|_| st.status != "running")
        };
        if let (Some(code), false) = (finished(&st), next_exit) {
            return json_response(StatusCode::OK, &json!({"StatusCode": code, "Error": null}));
        }
        // Stream the answer once the main session exits: headers now, body at exit.
        let (tx, body) = body::channel(1);
        let server = self.server.clone();
        let id = rec.id.clone();
        tokio::spawn(async move {
            loop {
                if let Some(c) = server.container(&id) {
                    let mut events = c.events.subscribe();
                    let st = c.state();
                    if let (Some(code), false) =
                        (finished(&st), next_exit && st.status == "running")
                    {
                        let _ = tx.send(wait_body(code)).await;
                        return;
                    }
                    loop {
                        match events.recv().await {
                            Ok(Event::Exited {
                                session: 1,
                                exit_code,
                            }) => {
                                let _ = tx.send(wait_body(exit_code)).await;
                                return;
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Response::builder()
            .header("Content-Type", "application/json")
            .body(body)
            .expect("static")
    }

    fn resize_container(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let c = match self.running(&rec) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        resize(&c, 1, q)
    }
}

fn wait_body(code: i32) -> Bytes {
    Bytes::from(format!("{{\"StatusCode\":{code},\"Error\":null}}\n"))
}

pub fn resize(
    c: &container::Container,
    session: SessionId,
    q: &HashMap<String, String>,
) -> ApiResponse {
    let dim = |k: &str| q.get(k).and_then(|v| v.parse::<u16>().ok());
    let (Some(rows), Some(cols)) = (dim("h"), dim("w")) else {
        return error(StatusCode::BAD_REQUEST, "resize needs numeric h and w");
    };
    match c.send_control(Control::Resize {
        session,
        rows,
        cols,
    }) {
        Ok(()) => Response::builder()
            .status(StatusCode::OK)
            .body(body::empty())
            .expect("static"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    read_json_body(req).await.map(|(_, v)| v)
}

/// The request's parts and its JSON body (`null` when empty).
pub async fn read_json_body(
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Value), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok((parts, Value::Null));
    }
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    Ok((parts, v))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn version() -> Value {
    json!({
        "Platform": {"Name": "tether"},
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": "",
        "GoVersion": "n/a (rust)",
        "GitCommit": "",
        "BuildTime": "",
        "Components": [{"Name": "tether session server", "Version": env!("CARGO_PKG_VERSION"), "Details": {}}],
    })
}

fn docker_status(st: &State) -> &'static str {
    match st.status.as_str() {
        "running" => "running",
        "exited" | "failed" => "exited",
        _ => "created",
    }
}

fn status_text(st: &State) -> String {
    match st.status.as_str() {
        "running" => "Up".into(),
        "exited" | "failed" => format!(
            "Exited ({})",
            st.main().and_then(|m| m.exit_code).unwrap_or(0)
        ),
        _ => "Created".into(),
    }
}

fn command_line(rec: &Record) -> String {
    rec.args.join(" ")
}

fn created_unix(rec: &Record) -> i64 {
    time::OffsetDateTime::parse(&rec.created, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

fn or_zero_time(t: &str) -> String {
    if t.is_empty() {
        "0001-01-01T00:00:00Z".into()
    } else {
        t.to_string()
    }
}

/// docker sends `since`/`until` as Unix seconds with an optional fraction.
pub(crate) fn parse_unix(s: &str) -> Option<i128> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i128 = secs.parse().ok()?;
    let mut nanos: i128 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    Some(secs * 1_000_000_000 + nanos)
}

/// Serves the API on a Unix socket until the process ends.
pub async fn serve_api(api: Arc<Api>, path: &std::path::Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(route_path("/v1.45/containers/json"), "/containers/json");
        assert_eq!(route_path("/_ping"), "/_ping");
        assert_eq!(percent_decode("a%20b+c%2F"), "a b c/");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(parse_unix("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(parse_unix("12"), Some(12_000_000_000));
        assert_eq!(parse_unix("x"), None);
    }
}
