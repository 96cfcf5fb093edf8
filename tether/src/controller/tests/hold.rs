//! The `hold` built-in: a session with no process, reported started with pid 0, that stays up
//! (no output, stdin discarded) until a signal ends it: SIGTERM exits 0, another signal
//! 128 + its number. Execs and built-ins run beside it as beside any main session.

use super::*;

fn hold(id: &str) -> SessionSpec {
    SessionSpec {
        id: id.into(),
        stop_signal: "SIGTERM".into(),
        builtin: guestinfo::spec::BUILTIN_HOLD.into(),
        ..Default::default()
    }
}

fn signal(session: SessionId, signal: i32) -> Control {
    Control::Signal {
        session,
        signal,
        group: false,
    }
}

#[test]
fn a_hold_main_session_runs_execs_and_ends_on_sigterm_with_0() {
    paused(async {
        let mut main = hold("m");
        main.open_stdin = true;
        main.restart = true;
        let mut g = Guest::started(&spec(main, vec![])).await;
        assert!(g.procs.calls().is_empty(), "no process for a hold");
        assert_eq!(
            g.sent(),
            [started(MAIN, "m", 0), state(GuestState::Running, "")]
        );
        assert!(
            !g.ctx.shared.borrow().stdin.contains_key(&MAIN),
            "its stdin is discarded"
        );

        // An exec and a built-in run as beside any main session (the first pid goes to the exec).
        g.control(exec(4096, "e1", "/bin/sh"));
        g.send(Control::Builtin {
            session: 4097,
            name: "get".into(),
            op: BuiltinOp::ArchiveGet { path: "/".into() },
        })
        .await;
        assert_eq!(
            g.procs.calls(),
            ["start e1 /bin/sh", "builtin get archive-get hide []"]
        );
        g.procs.print(MAIN_PID, b"hi");
        g.procs.close_output(MAIN_PID);
        g.reaped(MAIN_PID, 0, None);
        g.procs.close_output(SIDE_PID);
        g.reaped(SIDE_PID, 0, None);
        g.wait(MOMENT).await;
        assert_eq!(g.stdout(4096), b"hi");
        assert_eq!(
            (g.exit_of(4096), g.exit_of(4097)),
            (Some((0, None)), Some((0, None)))
        );
        assert_eq!(g.exit_of(MAIN), None, "the hold outlives its execs");

        // Signal 0 only probes and a number that is no signal is refused, as by kill(2);
        // SIGTERM ends it, cleanly, and the container with it.
        g.control(signal(MAIN, 0));
        g.send(signal(MAIN, i32::MAX)).await;
        assert_eq!(g.exit_of(MAIN), None);
        assert!(g.sent().contains(&Control::Log {
            level: wire::LogLevel::Warn,
            message: format!(
                "signal {} to session 1: Invalid argument (os error 22)",
                i32::MAX
            ),
        }));
        g.send(signal(MAIN, libc::SIGTERM)).await;
        assert_eq!(g.exit_of(MAIN), Some((0, None)));
        assert_eq!(g.stdout(MAIN), b"", "no output");
        let fins = [StreamKind::Stdout, StreamKind::Stderr].map(|k| StreamKey::new(MAIN, k));
        assert!(
            fins.iter().all(|k| g.peer.fins.contains(k)),
            "its output ends"
        );
        assert!(g
            .sent()
            .contains(&state(GuestState::Stopping, "the main session ended")));
        assert_eq!(
            g.outcome().await,
            POWER_OFF,
            "a hold boot powers off, whatever its restart flag"
        );
    });
}

#[test]
fn another_signal_ends_a_hold_with_128_plus_it_and_stops_the_execs() {
    for sig in [libc::SIGKILL, libc::SIGINT, libc::SIGUSR1] {
        let outcome = paused(async {
            let mut g = Guest::started(&spec(hold("m"), vec![])).await;
            g.send(exec(4096, "e1", "/bin/sleep")).await;
            g.control(signal(MAIN, sig));
            g.wait(MOMENT).await;
            assert_eq!(g.exit_of(MAIN), Some((128 + sig, Some(sig))));
            // The exec still running gets the stop signal, as after any main session.
            assert_eq!(g.procs.calls()[1..], ["signal group 100 SIGTERM"]);
            let before = g.sent().len();
            g.send(signal(MAIN, libc::SIGTERM)).await;
            assert!(
                g.sent()[before..].contains(&Control::Log {
                    level: wire::LogLevel::Warn,
                    message: "signal for session 1, which is not running".into(),
                }),
                "ended once"
            );
            g.procs.close_output(MAIN_PID);
            g.reaped(MAIN_PID, 143, Some(libc::SIGTERM));
            g.outcome().await
        });
        assert_eq!((outcome.exit_code, outcome.signal), (128 + sig, Some(sig)));
    }
}

#[test]
fn a_hold_beside_the_main_session_ends_at_its_stop_signal() {
    paused(async {
        let mut side = hold("side");
        side.stop_signal = "SIGINT".into();
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![side])).await;
        assert_eq!(g.procs.calls(), ["start m /bin/m"]);
        assert_eq!(
            g.sent()[..2],
            [started(MAIN, "m", MAIN_PID), started(2, "side", 0)]
        );
        g.procs.close_output(MAIN_PID);
        g.reaped(MAIN_PID, 3, None);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(2), Some((128 + libc::SIGINT, Some(libc::SIGINT))));
        assert_eq!(g.procs.calls().len(), 1, "no process to signal");
        assert_eq!(g.outcome().await.exit_code, 3);
    });
}
