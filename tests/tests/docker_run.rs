//! `docker run` with the stock docker CLI against `appliance serve`: an image saved by a peer
//! tool (podman) loaded with `docker load` and run as real containerVMs, with docker's
//! semantics for the lifecycle verbs, names, filters, events and exit codes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::{busybox_image_archive, failed, text, Appliance};

/// The server as a real process, with the podman-made busybox image loaded.
fn appliance_with_image(tag: &str) -> (Appliance, &'static str) {
    let app = Appliance::start_process(tag);
    let (archive, image) = busybox_image_archive();
    let load = app.docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(
        load.status.success(),
        "docker load: {}{}",
        text(&load.stdout),
        text(&load.stderr)
    );
    assert!(
        text(&load.stdout).contains(&format!("Loaded image: {image}")),
        "docker load says what it loaded: {}",
        text(&load.stdout)
    );
    (app, image)
}

fn ok(app: &Appliance, args: &[&str]) -> String {
    app.docker_ok(args)
}

fn inspect(app: &Appliance, what: &str, format: &str) -> String {
    ok(app, &["inspect", "-f", format, what]).trim().to_string()
}

/// Waits until `docker inspect -f format` prints `want`.
fn wait_inspect(app: &Appliance, what: &str, format: &str, want: &str, secs: u64) {
    let start = Instant::now();
    loop {
        let got = inspect(app, what, format);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: {format} is {got:?}, never {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `docker run --rm`: the flags before the image, the command after it, and what it must give:
/// the exit code, and stdout and stderr where they matter.
type Run<'a> = (
    &'a [&'a str],
    &'a [&'a str],
    i32,
    Option<&'a str>,
    Option<&'a str>,
);

