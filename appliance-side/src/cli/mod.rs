//! The command line: docker's everyday verbs against `$TETHER_HOME/docker.sock`, with docker's
//! exit-code conventions (the command's own code for exec and attach; 126/127 when it could not
//! start; 1 for an error from the server, with its message).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod logs;
pub mod run;

use crate::api::stdcopy;
use crate::home::Home;
use crate::store::logs::Stream;

pub struct Client {
    socket: PathBuf,
}

pub struct CliError(pub String);

type Result<T> = std::result::Result<T, CliError>;

impl Client {
    pub fn new(home: &Home) -> Self {
        Self {
            socket: home.docker_socket(),
        }
    }

    pub(crate) async fn sender(
        &self,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| {
            CliError(format!(
                "cannot reach the appliance at unix://{}: {e}. Is it running? Start it with `appliance serve --detach`",
                self.socket.display()
            ))
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError(format!("HTTP handshake: {e}")))?;
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
            .map_err(|e| CliError(format!("request failed: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CliError(format!("reading the response: {e}")))?
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
            .map_err(|e| CliError(format!("bad JSON from the server: {e}")))
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
            .map_err(|e| CliError(format!("request failed: {e}")))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(error_answer(resp).await);
        }
        let up = hyper::upgrade::on(resp)
            .await
            .map_err(|e| CliError(format!("upgrading the connection: {e}")))?;
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

pub fn server_error(bytes: &[u8]) -> CliError {
    let msg = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned());
    CliError(format!("Error response from daemon: {msg}"))
}

/// Writes stream output to our stdout/stderr; `pending` holds an incomplete frame.
pub(crate) fn write_output(tty: bool, data: &[u8], pending: &mut Vec<u8>) {
    if tty {
        let mut out = std::io::stdout();
        let _ = out.write_all(data);
        let _ = out.flush();
        return;
    }
    pending.extend_from_slice(data);
    let (pieces, rest) = stdcopy::demux(pending);
    *pending = rest;
    for (stream, bytes) in pieces {
        match stream {
            Stream::Stdout => {
                let mut o = std::io::stdout();
                let _ = o.write_all(&bytes);
                let _ = o.flush();
            }
            Stream::Stderr => {
                let mut e = std::io::stderr();
                let _ = e.write_all(&bytes);
            }
        }
    }
}

/// Puts our terminal in raw mode while a tty session is attached; restores it on drop.
struct RawTerminal(Option<nix::sys::termios::Termios>);

impl RawTerminal {
    fn enable(tty: bool) -> Self {
        let stdin = std::io::stdin();
        if !tty || !nix::unistd::isatty(stdin.as_fd()).unwrap_or(false) {
            return Self(None);
        }
        let Ok(saved) = nix::sys::termios::tcgetattr(stdin.as_fd()) else {
            return Self(None);
        };
        let mut raw = saved.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
        Self(Some(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin().as_fd(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass.
    let rc = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Copies our stdin into the hijacked stream and its output to our stdout/stderr until the
/// server closes it. Keeps the remote terminal's size in step with ours when `tty`.
async fn pump(
    client: &Client,
    io: TokioIo<hyper::upgrade::Upgraded>,
    tty: bool,
    stdin: bool,
    resize_path: String,
) {
    let _raw = RawTerminal::enable(tty && stdin);
    let (mut rd, mut wr) = tokio::io::split(io);
    if stdin {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 8192];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        if wr.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    if tty {
        if let Some((h, w)) = terminal_size() {
            let _ = client
                .call("POST", &format!("{resize_path}?h={h}&w={w}"), None)
                .await;
        }
        let path = resize_path.clone();
        let socket = client.socket.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            let c = Client { socket };
            while winch.recv().await.is_some() {
                if let Some((h, w)) = terminal_size() {
                    let _ = c.call("POST", &format!("{path}?h={h}&w={w}"), None).await;
                }
            }
        });
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => write_output(tty, &buf[..n], &mut pending),
        }
    }
}

/// The container's inspect document and whether it has a tty (which decides the framing).
async fn container_info(client: &Client, id: &str) -> Result<(Value, bool)> {
    let info = client
        .json("GET", &format!("/containers/{id}/json"), None)
        .await?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    Ok((info, tty))
}

fn exit(code: i64) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

pub async fn run(
    home: &Home,
    verb: &str,
    args: &[String],
) -> std::result::Result<ExitCode, CliError> {
    let client = Client::new(home);
    let mut flags: Vec<&str> = Vec::new();
    let mut values: std::collections::HashMap<&str, String> = Default::default();
    let mut positional: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !positional.is_empty() {
            positional.push(a.clone());
            continue;
        }
        match a.as_str() {
            "-a" | "--all" | "-f" | "--follow" | "-t" | "--timestamps" | "--tty" | "-i"
            | "--interactive" | "--no-stdin" | "-d" | "--detach" => flags.push(a.as_str()),
            "--tail" | "--since" | "--until" | "-s" | "--signal" | "-e" | "--env" | "-w"
            | "--workdir" | "-u" | "--user" | "--detach-keys" | "--exec" => {
                let v = it
                    .next()
                    .ok_or_else(|| CliError(format!("{a} needs a value")))?;
                values.insert(a.as_str(), v.clone());
            }
            "--" => positional.extend(it.by_ref().cloned()),
            other if other.starts_with('-') => {
                return Err(CliError(format!(
                    "unknown option {other:?} for `appliance {verb}`"
                )))
            }
            other => positional.push(other.to_string()),
        }
    }
    let has = |f: &[&str]| flags.iter().any(|x| f.contains(x));
    let target = || {
        positional
            .first()
            .cloned()
            .ok_or_else(|| CliError(format!("`appliance {verb}` needs a container name or id")))
    };
    match verb {
        "ps" => {
            let all = if has(&["-a", "--all"]) { "1" } else { "0" };
            let list = client
                .json("GET", &format!("/containers/json?all={all}"), None)
                .await?;
            println!(
                "{:<14}{:<20}{:<16}COMMAND",
                "CONTAINER ID", "NAME", "STATUS"
            );
            for c in list.as_array().into_iter().flatten() {
                let id = c["Id"].as_str().unwrap_or("");
                let name = c["Names"][0].as_str().unwrap_or("").trim_start_matches('/');
                println!(
                    "{:<14}{:<20}{:<16}{}",
                    &id[..12.min(id.len())],
                    name,
                    c["Status"].as_str().unwrap_or(""),
                    c["Command"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        "inspect" => {
            let v = client
                .json("GET", &format!("/containers/{}/json", target()?), None)
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!([v])).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        "logs" => {
            let id = target()?;
            let (_, tty) = container_info(&client, &id).await?;
            let mut path = format!("/containers/{id}/logs?stdout=1&stderr=1");
            if has(&["-f", "--follow"]) {
                path.push_str("&follow=1");
            }
            if has(&["-t", "--timestamps"]) {
                path.push_str("&timestamps=1");
            }
            if let Some(t) = values.get("--tail") {
                path.push_str(&format!("&tail={t}"));
            }
            for (flag, key) in [("--since", "since"), ("--until", "until")] {
                if let Some(t) = values.get(flag) {
                    path.push_str(&format!("&{key}={}", unix_time(t)?));
                }
            }
            let req = crate::cli::logs::LogsRequest {
                path,
                tty,
                timestamps: has(&["-t", "--timestamps"]),
                follow: has(&["-f", "--follow"]),
            };
            crate::cli::logs::print_logs(&client, &req).await?;
            Ok(ExitCode::SUCCESS)
        }
        "kill" => {
            let sig = values
                .get("-s")
                .or(values.get("--signal"))
                .cloned()
                .unwrap_or_else(|| "KILL".into());
            client
                .call(
                    "POST",
                    &format!("/containers/{}/kill?signal={sig}", target()?),
                    None,
                )
                .await?;
            println!("{}", target()?);
            Ok(ExitCode::SUCCESS)
        }
        "wait" => {
            let v = client
                .json("POST", &format!("/containers/{}/wait", target()?), None)
                .await?;
            println!("{}", v["StatusCode"]);
            Ok(ExitCode::SUCCESS)
        }
        "attach" if values.contains_key("--exec") => {
            // Back into a running exec (after an appliance restart cut the first client off).
            let exec_id = values["--exec"].clone();
            let v = client
                .json("GET", &format!("/exec/{exec_id}/json"), None)
                .await?;
            let tty = v["ProcessConfig"]["tty"].as_bool().unwrap_or(false);
            let stdin = !has(&["--no-stdin"]) && v["OpenStdin"].as_bool().unwrap_or(false);
            let start = json!({"Detach": false, "Tty": tty});
            attach_exec(&client, &exec_id, start, tty, stdin).await
        }
        "attach" => {
            let id = target()?;
            let (info, tty) = container_info(&client, &id).await?;
            let stdin =
                !has(&["--no-stdin"]) && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
            let keys = values
                .get("--detach-keys")
                .cloned()
                .unwrap_or_else(|| "ctrl-p,ctrl-q".into());
            let path = format!(
                "/containers/{id}/attach?stream=1&stdout=1&stderr=1&stdin={}&detachKeys={keys}",
                u8::from(stdin)
            );
            let io = client.hijack(&path, None).await?;
            pump(&client, io, tty, stdin, format!("/containers/{id}/resize")).await;
            let after = client
                .json("GET", &format!("/containers/{id}/json"), None)
                .await?;
            if after["State"]["Running"].as_bool().unwrap_or(false) {
                return Ok(ExitCode::SUCCESS); // detached
            }
            Ok(exit(after["State"]["ExitCode"].as_i64().unwrap_or(0)))
        }
        "exec" => {
            if positional.len() < 2 {
                return Err(CliError(
                    "`appliance exec` needs a container and a command".into(),
                ));
            }
            let tty = has(&["-t", "--tty"]);
            let stdin = has(&["-i", "--interactive"]);
            let mut env: Vec<String> = Vec::new();
            if let Some(e) = values.get("-e").or(values.get("--env")) {
                env.push(e.clone());
            }
            let mut spec = json!({
                "AttachStdin": stdin,
                "AttachStdout": true,
                "AttachStderr": true,
                "Tty": tty,
                "Cmd": positional[1..],
                "Env": env,
                "WorkingDir": values.get("-w").or(values.get("--workdir")).cloned().unwrap_or_default(),
                "User": values.get("-u").or(values.get("--user")).cloned().unwrap_or_default(),
            });
            if let (true, Some((h, w))) = (tty, terminal_size()) {
                spec["ConsoleSize"] = json!([h, w]);
            }
            let created = client
                .json(
                    "POST",
                    &format!("/containers/{}/exec", positional[0]),
                    Some(spec),
                )
                .await?;
            let exec_id = created["Id"].as_str().unwrap_or("").to_string();
            let detach = has(&["-d", "--detach"]);
            let start = json!({"Detach": detach, "Tty": tty});
            if detach {
                client
                    .call("POST", &format!("/exec/{exec_id}/start"), Some(start))
                    .await?;
                return Ok(ExitCode::SUCCESS);
            }
            attach_exec(&client, &exec_id, start, tty, stdin).await
        }
        other => Err(CliError(format!("unknown command {other:?}"))),
    }
}

/// Starts (or re-attaches to) an exec over a hijacked stream; returns its exit code.
async fn attach_exec(
    client: &Client,
    exec_id: &str,
    start: Value,
    tty: bool,
    stdin: bool,
) -> Result<ExitCode> {
    let io = client
        .hijack(&format!("/exec/{exec_id}/start"), Some(start))
        .await?;
    pump(client, io, tty, stdin, format!("/exec/{exec_id}/resize")).await;
    let lost = |why: String| {
        CliError(format!(
            "exec {exec_id}: the connection ended without its exit code ({why}); if it still runs, `appliance attach --exec {exec_id}` re-attaches"
        ))
    };
    for _ in 0..100 {
        let v = client
            .json("GET", &format!("/exec/{exec_id}/json"), None)
            .await
            .map_err(|e| lost(e.0))?;
        if let Some(code) = v["ExitCode"].as_i64() {
            return Ok(exit(code));
        }
        if v["Running"].as_bool() == Some(true) {
            return Ok(ExitCode::SUCCESS); // detached with the detach keys
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Err(lost("it did not arrive within 5 s".into()))
}

/// docker accepts RFC 3339 or Unix seconds for --since/--until; the API wants Unix seconds.
fn unix_time(t: &str) -> Result<String> {
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Ok(t.to_string());
    }
    let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            CliError(format!(
                "{t:?} is neither Unix seconds nor an RFC 3339 time"
            ))
        })?;
    let nanos = parsed.unix_timestamp_nanos();
    Ok(format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    ))
}
