//! One containerVM as the server sees it: its streams (restored from the log store after a
//! restart), log writers, and state, persisted before anything is acknowledged to tether; plus the
//! fan-out of its output to attached clients.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guestinfo::contract::MAIN_SESSION;

use tokio::sync::Notify;
use wire::LogLevel;
use wire::{
    Control, GuestState, Inbound, Role, SessionId, StreamConfig, StreamKey, StreamKind, Streams,
};

use crate::server::events::{Event, EventHub};
use crate::store::logs::{self as logstore, LogWriter, Rotation, Stream};
use crate::store::state::{ContainerStatus, LinkStats, State, FIRST_EXEC_SESSION};

pub struct Inner {
    pub streams: Streams,
    pub state: State,
    writers: BTreeMap<SessionId, LogWriter>,
    dir: PathBuf,
    rotation: Rotation,
    /// What is known only while the server runs: reset by a new boot or a server restart.
    runtime: Runtime,
}

#[derive(Debug)]
struct Runtime {
    /// The log or state store refuses writes (its disk is full): output is held back in the
    /// guest meanwhile, and taken again on its next retransmission.
    store_fault: Option<StoreFault>,
    /// Since when no channel has been up (None while one is).
    disconnected_since: Option<Instant>,
    /// The VM is gone: no more output will come.
    vm_gone: bool,
}

#[derive(Debug)]
struct StoreFault {
    error: String,
    since: Instant,
    reported: Instant,
}

/// How often a store that stays full is logged again.
const STORE_FAULT_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Shared by the connection task and API handlers; locked briefly, never across an await.
pub struct Container {
    pub id: String,
    pub inner: Mutex<Inner>,
    pub events: EventHub,
    /// Something was queued for tether (stdin, control): the connection task should transmit.
    pub tx_wake: Notify,
}

fn kind_stream(kind: StreamKind) -> Option<Stream> {
    match kind {
        StreamKind::Stdout => Some(Stream::Stdout),
        StreamKind::Stderr => Some(Stream::Stderr),
        _ => None,
    }
}

fn now() -> String {
    logstore::now_rfc3339().0
}