#[test]
fn docker_run_applies_the_images_config_and_exits_with_the_process() {
    let (app, image) = appliance_with_image("run-config");
    let runs: [Run; 5] = [
        // ENTRYPOINT sh -c, CMD echo $GREETING..., ENV, WORKDIR /tmp, USER 65534 from the image.
        (&[], &[], 0, Some("hello from /tmp as 65534\n"), None),
        // A Cmd replaces the image's, keeping its entrypoint; the process's code is docker's.
        (
            &["-e", "GREETING=hi"],
            &["echo $GREETING; exit 3"],
            3,
            Some("hi\n"),
            None,
        ),
        // `--entrypoint ''` clears the image's entrypoint and Cmd; -w and -u override.
        (
            &["--entrypoint", "", "-w", "/", "-u", "0"],
            &["/bin/sh", "-c", "pwd; id -u; echo err >&2"],
            0,
            Some("/\n0\n"),
            Some("err\n"),
        ),
        // A command that does not exist: docker's 127.
        (&["--entrypoint", "/no/such"], &[], 127, None, None),
        // --add-host lands in /etc/hosts (-w: the hostname, a hex id, may hold "db").
        (
            &["--add-host", "db:10.1.2.3"],
            &["grep -w db /etc/hosts"],
            0,
            Some("10.1.2.3\tdb\n"),
            None,
        ),
    ];
    for (flags, cmd, code, stdout, stderr) in runs {
        let args = [&["run", "--rm"][..], flags, &[image], cmd].concat();
        let out = app.docker(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        if let Some(want) = stdout {
            assert_eq!(text(&out.stdout), want, "{args:?}: {err}");
        }
        if let Some(want) = stderr {
            assert_eq!(err, want, "{args:?}");
        }
    }
    // The files tether writes are 0644 (here as user 65534, under tether's umask), and the
    // root holds what the image holds: no lost+found from mkfs.
    let out = app.docker(&[
        "run",
        "--rm",
        "--dns",
        "10.0.0.53",
        image,
        "stat -c '%a %n' /etc/hosts /etc/hostname /etc/resolv.conf; ls -a /",
    ]);
    let listing = text(&out.stdout);
    assert!(
        listing.starts_with("644 /etc/hosts\n644 /etc/hostname\n644 /etc/resolv.conf\n"),
        "{listing}{}",
        text(&out.stderr)
    );
    assert!(!listing.contains("lost+found"), "{listing}");
    // --rm removed every one of them.
    assert_eq!(ok(&app, &["ps", "-aq"]), "");
}

#[test]
fn detached_containers_take_exec_kill_stop_restart_and_rm_at_once() {
    let (app, image) = appliance_with_image("run-detached");
    let script = "trap 'echo got TERM; exit 7' TERM; echo up; while :; do sleep 0.1; done";
    let id = ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "svc",
            "-l",
            "team=core",
            image,
            script,
        ],
    );
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id}");
    // The process runs when run -d returns: an exec right after it works.
    assert_eq!(ok(&app, &["exec", "svc", "echo", "in", "svc"]), "in svc\n");
    assert_eq!(inspect(&app, "svc", "{{.State.Status}}"), "running");
    // State.Pid is a host pid, as docker's: the VM's QEMU process.
    let pid = inspect(&app, "svc", "{{.State.Pid}}");
    let qemu_pid = std::fs::read_to_string(app.home.container(&id).join("qemu.pid")).unwrap();
    assert_eq!(pid, qemu_pid.trim());
    // The tests run every VM under `timeout` (a time limit): then QEMU is its child.
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    let qemu = match comm(&pid).trim() {
        "timeout" => std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap()
            .split_whitespace()
            .map(comm)
            .find(|c| c.starts_with("qemu")),
        c => Some(c.to_string()),
    };
    assert!(
        qemu.as_deref().is_some_and(|c| c.starts_with("qemu")),
        "pid {pid} is {:?}, not QEMU",
        comm(&pid)
    );
    // Names are unique: the daemon's 409, which `docker create` reports with exit 1 and
    // `docker run` with 125.
    failed(
        &app.docker(&["create", "--name", "svc", image]),
        Some(1),
        "is already in use by container",
    );
    let dup = app.docker(&["run", "-d", "--name", "svc", image]);
    assert_eq!(dup.status.code(), Some(125), "{}", text(&dup.stderr));
    // stop: the trap's code, within the timeout.
    let started = Instant::now();
    ok(&app, &["stop", "-t", "20", "svc"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stop waited for the timeout"
    );
    assert_eq!(inspect(&app, "svc", "{{.State.ExitCode}}"), "7");
    assert_eq!(inspect(&app, "svc", "{{.State.Status}}"), "exited");
    let logs = ok(&app, &["logs", "svc"]);
    assert_eq!(logs, "up\ngot TERM\n");
    // restart: running again, same container, and its logs go on from the first run's.
    ok(&app, &["restart", "svc"]);
    let start = Instant::now();
    while ok(&app, &["logs", "svc"]) != "up\ngot TERM\nup\n" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "logs after restart: {}",
            ok(&app, &["logs", "svc"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(inspect(&app, "svc", "{{.State.Status}}"), "running");
    assert_eq!(inspect(&app, "svc", "{{.Id}}"), id);
    // kill right away: SIGKILL is 137.
    ok(&app, &["kill", "svc"]);
    wait_inspect(&app, "svc", "{{.State.ExitCode}}", "137", 30);
    // rename, then filters find it by its new name, label, status and image.
    ok(&app, &["rename", "svc", "svc2"]);
    for filter in ["name=svc2", "label=team=core", "status=exited"] {
        let listed = ok(&app, &["ps", "-aq", "--no-trunc", "--filter", filter]);
        assert_eq!(listed.trim(), id, "ps --filter {filter}");
    }
    assert_eq!(ok(&app, &["ps", "-q", "--filter", "status=running"]), "");
    // rm -f of a running container.
    ok(&app, &["start", "svc2"]);
    assert_eq!(inspect(&app, "svc2", "{{.State.Running}}"), "true");
    let refused = app.docker(&["rm", "svc2"]);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "rm of a running container is refused"
    );
    ok(&app, &["rm", "-f", "svc2"]);
    assert_eq!(ok(&app, &["ps", "-aq"]), "");
    assert!(
        !app.home.container(&id).exists(),
        "rm removes the container's files"
    );
    // on-failure:2 restarts a failing container twice, then leaves it exited with its code.
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "flaky",
            "--restart",
            "on-failure:2",
            image,
            "echo run; exit 3",
        ],
    );
    let start = Instant::now();
    while ok(&app, &["logs", "flaky"]) != "run\nrun\nrun\n"
        || inspect(&app, "flaky", "{{.State.Status}}") != "exited"
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "on-failure:2: logs {:?}",
            ok(&app, &["logs", "flaky"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(inspect(&app, "flaky", "{{.RestartCount}}"), "2");
    assert_eq!(inspect(&app, "flaky", "{{.State.ExitCode}}"), "3");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ok(&app, &["logs", "flaky"]),
        "run\nrun\nrun\n",
        "no third retry"
    );
    // Started by hand, its retries count from zero again.
    ok(&app, &["start", "flaky"]);
    assert_eq!(inspect(&app, "flaky", "{{.RestartCount}}"), "0");
    ok(&app, &["rm", "-f", "flaky"]);
    // docker kill ends a container on purpose: `always` does not bring it back (dockerd's
    // rule: the policy rests until the next start).
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "steady",
            "--restart",
            "always",
            image,
            "echo up; exec sleep 600",
        ],
    );
    let start = Instant::now();
    while ok(&app, &["logs", "steady"]) != "up\n" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "steady never said up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&app, &["kill", "steady"]);
    wait_inspect(&app, "steady", "{{.State.ExitCode}}", "137", 30);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(inspect(&app, "steady", "{{.State.Status}}"), "exited");
    assert_eq!(inspect(&app, "steady", "{{.RestartCount}}"), "0");
    assert_eq!(
        ok(&app, &["logs", "steady"]),
        "up\n",
        "not restarted after kill"
    );
    ok(&app, &["rm", "-f", "steady"]);
}

