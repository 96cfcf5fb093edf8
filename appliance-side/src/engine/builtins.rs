//! Tether's built-ins (docker top, docker cp) as sessions of a running container: the engine
//! sends `Builtin`, feeds its stdin, and hands its stdout on as it arrives. No program is needed
//! in the image: tether does the work itself (docs/protocol.md, §6).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use wire::{BuiltinOp, Control, SessionId};

use crate::engine::{Engine, EngineError};
use crate::server::container::Container;
use crate::server::follow::{Next, SessionFollower};
use crate::store::logs::Stream;
use crate::store::records::Record;

/// How a built-in ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinEnd {
    pub exit_code: i32,
    /// What it wrote on stderr: one line of reason when `exit_code` is 1.
    pub stderr: String,
}

impl BuiltinEnd {
    /// Docker's error for a failed built-in, by tether's reason.
    pub fn into_error(self) -> EngineError {
        let reason = self.stderr.trim().to_string();
        if reason.starts_with("Could not find the file") {
            EngineError::NotFound(reason)
        } else if reason.contains("not a directory") || reason.starts_with("unsupported ps_args") {
            EngineError::BadRequest(reason)
        } else if reason.is_empty() {
            EngineError::Internal(format!("tether's built-in exited {}", self.exit_code))
        } else {
            EngineError::Internal(reason)
        }
    }
}

/// A built-in under way: its stdout as it comes, then how it ended.
pub struct RunningBuiltin {
    pub stdout: mpsc::Receiver<Bytes>,
    pub end: tokio::sync::oneshot::Receiver<BuiltinEnd>,
}

impl Engine {
    /// Starts `op` in the running container; `stdin`, if given, is sent and then closed.
    pub async fn builtin(
        &self,
        rec: &Record,
        op: BuiltinOp,
        stdin: Option<mpsc::Receiver<Bytes>>,
    ) -> Result<RunningBuiltin, EngineError> {
        let c = self.running_soon(rec).await?;
        let session = c.new_exec_session();
        // Subscribed before the session exists, so none of its output can be missed.
        let events = c.events.subscribe();
        let name = match &op {
            BuiltinOp::Processes { .. } => "top",
            BuiltinOp::Stat { .. } => "stat",
            BuiltinOp::ArchiveGet { .. } => "archive-get",
            BuiltinOp::ArchivePut { .. } => "archive-put",
            BuiltinOp::ApplyLayer { .. } => "apply-layer",
        };
        c.send_control(Control::Builtin {
            session,
            name: name.into(),
            op,
        })
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        if let Some(input) = stdin {
            tokio::spawn(feed_stdin(c.clone(), session, input));
        }
        let (out_tx, stdout) = mpsc::channel(16);
        let (end_tx, end) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut follower = SessionFollower::new(c.clone(), events, session, false);
            let mut stderr = Vec::new();
            let mut lost = None;
            loop {
                match follower.next().await {
                    Next::Event(crate::server::events::Event::Output { stream, bytes, .. }) => {
                        match stream {
                            Stream::Stdout => {
                                if out_tx.send(Bytes::copy_from_slice(&bytes)).await.is_err() {
                                    // The client left: stop the built-in.
                                    let _ = c.send_control(Control::Signal {
                                        session,
                                        signal: libc::SIGKILL,
                                        group: false,
                                    });
                                }
                            }
                            Stream::Stderr => stderr.extend_from_slice(&bytes),
                        }
                    }
                    Next::Event(_) => {}
                    Next::Lagged(n) => {
                        lost = Some(format!("the copy fell {n} events behind and was cut off"));
                        let _ = c.send_control(Control::Signal {
                            session,
                            signal: libc::SIGKILL,
                            group: false,
                        });
                        break;
                    }
                    Next::Done => break,
                }
            }
            let ended = c
                .state()
                .sessions
                .get(&session)
                .cloned()
                .unwrap_or_default();
            let exit_code = ended
                .exit_code
                .unwrap_or(if lost.is_some() { 137 } else { 0 });
            let mut stderr = String::from_utf8_lossy(&stderr).into_owned();
            if let Some(l) = lost {
                stderr = l;
            } else if stderr.trim().is_empty() {
                // Ended without a word of its own (its VM died): the server's reason.
                stderr = ended.error;
            }
            let _ = end_tx.send(BuiltinEnd { exit_code, stderr });
        });
        Ok(RunningBuiltin { stdout, end })
    }

    /// Runs `op` to its end and returns its whole stdout (small answers: top, stat).
    pub async fn builtin_output(
        &self,
        rec: &Record,
        op: BuiltinOp,
    ) -> Result<Vec<u8>, EngineError> {
        let mut run = self.builtin(rec, op, None).await?;
        let mut out = Vec::new();
        while let Some(chunk) = run.stdout.recv().await {
            out.extend_from_slice(&chunk);
            if out.len() > MAX_SMALL_OUTPUT {
                return Err(EngineError::Internal(
                    "the built-in's answer is too large".into(),
                ));
            }
        }
        let end = run
            .end
            .await
            .map_err(|_| EngineError::Internal("the built-in's session was lost".into()))?;
        if end.exit_code != 0 {
            return Err(end.into_error());
        }
        Ok(out)
    }
}

/// An answer (a process list, a stat) larger than this is a broken guest.
const MAX_SMALL_OUTPUT: usize = 16 * 1024 * 1024;

/// Copies `input` into the session's stdin, waiting while the bounded buffer is full, then
/// closes it.
async fn feed_stdin(c: Arc<Container>, session: SessionId, mut input: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = input.recv().await {
        let mut sent = 0;
        while sent < chunk.len() {
            sent += c.write_stdin(session, &chunk[sent..], false);
            if sent < chunk.len() {
                // A built-in that ended (a bad archive) reads no more: stop feeding it.
                let st = c.state();
                let ended = st
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.exit_code.is_some());
                if ended || st.status.is_finished() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    c.write_stdin(session, &[], true);
}
