//! `appliance`: the session server and its command line.
//!
//!   appliance serve [--detach] [--tcp ADDR]     run the server ($TETHER_HOME, default ~/.local/share/tether)
//!   appliance create [--name N] [-t] [-i] [-a] [-e K=V]... [-w DIR] [-u USER] -- CMD [ARGS...]
//!                                               make a container record; prints its id and config path
//!   appliance ps [-a] | inspect C | logs [-f] [--tail N] [--since T] [-t] C | kill [-s SIG] C
//!           | wait C | attach [--no-stdin] [--detach-keys K] C | attach --exec EXEC_ID | exec [-i] [-t] [-d] C CMD...

use std::process::ExitCode;

use appliance::home::Home;
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
    let mut opts = appliance::daemon::ServeOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--detach" | "-d" => opts.detach = true,
            "--tcp" => match it.next() {
                Some(v) => opts.tcp = v.clone(),
                None => return fail("--tcp needs an address, e.g. 127.0.0.1:2377"),
            },
            "--log-level" => opts.log_level = it.next().cloned(),
            "--log-format" => match it.next().map(|f| f.parse()) {
                Some(Ok(f)) => opts.log_format = f,
                Some(Err(e)) => return fail(e),
                None => return fail("--log-format needs text or json"),
            },
            other => return fail(format!("unknown serve option {other:?}\n{USAGE}")),
        }
    }
    appliance::daemon::serve(home, &opts)
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
