//! The controller: the session table. It starts each session (or holds it until its first
//! attach), obeys the appliance's control records, reports starts and exits (an exit after its
//! output), and when the main session ends stops the others (their stop signal, SIGKILL after
//! the grace), waits for the appliance to take all output, and returns the outcome. What it does
//! to processes goes through [`Processes`]; their stdio is the pumps' (pumps.rs). A built-in
//! (builtin.rs) is a session like an exec whose process is a child running tether's own code.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use guestinfo::contract::MAIN_SESSION;
use guestinfo::{ContainerSpec, SessionSpec};
use tokio::sync::mpsc::UnboundedReceiver;
use wire::{BuiltinOp, Control, ExecSpec, GuestState, SessionId};

use crate::builtin;
use crate::process::Processes;
use crate::pumps;
use crate::session::Plan;
use crate::state::{Ctx, Event};

/// After a process exits, how long to wait for its output pipes to reach end of file (a
/// background child may hold them open) before reporting the exit anyway.
pub const OUTPUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The exit reported for a session that never produced one (it was never started).
const NO_EXIT: (i32, Option<i32>) = (255, None);

/// How the container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The main session's exit code: its code, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// The main session asked to be restarted (reboot the VM).
    pub restart: bool,
    /// Output the appliance had not acknowledged when tether gave up waiting.
    pub undelivered: u64,
}

/// One session in the table.
struct SessionRt {
    name: String,
    pid: Option<u32>,
    /// The pty master of a tty session, for resizing.
    tty: Option<OwnedFd>,
    /// Output pumps not yet at end of file.
    pumps_open: u8,
    /// The process's (code, signal), once reaped or once it failed to start.
    exit: Option<(i32, Option<i32>)>,
    /// Its exit has been reported.
    finished: bool,
    /// Not started: it waits for the appliance's `Release` (its first attach).
    awaiting_release: Option<Plan>,
    stop_signal: i32,
    /// A built-in (tether's own code in a child), not a program.
    builtin: bool,
    /// Started as the `hold` built-in: no process; it runs until a signal ends it.
    hold: bool,
}

impl SessionRt {
    fn new(name: String, stop_signal: i32) -> Self {
        Self {
            name,
            pid: None,
            tty: None,
            pumps_open: 0,
            exit: None,
            finished: false,
            awaiting_release: None,
            stop_signal,
            builtin: false,
            hold: false,
        }
    }
}

/// How a `hold` session ends on `signal`: SIGTERM (the ordinary way to release it, and its stop
/// signal by default) is a clean exit 0; any other signal is reported as if it had killed a
/// process, 128 + its number, with the signal.
pub fn hold_exit(signal: i32) -> (i32, Option<i32>) {
    if signal == libc::SIGTERM {
        (0, None)
    } else {
        (128 + signal, Some(signal))
    }
}

fn stop_signal_of(s: &SessionSpec) -> i32 {
    wire::message::parse_signal(&s.stop_signal).unwrap_or(libc::SIGTERM)
}

pub struct Controller<P> {
    ctx: Ctx,
    procs: P,
    sessions: BTreeMap<SessionId, SessionRt>,
    /// Sessions to start when `run` begins, in id order.
    to_start: Vec<(SessionId, Plan)>,
    /// The main session's plan: execs inherit its limits, capability drops and hostname.
    main_plan: Plan,
    restart: bool,
    /// Between the stop signal and SIGKILL.
    grace: Duration,
    /// At the end, how long to wait for the appliance to acknowledge all output.
    drain_timeout: Duration,
    /// The main session has ended: the others are being stopped; no new execs.
    stopping: bool,
    /// Process groups to SIGKILL when the grace ends.
    kill_after_grace: Vec<u32>,
    /// Where `NetworkAdd`/`NetworkRemove` records go (the network runtime's task, which may
    /// wait for a hot-plugged NIC without holding up the sessions); `None` with no network.
    network: Option<tokio::sync::mpsc::UnboundedSender<Control>>,
}

