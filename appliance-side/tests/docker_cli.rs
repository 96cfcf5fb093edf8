//! The stock docker CLI (`docker -H unix://…`) against `appliance serve`, with real host-mode
//! tether processes as the containers.

use std::process::Stdio;
use std::time::Duration;

mod common;

use appliance::testing::process::failed;
use common::detached::{text, Detached};

fn env(tag: &str) -> Detached {
    Detached::started(&format!("docker-cli-{tag}"))
}

/// Runs `script` under `sh -c` in a container named `name`, created with `flags`; returns its
/// id once it is running.
fn start_sh(env: &mut Detached, name: &str, flags: &[&str], script: &str) -> String {
    let mut args = vec!["--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    let id = env.run(&args);
    env.wait_state(name, "running");
    id
}

const TRAP: &str = "trap 'echo got-usr1; exit 42' USR1; echo hello; echo oops >&2; \
                    while :; do sleep 0.05; done";

#[test]
fn ps_exec_logs_kill_wait_inspect() {
    let mut env = env("basic");
    let id = start_sh(&mut env, "web", &[], TRAP);

    let ps = env.docker(&["ps", "--format", "{{.ID}} {{.Names}} {{.Status}}"]);
    // dockerd's words: "Up Less than a second", "Up 2 seconds".
    let ps = text(&ps.stdout);
    let status = ps.trim().strip_prefix(&format!("{} web Up ", &id[..12]));
    assert!(
        status.is_some_and(|s| s.ends_with("second") || s.ends_with("seconds")),
        "{ps}"
    );

    // exec exit codes as docker reports them: the command's own, 126, 127.
    let ok = env.docker(&["exec", "web", "sh", "-c", "echo from-exec; echo to-err >&2"]);
    assert_eq!(
        (ok.status.code(), text(&ok.stdout), text(&ok.stderr)),
        (Some(0), "from-exec\n".into(), "to-err\n".into())
    );
    assert_eq!(
        env.docker(&["exec", "web", "sh", "-c", "exit 1"])
            .status
            .code(),
        Some(1)
    );
    failed(
        &env.docker(&["exec", "web", "no-such-command"]),
        Some(127),
        "no-such-command",
    );
    let not_exec = env.docker(&["exec", "web", "/etc/passwd"]);
    assert_eq!(not_exec.status.code(), Some(126));
    let piped = env.docker_stdin(&["exec", "-i", "web", "cat"], Some(b"through stdin\n"));
    assert_eq!(text(&piped.stdout), "through stdin\n");

    // wait, started before the kill, returns the exit code of the trapped signal.
    let waiter = env
        .docker_command(&["wait", "web"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.docker(&["kill", "-s", "USR1", "web"]).status.success());
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(text(&waited.stdout).trim(), "42");

    let logs = env.docker(&["logs", "web"]);
    assert_eq!(text(&logs.stdout), "hello\ngot-usr1\n");
    assert_eq!(text(&logs.stderr), "oops\n");
    let inspect = env.docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.Running}}",
        "web",
    ]);
    assert_eq!(text(&inspect.stdout).trim(), "exited 42 false");
    let ps_all = env.docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    let ps_all = text(&ps_all.stdout);
    assert!(
        ps_all.starts_with("web Exited (42) ") && ps_all.trim().ends_with(" ago"),
        "{ps_all}"
    );
    assert_eq!(env.docker(&["ps", "-q"]).stdout, b"");

    // docker's errors: 404 for an unknown id, 409 for a stopped container.
    failed(
        &env.docker(&["logs", "nothere"]),
        Some(1),
        "No such container: nothere",
    );
    let stopped = env.docker(&["exec", "web", "true"]);
    assert!(
        text(&stopped.stderr).contains("is not running"),
        "{}",
        text(&stopped.stderr)
    );
}