impl Container {
    /// Loads (or starts) the container's state for `boot` from `dir`, restoring every stream's
    /// position from what was persisted.
    pub fn open(id: &str, dir: PathBuf, boot: &str, rotation: Rotation) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let mut state = State::load(&dir);
        if state.boot != boot {
            // A new boot of the VM: fresh streams; the old boot's logs stay where they are.
            state = State::for_boot(boot);
        }
        let mut streams = Streams::new(Role::Appliance, server_stream_config());
        let log_dir = dir.join("logs").join(boot);
        let mut writers = BTreeMap::new();
        for entry in std::fs::read_dir(&log_dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(session) = name
                .strip_suffix(".json.log")
                .and_then(|s| s.parse::<SessionId>().ok())
            else {
                continue;
            };
            let w = LogWriter::open(&log_dir, session, rotation)?;
            for (kind, stream) in [
                (StreamKind::Stdout, Stream::Stdout),
                (StreamKind::Stderr, Stream::Stderr),
            ] {
                // Only streams that existed: a tty session has no stderr, and one that never
                // wrote is created again by its first byte.
                if w.offset(stream) == 0 && !w.finished(stream) {
                    continue;
                }
                streams.restore_in(
                    StreamKey::new(session, kind),
                    w.offset(stream),
                    w.finished(stream),
                );
            }
            writers.insert(session, w);
        }
        streams.restore_in(StreamKey::CONTROL, state.control_offset, false);
        Ok(Arc::new(Self {
            id: id.to_string(),
            inner: Mutex::new(Inner {
                streams,
                state,
                writers,
                dir,
                rotation,
                runtime: Runtime {
                    store_fault: None,
                    disconnected_since: Some(Instant::now()),
                    vm_gone: false,
                },
            }),
            events: EventHub::default(),
            tx_wake: Notify::new(),
        }))
    }

    pub fn log_dir(&self) -> PathBuf {
        let inner = self.inner.lock().expect("container lock");
        inner.dir.join("logs").join(&inner.state.boot)
    }

    pub fn state(&self) -> State {
        self.inner.lock().expect("container lock").state.clone()
    }

    /// Why the store refuses this container's output right now, if it does.
    pub fn store_error(&self) -> Option<String> {
        let inner = self.inner.lock().expect("container lock");
        inner.runtime.store_fault.as_ref().map(|f| {
            format!(
                "log store full for {} s: {}; output is held back in the containerVM until space is freed",
                f.since.elapsed().as_secs(),
                f.error
            )
        })
    }

    /// How long no channel has been up, if none is.
    pub fn disconnected_for(&self) -> Option<Duration> {
        let inner = self.inner.lock().expect("container lock");
        inner.runtime.disconnected_since.map(|t| t.elapsed())
    }

    /// Persists and fans out one delivery of output. Returns after the bytes are in the log.
    /// If the store cannot take them (its disk is full), nothing is acknowledged: the delivery
    /// is rolled back, to come again with tether's next retransmission, and the fault is
    /// reported (in inspect, and a log record every few seconds) until a write succeeds.
    pub fn on_output(&self, key: StreamKey, bytes: &[u8], fin: bool) -> io::Result<()> {
        let Some(stream) = kind_stream(key.kind) else {
            return Ok(());
        };
        let mut inner = self.inner.lock().expect("container lock");
        let inner = &mut *inner;
        let dir = inner.dir.join("logs").join(&inner.state.boot);
        let w = match inner.writers.entry(key.session) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                match LogWriter::open(&dir, key.session, inner.rotation) {
                    Ok(w) => v.insert(w),
                    Err(e) => {
                        // Nothing of this stream is stored: it starts over at 0.
                        inner.streams.roll_back(key, 0);
                        inner.runtime.store_failed(&self.id, &e);
                        return Err(e);
                    }
                }
            }
        };
        let offset = w.offset(stream);
        if let Err(e) = w.append(stream, bytes) {
            inner.streams.roll_back(key, offset);
            inner.runtime.store_failed(&self.id, &e);
            return Err(e);
        }
        // Persisted: now it may be acknowledged.
        inner.streams.release(key, bytes.len() as u64);
        if !bytes.is_empty() {
            self.events.send(|| Event::Output {
                session: key.session,
                stream,
                offset,
                bytes: Arc::new(bytes.to_vec()),
            });
        }
        if fin {
            if let Err(e) = w.finish(stream) {
                // The bytes are kept; only the end comes again.
                inner.streams.roll_back(key, offset + bytes.len() as u64);
                inner.runtime.store_failed(&self.id, &e);
                return Err(e);
            }
        }
        inner.runtime.store_ok(&self.id);
        Ok(())
    }

    /// Applies control records to the state and persists it (before the ack goes out). If the
    /// state cannot be stored, the records are rolled back whole (state and stream) to come
    /// again with tether's next retransmission; their events go out only once stored.
    pub fn on_control(&self, records: Vec<Control>) -> io::Result<()> {
        let mut inner = self.inner.lock().expect("container lock");
        let before = inner.state.clone();
        let mut events = Vec::new();
        let mut logs = Vec::new();
        for r in records {
            apply_control(&mut inner.state, r, &mut events, &mut logs);
        }
        inner.state.control_offset = inner
            .streams
            .in_stream(StreamKey::CONTROL)
            .map_or(0, |s| s.released());
        if let Err(e) = persist_state(&inner) {
            let stored = before.control_offset;
            inner.state = before;
            inner.streams.roll_back(StreamKey::CONTROL, stored);
            inner.runtime.store_failed(&self.id, &e);
            return Err(e);
        }
        inner.runtime.store_ok(&self.id);
        drop(inner);
        for ev in events {
            self.events.send(|| ev);
        }
        // Tether's own diagnostics, at the level tether gave them.
        let id = &self.id;
        for (level, message) in logs {
            match level {
                LogLevel::Error => tracing::error!(container = %id, "tether: {message}"),
                LogLevel::Warn => tracing::warn!(container = %id, "tether: {message}"),
                LogLevel::Info => tracing::info!(container = %id, "tether: {message}"),
                LogLevel::Debug => tracing::debug!(container = %id, "tether: {message}"),
            }
        }
        Ok(())
    }

    /// Tether may speak only of sessions the appliance asked for: the main session (1) and the
    /// execs this appliance numbered. Anything else is a hostile or broken guest, which would
    /// otherwise grow the state without bound.
    pub fn check_sessions(&self, inbound: &Inbound) -> Result<(), String> {
        let next_exec = self.inner.lock().expect("container lock").state.next_exec;
        let known =
            |s: SessionId| s == MAIN_SESSION || (FIRST_EXEC_SESSION..next_exec).contains(&s);
        let bad = match inbound {
            Inbound::Data { key, .. } => (!known(key.session)).then_some(key.session),
            Inbound::Control(records) => records.iter().find_map(|r| {
                let s = match r {
                    Control::Started { session, .. }
                    | Control::StartFailed { session, .. }
                    | Control::Exited { session, .. } => *session,
                    _ => return None,
                };
                (!known(s)).then_some(s)
            }),
            _ => None,
        };
        match bad {
            Some(s) => Err(format!(
                "tether reported session {s}, which the appliance never started"
            )),
            None => Ok(()),
        }
    }

    /// Adds to the link counters (persisted with the next state write).
    pub fn add_link(&self, f: impl FnOnce(&mut LinkStats)) {
        f(&mut self.inner.lock().expect("container lock").state.link);
    }

    pub fn set_connected(&self, connected: bool) {
        let mut inner = self.inner.lock().expect("container lock");
        inner.state.connected = connected;
        if connected {
            inner.state.link.connections += 1;
            inner.runtime.disconnected_since = None;
        } else {
            inner.runtime.disconnected_since = Some(Instant::now());
        }
        // A connected containerVM is running, even while its main process waits for an attach.
        if connected && inner.state.status == ContainerStatus::Created {
            inner.state.status = ContainerStatus::Running;
        }
        let _ = persist_state(&inner);
    }

    /// Every output stream of `session` has ended (a tty session has stdout only). Tether sends
    /// a session's `Exited` after closing its streams, but control is transmitted ahead of data,
    /// so the exit can arrive before the last bytes: attach waits for this before closing.
    pub fn session_output_done(&self, session: SessionId, tty: bool) -> bool {
        let inner = self.inner.lock().expect("container lock");
        let done = |kind| {
            inner
                .streams
                .in_stream(StreamKey::new(session, kind))
                .is_some_and(|s| s.is_finished())
        };
        let never_started = inner
            .state
            .sessions
            .get(&session)
            .is_some_and(|s| !s.error.is_empty() && s.pid.is_none());
        inner.runtime.vm_gone
            || never_started
            || (done(StreamKind::Stdout) && (tty || done(StreamKind::Stderr)))
    }

    /// The VM is gone without its main process having reported an exit (QEMU died, or was
    /// killed because tether did not answer): the container has exited with `exit_code`, and
    /// `why` says what happened. Every session still running (the main process, execs) ends
    /// with that code, and no more output is awaited: waiters, attached clients and exec
    /// clients are released at once. False if the main process had already exited.
    pub fn mark_vm_gone(&self, exit_code: i32, why: &str) -> io::Result<bool> {
        let mut inner = self.inner.lock().expect("container lock");
        inner.state.connected = false;
        inner.runtime.vm_gone = true;
        let main_done = inner.state.status.is_finished();
        let finished_at = now();
        let mut ended = Vec::new();
        for (session, s) in inner.state.sessions.iter_mut() {
            if *session == MAIN_SESSION && main_done || s.exit_code.is_some() {
                continue;
            }
            s.running = false;
            s.exit_code = Some(exit_code);
            s.finished_at = finished_at.clone();
            if s.error.is_empty() {
                s.error = why.to_string();
            }
            ended.push(*session);
        }
        if !main_done {
            if !ended.contains(&MAIN_SESSION) {
                // Its Started never arrived: the main session is not in the state yet.
                let s = inner.state.sessions.entry(MAIN_SESSION).or_default();
                s.exit_code = Some(exit_code);
                s.finished_at = finished_at;
                s.error = why.to_string();
                ended.push(MAIN_SESSION);
            }
            inner.state.status = ContainerStatus::Exited;
        }
        // Released even if the state cannot be stored (a full disk): nobody may hang on a VM
        // that is gone.
        let stored = persist_state(&inner);
        drop(inner);
        for session in ended {
            self.events.send(|| Event::Exited { session, exit_code });
        }
        stored.map(|()| !main_done)
    }

    /// Queues a control record for tether.
    pub fn send_control(&self, record: Control) -> Result<(), wire::MuxError> {
        self.inner
            .lock()
            .expect("container lock")
            .streams
            .send_control(&record)?;
        self.tx_wake.notify_one();
        Ok(())
    }

    /// Allocates an exec session id and persists the counter.
    pub fn new_exec_session(&self) -> SessionId {
        let mut inner = self.inner.lock().expect("container lock");
        let id = inner.state.next_exec.max(FIRST_EXEC_SESSION);
        inner.state.next_exec = id + 1;
        let _ = persist_state(&inner);
        id
    }

    /// Writes stdin bytes for a session; returns how many fit (bounded buffer).
    pub fn write_stdin(&self, session: SessionId, bytes: &[u8], close: bool) -> usize {
        let mut inner = self.inner.lock().expect("container lock");
        let s = inner
            .streams
            .open_out(StreamKey::new(session, StreamKind::Stdin));
        let n = s.write(bytes);
        if close && n == bytes.len() {
            s.close();
        }
        drop(inner);
        self.tx_wake.notify_one();
        n
    }
}

