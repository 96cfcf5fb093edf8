//! `appliance attach` and `appliance exec`: a hijacked stream between our stdin/stdout/stderr and
//! a container's process, and that process's exit code as ours (docker's convention: the
//! command's own code; 126/127 when it could not start).

use std::io::Write;
use std::process::ExitCode;

use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::stdcopy;
use crate::cli::args::{AttachArgs, ExecArgs};
use crate::cli::client::{CliError, Client, Result};
use crate::cli::tty::{terminal_size, RawTerminal, WindowChanges};
use crate::store::logs::Stream;

/// Writes stream output to our stdout/stderr: as is for a tty, else demultiplexed from docker's
/// stdcopy framing, with `pending` holding an incomplete frame.
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

/// Tells the server our terminal's size, now and whenever it changes.
async fn keep_size_in_step(client: &Client, resize_path: &str) {
    if let Some((h, w)) = terminal_size() {
        let _ = client
            .call("POST", &format!("{resize_path}?h={h}&w={w}"), None)
            .await;
    }
    let (client, path) = (client.clone(), resize_path.to_string());
    tokio::spawn(async move {
        let Some(mut changes) = WindowChanges::listen() else {
            return;
        };
        while changes.changed().await {
            if let Some((h, w)) = terminal_size() {
                let _ = client
                    .call("POST", &format!("{path}?h={h}&w={w}"), None)
                    .await;
            }
        }
    });
}

/// Copies our stdin into the hijacked stream and its output to our stdout/stderr until the
/// server closes it. Keeps the remote terminal's size in step with ours when `tty`.
pub(crate) async fn pump(
    client: &Client,
    io: TokioIo<hyper::upgrade::Upgraded>,
    tty: bool,
    stdin: bool,
    resize_path: &str,
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
        keep_size_in_step(client, resize_path).await;
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

/// A process's exit code as ours (clamped to what a process can exit with).
pub(crate) fn exit(code: i64) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// `appliance attach`: a container's main process, or (`--exec`) a running exec.
pub async fn attach(client: &Client, a: &AttachArgs) -> Result<ExitCode> {
    match (&a.exec, &a.container) {
        (Some(exec_id), _) => reattach_exec(client, exec_id, !a.no_stdin).await,
        (None, Some(id)) => attach_container(client, id, !a.no_stdin, &a.detach_keys).await,
        // clap requires one of them.
        (None, None) => unreachable!("attach without a container or --exec"),
    }
}

/// Attaches to a container's main process until it exits (its exit code) or we detach (0).
/// Stdin goes in only if `want_stdin` and the container keeps it open (`-i`).
pub async fn attach_container(
    client: &Client,
    id: &str,
    want_stdin: bool,
    detach_keys: &str,
) -> Result<ExitCode> {
    let info = client
        .json("GET", &format!("/containers/{id}/json"), None)
        .await?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let stdin = want_stdin && info["Config"]["OpenStdin"].as_bool().unwrap_or(false);
    let path = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1&stdin={}&detachKeys={detach_keys}",
        u8::from(stdin)
    );
    let io = client.hijack(&path, None).await?;
    pump(client, io, tty, stdin, &format!("/containers/{id}/resize")).await;
    let after = client
        .json("GET", &format!("/containers/{id}/json"), None)
        .await?;
    if after["State"]["Running"].as_bool().unwrap_or(false) {
        return Ok(ExitCode::SUCCESS); // detached
    }
    Ok(exit(after["State"]["ExitCode"].as_i64().unwrap_or(0)))
}

/// Back into a running exec (after an appliance restart cut the first client off).
async fn reattach_exec(client: &Client, exec_id: &str, want_stdin: bool) -> Result<ExitCode> {
    let v = client
        .json("GET", &format!("/exec/{exec_id}/json"), None)
        .await?;
    let tty = v["ProcessConfig"]["tty"].as_bool().unwrap_or(false);
    let stdin = want_stdin && v["OpenStdin"].as_bool().unwrap_or(false);
    let start = json!({"Detach": false, "Tty": tty});
    attach_exec(client, exec_id, start, tty, stdin).await
}

/// `appliance exec`: creates the exec and, unless detached, runs it attached.
pub async fn exec(client: &Client, e: &ExecArgs) -> Result<ExitCode> {
    let p = &e.process;
    let mut spec = json!({
        "AttachStdin": p.interactive,
        "AttachStdout": true,
        "AttachStderr": true,
        "Tty": p.tty,
        "Cmd": e.command,
        "Env": p.env,
        "WorkingDir": p.workdir.as_deref().unwrap_or_default(),
        "User": p.user.as_deref().unwrap_or_default(),
    });
    if let (true, Some((h, w))) = (p.tty, terminal_size()) {
        spec["ConsoleSize"] = json!([h, w]);
    }
    let created = client
        .json(
            "POST",
            &format!("/containers/{}/exec", e.container),
            Some(spec),
        )
        .await?;
    let exec_id = created["Id"].as_str().unwrap_or("").to_string();
    let start = json!({"Detach": e.detach, "Tty": p.tty});
    if e.detach {
        client
            .call("POST", &format!("/exec/{exec_id}/start"), Some(start))
            .await?;
        return Ok(ExitCode::SUCCESS);
    }
    attach_exec(client, &exec_id, start, p.tty, p.interactive).await
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
    pump(client, io, tty, stdin, &format!("/exec/{exec_id}/resize")).await;
    let lost = |reason: String| CliError::ExecLost {
        exec_id: exec_id.to_string(),
        reason,
    };
    for _ in 0..100 {
        let v = client
            .json("GET", &format!("/exec/{exec_id}/json"), None)
            .await
            .map_err(|e| lost(e.to_string()))?;
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
