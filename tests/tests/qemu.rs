//! Real containerVMs under QEMU (TCG) against the real session server, through the stock docker
//! CLI.

use appliance::store::records::NewContainer;
use e2e::tmux::Tmux;
use e2e::{named_sh, sh, text, Appliance, Transport};

#[test]
fn a_containervm_over_virtio_serial_behaves_like_a_container() {
    let mut app = Appliance::start("virtio");
    let id = app.run(named_sh(
        "vm",
        "echo hello from the containerVM; uname -s; trap 'echo got-usr1; exit 42' USR1; \
                  while :; do sleep 0.2; done",
    ));
    app.wait_status(&id, 60, "running");
    app.wait_for(&id, 30, |_| app.logs("vm").contains("Linux"));
    assert_eq!(app.logs("vm"), "hello from the containerVM\nLinux\n");
    // exec exit codes, through the stock docker CLI.
    for (cmd, code) in [("true", 0), ("false", 1)] {
        assert_eq!(
            app.docker(&["exec", "vm", cmd]).status.code(),
            Some(code),
            "{cmd}"
        );
    }
    assert_eq!(
        app.docker(&["exec", "vm", "/etc/passwd"]).status.code(),
        Some(126)
    );
    assert_eq!(
        app.docker(&["exec", "vm", "no-such-cmd"]).status.code(),
        Some(127)
    );
    // The container cannot reach the channel: no device node, and tether's fds are closed to it.
    let probe = app.docker(&[
        "exec", "vm", "sh", "-c",
        "ls /dev | grep -c -e vport -e ttyS; for f in /proc/1/fd/*; do cat $f </dev/null >/dev/null 2>&1 && echo OPENED $f; done; echo probed",
    ]);
    assert_eq!(
        text(&probe.stdout),
        "0\nprobed\n",
        "stderr: {}",
        text(&probe.stderr)
    );
    // A trapped signal decides the exit code; wait returns it; the VM powers off by itself.
    assert!(app.docker(&["kill", "-s", "USR1", "vm"]).status.success());
    assert_eq!(text(&app.docker(&["wait", "vm"]).stdout).trim(), "42");
    assert!(app.logs("vm").ends_with("got-usr1\n"));
    assert_eq!(app.inspect("vm", "{{.State.ExitCode}}").trim(), "42");
    app.powered_off_console(&id, 60);
}

#[test]
fn a_containervm_over_a_com_port_on_tcp_works_too() {
    let mut app = Appliance::start("serial");
    let id = app.run_on(
        named_sh("com", "echo over the serial line; exit 3"),
        Transport::SerialTcp,
        "containerfs",
    );
    app.wait_exit(&id, 60, 3);
    assert_eq!(app.logs("com"), "over the serial line\n");
    assert_eq!(app.wait_vms_off(60), vec![0]);
}

/// A boot that failed before the main session ran: the error the engine was told, and the
/// console of the VM, which has powered off cleanly.
fn failed_boot(app: &mut Appliance, id: &str, name: &str) -> (String, String) {
    app.wait_status(id, 60, "failed");
    let error = app.inspect(name, "{{.State.Error}}");
    (error, app.powered_off_console(id, 60))
}

#[test]
fn a_missing_disk_label_is_reported_to_the_engine_and_the_vm_powers_off() {
    let mut app = Appliance::start("nolabel");
    let id = app.run_on(named_sh("nodisk", "true"), Transport::Virtio, "wronglabel");
    let (error, console) = failed_boot(&mut app, &id, "nodisk");
    assert!(
        error.contains("no disk labelled \"containerfs\""),
        "{error}"
    );
    assert!(
        error.contains("wronglabel"),
        "the error names what was seen: {error}"
    );
    assert!(console.contains("no disk labelled"), "console: {console}");
}

#[test]
fn a_nonexistent_main_command_is_127_with_the_reason_at_the_engine() {
    let mut app = Appliance::start("nocmd");
    let id = app.run(NewContainer {
        name: Some("nocmd".into()),
        args: vec!["/no/such/program".into()],
        ..Default::default()
    });
    app.wait_exit(&id, 60, 127);
    let out = app.inspect("nocmd", "{{.State.ExitCode}} {{.State.Error}}");
    assert!(out.starts_with("127 "), "{out}");
    assert!(out.contains("/no/such/program"), "{out}");
    assert_eq!(app.wait_vms_off(60), vec![0]);
    assert!(app.console(&id).contains("/no/such/program"));
}

