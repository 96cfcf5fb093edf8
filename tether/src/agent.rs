//! The controller: starts the sessions, runs their stdio pumps, obeys control records from the
//! appliance, reaps every child, reports exits, and on the main session's exit stops the rest
//! (stop signal, then SIGKILL after the grace), delivers all output, and returns the outcome.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use guestinfo::contract::MAIN_SESSION;
use guestinfo::ContainerSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use wire::{Control, ExecSpec, SessionId, StreamKey, StreamKind};

use crate::channel::ChannelSpec;
use crate::fdio::FdStream;
use crate::link::{self, Identity};
use crate::session::{self, ParentStdio, Plan};
use crate::state::{Ctx, Event};

/// After a process exits, how long to wait for its output pipes to reach end of file (a
/// background child may hold them open) before reporting the exit anyway.
const OUTPUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub struct AgentConfig {
    pub spec: ContainerSpec,
    /// The container root: sessions are chrooted here (no chroot when it is `/`).
    pub root: PathBuf,
    pub channel: ChannelSpec,
    /// The channel device, opened once and held (devices only).
    pub device: Option<OwnedFd>,
    /// How long to wait at shutdown for the appliance to acknowledge all output.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// The main session asked to be restarted (reboot the VM).
    pub restart: bool,
    /// Output the appliance had not acknowledged when tether gave up waiting.
    pub undelivered: u64,
}

struct SessionRt {
    name: String,
    pid: Option<u32>,
    master: Option<Rc<OwnedFd>>,
    pumps_open: u8,
    exit: Option<(i32, Option<i32>)>,
    finished: bool,
    awaiting_release: Option<Plan>,
    stop_signal: i32,
}

impl SessionRt {
    fn new(name: String, stop_signal: i32) -> Self {
        Self {
            name,
            pid: None,
            master: None,
            pumps_open: 0,
            exit: None,
            finished: false,
            awaiting_release: None,
            stop_signal,
        }
    }
}

struct Controller {
    ctx: Ctx,
    root: PathBuf,
    sessions: BTreeMap<SessionId, SessionRt>,
    /// Limits and capability drops execs inherit from the main session.
    main_plan: Plan,
    hostname: String,
    stopping: bool,
    grace: Duration,
}

fn plan_from_config(s: &guestinfo::SessionSpec, hostname: &str) -> Plan {
    Plan {
        name: s.id.clone(),
        path: s.path.clone(),
        args: s.args.clone(),
        env: s.env.clone(),
        dir: s.dir.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        tty: s.tty,
        open_stdin: s.open_stdin,
        rows: 0,
        cols: 0,
        rlimits: s.rlimits.clone(),
        cap_drop: s.cap_drop.clone(),
        hostname: hostname.to_string(),
    }
}

fn stop_signal_of(name: &str) -> i32 {
    wire::message::parse_signal(name).unwrap_or(libc::SIGTERM)
}

/// A container that could not be started, and who it is.
pub struct Failure {
    pub container_id: String,
    pub secret: Vec<u8>,
    pub message: String,
    pub exit_code: i32,
}

/// Tells the appliance why the container cannot run (as the main session's start failure), and
/// waits up to `drain` for it to acknowledge. Must be called inside a `LocalSet`.
pub async fn report_failure(
    f: Failure,
    channel: ChannelSpec,
    device: Option<OwnedFd>,
    drain: Duration,
) {
    let (events_tx, _events) = mpsc::unbounded_channel();
    let ctx = Ctx::new(events_tx);
    let identity = Identity {
        container_id: f.container_id,
        secret: wire::Secret::new(f.secret),
        boot_id: link::new_boot_id(),
    };
    tokio::task::spawn_local(link::run(ctx.clone(), channel, device, identity));
    for record in [
        Control::Status {
            state: "failed".into(),
            detail: f.message.clone(),
        },
        Control::Log {
            level: wire::LogLevel::Error,
            message: f.message.clone(),
        },
        Control::StartFailed {
            session: MAIN_SESSION,
            exit_code: f.exit_code,
            errno: 0,
            message: f.message,
        },
        Control::Exited {
            session: MAIN_SESSION,
            exit_code: f.exit_code,
            signal: None,
        },
    ] {
        ctx.send_control(record);
    }
    let deadline = tokio::time::Instant::now() + drain;
    while ctx.shared.borrow().streams.unacknowledged() > 0 {
        let space = ctx.space.clone();
        tokio::select! {
            _ = space.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                crate::log::warn("the appliance did not acknowledge the failure report");
                return;
            }
        }
    }
}