/// The server persists output as it arrives and buffers none of it, so it grants a credit window
/// as large as tether's own buffer (1 MiB per stream): with the default 256 KiB, a stream from a
/// TCG guest waited on acknowledgements (`make bench`: 0.13 -> 0.17 of the raw port rate).
fn server_stream_config() -> StreamConfig {
    let cfg = StreamConfig::default();
    StreamConfig {
        in_window: cfg.out_capacity as u64,
        ..cfg
    }
}

/// One control record applied to the state; the events and tether's log records it makes are
/// collected, to go out once the state is stored.
fn apply_control(
    state: &mut State,
    record: Control,
    events: &mut Vec<Event>,
    logs: &mut Vec<(LogLevel, String)>,
) {
    match record {
        Control::Started { session, name, pid } => {
            let s = state.sessions.entry(session).or_default();
            s.name = name;
            s.pid = Some(pid);
            s.running = true;
            s.started_at = now();
            if session == MAIN_SESSION {
                state.status = ContainerStatus::Running;
            }
            events.push(Event::Started { session });
        }
        Control::StartFailed {
            session, message, ..
        } => {
            let s = state.sessions.entry(session).or_default();
            s.error = message.clone();
            events.push(Event::StartFailed {
                session,
                message: message.clone(),
            });
            if session == MAIN_SESSION {
                state.detail = message;
            }
        }
        Control::Exited {
            session,
            exit_code,
            signal,
        } => {
            let s = state.sessions.entry(session).or_default();
            s.running = false;
            s.exit_code = Some(exit_code);
            s.signal = signal;
            s.finished_at = now();
            if session == MAIN_SESSION {
                state.status = if s.error.is_empty() {
                    ContainerStatus::Exited
                } else {
                    ContainerStatus::Failed
                };
            }
            events.push(Event::Exited { session, exit_code });
        }
        Control::State {
            state: GuestState::Failed,
            detail,
        } => {
            state.status = ContainerStatus::Failed;
            state.detail = detail;
        }
        Control::Status { state: st, detail }
            if GuestState::from_legacy(&st) == Some(GuestState::Failed) =>
        {
            state.status = ContainerStatus::Failed;
            state.detail = detail;
        }
        Control::Timing {
            stage,
            monotonic_nanos,
        } => {
            state.timings.insert(stage, monotonic_nanos);
        }
        Control::Log { level, message } => logs.push((level, message)),
        Control::Network { endpoints } => state.network = endpoints,
        Control::NetworkChanged { request, error } => {
            events.push(Event::NetworkChanged { request, error })
        }
        _ => {}
    }
}

