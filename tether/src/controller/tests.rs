//! The controller against recorded processes (real pipes for their stdio) and a loopback
//! appliance that acknowledges everything, on a paused clock: grace periods pass at once.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire::{Inbound, Role, StreamConfig, StreamKey, StreamKind, Streams};

use super::*;
use crate::process::recording::{Recording, FIRST_PID};
use crate::spawn::SpawnError;

const MAIN: SessionId = MAIN_SESSION;
const MAIN_PID: u32 = FIRST_PID;
const SIDE_PID: u32 = FIRST_PID + 1;
const GRACE: Duration = Duration::from_secs(3);
const DRAIN: Duration = Duration::from_secs(60);
const MOMENT: Duration = Duration::from_millis(1);

fn session(id: &str, path: &str) -> SessionSpec {
    SessionSpec {
        id: id.into(),
        path: path.into(),
        args: vec![path.into()],
        dir: "/".into(),
        stop_signal: "SIGTERM".into(),
        ..Default::default()
    }
}

fn spec(main: SessionSpec, others: Vec<SessionSpec>) -> ContainerSpec {
    let id = main.id.clone();
    let mut sessions = BTreeMap::from([(id.clone(), main)]);
    sessions.extend(others.into_iter().map(|s| (s.id.clone(), s)));
    ContainerSpec {
        id,
        name: "test".into(),
        debug: 0,
        hostname: None,
        domainname: None,
        secret: b"s".to_vec(),
        channel_device: None,
        disk_label: guestinfo::contract::DEFAULT_DISK_LABEL.into(),
        disk_wait_ms: 0,
        stop_grace_ms: GRACE.as_millis() as u64,
        dns: vec![],
        dns_search: vec![],
        extra_hosts: vec![],
        networks: Default::default(),
        sessions,
        execs: BTreeMap::new(),
    }
}

/// Runs `f` in a `LocalSet` on a current-thread runtime whose clock is paused: a sleep returns
/// as soon as nothing else can run, with the clock moved on.
fn paused<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// The appliance's end: takes whatever tether transmits, acknowledges all of it.
struct Peer {
    streams: Streams,
    control: Vec<Control>,
    out: BTreeMap<StreamKey, Vec<u8>>,
    fins: BTreeSet<StreamKey>,
}

impl Peer {
    fn new() -> Self {
        Self {
            streams: Streams::new(Role::Appliance, StreamConfig::default()),
            control: Vec::new(),
            out: BTreeMap::new(),
            fins: BTreeSet::new(),
        }
    }

    /// Moves messages both ways until neither side has any.
    fn exchange(&mut self, ctx: &Ctx) {
        loop {
            let mut moved = false;
            while let Some(m) = ctx.shared.borrow_mut().streams.poll_transmit() {
                moved = true;
                match self
                    .streams
                    .on_message(m)
                    .expect("tether speaks the protocol")
                {
                    Inbound::Data { key, bytes, fin } => {
                        self.out.entry(key).or_default().extend_from_slice(&bytes);
                        if fin {
                            self.fins.insert(key);
                        }
                        self.streams.release(key, bytes.len() as u64);
                    }
                    Inbound::Control(records) => self.control.extend(records),
                    _ => {}
                }
            }
            while let Some(m) = self.streams.poll_transmit() {
                moved = true;
                ctx.shared.borrow_mut().streams.on_message(m).unwrap();
            }
            if !moved {
                break;
            }
        }
        ctx.space.notify_waiters();
    }
}

/// A controller running over recorded processes, and the appliance it talks to.
struct Guest {
    ctx: Ctx,
    procs: Recording,
    peer: Peer,
    run: JoinHandle<Outcome>,
}