/// Runs the container to the end. Must be called inside a `LocalSet`.
pub async fn run(cfg: AgentConfig) -> Outcome {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let ctx = Ctx::new(events_tx);
    // The reaper registers for SIGCHLD before any child exists, so no exit goes unseen.
    let reaper_ready = crate::reaper::install(ctx.clone());
    let spec = cfg.spec;
    let hostname = spec.effective_hostname();
    let identity = Identity {
        container_id: spec.id.clone(),
        secret: wire::Secret::new(spec.secret.clone()),
        boot_id: link::new_boot_id(),
    };
    tokio::task::spawn_local(link::run(ctx.clone(), cfg.channel, cfg.device, identity));
    if let Err(e) = reaper_ready {
        crate::log::error(&format!("cannot watch for child exits: {e}"));
    }

    let main = spec
        .main_session()
        .expect("decode guarantees a main session");
    let mut plans = vec![(MAIN_SESSION, plan_from_config(main, &hostname), main.attach)];
    let others = spec
        .sessions
        .values()
        .filter(|s| s.id != spec.id)
        .chain(spec.execs.values());
    for (i, s) in others.enumerate() {
        let id = MAIN_SESSION + 1 + i as SessionId;
        plans.push((id, plan_from_config(s, &hostname), s.attach));
    }
    let mut ctl = Controller {
        ctx: ctx.clone(),
        root: cfg.root,
        sessions: BTreeMap::new(),
        main_plan: plans[0].1.clone(),
        hostname,
        stopping: false,
        grace: Duration::from_millis(spec.stop_grace_ms),
    };
    let restart = main.restart;
    for (id, plan, attach) in plans {
        ctx.shared.borrow_mut().stdin.entry(id).or_default();
        let stop_signal = spec
            .sessions
            .values()
            .chain(spec.execs.values())
            .find(|s| s.id == plan.name)
            .map_or(libc::SIGTERM, |s| stop_signal_of(&s.stop_signal));
        ctl.sessions
            .insert(id, SessionRt::new(plan.name.clone(), stop_signal));
        if attach {
            crate::log::info(&format!("session {} waits for its first attach", plan.name));
            ctl.sessions
                .get_mut(&id)
                .expect("inserted")
                .awaiting_release = Some(plan);
        } else {
            ctl.start(id, plan);
        }
    }
    ctx.send_control(Control::Status {
        state: "running".into(),
        detail: String::new(),
    });
    for (stage, nanos) in crate::timing::take() {
        ctx.send_control(Control::Timing {
            stage: stage.into(),
            monotonic_nanos: nanos,
        });
    }

    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        if ctl.stopping && ctl.sessions.values().all(|s| s.finished) {
            let deadline = *drain_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + cfg.drain_timeout);
            let undelivered = ctx.shared.borrow().streams.unacknowledged();
            if undelivered == 0 || tokio::time::Instant::now() >= deadline {
                if undelivered > 0 {
                    crate::log::warn(&format!(
                        "{undelivered} bytes of output not acknowledged by the appliance after {:?}",
                        cfg.drain_timeout
                    ));
                }
                let (exit_code, signal) = ctl.sessions[&MAIN_SESSION].exit.unwrap_or((255, None));
                return Outcome {
                    exit_code,
                    signal,
                    restart,
                    undelivered,
                };
            }
            // Re-check when acks arrive or the deadline passes.
            let space = ctx.space.clone();
            tokio::select! {
                _ = space.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                ev = events.recv() => if let Some(ev) = ev { ctl.handle(ev) },
            }
            continue;
        }
        let Some(ev) = events.recv().await else {
            continue;
        };
        ctl.handle(ev);
    }
}