#[test]
fn create_then_start_attached_and_events_tell_the_story() {
    let (app, image) = appliance_with_image("run-create");
    let since = time_now();
    let id = ok(
        &app,
        &[
            "create",
            "--name",
            "once",
            image,
            "echo out; echo err >&2; exit 5",
        ],
    );
    let id = id.trim();
    assert_eq!(inspect(&app, "once", "{{.State.Status}}"), "created");
    let out = app.docker(&["start", "-a", "once"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    ok(&app, &["rm", "once"]);
    let until = time_now();
    let events = ok(
        &app,
        &[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            &format!("container={id}"),
            "--format",
            "{{.Action}}",
        ],
    );
    let actions: Vec<&str> = events.lines().collect();
    for want in ["create", "start", "die", "destroy"] {
        assert!(actions.contains(&want), "events {actions:?} lack {want}");
    }
    let order = |a: &str| actions.iter().position(|x| *x == a).unwrap();
    assert!(order("create") < order("start") && order("start") < order("die"));
    assert!(order("die") < order("destroy"));
}

#[test]
fn containers_and_images_survive_an_appliance_restart() {
    let (mut app, image) = appliance_with_image("run-restart");
    let id = ok(
        &app,
        &["run", "-d", "--name", "keep", image, "echo kept; sleep 600"],
    );
    let id = id.trim().to_string();
    ok(&app, &["create", "--name", "later", image, "echo later"]);
    app.kill_server();
    app.restart_server();
    let names = ok(&app, &["ps", "-a", "--format", "{{.Names}} {{.State}}"]);
    assert!(names.contains("keep running"), "{names}");
    assert!(names.contains("later created"), "{names}");
    let images = ok(&app, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains(image), "{images}");
    assert_eq!(ok(&app, &["exec", "keep", "echo", "still"]), "still\n");
    let out = app.docker(&["start", "-a", "later"]);
    assert_eq!(text(&out.stdout), "later\n", "{}", text(&out.stderr));
    // The VM dies under its running container (re-adopted after the restart) while an exec
    // streams, a client is attached and another waits: the container is exited with 137 and
    // says why, and every one of them is released at once with docker's code.
    let vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.home.container(&id).join("vm.json")).unwrap())
            .unwrap();
    let pid = vm["pid"].as_i64().unwrap() as i32;
    assert_eq!(inspect(&app, "keep", "{{.State.Pid}}"), pid.to_string());
    let mut exec = app
        .docker_command(&["exec", "keep", "sh", "-c", "echo exec-up; sleep 600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(exec.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "exec-up\n");
    let mut clients = [
        (
            "attach",
            app.docker_command(&["attach", "keep"]).spawn().unwrap(),
        ),
        (
            "wait",
            app.docker_command(&["wait", "keep"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        ),
    ];
    std::thread::sleep(Duration::from_secs(1));
    // SAFETY: kill(2) on the process group of the VM this test's server launched.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    assert_eq!(exit_within(&mut exec, 15, "exec"), 137);
    assert_eq!(exit_within(&mut clients[0].1, 15, "attach"), 137);
    assert_eq!(exit_within(&mut clients[1].1, 15, "wait"), 0);
    let mut waited = String::new();
    std::io::Read::read_to_string(&mut clients[1].1.stdout.take().unwrap(), &mut waited).unwrap();
    assert_eq!(waited.trim(), "137");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "released after {:?}",
        killed.elapsed()
    );
    let error = inspect(&app, "keep", "{{.State.Error}}");
    assert!(error.contains("containerVM ended"), "{error}");
    assert_eq!(inspect(&app, "keep", "{{.State.Status}}"), "exited");
    // An exec now fails at once, saying why.
    failed(
        &app.docker(&["exec", "keep", "true"]),
        None,
        "is not running",
    );
    ok(&app, &["rm", &id]);
}

/// The process's exit code, waiting at most `secs` (killed and failed after that).
fn exit_within(child: &mut std::process::Child, secs: u64, what: &str) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("docker {what} still runs {secs} s after its VM was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unix seconds now, as `docker events --since/--until` take them.
fn time_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
}

#[test]
fn detaching_with_ctrl_p_ctrl_q_leaves_an_interactive_container_running() {
    let (app, image) = appliance_with_image("run-detach");
    let docker = format!(
        "docker -H unix://{} run -it --name dt --entrypoint '' {image} /bin/sh",
        app.home.docker_socket().display()
    );
    let term = e2e::tmux::Tmux::start("detach", 100, 30, &docker);
    term.wait_for("built-in shell");
    term.type_until("echo ready-$((6*7))", "ready-42");
    // docker's detach keys: the client leaves, the shell and its stdin stay.
    term.keys(&["C-p", "C-q"]);
    // The docker client exits ("read escape sequence"), and its tmux session with it.
    let start = Instant::now();
    while term.screen().contains("ready-42") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "docker did not detach:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(inspect(&app, "dt", "{{.State.Running}}"), "true");
    assert_eq!(ok(&app, &["exec", "dt", "echo", "alive"]), "alive\n");
    // The same shell, still reading its terminal: attach again and use it.
    let again = format!(
        "docker -H unix://{} attach dt",
        app.home.docker_socket().display()
    );
    let term2 = e2e::tmux::Tmux::start("reattach", 100, 30, &again);
    std::thread::sleep(Duration::from_millis(500));
    term2.type_until("echo back-$((40+2))", "back-42");
    term2.type_until("exit 4", "");
    wait_inspect(&app, "dt", "{{.State.ExitCode}}", "4", 30);
    ok(&app, &["rm", "dt"]);
}

#[test]
fn docker_cp_both_ways_and_top_work_on_a_running_container() {
    let (app, image) = appliance_with_image("run-cp");
    let script = "mkdir -p /data/sub && echo hello > /data/a.txt && echo deep > /data/sub/b && \
                  ln -sf a.txt /data/link && echo ready && sleep 600";
    ok(
        &app,
        &["run", "-d", "-u", "0", "--name", "files", image, script],
    );
    // run -d returns once the script runs; its files exist once it says so.
    let ready = |app: &Appliance, times: usize| {
        let start = Instant::now();
        while ok(app, &["logs", "files"]) != "ready\n".repeat(times) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the script never got ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    ready(&app, 1);
    let host = app.home.root().join("cp");
    std::fs::create_dir_all(&host).unwrap();
    let h = |p: &str| host.join(p).to_string_lossy().into_owned();
    // Out of the container: a file, then a directory with its tree and a symlink.
    ok(&app, &["cp", "files:/data/a.txt", &h("a.txt")]);
    assert_eq!(
        std::fs::read_to_string(host.join("a.txt")).unwrap(),
        "hello\n"
    );
    ok(&app, &["cp", "files:/data", &h("data")]);
    assert_eq!(
        std::fs::read_to_string(host.join("data/sub/b")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_link(host.join("data/link")).unwrap(),
        std::path::PathBuf::from("a.txt")
    );
    // Into the container: content and mode arrive.
    let src = host.join("in.txt");
    std::fs::write(&src, "from host\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&app, &["cp", &h("in.txt"), "files:/data/"]);
    assert_eq!(
        ok(&app, &["exec", "files", "cat", "/data/in.txt"]),
        "from host\n"
    );
    assert_eq!(
        ok(&app, &["exec", "files", "stat", "-c", "%a", "/data/in.txt"]),
        "640\n"
    );
    // A missing path: docker's message and exit 1.
    failed(
        &app.docker(&["cp", "files:/no/such", &h("x")]),
        Some(1),
        "Could not find the file /no/such",
    );
    // top: the container's processes, from tether (the image has no ps of its own to trust).
    let top = ok(&app, &["top", "files"]);
    assert!(top.contains("UID") && top.contains("sleep 600"), "{top}");
    // stats: the VM's resident memory against its size (256 MiB by default).
    let stats = ok(
        &app,
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.MemUsage}}",
            "files",
        ],
    );
    assert!(
        stats.starts_with("files ") && stats.contains("/ 256MiB"),
        "{stats}"
    );
    assert!(
        !stats.contains(" 0B /"),
        "a running VM uses memory: {stats}"
    );
    assert_eq!(ok(&app, &["port", "files"]), "");
    // A stopped container: its disk is booted for the copy, both ways, and keeps the change.
    ok(&app, &["stop", "-t", "1", "files"]);
    ok(&app, &["cp", "files:/data/in.txt", &h("back.txt")]);
    assert_eq!(
        std::fs::read_to_string(host.join("back.txt")).unwrap(),
        "from host\n"
    );
    std::fs::write(host.join("late.txt"), "while stopped\n").unwrap();
    ok(&app, &["cp", &h("late.txt"), "files:/data/"]);
    assert_eq!(inspect(&app, "files", "{{.State.Status}}"), "exited");
    ok(&app, &["start", "files"]);
    // docker logs shows every run's output: both boots' `ready`.
    ready(&app, 2);
    assert_eq!(
        ok(&app, &["exec", "files", "cat", "/data/late.txt"]),
        "while stopped\n"
    );
    ok(&app, &["rm", "-f", "files"]);
}
