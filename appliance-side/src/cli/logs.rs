//! `appliance logs`: prints a container's logs; with `--follow` it outlives appliance restarts.
//! When the connection breaks mid-stream (the server was killed or upgraded), it reconnects and
//! asks for the rest with `resume=` from the offsets it has, so every byte is printed once.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::api::logs::{parse_resume, START_HEADER};
use crate::cli::args::LogsArgs;
use crate::cli::attach::write_output;
use crate::cli::client::{error_answer, CliError, Client};

/// How long a follower keeps trying to reach a restarting appliance.
const RECONNECT_FOR: Duration = Duration::from_secs(300);

/// How one attempt ended.
enum Ended {
    /// The server closed the stream: the session ended (or no follow was asked).
    Complete,
    /// The connection broke; `have` says how far each stream got.
    Broken(String),
}

/// `appliance logs`: the request its flags make, printed (the framing follows the container's
/// tty setting, so its inspect document comes first).
pub async fn logs(client: &Client, a: &LogsArgs) -> Result<ExitCode, CliError> {
    let id = &a.container;
    let info = client
        .json("GET", &format!("/containers/{id}/json"), None)
        .await?;
    let tty = info["Config"]["Tty"].as_bool().unwrap_or(false);
    let mut path = format!("/containers/{id}/logs?stdout=1&stderr=1");
    if a.follow {
        path.push_str("&follow=1");
    }
    if a.timestamps {
        path.push_str("&timestamps=1");
    }
    if let Some(t) = &a.tail {
        path.push_str(&format!("&tail={t}"));
    }
    // Unix seconds already (clap's `unix_time`).
    for (key, t) in [("since", &a.since), ("until", &a.until)] {
        if let Some(t) = t {
            path.push_str(&format!("&{key}={t}"));
        }
    }
    let req = LogsRequest {
        path,
        tty,
        timestamps: a.timestamps,
        follow: a.follow,
    };
    print_logs(client, &req).await?;
    Ok(ExitCode::SUCCESS)
}

pub struct LogsRequest {
    /// `/containers/{id}/logs?...` without `resume`.
    pub path: String,
    pub tty: bool,
    pub timestamps: bool,
    pub follow: bool,
}

/// Counts the stream bytes a response carries, from its start offsets.
struct Progress {
    have: Option<[u64; 2]>,
    pending: Vec<u8>,
}

impl Progress {
    fn count(&mut self, req: &LogsRequest, data: &[u8]) {
        let Some(have) = self.have.as_mut() else {
            return;
        };
        if req.tty {
            // Raw stream: everything is stdout (timestamps make it uncountable: see `resumable`).
            have[0] += data.len() as u64;
            return;
        }
        self.pending.extend_from_slice(data);
        let (pieces, rest) = crate::api::stdcopy::demux(&self.pending);
        self.pending = rest;
        for (stream, bytes) in pieces {
            // Each frame is one entry; with timestamps it starts with "<time> ".
            let payload = if req.timestamps {
                bytes
                    .iter()
                    .position(|b| *b == b' ')
                    .map_or(0, |i| bytes.len() - i - 1)
            } else {
                bytes.len()
            };
            have[stream as usize] += payload as u64;
        }
    }
}

fn resumable(req: &LogsRequest) -> bool {
    req.follow && !(req.tty && req.timestamps) && !req.path.contains("until=")
}

/// Prints the logs; with follow, reconnects across appliance restarts.
pub async fn print_logs(client: &Client, req: &LogsRequest) -> Result<(), CliError> {
    let mut resume: Option<[u64; 2]> = None;
    loop {
        let path = match resume {
            None => req.path.clone(),
            // The rest from where we are; `tail` and `since` were applied by the first request.
            Some([o, e]) => format!("{}&resume={o},{e}", strip_window(&req.path)),
        };
        let mut progress = Progress {
            have: None,
            pending: Vec::new(),
        };
        let ended = match once(client, &path, req, &mut progress).await {
            Ok(e) => e,
            Err(Failure::Answer(e)) => return Err(e),
            // Never reached the server or lost it mid-request: like a break mid-stream.
            Err(Failure::Transport(e)) if resume.is_some() || req.follow => {
                Ended::Broken(e.to_string())
            }
            Err(Failure::Transport(e)) => return Err(e),
        };
        let reason = match ended {
            Ended::Complete => return Ok(()),
            Ended::Broken(reason) => reason,
        };
        if !resumable(req) {
            return Err(CliError::Failed(format!("lost the appliance: {reason}")));
        }
        if progress.have.is_some() {
            resume = progress.have;
        }
        eprintln!("appliance logs: lost the appliance ({reason}); reconnecting");
        wait_for_server(client).await?;
    }
}

/// Drops `tail=` and `since=`: a resumed request continues the same bytes.
fn strip_window(path: &str) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("tail=") && !kv.starts_with("since="))
        .collect();
    format!("{base}?{}", kept.join("&"))
}

async fn wait_for_server(client: &Client) -> Result<(), CliError> {
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client.call("GET", "/_ping", None).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > RECONNECT_FOR {
            return Err(CliError::Failed(format!(
                "the appliance did not come back within {} s",
                RECONNECT_FOR.as_secs()
            )));
        }
    }
}

/// Why a request got no stream.
enum Failure {
    /// The server answered with an error: final.
    Answer(CliError),
    /// The server could not be reached or went away: worth retrying when following.
    Transport(CliError),
}

async fn once(
    client: &Client,
    path: &str,
    req: &LogsRequest,
    progress: &mut Progress,
) -> Result<Ended, Failure> {
    let mut sender = client.sender().await.map_err(Failure::Transport)?;
    let resp = sender
        .send_request(Client::request("GET", path, None, false))
        .await
        .map_err(|e| Failure::Transport(CliError::protocol("request failed", e)))?;
    if !resp.status().is_success() {
        return Err(Failure::Answer(error_answer(resp).await));
    }
    progress.have = resp
        .headers()
        .get(START_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_resume);
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Ok(Ended::Broken(e.to_string())),
        };
        if let Some(data) = frame.data_ref() {
            write_output(req.tty, data, &mut pending);
            progress.count(req, data);
        }
    }
    Ok(Ended::Complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::logs::Stream;

    #[test]
    fn a_resumed_request_keeps_streams_and_follow_but_not_the_window() {
        assert_eq!(
            strip_window("/containers/x/logs?stdout=1&tail=5&follow=1&since=3"),
            "/containers/x/logs?stdout=1&follow=1"
        );
    }

    #[test]
    fn progress_counts_payload_without_timestamps() {
        let req = LogsRequest {
            path: String::new(),
            tty: false,
            timestamps: true,
            follow: true,
        };
        let mut p = Progress {
            have: Some([10, 20]),
            pending: Vec::new(),
        };
        let mut framed = Vec::new();
        crate::api::stdcopy::frame(
            false,
            Stream::Stdout,
            b"2026-01-01T00:00:00Z abc",
            &mut framed,
        );
        crate::api::stdcopy::frame(
            false,
            Stream::Stderr,
            b"2026-01-01T00:00:00Z de",
            &mut framed,
        );
        // Delivered in two arbitrary pieces.
        p.count(&req, &framed[..5]);
        p.count(&req, &framed[5..]);
        assert_eq!(p.have, Some([13, 22]));
    }
}