impl Controller {
    fn start(&mut self, id: SessionId, plan: Plan) {
        let ctx = self.ctx.clone();
        if id == MAIN_SESSION {
            crate::timing::mark("main_spawn");
        }
        match session::start(&plan, &self.root) {
            Ok(started) => {
                crate::log::info(&format!(
                    "session {} started, pid {}",
                    plan.name, started.pid
                ));
                let rt = self.sessions.get_mut(&id).expect("registered before start");
                rt.pid = Some(started.pid);
                let stdout = StreamKey::new(id, StreamKind::Stdout);
                let stderr = StreamKey::new(id, StreamKind::Stderr);
                match started.stdio {
                    ParentStdio::Pty { master } => {
                        let reader = master.try_clone();
                        let writer = master.try_clone();
                        rt.master = Some(Rc::new(master));
                        ctx.shared.borrow_mut().streams.open_out(stdout);
                        rt.pumps_open = 1;
                        spawn_pump(&ctx, stdout, reader);
                        if plan.open_stdin {
                            spawn_stdin_writer(&ctx, id, writer, true);
                        }
                    }
                    ParentStdio::Pipes {
                        stdin,
                        stdout: out,
                        stderr: err,
                    } => {
                        {
                            let mut sh = ctx.shared.borrow_mut();
                            sh.streams.open_out(stdout);
                            sh.streams.open_out(stderr);
                        }
                        rt.pumps_open = 2;
                        spawn_pump(&ctx, stdout, Ok(out));
                        spawn_pump(&ctx, stderr, Ok(err));
                        if let Some(fd) = stdin {
                            spawn_stdin_writer(&ctx, id, Ok(fd), false);
                        }
                    }
                }
                ctx.send_control(Control::Started {
                    session: id,
                    name: plan.name.clone(),
                    pid: started.pid,
                });
            }
            Err(e) => {
                crate::log::error(&format!("session {}: {}", plan.name, e.message));
                ctx.send_control(Control::StartFailed {
                    session: id,
                    exit_code: e.exit_code,
                    errno: e.errno,
                    message: e.message.clone(),
                });
                let rt = self.sessions.get_mut(&id).expect("registered before start");
                rt.exit = Some((e.exit_code, None));
                self.finish(id);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Control(c) => self.on_control(c),
            Event::ChildExited {
                pid,
                exit_code,
                signal,
            } => {
                let Some((&id, rt)) = self.sessions.iter_mut().find(|(_, s)| s.pid == Some(pid))
                else {
                    return; // an orphan reparented to us: reaped, nothing to report
                };
                rt.exit = Some((exit_code, signal));
                let events = self.ctx.events.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(OUTPUT_DRAIN_AFTER_EXIT).await;
                    let _ = events.send(Event::ExitDeadline { session: id });
                });
                self.maybe_finish(id, false);
            }
            Event::PumpDone { session } => {
                if let Some(rt) = self.sessions.get_mut(&session) {
                    rt.pumps_open = rt.pumps_open.saturating_sub(1);
                }
                self.maybe_finish(session, false);
            }
            Event::ExitDeadline { session } => self.maybe_finish(session, true),
            Event::ChannelUp => crate::log::info("channel up"),
            Event::ChannelDown(why) => crate::log::warn(&format!("channel down: {why}")),
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Exec {
                session,
                name,
                spec,
            } => self.exec(session, name, spec),
            Control::Signal {
                session,
                signal,
                group,
            } => match self
                .sessions
                .get(&session)
                .and_then(|s| s.pid.filter(|_| !s.finished))
            {
                Some(pid) => {
                    // Each session leads its own process group (setsid), so -pid is the group.
                    let target = if group { -(pid as i32) } else { pid as i32 };
                    // SAFETY: kill(2) with a pid we started and an integer signal.
                    if unsafe { libc::kill(target, signal) } != 0 {
                        let e = std::io::Error::last_os_error();
                        self.report(&format!("signal {signal} to session {session}: {e}"));
                    }
                }
                None => self.report(&format!(
                    "signal for session {session}, which is not running"
                )),
            },
            Control::Resize {
                session,
                rows,
                cols,
            } => {
                if let Some(m) = self.sessions.get(&session).and_then(|s| s.master.clone()) {
                    let ws = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the kernel then
                    // sends SIGWINCH to the tty's foreground process group.
                    unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
                }
            }
            Control::CloseStdin { session } => {
                if let Some(q) = self.ctx.shared.borrow_mut().stdin.get_mut(&session) {
                    q.closing = true;
                }
                self.ctx.stdin_wake.notify_waiters();
            }
            Control::Release { session } => {
                let plan = self
                    .sessions
                    .get_mut(&session)
                    .and_then(|s| s.awaiting_release.take());
                if let Some(plan) = plan {
                    self.start(session, plan);
                }
            }
            Control::SetTime { unix_nanos } => crate::clock::set_wall_clock(unix_nanos),
            other => self.report(&format!(
                "unexpected control record from the appliance: {other:?}"
            )),
        }
    }

    fn exec(&mut self, id: SessionId, name: String, spec: ExecSpec) {
        if self.sessions.contains_key(&id) || self.stopping {
            let why = if self.stopping {
                "the container is stopping".to_string()
            } else {
                format!("session id {id} is already in use")
            };
            self.ctx.send_control(Control::StartFailed {
                session: id,
                exit_code: 126,
                errno: libc::EBUSY,
                message: why,
            });
            self.ctx.send_control(Control::Exited {
                session: id,
                exit_code: 126,
                signal: None,
            });
            return;
        }
        let plan = Plan {
            name: name.clone(),
            path: spec.path,
            args: spec.args,
            env: spec.env,
            dir: spec.dir,
            user: spec.user,
            group: spec.group,
            tty: spec.tty,
            open_stdin: spec.open_stdin,
            rows: spec.rows,
            cols: spec.cols,
            rlimits: self.main_plan.rlimits.clone(),
            cap_drop: self.main_plan.cap_drop.clone(),
            hostname: self.hostname.clone(),
        };
        self.ctx.shared.borrow_mut().stdin.entry(id).or_default();
        self.sessions
            .insert(id, SessionRt::new(name, libc::SIGTERM));
        self.start(id, plan);
    }

    fn report(&self, msg: &str) {
        crate::log::warn(msg);
        self.ctx.send_control(Control::Log {
            level: wire::LogLevel::Warn,
            message: msg.to_string(),
        });
    }

    fn maybe_finish(&mut self, id: SessionId, deadline_passed: bool) {
        let Some(rt) = self.sessions.get(&id) else {
            return;
        };
        if rt.finished || rt.exit.is_none() || (rt.pumps_open > 0 && !deadline_passed) {
            return;
        }
        self.finish(id);
    }

    /// Reports the exit (after its output, when the pipes reached end of file).
    fn finish(&mut self, id: SessionId) {
        let rt = self.sessions.get_mut(&id).expect("known session");
        rt.finished = true;
        let (exit_code, signal) = rt.exit.unwrap_or((255, None));
        let name = rt.name.clone();
        match signal.and_then(wire::message::signal_name) {
            Some(sig) => crate::log::info(&format!("session {name} exited {exit_code} ({sig})")),
            None => crate::log::info(&format!("session {name} exited {exit_code}")),
        }
        self.ctx.send_control(Control::Exited {
            session: id,
            exit_code,
            signal,
        });
        if id == MAIN_SESSION && !self.stopping {
            self.stop_others();
        }
    }

    /// The main session ended: stop signal to every other session, SIGKILL after the grace.
    fn stop_others(&mut self) {
        self.stopping = true;
        let mut running = Vec::new();
        for rt in self.sessions.values_mut() {
            if rt.awaiting_release.take().is_some() {
                rt.exit = Some((255, None));
                rt.finished = true;
                continue;
            }
            if let (Some(pid), false) = (rt.pid, rt.finished) {
                // SAFETY: kill(2) on the process group of a session we started.
                unsafe { libc::kill(-(pid as i32), rt.stop_signal) };
                running.push(pid);
            }
        }
        if running.is_empty() {
            return;
        }
        let grace = self.grace;
        tokio::task::spawn_local(async move {
            tokio::time::sleep(grace).await;
            for pid in running {
                // SAFETY: as above; a group that already exited makes this fail harmlessly.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        });
    }
}

/// Copies a session's output fd into its outgoing stream, never holding more than the stream
/// has room for: when the appliance is slow or absent, the process blocks on its pipe.
fn spawn_pump(ctx: &Ctx, key: StreamKey, fd: std::io::Result<OwnedFd>) {
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        if let Ok(fd) = fd {
            if let Ok(mut stream) = FdStream::new(fd) {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let room = wait_for_room(&ctx, key).await;
                    let want = room.min(buf.len());
                    match stream.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if let Some(s) = ctx.shared.borrow_mut().streams.out_mut(key) {
                                s.write(&buf[..n]);
                            }
                            ctx.tx_wake.notify_one();
                        }
                    }
                }
            }
        }
        if let Some(s) = ctx.shared.borrow_mut().streams.out_mut(key) {
            s.close();
        }
        ctx.tx_wake.notify_one();
        let _ = ctx.events.send(Event::PumpDone {
            session: key.session,
        });
    });
}