impl Guest {
    fn boot(spec: &ContainerSpec) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Ctx::new(tx);
        let procs = Recording::default();
        let ctl = Controller::new(ctx.clone(), procs.clone(), spec, DRAIN).unwrap();
        let run = tokio::task::spawn_local(ctl.run(rx));
        Self {
            ctx,
            procs,
            peer: Peer::new(),
            run,
        }
    }

    /// Boots, and lets the first moment pass: the sessions that start at boot have started.
    async fn started(spec: &ContainerSpec) -> Self {
        let mut g = Self::boot(spec);
        g.wait(MOMENT).await;
        g
    }

    fn control(&self, c: Control) {
        self.ctx.events.send(Event::Control(c)).unwrap();
    }

    /// The appliance sends `c`, and the moment it takes to handle passes.
    async fn send(&mut self, c: Control) {
        self.control(c);
        self.wait(MOMENT).await;
    }

    /// The reaper saw `pid` exit.
    fn reaped(&self, pid: u32, exit_code: i32, signal: Option<i32>) {
        let ev = Event::ChildExited {
            pid,
            exit_code,
            signal,
        };
        self.ctx.events.send(ev).unwrap();
    }

    /// Lets `d` pass (on the paused clock, once every task is idle), then trades with the peer.
    async fn wait(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
        self.peer.exchange(&self.ctx);
    }

    /// The records the appliance has received, without the boot timings.
    fn sent(&self) -> Vec<Control> {
        self.peer
            .control
            .iter()
            .filter(|c| !matches!(c, Control::Timing { .. }))
            .cloned()
            .collect()
    }

    fn exit_of(&self, session: SessionId) -> Option<(i32, Option<i32>)> {
        crate::testing::exit_in(&self.peer.control, session)
    }

    /// The appliance sends `bytes` on the session's stdin.
    fn stdin(&self, session: SessionId, bytes: &[u8]) {
        let mut shared = self.ctx.shared.borrow_mut();
        shared.stdin.entry(session).or_default().bytes.extend(bytes);
        self.ctx.stdin_wake.notify_waiters();
    }

    fn stdout(&self, session: SessionId) -> &[u8] {
        let key = StreamKey::new(session, StreamKind::Stdout);
        self.peer.out.get(&key).map_or(&[], Vec::as_slice)
    }

    async fn outcome(mut self) -> Outcome {
        for _ in 0..10_000 {
            if self.run.is_finished() {
                return self.run.await.unwrap();
            }
            self.wait(Duration::from_millis(10)).await;
        }
        panic!("the controller did not finish; sent: {:?}", self.sent());
    }
}

fn started(session: SessionId, name: &str, pid: u32) -> Control {
    Control::Started {
        session,
        name: name.into(),
        pid,
    }
}

fn exited(session: SessionId, exit_code: i32, signal: Option<i32>) -> Control {
    Control::Exited {
        session,
        exit_code,
        signal,
    }
}

fn state(state: GuestState, detail: &str) -> Control {
    Control::State {
        state,
        detail: detail.into(),
    }
}

fn exec(session: SessionId, name: &str, path: &str) -> Control {
    Control::Exec {
        session,
        name: name.into(),
        spec: ExecSpec {
            path: path.into(),
            ..Default::default()
        },
    }
}

/// A session that could not start, as the appliance sees it: why, then its exit with the code.
fn failed_start(session: SessionId, exit_code: i32, errno: i32, message: &str) -> [Control; 2] {
    [
        Control::StartFailed {
            session,
            exit_code,
            errno,
            message: message.into(),
        },
        exited(session, exit_code, None),
    ]
}

/// A container that ended with its main session's 0, powering off.
const POWER_OFF: Outcome = Outcome {
    exit_code: 0,
    signal: None,
    restart: false,
    undelivered: 0,
};

#[test]
fn the_main_exit_stops_the_others_then_kills_them_after_the_grace() {
    paused(async {
        let mut side = session("side", "/bin/side");
        side.stop_signal = "SIGINT".into();
        let mut g = Guest::started(&spec(session("web", "/bin/web"), vec![side])).await;
        assert_eq!(
            g.procs.calls(),
            ["start web /bin/web", "start side /bin/side"]
        );

        g.procs.close_output(MAIN_PID);
        g.reaped(MAIN_PID, 0, None);
        g.wait(MOMENT).await;
        assert_eq!(g.procs.calls()[2..], ["signal group 101 SIGINT"]);
        g.wait(GRACE - Duration::from_millis(100)).await;
        assert_eq!(g.procs.calls().len(), 3, "no SIGKILL within the grace");
        g.wait(Duration::from_millis(200)).await;
        assert_eq!(g.procs.calls()[3..], ["signal group 101 SIGKILL"]);
        assert!(!g.run.is_finished(), "the side session has not ended yet");

        g.procs.close_output(SIDE_PID);
        g.reaped(SIDE_PID, 128 + libc::SIGKILL, Some(libc::SIGKILL));
        let sent = {
            g.wait(MOMENT).await;
            g.sent()
        };
        assert_eq!(g.outcome().await, POWER_OFF);
        assert_eq!(
            sent,
            [
                started(1, "web", MAIN_PID),
                started(2, "side", SIDE_PID),
                state(GuestState::Running, ""),
                state(GuestState::Stopping, "the main session ended"),
                exited(1, 0, None),
                exited(2, 137, Some(9)),
            ]
        );
    });
}

