//! Built-in sessions in the controller: started and reported as execs are (with pid 0), their
//! stdin only for the archive put, their exits after their output, and a process listing told
//! which of tether's children to leave out.

use super::*;

fn builtin(session: SessionId, name: &str, op: BuiltinOp) -> Control {
    Control::Builtin {
        session,
        name: name.into(),
        op,
    }
}

fn stat(path: &str) -> BuiltinOp {
    BuiltinOp::Stat { path: path.into() }
}

#[test]
fn a_builtin_is_a_session_reported_with_pid_0_and_exits_after_its_output() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        g.send(builtin(4096, "stat-1", stat("/etc/hosts"))).await;
        assert_eq!(g.procs.calls()[1..], ["builtin stat-1 stat hide []"]);
        assert_eq!(g.sent().last(), Some(&started(4096, "stat-1", 0)));
        g.procs.print(SIDE_PID, b"{\"name\":\"hosts\"}\n");
        g.reaped(SIDE_PID, 0, None);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(4096), None, "not before its output ends");
        g.procs.close_output(SIDE_PID);
        g.wait(MOMENT).await;
        assert_eq!(g.exit_of(4096), Some((0, None)));
        assert_eq!(g.stdout(4096), b"{\"name\":\"hosts\"}\n");
        let fins = [StreamKind::Stdout, StreamKind::Stderr].map(|k| StreamKey::new(4096, k));
        assert!(fins.iter().all(|k| g.peer.fins.contains(k)));
    });
}

#[test]
fn only_the_archive_put_reads_its_stdin() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        let put = BuiltinOp::ArchivePut {
            path: "/tmp".into(),
            no_overwrite_dir_non_dir: true,
        };
        g.control(builtin(4096, "put", put));
        g.send(builtin(4097, "stat", stat("/"))).await;
        for session in [4096, 4097] {
            g.stdin(session, b"tar bytes");
        }
        g.wait(MOMENT).await;
        assert_eq!(g.procs.stdin(SIDE_PID), b"tar bytes");
        assert_eq!(
            g.procs.stdin(SIDE_PID + 1),
            b"",
            "the stat's stdin is closed"
        );
    });
}

#[test]
fn a_process_listing_leaves_out_the_builtins_running() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        let ps = || BuiltinOp::Processes {
            ps_args: String::new(),
        };
        g.control(builtin(
            4096,
            "get",
            BuiltinOp::ArchiveGet { path: "/".into() },
        ));
        g.send(builtin(4097, "top", ps())).await;
        g.procs.close_output(SIDE_PID);
        g.reaped(SIDE_PID, 0, None);
        g.wait(MOMENT).await;
        g.send(builtin(4098, "top", ps())).await;
        assert_eq!(
            g.procs.calls()[1..],
            [
                "builtin get archive-get hide []",
                "builtin top processes hide [101]",
                "builtin top processes hide [102]",
            ]
        );
    });
}

#[test]
fn a_builtin_can_be_signalled_refused_or_fail_to_start() {
    paused(async {
        let mut g = Guest::started(&spec(session("m", "/bin/m"), vec![])).await;
        g.send(builtin(4096, "cp", stat("/"))).await;
        g.control(Control::Signal {
            session: 4096,
            signal: libc::SIGKILL,
            group: false,
        });
        g.wait(MOMENT).await;
        assert_eq!(
            g.procs.calls().last().unwrap(),
            "signal process 101 SIGKILL"
        );

        let before = g.sent().len();
        g.send(builtin(4096, "again", stat("/"))).await;
        assert_eq!(
            g.sent()[before..],
            failed_start(4096, 126, libc::EBUSY, "session id 4096 is already in use")
        );

        let fork_failed = SpawnError {
            exit_code: 126,
            errno: libc::EAGAIN,
            message: "starting the built-in: fork failed: EAGAIN".into(),
        };
        g.procs.fail_start("builtin stat", fork_failed);
        let before = g.sent().len();
        g.send(builtin(4097, "cp2", stat("/"))).await;
        assert_eq!(
            g.sent()[before..],
            failed_start(
                4097,
                126,
                libc::EAGAIN,
                "starting the built-in: fork failed: EAGAIN"
            )
        );

        // Once the main session has ended, no new built-in starts.
        g.procs.close_output(MAIN_PID);
        g.reaped(MAIN_PID, 0, None);
        g.wait(MOMENT).await;
        let before = g.sent().len();
        g.send(builtin(4098, "late", stat("/"))).await;
        assert!(matches!(
            &g.sent()[before..],
            [Control::StartFailed { message, .. }, Control::Exited { .. }]
                if message == "the container is stopping"
        ));
    });
}