impl<P: Processes> Controller<P> {
    /// The session table for `spec`: the main session is id 1, the config's other sessions and
    /// execs follow. `None` if the spec has no main session (decoding guarantees one).
    pub fn new(ctx: Ctx, procs: P, spec: &ContainerSpec, drain_timeout: Duration) -> Option<Self> {
        let main = spec.main_session()?;
        let hostname = spec.effective_hostname();
        let others = spec
            .sessions
            .values()
            .filter(|s| s.id != spec.id)
            .chain(spec.execs.values());
        let mut ctl = Self {
            ctx,
            procs,
            sessions: BTreeMap::new(),
            to_start: Vec::new(),
            main_plan: Plan::from_spec(main, &hostname),
            // A hold boot is maintenance: its end powers off, never reboots.
            restart: main.restart && !main.is_hold(),
            grace: Duration::from_millis(spec.stop_grace_ms),
            drain_timeout,
            stopping: false,
            kill_after_grace: Vec::new(),
            network: None,
        };
        for (id, s) in (MAIN_SESSION..).zip(std::iter::once(main).chain(others)) {
            let plan = Plan::from_spec(s, &hostname);
            ctl.ctx.shared.borrow_mut().stdin.entry(id).or_default();
            let mut rt = SessionRt::new(plan.name.clone(), stop_signal_of(s));
            if s.attach {
                crate::log::info(&format!("session {} waits for its first attach", s.id));
                rt.awaiting_release = Some(plan);
            } else {
                ctl.to_start.push((id, plan));
            }
            ctl.sessions.insert(id, rt);
        }
        Some(ctl)
    }