#[test]
fn the_exit_code_is_the_code_or_128_plus_the_killing_signal() {
    for (code, signal) in [(3, None), (128 + libc::SIGKILL, Some(libc::SIGKILL))] {
        let outcome = paused(async {
            let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
            g.procs.close_output(MAIN_PID);
            g.reaped(MAIN_PID, code, signal);
            g.wait(MOMENT).await;
            assert_eq!(g.exit_of(MAIN), Some((code, signal)));
            g.outcome().await
        });
        assert_eq!((outcome.exit_code, outcome.signal), (code, signal));
        assert_eq!(outcome.undelivered, 0);
    }
}

#[test]
fn an_exit_is_reported_only_after_the_sessions_output_ends() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        g.procs.print(MAIN_PID, b"hello");
        g.reaped(MAIN_PID, 0, None);
        g.wait(MOMENT).await;
        assert_eq!(g.stdout(MAIN), b"hello");
        assert_eq!(g.exit_of(MAIN), None, "stdout and stderr are still open");

        // A background child still writes; then everything closes.
        g.procs.print(MAIN_PID, b" world");
        g.procs.close_output(MAIN_PID);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(MAIN), Some((0, None)));
        assert_eq!(g.stdout(MAIN), b"hello world");
        let ends: Vec<StreamKind> = g.peer.fins.iter().map(|k| k.kind).collect();
        assert_eq!(ends, [StreamKind::Stdout, StreamKind::Stderr]);
        assert_eq!(g.outcome().await.exit_code, 0);
    });
}

#[test]
fn output_held_open_delays_the_exit_report_by_the_drain_wait_only() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        g.reaped(MAIN_PID, 5, None);
        g.wait(OUTPUT_DRAIN_AFTER_EXIT - Duration::from_millis(100))
            .await;
        assert_eq!(g.exit_of(MAIN), None);
        g.wait(Duration::from_millis(200)).await;
        assert_eq!(g.exit_of(MAIN), Some((5, None)));
        assert_eq!(g.outcome().await.exit_code, 5);
    });
}

#[test]
fn a_session_waiting_for_its_attach_starts_on_release() {
    paused(async {
        let mut main = session("m", "/bin/m");
        main.attach = true;
        let mut g = Guest::started(&spec(main, vec![])).await;
        assert!(g.procs.calls().is_empty());
        assert_eq!(g.sent(), [state(GuestState::Running, "")]);

        g.control(Control::Release { session: MAIN });
        g.send(Control::Release { session: MAIN }).await;
        assert_eq!(g.procs.calls(), ["start m /bin/m"], "started once");
        assert_eq!(g.sent()[1..], [started(MAIN, "m", MAIN_PID)]);
    });
}

#[test]
fn a_start_failure_is_reported_with_its_code_then_as_the_exit() {
    paused(async {
        // The main session runs; an exec of something that is not executable fails alone.
        // (Nothing runs before the first await: the failure is in place before any start.)
        let mut g = Guest::boot(&spec(session("m", "/bin/m"), vec![]));
        g.procs.fail_start(
            "/etc/passwd",
            SpawnError {
                exit_code: 126,
                errno: libc::EACCES,
                message: "exec \"/etc/passwd\": permission denied".into(),
            },
        );
        g.wait(MOMENT).await;
        g.send(exec(7, "e", "/etc/passwd")).await;
        assert_eq!(
            g.sent()[2..],
            failed_start(
                7,
                126,
                libc::EACCES,
                "exec \"/etc/passwd\": permission denied"
            )
        );
        assert!(
            !g.run.is_finished(),
            "an exec's failure does not stop the container"
        );
    });
    paused(async {
        // The main session cannot start: the container ends with its code.
        let mut g = Guest::boot(&spec(session("m", "nope"), vec![]));
        g.procs.fail_start(
            "nope",
            SpawnError {
                exit_code: 127,
                errno: libc::ENOENT,
                message: "not found".into(),
            },
        );
        g.wait(MOMENT).await;
        assert_eq!(
            g.sent(),
            [
                Control::StartFailed {
                    session: MAIN,
                    exit_code: 127,
                    errno: libc::ENOENT,
                    message: "not found".into(),
                },
                state(GuestState::Stopping, "the main session ended"),
                exited(MAIN, 127, None),
            ],
            "no Running: the container never ran"
        );
        assert_eq!(g.outcome().await.exit_code, 127);
    });
}