#[test]
fn logs_tail_since_and_follow() {
    let mut env = env("logs");
    start_sh(&mut env, "ticker", &[], "for i in 1 2 3 4 5; do echo early $i; done; sleep 1.2; for i in 1 2 3; do echo late $i; sleep 0.2; done");
    // Follow from the start: returns when the container exits, with everything.
    let follow = env.docker(&["logs", "-f", "ticker"]);
    let all = "early 1\nearly 2\nearly 3\nearly 4\nearly 5\nlate 1\nlate 2\nlate 3\n";
    assert_eq!(text(&follow.stdout), all);
    let tail = env.docker(&["logs", "--tail", "2", "ticker"]);
    assert_eq!(text(&tail.stdout), "late 2\nlate 3\n");
    // --since: the timestamp of the first "late" line excludes every "early" one.
    let stamped = text(&env.docker(&["logs", "-t", "ticker"]).stdout);
    let late_time = stamped
        .lines()
        .find(|l| l.ends_with("late 1"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(stamped
        .lines()
        .all(|l| l.split(' ').next().unwrap().ends_with('Z')));
    let since = env.docker(&["logs", "--since", &late_time, "ticker"]);
    assert_eq!(text(&since.stdout), "late 1\nlate 2\nlate 3\n");
}

#[test]
fn attach_gets_all_output_and_the_exit_code() {
    let mut env = env("attach");
    let id = start_sh(
        &mut env,
        "gated",
        &["-a"],
        // The docker CLI inspects the container again right after its attach request (the
        // one that releases the process) and refuses with "You cannot attach to a stopped
        // container" if it already exited: the process outlives that round trip.
        "echo first; echo second >&2; sleep 1; exit 9",
    );
    let attach = env.docker(&["attach", "--no-stdin", "gated"]);
    assert_eq!(
        text(&attach.stdout),
        "first\n",
        "attach exited {:?}, stderr {:?}; state {}; server log:\n{}",
        attach.status.code(),
        text(&attach.stderr),
        std::fs::read_to_string(env.home.join("containers").join(&id).join("state.json"))
            .unwrap_or_default(),
        std::fs::read_to_string(env.home.join("appliance.log")).unwrap_or_default()
    );
    assert_eq!(text(&attach.stderr), "second\n");
    assert_eq!(attach.status.code(), Some(9));
}

#[test]
fn the_appliance_cli_speaks_the_same_verbs() {
    let mut env = env("cli");
    start_sh(
        &mut env,
        "app",
        &["-i"],
        "echo hello; echo oops >&2; cat; exit 4",
    );
    let ps = env.cli(&["ps"], None);
    assert!(
        text(&ps.stdout).lines().nth(1).unwrap().contains("app"),
        "{}",
        text(&ps.stdout)
    );
    let exec = env.cli(&["exec", "app", "sh", "-c", "echo via-exec; exit 6"], None);
    assert_eq!(
        (exec.status.code(), text(&exec.stdout)),
        (Some(6), "via-exec\n".into())
    );
    failed(
        &env.cli(&["exec", "app", "nope"], None),
        Some(127),
        "\"nope\": executable file not found",
    );
    let attach = env.cli(&["attach", "app"], Some(b"typed\n"));
    assert_eq!(
        attach.status.code(),
        Some(4),
        "attach returns the container's code"
    );
    assert_eq!(text(&attach.stdout), "typed\n");
    // --tail counts lines across both streams, as docker's does: the last two are these.
    let logs = env.cli(&["logs", "--tail", "2", "app"], None);
    assert_eq!(text(&logs.stdout), "typed\n");
    assert_eq!(text(&logs.stderr), "oops\n");
    let all = env.cli(&["logs", "app"], None);
    assert_eq!(text(&all.stdout), "hello\ntyped\n");
    assert_eq!(text(&env.cli(&["wait", "app"], None).stdout), "4\n");
    let unknown = env.cli(&["logs", "ghost"], None);
    assert_eq!(unknown.status.code(), Some(1));
    assert_eq!(
        text(&unknown.stderr),
        "Error response from daemon: No such container: ghost\n"
    );
}

#[test]
fn a_client_that_never_reads_stalls_neither_the_container_nor_other_clients() {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut env = env("slow");
    // Gated: the output starts only once the stuck client has attached.
    let id = start_sh(&mut env, "flood", &["-a"], "seq 1 2000000");
    let mut stuck = std::os::unix::net::UnixStream::connect(env.home.join("docker.sock")).unwrap();
    write!(
        stuck,
        "POST /containers/flood/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n\
         Host: tether\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    .unwrap();
    // ... and never reads another byte.
    let follower = env.docker(&["logs", "-f", "flood"]);
    let expected: String = (1..=2_000_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(text(&follower.stderr), "", "the follower kept up");
    assert_eq!(follower.stdout.len(), expected.len());
    assert_eq!(
        Sha256::digest(&follower.stdout),
        Sha256::digest(expected.as_bytes())
    );
    let status = env.docker(&["wait", "flood"]);
    assert_eq!(
        text(&status.stdout).trim(),
        "0",
        "the container ran to completion"
    );
    let boot = std::fs::read_dir(env.home.join("containers").join(&id).join("logs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stored =
        appliance::store::logs::stream_bytes(&boot, 1, appliance::store::logs::Stream::Stdout)
            .unwrap();
    assert_eq!(Sha256::digest(&stored), Sha256::digest(expected.as_bytes()));
    drop(stuck);
}

#[test]
fn detach_keys_leave_the_container_running() {
    let mut env = env("detach");
    start_sh(&mut env, "svc", &["-i"], "cat; echo stdin-closed");
    // Bytes before ctrl-p ctrl-q reach the process; the sequence detaches the client.
    let attach = env.cli(&["attach", "svc"], Some(b"before\n\x10\x11after\n"));
    assert_eq!(attach.status.code(), Some(0), "detached, not exited");
    env.wait_state("svc", "running");
    let logs = env.docker(&["logs", "svc"]);
    assert_eq!(
        text(&logs.stdout),
        "before\n",
        "only the bytes before the detach keys"
    );
    assert!(env.docker(&["kill", "svc"]).status.success());
    env.wait_state("svc", "exited");
}