    /// Starts the sessions and runs them to the end: until the main session has ended, every
    /// other has been stopped and reported, and the appliance holds all output (or the drain
    /// timeout passed).
    pub async fn run(mut self, mut events: UnboundedReceiver<Event>) -> Outcome {
        for (id, plan) in std::mem::take(&mut self.to_start) {
            self.start(id, plan);
        }
        if !self.stopping {
            self.ctx.send_control(Control::State {
                state: GuestState::Running,
                detail: String::new(),
            });
        }
        for (stage, nanos) in crate::timing::take() {
            self.ctx.send_control(Control::Timing {
                stage: stage.into(),
                monotonic_nanos: nanos,
            });
        }
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            if !(self.stopping && self.sessions.values().all(|s| s.finished)) {
                match events.recv().await {
                    Some(ev) => self.handle(ev),
                    // `self.ctx` holds a sender, so the channel cannot close.
                    None => std::future::pending().await,
                }
                continue;
            }
            let deadline = *drain_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + self.drain_timeout);
            let undelivered = self.ctx.shared.borrow().streams.unacknowledged();
            if undelivered == 0 || tokio::time::Instant::now() >= deadline {
                if undelivered > 0 {
                    crate::log::warn(&format!(
                        "{undelivered} bytes of output not acknowledged by the appliance after {:?}",
                        self.drain_timeout
                    ));
                }
                return self.outcome(undelivered);
            }
            // Re-check when acks arrive or the deadline passes.
            let space = self.ctx.space.clone();
            tokio::select! {
                _ = space.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {}
                ev = events.recv() => if let Some(ev) = ev { self.handle(ev) },
            }
        }
    }

    fn outcome(&self, undelivered: u64) -> Outcome {
        let (exit_code, signal) = self
            .sessions
            .get(&MAIN_SESSION)
            .and_then(|s| s.exit)
            .unwrap_or(NO_EXIT);
        Outcome {
            exit_code,
            signal,
            restart: self.restart,
            undelivered,
        }
    }

    fn start(&mut self, id: SessionId, plan: Plan) {
        if id == MAIN_SESSION {
            crate::timing::mark("main_spawn");
        }
        if plan.hold {
            return self.hold(id, plan);
        }
        let result = self.procs.start(&plan);
        self.launched(id, plan.name, plan.process.open_stdin, result);
    }

    /// The `hold` built-in: no process. Reported started with pid 0, its output open and empty
    /// and its stdin discarded, it runs until a signal ends it (`end_hold`).
    fn hold(&mut self, id: SessionId, plan: Plan) {
        crate::log::info(&format!(
            "session {} holds until it gets a signal (no program)",
            plan.name
        ));
        pumps::hold(&self.ctx, id, plan.process.tty);
        if let Some(rt) = self.sessions.get_mut(&id) {
            rt.hold = true;
        }
        self.ctx.send_control(Control::Started {
            session: id,
            name: plan.name,
            pid: 0,
        });
    }

    /// A held session gets `signal`: it ends, with [`hold_exit`]'s code. As with kill(2), signal
    /// 0 (a probe) does nothing and a number that is no signal is refused (EINVAL).
    fn end_hold(&mut self, id: SessionId, signal: i32) {
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            if signal != 0 {
                let e = std::io::Error::from_raw_os_error(libc::EINVAL);
                self.report(&format!("signal {signal} to session {id}: {e}"));
            }
            return;
        }
        let Some(rt) = self.sessions.get_mut(&id) else {
            return;
        };
        if !rt.hold || rt.exit.is_some() {
            return;
        }
        rt.exit = Some(hold_exit(signal));
        pumps::end_hold(&self.ctx, id);
        self.finish(id);
    }

    /// Connects a started session's stdio and reports the start (a built-in's with pid 0: its
    /// process is tether's), or reports the failure as the start's and the exit's.
    fn launched(
        &mut self,
        id: SessionId,
        name: String,
        open_stdin: bool,
        result: Result<crate::session::Started, crate::spawn::SpawnError>,
    ) {
        match result {
            Ok(started) => {
                crate::log::info(&format!("session {name} started, pid {}", started.pid));
                let attached = pumps::attach(&self.ctx, id, started.stdio, open_stdin);
                let mut reported_pid = started.pid;
                if let Some(rt) = self.sessions.get_mut(&id) {
                    rt.pid = Some(started.pid);
                    rt.tty = attached.tty;
                    rt.pumps_open = attached.pumps;
                    if rt.builtin {
                        reported_pid = 0;
                    }
                }
                self.ctx.send_control(Control::Started {
                    session: id,
                    name,
                    pid: reported_pid,
                });
                if id == MAIN_SESSION {
                    crate::vmware::report_status(&guestinfo::status::GuestStatus::running());
                }
            }
            Err(e) => {
                crate::log::error(&format!("session {name}: {}", e.message));
                self.ctx.send_control(Control::StartFailed {
                    session: id,
                    exit_code: e.exit_code,
                    errno: e.errno,
                    message: e.message,
                });
                if let Some(rt) = self.sessions.get_mut(&id) {
                    rt.exit = Some((e.exit_code, None));
                }
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
                // A pid is only ours until its exit: a later process may be given it again.
                let Some((&id, rt)) = self
                    .sessions
                    .iter_mut()
                    .find(|(_, s)| s.pid == Some(pid) && s.exit.is_none())
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
            Event::StopGraceOver => self.kill_the_rest(),
            Event::ChannelUp => crate::log::info("channel up"),
            Event::ChannelDown(why) => crate::log::warn(&format!("channel down: {why}")),
        }
    }

    /// Sends the appliance's network changes to `tx` (agent.rs runs them).
    pub fn with_network(mut self, tx: tokio::sync::mpsc::UnboundedSender<Control>) -> Self {
        self.network = Some(tx);
        self
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::NetworkAdd { request, .. } | Control::NetworkRemove { request, .. } => {
                let refused = match &self.network {
                    Some(tx) => tx.send(c).is_err(),
                    None => true,
                };
                if refused {
                    self.ctx.send_control(Control::NetworkChanged {
                        request,
                        error: "this containerVM has no network runtime (it booted without a network): stop it, connect it, start it".into(),
                    });
                }
            }
            Control::Exec {
                session,
                name,
                spec,
            } => self.exec(session, name, spec),
            Control::Builtin { session, name, op } => self.builtin(session, name, op),
            Control::Signal {
                session,
                signal,
                group,
            } => {
                if self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.hold && s.exit.is_none())
                {
                    return self.end_hold(session, signal);
                }
                // A process is signalled only before it is reaped (after, its pid may be
                // another's); its group while the session runs: Linux reuses no pid that is
                // still a process group's id.
                let target = self
                    .sessions
                    .get(&session)
                    .and_then(|s| s.pid.filter(|_| !s.finished && (group || s.exit.is_none())));
                match target {
                    Some(pid) => {
                        if let Err(e) = self.procs.signal(pid, signal, group) {
                            self.report(&format!("signal {signal} to session {session}: {e}"));
                        }
                    }
                    None => self.report(&format!(
                        "signal for session {session}, which is not running"
                    )),
                }
            }
            Control::Resize {
                session,
                rows,
                cols,
            } => {
                let Some(rt) = self.sessions.get_mut(&session) else {
                    return;
                };
                // Not started yet: it starts at this size.
                if let Some(plan) = rt.awaiting_release.as_mut() {
                    (plan.process.rows, plan.process.cols) = (rows, cols);
                }
                let tty = rt.tty.as_ref();
                if let Some(tty) = tty {
                    if let Err(e) = self.procs.resize(tty.as_fd(), rows, cols) {
                        crate::log::debug(&format!("resizing session {session}: {e}"));
                    }
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
            Control::SetTime { unix_nanos } => crate::clock::on_server_time(unix_nanos),
            other => self.report(&format!(
                "unexpected control record from the appliance: {other:?}"
            )),
        }
    }

    /// A new session may not take `id` (in use, or the container is stopping): reports that as
    /// its start failure and exit, and says so.
    fn refused(&self, id: SessionId) -> bool {
        if !self.sessions.contains_key(&id) && !self.stopping {
            return false;
        }
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
        true
    }

    fn exec(&mut self, id: SessionId, name: String, spec: ExecSpec) {
        if self.refused(id) {
            return;
        }
        let plan = Plan::for_exec(name, spec, &self.main_plan);
        self.ctx.shared.borrow_mut().stdin.entry(id).or_default();
        self.sessions
            .insert(id, SessionRt::new(plan.name.clone(), libc::SIGTERM));
        self.start(id, plan);
    }

    /// A built-in as a session: its process is a child of tether's that runs it.
    fn builtin(&mut self, id: SessionId, name: String, op: BuiltinOp) {
        if self.refused(id) {
            return;
        }
        // A process listing leaves out tether's own children: the built-ins running now.
        let hide = self
            .sessions
            .values()
            .filter(|s| s.builtin && s.exit.is_none())
            .filter_map(|s| s.pid)
            .collect();
        let req = builtin::Request {
            name,
            op,
            tether: std::process::id(),
            hide,
        };
        crate::log::info(&format!(
            "session {} runs the built-in {}",
            req.name,
            builtin::op_name(&req.op)
        ));
        self.ctx.shared.borrow_mut().stdin.entry(id).or_default();
        let mut rt = SessionRt::new(req.name.clone(), libc::SIGTERM);
        rt.builtin = true;
        self.sessions.insert(id, rt);
        let result = self.procs.start_builtin(&req);
        self.launched(id, req.name, builtin::reads_stdin(&req.op), result);
    }

    /// A warning on the console and to the appliance.
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

    /// Reports the exit (after its output, when the pipes reached end of file). The main
    /// session's exit first puts the container in `Stopping` and stops the others.
    fn finish(&mut self, id: SessionId) {
        let Some(rt) = self.sessions.get_mut(&id) else {
            return;
        };
        rt.finished = true;
        let (exit_code, signal) = rt.exit.unwrap_or(NO_EXIT);
        match signal.and_then(wire::message::signal_name) {
            Some(sig) => {
                crate::log::info(&format!("session {} exited {exit_code} ({sig})", rt.name))
            }
            None => crate::log::info(&format!("session {} exited {exit_code}", rt.name)),
        }
        if id == MAIN_SESSION && !self.stopping {
            self.stop_others();
        }
        self.ctx.send_control(Control::Exited {
            session: id,
            exit_code,
            signal,
        });
    }

    /// The main session ended: the stop signal to every other session's process group,
    /// SIGKILL after the grace. Sessions still waiting for their first attach never start.
    fn stop_others(&mut self) {
        self.stopping = true;
        self.ctx.send_control(Control::State {
            state: GuestState::Stopping,
            detail: "the main session ended".into(),
        });
        let mut held = Vec::new();
        for (&id, rt) in self.sessions.iter_mut() {
            if rt.awaiting_release.take().is_some() {
                rt.exit = Some(NO_EXIT);
                rt.finished = true;
                continue;
            }
            if rt.hold && rt.exit.is_none() {
                held.push((id, rt.stop_signal));
                continue;
            }
            if let (Some(pid), false) = (rt.pid, rt.finished) {
                if let Err(e) = self.procs.signal(pid, rt.stop_signal, true) {
                    crate::log::debug(&format!("stop signal to session {}: {e}", rt.name));
                }
                self.kill_after_grace.push(pid);
            }
        }
        for (id, signal) in held {
            self.end_hold(id, signal);
        }
        if self.kill_after_grace.is_empty() {
            return;
        }
        let (grace, events) = (self.grace, self.ctx.events.clone());
        tokio::task::spawn_local(async move {
            tokio::time::sleep(grace).await;
            let _ = events.send(Event::StopGraceOver);
        });
    }

    /// The grace is over: SIGKILL every process group that had the stop signal.
    fn kill_the_rest(&mut self) {
        for pid in std::mem::take(&mut self.kill_after_grace) {
            // A group that is gone by now makes this fail harmlessly (ESRCH).
            let _ = self.procs.signal(pid, libc::SIGKILL, true);
        }
    }
}

#[cfg(test)]
mod tests;