#[test]
fn the_restart_policy_is_the_main_sessions() {
    for restart in [false, true] {
        let outcome = paused(async {
            let mut main = session("m", "/bin/m");
            main.restart = restart;
            let mut side = session("side", "/bin/side");
            side.restart = !restart;
            let g = Guest::started(&spec(main, vec![side])).await;
            for pid in [MAIN_PID, SIDE_PID] {
                g.procs.close_output(pid);
                g.reaped(pid, 0, None);
            }
            g.outcome().await
        });
        assert_eq!(outcome.restart, restart);
    }
}

#[test]
fn signals_reach_the_process_or_its_group_and_resizes_its_tty() {
    paused(async {
        let mut main = session("m", "/bin/m");
        main.tty = true;
        let mut g = Guest::started(&spec(main, vec![session("side", "/bin/side")])).await;
        let signal = |session, signal, group| Control::Signal {
            session,
            signal,
            group,
        };
        g.control(signal(MAIN, libc::SIGUSR1, false));
        g.control(signal(MAIN, libc::SIGHUP, true));
        g.control(Control::Resize {
            session: MAIN,
            rows: 33,
            cols: 101,
        });
        // The side session has pipes, not a tty: nothing to resize.
        g.control(Control::Resize {
            session: 2,
            rows: 1,
            cols: 1,
        });
        g.send(signal(9, libc::SIGTERM, false)).await;
        assert_eq!(
            g.procs.calls()[2..],
            [
                "signal process 100 SIGUSR1",
                "signal group 100 SIGHUP",
                "resize 33x101"
            ]
        );
        assert!(g.sent().contains(&Control::Log {
            level: wire::LogLevel::Warn,
            message: "signal for session 9, which is not running".into(),
        }));

        // Reaped, its output still open: the pid may be another's now, the group is not.
        g.reaped(SIDE_PID, 0, None);
        g.wait(MOMENT).await;
        g.control(signal(2, libc::SIGTERM, false));
        g.send(signal(2, libc::SIGTERM, true)).await;
        assert_eq!(g.procs.calls()[5..], ["signal group 101 SIGTERM"]);
    });
}

#[test]
fn an_exec_on_a_used_id_or_while_stopping_is_refused() {
    paused(async {
        let mut g = Guest::started(&spec(
            session("m", "/bin/m"),
            vec![session("side", "/bin/side")],
        ))
        .await;
        let refused = |session, why: &str| failed_start(session, 126, libc::EBUSY, why);
        g.send(exec(2, "e", "/bin/e")).await;
        assert_eq!(g.sent()[3..], refused(2, "session id 2 is already in use"));

        g.procs.close_output(MAIN_PID);
        g.reaped(MAIN_PID, 0, None);
        g.wait(MOMENT).await;
        let before = g.sent().len();
        g.send(exec(5, "e", "/bin/e")).await;
        assert_eq!(g.sent()[before..], refused(5, "the container is stopping"));
        assert_eq!(g.procs.calls().len(), 3, "two starts and the stop signal");
    });
}

#[test]
fn an_exit_goes_to_the_session_that_has_the_pid_now() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        g.send(exec(5, "e5", "/bin/e")).await;
        g.procs.close_output(SIDE_PID);
        g.reaped(SIDE_PID, 0, None);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(5), Some((0, None)));

        // The kernel gives the pid to the next exec.
        g.procs.reuse_pid(SIDE_PID);
        g.send(exec(6, "e6", "/bin/e")).await;
        assert!(g.sent().contains(&started(6, "e6", SIDE_PID)));
        g.procs.close_output(SIDE_PID);
        g.reaped(SIDE_PID, 3, None);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(6), Some((3, None)));
    });
}

#[test]
fn stdin_from_the_appliance_reaches_the_process() {
    paused(async {
        let mut main = session("m", "/bin/cat");
        main.open_stdin = true;
        let mut g = Guest::started(&spec(main, vec![])).await;
        g.stdin(MAIN, b"typed\n");
        g.wait(MOMENT).await;
        assert_eq!(g.procs.stdin(MAIN_PID), b"typed\n");
    });
}

mod builtins;
mod console_size;
mod hold;