impl Runtime {
    fn store_failed(&mut self, id: &str, e: &io::Error) {
        let now = Instant::now();
        match &mut self.store_fault {
            Some(f) if now.duration_since(f.reported) < STORE_FAULT_REPORT_EVERY => {}
            Some(f) => {
                f.reported = now;
                tracing::warn!(
                    container = %id,
                    "the log store still refuses output after {} s ({e}); it is held in the containerVM",
                    f.since.elapsed().as_secs()
                );
            }
            None => {
                tracing::warn!(
                    container = %id,
                    "the log store refuses output ({e}): it is held in the containerVM, and its process blocks once tether's buffer is full; free space under TETHER_HOME"
                );
                self.store_fault = Some(StoreFault {
                    error: e.to_string(),
                    since: now,
                    reported: now,
                });
            }
        }
    }

    fn store_ok(&mut self, id: &str) {
        if let Some(f) = self.store_fault.take() {
            tracing::info!(
                container = %id,
                "the log store takes output again, after {} s",
                f.since.elapsed().as_secs()
            );
        }
    }
}

fn persist_state(inner: &Inner) -> io::Result<()> {
    inner.state.save(&inner.dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_report_replaces_the_last_one() {
        let mut state = State::for_boot("ab");
        let endpoint = |ip: &str| wire::EndpointStatus {
            network: "bridge".into(),
            ipv4: vec![ip.into()],
            ..Default::default()
        };
        let (mut events, mut logs) = (Vec::new(), Vec::new());
        for ip in ["10.0.2.15/24", "10.0.2.16/24"] {
            let record = Control::Network {
                endpoints: vec![endpoint(ip)],
            };
            apply_control(&mut state, record, &mut events, &mut logs);
        }
        assert_eq!(state.network, [endpoint("10.0.2.16/24")]);
        assert!(events.is_empty() && logs.is_empty());
    }
}