async fn wait_for_room(ctx: &Ctx, key: StreamKey) -> usize {
    loop {
        let notified = ctx.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let room = ctx
            .shared
            .borrow()
            .streams
            .out(key)
            .map_or(0, |s| s.writable());
        if room > 0 {
            return room;
        }
        notified.await;
    }
}

/// Writes stdin bytes from the appliance to the process, releasing credit as they are taken.
fn spawn_stdin_writer(ctx: &Ctx, session: SessionId, fd: std::io::Result<OwnedFd>, pty: bool) {
    let ctx = ctx.clone();
    let key = StreamKey::new(session, StreamKind::Stdin);
    tokio::task::spawn_local(async move {
        let Ok(Ok(mut out)) = fd.map(FdStream::new) else {
            return;
        };
        loop {
            let notified = ctx.stdin_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (chunk, closing) = {
                let mut sh = ctx.shared.borrow_mut();
                let Some(q) = sh.stdin.get_mut(&session) else {
                    return;
                };
                (q.take_front(64 * 1024), q.closing)
            };
            if chunk.is_empty() {
                if closing {
                    if pty {
                        // ^D at the start of a line is end of file for a terminal reader.
                        let _ = out.write_all(&[4]).await;
                    }
                    break;
                }
                notified.await;
                continue;
            }
            let ok = out.write_all(&chunk).await.is_ok();
            ctx.shared
                .borrow_mut()
                .streams
                .release(key, chunk.len() as u64);
            ctx.tx_wake.notify_one();
            if !ok {
                break; // the process closed its stdin; later bytes are released on arrival
            }
        }
        let mut sh = ctx.shared.borrow_mut();
        if let Some(q) = sh.stdin.remove(&session) {
            let left = q.bytes.len() as u64;
            sh.streams.release(key, left);
        }
        drop(sh);
        ctx.tx_wake.notify_one();
    });
}
