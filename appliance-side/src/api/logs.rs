//! `GET /containers/{id}/logs`: the main session's output from the log store, then (with
//! `follow`) live. The file is the source of truth: a follower that falls behind the live event
//! buffer catches up from the file instead of being dropped, so `logs -f` never loses a byte.
//!
//! Extension: `resume=<stdout offset>,<stderr offset>` starts each stream at that byte offset.
//! A follower cut off by an appliance restart reconnects with what it already has and gets the
//! rest exactly once (`appliance logs -f` does this on its own).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use guestinfo::contract::MAIN_SESSION;
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use crate::api::body;
use crate::api::http::{error, flag, parse_unix};
use crate::api::stdcopy;
use crate::api::{Api, ApiResponse};
use crate::server::container::Container;
use crate::server::events::Event;
use crate::server::follow::{Next, SessionFollower};
use crate::store::logs::{self as logstore, Entry, Stream};
use crate::store::state::ContainerStatus;

/// Response header: the stream offsets (`stdout,stderr`) of the first byte of each stream the
/// response carries. A client adds what it received to know where to `resume`.
pub const START_HEADER: &str = "Tether-Log-Start";

/// What one logs request asked for.
struct Selection {
    want: [bool; 2],
    timestamps: bool,
    tty: bool,
}

impl Selection {
    fn wants(&self, s: Stream) -> bool {
        self.want[s as usize]
    }

    /// Frames one piece of output for the client (empty if the stream is not wanted).
    fn frame(&self, stream: Stream, time: &str, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.wants(stream) || bytes.is_empty() {
            return out;
        }
        let mut data = Vec::with_capacity(bytes.len() + 32);
        if self.timestamps {
            data.extend_from_slice(time.as_bytes());
            data.push(b' ');
        }
        data.extend_from_slice(bytes);
        stdcopy::frame(self.tty, stream, &data, &mut out);
        out
    }
}

/// Parses `resume=N,M`.
pub fn parse_resume(v: &str) -> Option<[u64; 2]> {
    let (a, b) = v.split_once(',')?;
    Some([a.trim().parse().ok()?, b.trim().parse().ok()?])
}

pub fn logs(api: &Api, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
    let rec = match api.resolve(reference) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let sel = Selection {
        want: [flag(q, "stdout"), flag(q, "stderr")],
        timestamps: flag(q, "timestamps"),
        tty: rec.tty,
    };
    if !sel.want.iter().any(|w| *w) {
        return error(
            StatusCode::BAD_REQUEST,
            "Bad parameters: you must choose at least one stream",
        );
    }
    let resume = match q.get("resume").map(|v| (v, parse_resume(v))) {
        None => [0, 0],
        Some((_, Some(r))) => r,
        Some((v, None)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad resume={v:?}: give the stdout and stderr byte offsets, e.g. resume=1024,0"
                ),
            )
        }
    };
    let since = q
        .get("since")
        .and_then(|s| parse_unix(s))
        .unwrap_or(i128::MIN);
    let until = q
        .get("until")
        .and_then(|s| parse_unix(s))
        .filter(|u| *u > 0)
        .unwrap_or(i128::MAX);
    let tail = q.get("tail").and_then(|t| t.parse::<usize>().ok());
    let st = api.state(&rec.id);
    let dir = api
        .engine
        .home()
        .container(&rec.id)
        .join("logs")
        .join(&st.boot);
    // Following needs the session to be running; after an appliance restart the containerVM may
    // not have reconnected yet, and the follower waits for it.
    let follow = flag(q, "follow") && st.status == ContainerStatus::Running;
    if flag(q, "follow") && !follow {
        tracing::info!(
            container = %rec.id,
            status = ?st.status,
            "logs --follow of a container that is not running: sending what is stored"
        );
    }
    let entries = logstore::read_entries_from(&dir, MAIN_SESSION, resume).unwrap_or_default();
    let mut sent = resume;
    for e in &entries {
        sent[e.stream as usize] = e.offset + e.bytes.len() as u64;
    }
    // A restarted container's earlier boots come first, as docker shows every run's output.
    // Not for a follower (its resume offsets count the current boot's bytes only).
    let earlier = if follow || q.contains_key("resume") {
        Vec::new()
    } else {
        earlier_boots(dir.parent().unwrap_or(&dir), &st.boot)
    };
    let selected: Vec<(bool, &Entry)> = earlier
        .iter()
        .map(|e| (false, e))
        .chain(entries.iter().map(|e| (true, e)))
        .filter(|(_, e)| sel.wants(e.stream) && e.unix_nanos >= since && e.unix_nanos <= until)
        .collect();
    let skip = tail.map_or(0, |t| selected.len().saturating_sub(t));
    let mut out = Vec::new();
    // Where each stream's bytes of the current boot in this response begin; from there they
    // are contiguous.
    let mut start = sent;
    for (current, e) in selected[skip..].iter().rev() {
        if *current {
            start[e.stream as usize] = e.offset;
        }
    }
    for (_, e) in &selected[skip..] {
        out.extend(sel.frame(e.stream, &e.time, &e.bytes));
    }
    let start_header = format!("{},{}", start[0], start[1]);
    let content_type = if rec.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    if !follow {
        return Response::builder()
            .header("Content-Type", content_type)
            .header(START_HEADER, start_header)
            .body(body::full(out))
            .expect("static");
    }
    let (tx, body) = body::channel(64);
    let server = api.engine.server.clone();
    let id = rec.id.clone();
    tokio::spawn(async move {
        if tx.send(Bytes::from(out)).await.is_err() {
            return;
        }
        let container = loop {
            if let Some(c) = server.container(&id) {
                break c;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(RECONNECT_POLL).await;
        };
        follow_live(container, dir, sel, sent, tx).await;
    });
    Response::builder()
        .header("Content-Type", content_type)
        .header(START_HEADER, start_header)
        .body(body)
        .expect("static")
}

