//! `appliance`: the session server and its command line.
//!
//!   appliance serve [--detach] [--tcp ADDR]     run the server ($TETHER_HOME, default ~/.local/share/tether)
//!   appliance create [--name N] [-t] [-i] [-a] [-e K=V]... [-w DIR] [-u USER] -- CMD [ARGS...]
//!                                               make a container record; prints its id and config path
//!   appliance ps [-a] | inspect C | logs [-f] [--tail N] [--since T] [-t] C | kill [-s SIG] C
//!           | wait C | attach [--no-stdin] [--detach-keys K] C | attach --exec EXEC_ID | exec [-i] [-t] [-d] C CMD...

use std::process::ExitCode;
use std::time::Duration;

use appliance::api::{serve_api, Api};
use appliance::home::Home;
use appliance::server::Server;
use appliance::store::records::{self, NewContainer};

const USAGE: &str = "usage:
  appliance serve [--detach] [--tcp ADDR]
  appliance ps [-a] | inspect C | logs [-f] [--tail N] [--since T] [-t] C | kill [-s SIG] C
  appliance wait C | attach [--no-stdin] [--detach-keys K] C | attach --exec EXEC_ID | exec [-i] [-t] [-d] C CMD...
  appliance create [--name N] [-t] [-i] [-a] [-e K=V]... [-w DIR] [-u USER] -- CMD [ARGS...]
      (-a: the main process starts at the first attach, so none of its output is missed)
  appliance run [-d] [-t] [-i] [--name N] [-e K=V]... [-w DIR] [-u USER] [-m MiB]
                [--transport virtio|serial] IMAGE -- CMD [ARGS...]   (IMAGE: rootfs dir or tarball)";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("appliance: {msg}");
    ExitCode::from(125)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let home = Home::from_env();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&home, &args[1..]),
        Some("create") => create(&home, &args[1..]),
        Some(verb @ ("ps" | "inspect" | "logs" | "kill" | "wait" | "attach" | "exec" | "run")) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            let result = if verb == "run" {
                rt.block_on(appliance::cli::run::run(&home, &args[1..]))
            } else {
                rt.block_on(appliance::cli::run(&home, verb, &args[1..]))
            };
            match result {
                Ok(code) => code,
                Err(appliance::cli::CliError(msg)) => {
                    eprintln!("{msg}");
                    ExitCode::from(1)
                }
            }
        }
        _ => fail(USAGE),
    }
}

fn serve(home: &Home, args: &[String]) -> ExitCode {
    let mut detach = false;
    let mut tcp = "127.0.0.1:0".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--detach" | "-d" => detach = true,
            "--tcp" => match it.next() {
                Some(v) => tcp = v.clone(),
                None => return fail("--tcp needs an address, e.g. 127.0.0.1:2377"),
            },
            other => return fail(format!("unknown serve option {other:?}\n{USAGE}")),
        }
    }
    if let Err(e) = std::fs::create_dir_all(home.containers()) {
        return fail(format!(
            "cannot create {}: {e}",
            home.containers().display()
        ));
    }
    if detach {
        return detach_server(home, &tcp);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let server = Server::new(home.clone());
        if let Err(e) = server.listen_unix(&home.channel_socket()).await {
            return fail(format!(
                "channel socket {}: {e}",
                home.channel_socket().display()
            ));
        }
        let addr = match server.listen_tcp(&tcp).await {
            Ok(a) => a,
            Err(e) => return fail(format!("channel port {tcp}: {e}")),
        };
        let _ = std::fs::write(home.channel_tcp_file(), format!("{addr}\n"));
        if let Err(e) = serve_api(Api::new(server.clone()), &home.docker_socket()).await {
            return fail(format!(
                "API socket {}: {e}",
                home.docker_socket().display()
            ));
        }
        println!("appliance: serving");
        println!(
            "  docker API:        unix://{}",
            home.docker_socket().display()
        );
        println!("  channels (unix):   {}", home.channel_socket().display());
        println!("  channels (tcp):    {addr}");
        println!("  data:              {}", home.root().display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        ExitCode::SUCCESS
    })
}

/// Starts the server in the background, waits until its API answers, writes the pid file.
fn detach_server(home: &Home, tcp: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let log = home.root().join("appliance.log");
    let out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open {}: {e}", log.display())),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let _ = std::fs::remove_file(home.docker_socket());
    let child = std::process::Command::new(exe)
        .args(["serve", "--tcp", tcp])
        .env("TETHER_HOME", home.root())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the server: {e}")),
    };
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(home.docker_socket()).is_ok() {
            let _ = std::fs::write(home.pid_file(), format!("{}\n", child.id()));
            println!("{}", child.id());
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return fail(format!("the server exited ({st}); see {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fail(format!(
        "the server did not become ready in 10 s; see {}",
        log.display()
    ))
}

fn create(home: &Home, args: &[String]) -> ExitCode {
    let mut new = NewContainer::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let r: Result<(), String> = match a.as_str() {
            "--name" => value("--name").map(|v| new.name = Some(v)),
            "-t" | "--tty" => {
                new.tty = true;
                Ok(())
            }
            "-i" | "--interactive" => {
                new.open_stdin = true;
                Ok(())
            }
            "-a" | "--wait-for-attach" => {
                new.attach = true;
                Ok(())
            }
            "-e" | "--env" => value("-e").map(|v| new.env.push(v)),
            "-w" | "--workdir" => value("-w").map(|v| new.dir = v),
            "-u" | "--user" => value("-u").map(|v| new.user = v),
            "--" => {
                new.args = it.by_ref().cloned().collect();
                Ok(())
            }
            other if !other.starts_with('-') => {
                new.args = std::iter::once(other.to_string())
                    .chain(it.by_ref().cloned())
                    .collect();
                Ok(())
            }
            other => Err(format!("unknown option {other:?}")),
        };
        if let Err(e) = r {
            return fail(format!("{e}\n{USAGE}"));
        }
    }
    if new.args.is_empty() {
        return fail(format!("create needs a command\n{USAGE}"));
    }
    match records::create(home, &new) {
        Ok((rec, _)) => {
            println!("{}", rec.id);
            eprintln!(
                "config for tether: {}",
                home.container(&rec.id).join("config.vmx").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("cannot create the container record: {e}")),
    }
}
