//! The `appliance` command line as a user types it: docker's flag conventions reach the server
//! (every `-e` of an exec, in order; bundled `-dit`; the command's own flags after the
//! container), `--help` on every verb, and usage errors that exit 125 naming the bad flag.
//! Execs run against a real `appliance serve` with a simulated guest (no VM, no tether).

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use appliance::home::Home;
use appliance::store::records;
use appliance::testing::process::failed;
use appliance::testing::sim::{handshake_as, run_guest, GuestBehaviour};
use common::{runtime, ServerProcess, TempHome};
use serde_json::Value;

const VERBS: [&str; 10] = [
    "serve", "create", "ps", "inspect", "logs", "kill", "wait", "attach", "exec", "run",
];

/// `appliance ARGS` with `$TETHER_HOME` at `home` and no stdin.
fn appliance(home: &Home, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(args)
        .env("TETHER_HOME", home.root())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `appliance create ARGS`; the new container's id.
fn create(home: &Home, args: &[&str]) -> String {
    let out = appliance(home, &[&["create"], args].concat());
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A server process with one running container, `app` (record env `X=0`), played by the
/// simulated guest, which answers every exec as `echo` would: its arguments as one line.
/// Dropped in field order: the guest, then the server, then the home.
struct RunningApp {
    id: String,
    _guest: tokio::runtime::Runtime,
    _server: ServerProcess,
    home: TempHome,
}

fn running_app(tag: &str) -> RunningApp {
    let home = TempHome::new(tag);
    let server = ServerProcess::start(&home);
    let guest = runtime();
    let id = create(&home, &["--name", "app", "-e", "X=0", "--", "/bin/sh"]);
    let secret = records::load(&home, &id).unwrap().secret_bytes();
    let (sock, guest_id) = (home.channel_socket(), id.clone());
    guest.spawn(async move {
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let (reader, streams) = handshake_as(&mut s, guest_id, secret).await;
        run_guest(s, reader, streams, GuestBehaviour::default()).await;
    });
    let start = Instant::now();
    loop {
        let out = appliance(&home, &["inspect", "app"]);
        let running = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v[0]["State"]["Running"].as_bool());
        if running == Some(true) {
            return RunningApp {
                id,
                _guest: guest,
                _server: server,
                home,
            };
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "app never ran: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container's persisted exec records (`containers/<id>/execs/*.json`).
fn execs(home: &Home, id: &str) -> Vec<Value> {
    std::fs::read_dir(home.container(id).join("execs"))
        .map(|dir| {
            dir.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The one exec whose argv is `args`.
fn exec_with_args(home: &Home, id: &str, args: &[&str]) -> Value {
    let found: Vec<Value> = execs(home, id)
        .into_iter()
        .filter(|e| e["spec"]["args"] == serde_json::json!(args))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one exec of {args:?} in {:?}",
        execs(home, id)
    );
    found.into_iter().next().unwrap()
}

#[test]
fn exec_delivers_every_env_value_in_order() {
    let app = running_app("cli-exec-env");
    let out = appliance(
        &app.home,
        &[
            "exec", "-e", "A=1", "-e", "B=2", "--env", "C=3", "app", "env",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "\n",
        "the simulated guest echoes no arguments"
    );
    let exec = exec_with_args(&app.home, &app.id, &["env"]);
    // The container's own environment first, then the exec's, each value as given.
    assert_eq!(
        exec["spec"]["env"],
        serde_json::json!(["X=0", "A=1", "B=2", "C=3"])
    );
}

#[test]
fn the_command_after_the_container_keeps_its_own_flags() {
    let app = running_app("cli-exec-argv");
    // The guest echoes the arguments after the program: `-c` and `-n` arrived as arguments.
    let sh = appliance(&app.home, &["exec", "app", "sh", "-c", "echo -n x"]);
    assert_eq!(sh.status.code(), Some(0), "{}", text(&sh.stderr));
    assert_eq!(text(&sh.stdout), "-c echo -n x\n");
    exec_with_args(&app.home, &app.id, &["sh", "-c", "echo -n x"]);
    let ls = appliance(&app.home, &["exec", "app", "ls", "-la", "--help"]);
    assert_eq!(text(&ls.stdout), "-la --help\n");
    // A `--` before the command is optional; one after it belongs to the command.
    let dashed = appliance(&app.home, &["exec", "app", "--", "ls", "--", "-x"]);
    assert_eq!(text(&dashed.stdout), "-- -x\n");
    exec_with_args(&app.home, &app.id, &["ls", "--", "-x"]);
}

#[test]
fn bundled_short_flags_reach_the_server() {
    let app = running_app("cli-exec-bundle");
    // -d: the exec is started and the command returns at once.
    let out = appliance(&app.home, &["exec", "-dit", "-eK=V", "app", "ls", "-la"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let exec = exec_with_args(&app.home, &app.id, &["ls", "-la"]);
    assert_eq!(exec["spec"]["tty"], true);
    assert_eq!(exec["spec"]["open_stdin"], true);
    assert_eq!(exec["attach_stdin"], true);
    assert_eq!(exec["spec"]["env"], serde_json::json!(["X=0", "K=V"]));
}

#[test]
fn server_errors_exit_1_with_dockers_text() {
    let home = TempHome::new("cli-server-error");
    let _server = ServerProcess::start(&home);
    for args in [
        &["inspect", "ghost"][..],
        &["exec", "-e", "A=1", "ghost", "env"],
        &["logs", "ghost"],
    ] {
        let out = appliance(&home, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            text(&out.stderr),
            "Error response from daemon: No such container: ghost\n",
            "{args:?}"
        );
    }
}

#[test]
fn no_server_exits_1_saying_how_to_start_one() {
    let home = TempHome::new("cli-no-server");
    let out = appliance(&home, &["ps", "-a"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("cannot reach the appliance at unix://")
            && err.contains("appliance serve --detach"),
        "{err}"
    );
}

#[test]
fn create_records_every_env_value_and_the_command_as_given() {
    let home = TempHome::new("cli-create");
    let id = create(
        &home,
        &[
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "-w",
            "/srv",
            "-u",
            "7",
            "--",
            "/bin/sh",
            "-c",
            "echo -n x",
        ],
    );
    let rec = records::load(&home, &id).unwrap();
    assert_eq!(rec.env, ["A=1", "B=2"]);
    assert_eq!(rec.args, ["/bin/sh", "-c", "echo -n x"]);
    assert_eq!(rec.name, "web");
    assert!(!rec.tty && !rec.open_stdin);
    // The record.json itself, as the server reads it.
    let json: Value =
        serde_json::from_slice(&std::fs::read(home.container(&id).join("record.json")).unwrap())
            .unwrap();
    assert_eq!(json["env"], serde_json::json!(["A=1", "B=2"]));

    // Bundled -it, and a command that starts with a dash after `--`.
    let bundled = create(&home, &["-it", "--", "-weird", "-t"]);
    let rec = records::load(&home, &bundled).unwrap();
    assert!(rec.tty && rec.open_stdin);
    assert_eq!(rec.args, ["-weird", "-t"]);
    // No `--`: the command starts at the first argument that is not a flag.
    let plain = create(&home, &["-a", "sh", "-c", "exit 3"]);
    assert_eq!(
        records::load(&home, &plain).unwrap().args,
        ["sh", "-c", "exit 3"]
    );
}

#[test]
fn unknown_flags_exit_125_naming_the_flag() {
    let home = TempHome::new("cli-unknown");
    for verb in VERBS {
        let out = appliance(&home, &[verb, "--no-such-flag", "c", "sh"]);
        assert_eq!(out.status.code(), Some(125), "{verb}");
        let err = text(&out.stderr);
        assert!(
            err.contains("unexpected argument '--no-such-flag'"),
            "{verb}: {err}"
        );
        assert!(err.contains(&format!("appliance {verb}")), "{verb}: {err}");
    }
    failed(
        &appliance(&home, &["frobnicate"]),
        Some(125),
        "'frobnicate'",
    );
    // Nothing at all: the usage, as an error.
    failed(&appliance(&home, &[]), Some(125), "Usage: appliance");
}

#[test]
fn bad_values_and_missing_arguments_exit_125() {
    let home = TempHome::new("cli-values");
    for (args, says) in [
        (&["run", "--transport", "usb", "img", "sh"][..], "'usb'"),
        (&["run", "-m", "lots", "img", "sh"], "give MiB"),
        (&["run", "img"], "<CMD>"),
        (&["create", "-e", "A=1"], "<CMD>"),
        (&["exec", "c"], "<CMD>"),
        (&["exec", "-e"], "'--env <KEY=VALUE>'"),
        (
            &["logs", "--since", "yesterday", "c"],
            "neither Unix seconds",
        ),
        (&["attach"], "<CONTAINER>"),
        (&["attach", "--exec", "e", "c"], "cannot be used with"),
    ] {
        let out = appliance(&home, args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!home.containers().exists(), "{args:?}: nothing was created");
    }
}

#[test]
fn help_works_on_every_verb() {
    let home = TempHome::new("cli-help");
    for verb in VERBS {
        for args in [[verb, "--help"], [verb, "-h"], ["help", verb]] {
            let out = appliance(&home, &args);
            assert_eq!(out.status.code(), Some(0), "{args:?}");
            let help = text(&out.stdout);
            assert!(
                help.contains(&format!("Usage: appliance {verb}")),
                "{args:?}: {help}"
            );
        }
    }
    let top = appliance(&home, &["--help"]);
    assert_eq!(top.status.code(), Some(0));
    for verb in VERBS {
        assert!(text(&top.stdout).contains(verb), "{verb} is listed");
    }
    // The server's log options are global: accepted before or after `serve`, shown in its help.
    let serve = text(&appliance(&home, &["serve", "--help"]).stdout);
    assert!(serve.contains("--log-level") && serve.contains("--log-format"));
}