#[test]
fn a_corrupt_config_is_reported_and_the_vm_powers_off_without_a_panic() {
    let mut app = Appliance::start("badcfg");
    let id = app.run_with_config_edit(
        named_sh("badcfg", "true"),
        // A boolean that is not one: the id and secret still decode, so the engine hears of it.
        |vmx| vmx.replace("/tty = \"false\"", "/tty = \"perhaps\""),
    );
    let (error, console) = failed_boot(&mut app, &id, "badcfg");
    assert!(
        error.contains("/tty") && error.contains("perhaps"),
        "{error}"
    );
    assert!(console.contains("config does not decode"), "{console}");
}

#[test]
fn an_interactive_tty_session_follows_resizes() {
    let mut app = Appliance::start("tty");
    let id = app.run(named_sh("tty", "while :; do sleep 0.2; done"));
    app.wait_status(&id, 60, "running");
    let rc_file = app.home.root().join("exec.rc");
    let command = format!(
        "docker -H unix://{} exec -it tty sh; echo $? > {}",
        app.home.docker_socket().display(),
        rc_file.display()
    );
    let term = Tmux::start("tty", 100, 30, &command);
    term.type_until("stty size", "30 100");
    term.run(&["resize-window", "-t", "s", "-x", "120", "-y", "40"]);
    term.type_until("stty size", "40 120");
    term.type_until("tty", "/dev/pts/");
    term.run(&["send-keys", "-t", "s", "exit 7", "Enter"]);
    for _ in 0..100 {
        if let Ok(rc) = std::fs::read_to_string(&rc_file) {
            assert_eq!(rc.trim(), "7", "the exec's exit code reaches the client");
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the tty exec did not end:\n{}", term.screen());
}

#[test]
fn a_containervm_boots_from_the_bootstrap_iso() {
    let mut app = Appliance::start("iso");
    let id = app.run_from_iso(named_sh("fromiso", "echo booted from the ISO; exit 0"));
    app.wait_exit(&id, 90, 0);
    assert_eq!(app.logs("fromiso"), "booted from the ISO\n");
    assert_eq!(app.wait_vms_off(60), vec![0]);
}

#[test]
fn appliance_run_is_docker_run_for_containervms() {
    // `appliance run` is a client of the engine's API: the server launches the VM.
    let app = Appliance::start_process("run");
    let rootfs = e2e::workspace().join("target/e2e/rootfs");
    let run = |args: &[&str]| {
        std::process::Command::new(e2e::appliance_bin())
            .arg("run")
            .args(args)
            .env("TETHER_HOME", app.home.root())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // Foreground: output passes through, the container's exit code is ours.
    // Every repeated -e arrives, in order.
    let fg = run(&[
        "--name",
        "fg",
        "-e",
        "A=1",
        "-e",
        "B=2",
        "-e",
        "C=3",
        rootfs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo out $A $B $C; echo err >&2; exit 3",
    ]);
    assert_eq!(text(&fg.stdout), "out 1 2 3\n");
    assert!(text(&fg.stderr).ends_with("err\n"), "{}", text(&fg.stderr));
    assert_eq!(fg.status.code(), Some(3));
    // Detached, over the COM port transport: prints the id and returns; docker sees it.
    let bg = run(&[
        "-d",
        "--name",
        "bg",
        "--transport",
        "serial",
        rootfs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo detached",
    ]);
    assert!(bg.status.success(), "{}", text(&bg.stderr));
    let id = text(&bg.stdout).trim().to_string();
    assert_eq!(id.len(), 64);
    app.wait_exit(&id, 60, 0);
    assert_eq!(app.logs("bg"), "detached\n");
    let ps = app.docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    let ps = text(&ps.stdout);
    assert!(
        ps.contains("fg Exited (3)") && ps.contains("bg Exited (0)"),
        "{ps}"
    );
}

#[test]
fn docker_attach_to_a_containervm_carries_stdin_output_and_the_exit_code() {
    let mut app = Appliance::start("attach");
    let id = app.run(NewContainer {
        name: Some("att".into()),
        open_stdin: true,
        // The main process starts at the first attach: none of its output is missed.
        attach: true,
        ..sh("echo started; read line; echo \"got: $line\"; echo to-stderr >&2; exit 5")
    });
    app.wait_status(&id, 60, "running");
    let mut child = std::process::Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", app.home.docker_socket().display()))
        .args(["attach", "att"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello vm\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "started\ngot: hello vm\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");
    assert_eq!(
        out.status.code(),
        Some(5),
        "docker attach returns the container's code"
    );
    assert_eq!(app.wait_vms_off(60), vec![0]);
}
