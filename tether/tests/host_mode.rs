//! tether as an ordinary process: real fork/exec, real pipes and ptys, the real channel code over
//! a Unix socket, against a minimal appliance built on `wire`.

mod common;

use common::{session, spec, Harness, TestDir, ID};
use sha2::{Digest, Sha256};
use wire::{Control, ExecSpec};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `args` as the main session; returns (stdout, stderr, exit, tether's exit code).
fn run_main(args: &[&str]) -> (Vec<u8>, Vec<u8>, (i32, Option<i32>), i32) {
    let mut h = Harness::start(&spec(session(args)));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(20, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    let code = h.wait();
    (
        seen.stdout(1).to_vec(),
        seen.stderr(1).to_vec(),
        seen.exit(1).unwrap(),
        code,
    )
}

#[test]
fn exit_codes_zero_to_nine() {
    for code in 0..=9 {
        let script = format!("echo out{code}; echo err{code} >&2; exit {code}");
        let (out, err, exit, tether_code) = run_main(&["/bin/sh", "-c", &script]);
        assert_eq!(out, format!("out{code}\n").as_bytes());
        assert_eq!(err, format!("err{code}\n").as_bytes());
        assert_eq!(exit, (code, None));
        assert_eq!(
            tether_code, code,
            "tether exits with the main session's code"
        );
    }
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    let mut h = Harness::start(&spec(session(&["no-such-program-xyz"])));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(seen.exit(1), Some((127, None)));
    let failed = seen
        .control
        .iter()
        .find_map(|c| match c {
            Control::StartFailed { message, .. } => Some(message.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        failed.contains("no-such-program-xyz") && failed.contains("not found in PATH"),
        "{failed}"
    );
    assert_eq!(h.wait(), 127);

    // A file that exists but is not executable.
    let mut h = Harness::start(&spec(session(&["/etc/hostname"])));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(seen.exit(1), Some((126, None)));
    assert_eq!(h.wait(), 126);
}

#[test]
fn sigkill_is_137_with_the_signal_named() {
    let (_, _, exit, code) = run_main(&["/bin/sh", "-c", "kill -KILL $$"]);
    assert_eq!(exit, (137, Some(9)));
    assert_eq!(wire::message::signal_name(exit.1.unwrap()), Some("SIGKILL"));
    assert_eq!(code, 137);
}

#[test]
fn args_and_env_with_pipes_quotes_and_unicode_arrive_intact() {
    let tricky = ["a|b", "with space", "\"dq\" 'sq'", "ünïcödé €", "\\|", ""];
    let mut args = vec![
        "/bin/sh",
        "-c",
        "printf '<%s>\\n' \"$@\"; printf '%s\\n' \"$TRICKY\"",
        "sh",
    ];
    args.extend(tricky);
    let mut s = session(&args);
    s.env.push("TRICKY=x|y \"z\" é".into());
    let mut h = Harness::start(&spec(s));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    let expected: String = tricky
        .iter()
        .map(|a| format!("<{a}>\n"))
        .collect::<String>()
        + "x|y \"z\" é\n";
    assert_eq!(
        String::from_utf8(seen.stdout(1).to_vec()).unwrap(),
        expected
    );
    assert_eq!(h.wait(), 0);
}

#[test]
fn ten_megabytes_of_binary_stdout_are_byte_identical() {
    let dir = common::TestDir::new("blob");
    let blob: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.path().join("blob");
    std::fs::write(&path, &blob).unwrap();
    let (out, err, exit, _) = run_main(&["/bin/cat", path.to_str().unwrap()]);
    assert_eq!(exit, (0, None));
    assert!(err.is_empty());
    assert_eq!(out.len(), blob.len());
    assert_eq!(Sha256::digest(&out), Sha256::digest(&blob));
}

#[test]
fn stdin_is_echoed_and_close_gives_eof() {
    let mut s = session(&["/bin/cat"]);
    s.open_stdin = true;
    let mut h = Harness::start(&spec(s));
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.stdin(1, &input, true).await;
        c.until(20, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    assert_eq!(Sha256::digest(seen.stdout(1)), Sha256::digest(&input));
    assert_eq!(seen.exit(1), Some((0, None)));
    assert_eq!(h.wait(), 0);
}

#[test]
fn tty_resize_is_seen_by_stty_size() {
    let mut s = session(&["/bin/sh", "-c", "echo ready; read line; stty size"]);
    s.tty = true;
    s.open_stdin = true;
    let mut h = Harness::start(&spec(s));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.stdout(1).windows(5).any(|w| w == b"ready"))
            .await;
        c.control(Control::Resize {
            session: 1,
            rows: 33,
            cols: 101,
        })
        .await;
        c.stdin(1, b"go\n", false).await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    let out = String::from_utf8_lossy(seen.stdout(1)).to_string();
    assert!(out.contains("33 101"), "stty size output: {out:?}");
    assert_eq!(seen.exit(1), Some((0, None)));
    assert_eq!(h.wait(), 0);
}

#[test]
fn exec_runs_beside_the_main_session_with_its_own_streams_and_code() {
    let mut s = session(&["/bin/sh", "-c", "echo main-up; read x; echo main-done"]);
    s.open_stdin = true;
    let mut h = Harness::start(&spec(s));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.stdout(1) == b"main-up\n").await;
        let exec = |id, script: &str| Control::Exec {
            session: id,
            name: format!("exec-{id}"),
            spec: ExecSpec {
                path: "/bin/sh".into(),
                args: vec!["sh".into(), "-c".into(), script.into()],
                env: vec!["PATH=/bin:/usr/bin".into()],
                dir: "/tmp".into(),
                ..Default::default()
            },
        };
        c.control(exec(4096, "pwd; echo to-err >&2; exit 3")).await;
        c.control(exec(4097, "exec no-such-cmd-abc")).await;
        c.until(10, |s| s.exit(4096).is_some() && s.exit(4097).is_some())
            .await;
        assert!(s_is_running(&c.seen), "main must still be running");
        c.stdin(1, b"\n", false).await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(seen.stdout(4096), b"/tmp\n");
    assert_eq!(seen.stderr(4096), b"to-err\n");
    assert_eq!(seen.exit(4096), Some((3, None)));
    assert_eq!(
        seen.exit(4097),
        Some((127, None)),
        "exec of a missing command is 127"
    );
    assert_eq!(seen.stdout(1), b"main-up\nmain-done\n");
    assert_eq!(h.wait(), 0);
}

fn s_is_running(seen: &common::Seen) -> bool {
    seen.exit(1).is_none()
}

#[test]
fn signal_is_trapped_by_a_shell_script() {
    let script = "trap 'echo got USR1; exit 42' USR1; echo ready; while :; do sleep 0.05; done";
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", script])));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.stdout(1) == b"ready\n").await;
        c.signal(1, libc::SIGUSR1).await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(seen.stdout(1), b"ready\ngot USR1\n");
    assert_eq!(seen.exit(1), Some((42, None)));
    assert_eq!(h.wait(), 42);
}

#[test]
fn output_produced_before_the_appliance_connects_is_not_lost() {
    // The appliance is slow to accept: tether buffers (bounded) and delivers after the handshake.
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", "seq 1 20000"])));
    std::thread::sleep(std::time::Duration::from_millis(700));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(20, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(seen.stdout(1), expected.as_bytes());
    assert_eq!(h.wait(), 0);
    let _ = ID;
}

#[test]
fn appliance_restarts_mid_stream_lose_and_duplicate_nothing() {
    // The main session streams numbered lines with pauses; the appliance is "killed" three times
    // mid-stream and a new one, knowing only what it had persisted, accepts the reconnect.
    let script = "i=0; while [ $i -lt 4000 ]; do echo line $i; echo err $i >&2; i=$((i+1)); \
                  [ $((i % 200)) = 0 ] && sleep 0.05; done; exit 7";
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", script])));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        for cut in 1..=3 {
            let want = cut * 9_000;
            c.until(20, |s| s.stdout(1).len() >= want).await;
            let (streams, seen) = c.crash();
            c = h.accept_restored(streams, seen).await;
        }
        c.until(30, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    let out: String = (0..4000).map(|i| format!("line {i}\n")).collect();
    let err: String = (0..4000).map(|i| format!("err {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(seen.stdout(1)), out);
    assert_eq!(String::from_utf8_lossy(seen.stderr(1)), err);
    let exits = seen
        .control
        .iter()
        .filter(|c| matches!(c, Control::Exited { .. }))
        .count();
    assert_eq!(exits, 1, "the exit is reported exactly once");
    assert_eq!(seen.exit(1), Some((7, None)));
    assert_eq!(h.wait(), 7);
}

#[test]
fn without_an_appliance_output_is_buffered_to_the_bound_then_the_process_waits() {
    // 4 MiB in 4 KiB blocks, counting the blocks written. With nobody connected, tether holds
    // at most its 1 MiB per-stream buffer; the pipe (64 KiB) fills behind it and the writer
    // blocks: memory stays bounded and nothing is dropped.
    let dir = TestDir::new("bound");
    let count = dir.path().join("count");
    let script = format!(
        "i=0; while [ $i -lt 1024 ]; do head -c 4096 /dev/zero; i=$((i+1)); echo $i > {}; done",
        count.display()
    );
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", &script])));
    let read_count = || {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    let blocked_at = read_count();
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        read_count(),
        blocked_at,
        "the writer is blocked, not dropping"
    );
    // One stream alone: its own capacity, within the bound over all streams.
    let cfg = wire::StreamConfig::default();
    let buffer = cfg.out_capacity.min(cfg.out_total) as u64;
    let pipe = 64 * 1024;
    assert!(
        blocked_at * 4096 >= buffer && blocked_at * 4096 <= buffer + pipe + 2 * 4096,
        "blocked after {blocked_at} blocks of 4 KiB; the bound is {buffer} + the {pipe}-byte pipe"
    );
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(30, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    assert_eq!(seen.stdout(1), vec![0u8; 4 << 20].as_slice());
    assert_eq!(h.wait(), 0);
}

#[test]
fn stale_bytes_ahead_of_the_challenge_are_skipped() {
    // A serial line keeps what was in flight before a break: an old Challenge (for some other
    // Hello), a Welcome, a data frame, line noise. Tether must skip all of it and connect.
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", "echo through"])));
    let mut stale = Vec::new();
    let (_, old_hello) = wire::ClientHandshake::start(
        ID.to_string(),
        [3; 16],
        wire::Secret::new(common::SECRET.to_vec()),
        [4; 32],
    );
    let (_, old_challenge) = wire::ServerHandshake::on_hello(old_hello, [5; 32], |_| {
        Some(wire::Secret::new(common::SECRET.to_vec()))
    })
    .unwrap();
    wire::write_message(&wire::Message::Challenge(old_challenge), &mut stale);
    wire::write_message(
        &wire::Message::Welcome(wire::Welcome { received: vec![] }),
        &mut stale,
    );
    wire::write_message(
        &wire::Message::Ack {
            key: wire::StreamKey::CONTROL,
            upto: 7,
            limit: 9,
        },
        &mut stale,
    );
    stale.extend_from_slice(&[0x55; 300]);
    stale.push(0);
    let seen = rt().block_on(async {
        let mut c = h.accept_after_stale_bytes(&stale).await;
        c.until(20, |s| s.exit(1).is_some() && s.fins.len() >= 2)
            .await;
        c.seen
    });
    assert_eq!(seen.stdout(1), b"through\n");
    assert_eq!(h.wait(), 0);
}

#[test]
fn the_guest_state_is_typed_running_then_stopping_and_never_free_text() {
    let mut h = Harness::start(&spec(session(&["/bin/sh", "-c", "exit 4"])));
    let seen = rt().block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.exit(1).is_some()).await;
        c.seen
    });
    assert_eq!(h.wait(), 4);
    let states: Vec<wire::GuestState> = seen
        .control
        .iter()
        .filter_map(|c| match c {
            Control::State { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [wire::GuestState::Running, wire::GuestState::Stopping]
    );
    assert!(!seen
        .control
        .iter()
        .any(|c| matches!(c, Control::Status { .. })));
    // The main session's exit comes after the Stopping it caused.
    let at = |want: fn(&Control) -> bool| seen.control.iter().position(want).unwrap();
    assert!(
        at(|c| matches!(
            c,
            Control::State {
                state: wire::GuestState::Stopping,
                ..
            }
        )) < at(|c| matches!(c, Control::Exited { session: 1, .. }))
    );
}