/// The main session's entries of every boot but `current`, oldest boot first (by its first
/// entry's time).
fn earlier_boots(logs_root: &std::path::Path, current: &str) -> Vec<Entry> {
    let mut boots: Vec<Vec<Entry>> = std::fs::read_dir(logs_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy() != current)
        .filter_map(|d| logstore::read_entries(&d.path(), MAIN_SESSION).ok())
        .filter(|entries| !entries.is_empty())
        .collect();
    boots.sort_by_key(|entries| entries[0].unix_nanos);
    boots.into_iter().flatten().collect()
}

/// How often a follower looks for a containerVM that has not reconnected yet.
const RECONNECT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Subscribes, then sends from the file whatever came after `sent`. Returns the new follower
/// and the framed catch-up bytes.
fn catch_up(
    container: &Arc<Container>,
    dir: &std::path::Path,
    sel: &Selection,
    sent: &mut [u64; 2],
) -> (SessionFollower, Vec<u8>) {
    // Subscribe before reading the file so nothing falls between the two; offsets dedupe.
    let follower = SessionFollower::new(
        container.clone(),
        container.events.subscribe(),
        MAIN_SESSION,
        sel.tty,
    );
    let mut out = Vec::new();
    for e in logstore::read_entries_from(dir, MAIN_SESSION, *sent).unwrap_or_default() {
        sent[e.stream as usize] = e.offset + e.bytes.len() as u64;
        out.extend(sel.frame(e.stream, &e.time, &e.bytes));
    }
    (follower, out)
}

/// Sends live output from `sent` on until the session ends or the client goes away.
async fn follow_live(
    container: Arc<Container>,
    dir: PathBuf,
    sel: Selection,
    mut sent: [u64; 2],
    tx: mpsc::Sender<Bytes>,
) {
    let (mut follower, first) = catch_up(&container, &dir, &sel, &mut sent);
    if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
        return;
    }
    loop {
        let chunk = match follower.next().await {
            Next::Event(Event::Output {
                stream,
                offset,
                bytes,
                ..
            }) => {
                // Skip what the file already gave this client.
                let i = stream as usize;
                let end = offset + bytes.len() as u64;
                if end <= sent[i] {
                    continue;
                }
                let fresh = &bytes[(sent[i].saturating_sub(offset)) as usize..];
                sent[i] = end;
                sel.frame(stream, &logstore::now_rfc3339().0, fresh)
            }
            Next::Event(_) => continue,
            Next::Lagged(_) => {
                // Too slow for the live buffer: everything missed is in the file.
                let (f, out) = catch_up(&container, &dir, &sel, &mut sent);
                follower = f;
                out
            }
            Next::Done => {
                // Whatever reached the file but not the live feed (a lag at the very end).
                let (_, last) = catch_up(&container, &dir, &sel, &mut sent);
                if !last.is_empty() {
                    let _ = tx.send(Bytes::from(last)).await;
                }
                return;
            }
        };
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_parses_two_offsets_and_rejects_the_rest() {
        assert_eq!(parse_resume("1024,0"), Some([1024, 0]));
        assert_eq!(parse_resume(" 5 , 7 "), Some([5, 7]));
        assert_eq!(parse_resume("5"), None);
        assert_eq!(parse_resume("a,1"), None);
        assert_eq!(parse_resume("-1,1"), None);
    }
}
