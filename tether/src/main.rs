//! tether: PID 1 of a containerVM, or (with --config) an ordinary process for host-mode tests.
//!
//! Host mode: `tether --config FILE --channel PATH [--root DIR] [--drain-timeout SECS]`
//! runs the container spec in FILE (VMX `key = "value"` text) with sessions chrooted into DIR
//! (default `/`, no chroot) and the channel at PATH (a Unix socket to connect to, or a device).
//! The exit code is the main session's.
//!
//! Arguments: a hand parser, not clap. Measured with `cargo build -p tether --release --target
//! x86_64-unknown-linux-musl` (size of target/x86_64-unknown-linux-musl/release/tether):
//!
//! | host-mode parsing                                            |     bytes | vs. hand parser |
//! |--------------------------------------------------------------|-----------|-----------------|
//! | this hand parser                                             |   880,864 |                 |
//! | clap 4.6 derive, default features                            | 1,089,760 | +204 KiB        |
//! | clap 4.6 derive, std + derive + help + usage + error-context | 1,069,280 | +184 KiB        |
//! | clap 4.6 derive, std + derive only (errors name no flag)     |   999,648 | +116 KiB        |
//!
//! Every clap variant costs more than the ~100 KiB it was allowed (the hard limit is 2 MiB, but
//! tether is meant to be small), so the four flags keep the hand parser, which names an unknown
//! flag, refuses a missing or repeated value, and answers `--help`.

mod agent;
mod boot;
mod builtin;
mod channel;
mod clock;
mod controller;
mod fdio;
mod link;
mod log;
mod net;
mod os;
mod pid1;
mod process;
mod pumps;
mod reaper;
mod session;
mod spawn;
mod state;
#[cfg(test)]
mod testing;
mod timing;
mod users;
mod vmware;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

struct HostArgs {
    config: PathBuf,
    channel: PathBuf,
    root: PathBuf,
    drain_timeout: Duration,
}

/// What the command line asks for.
enum Command {
    Run(HostArgs),
    Help,
}

const USAGE: &str =
    "usage: tether --config FILE --channel PATH [--root DIR] [--drain-timeout SECS]";

const HELP: &str = "\
Runs the container spec in FILE as an ordinary process (host mode); as PID 1, tether boots the
containerVM instead and takes no arguments.

  --config FILE          the container spec (VMX `key = \"value\"` text)
  --channel PATH         the channel: a Unix socket to connect to, or a device
  --root DIR             chroot the sessions into DIR (default /: no chroot)
  --drain-timeout SECS   at the end, how long to wait for the appliance to take all output
                         (default 30)
  -h, --help             print this help

The exit code is the main session's; 125 if tether itself could not run it.";

#[derive(Debug, PartialEq, Eq, Error)]
enum ArgError {
    #[error("unknown flag {0:?}")]
    UnknownFlag(String),
    #[error("unexpected argument {0:?}: tether takes flags only")]
    Unexpected(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} is given more than once")]
    Repeated(&'static str),
    #[error("{0} is required")]
    Required(&'static str),
    #[error("--drain-timeout: {0:?} is not a whole number of seconds")]
    BadSeconds(String),
}

/// Parses host mode's flags: `--flag VALUE` or `--flag=VALUE`, each at most once. (Four flags
/// do not pay for clap; see the top of this file.)
fn parse_host_args(args: &[String]) -> Result<Command, ArgError> {
    let (mut config, mut channel, mut root, mut drain) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        let (name, slot): (&'static str, &mut Option<String>) = match flag {
            "--config" => ("--config", &mut config),
            "--channel" => ("--channel", &mut channel),
            "--root" => ("--root", &mut root),
            "--drain-timeout" => ("--drain-timeout", &mut drain),
            f if f.starts_with('-') && f != "-" => return Err(ArgError::UnknownFlag(f.into())),
            _ => return Err(ArgError::Unexpected(arg.clone())),
        };
        // A missing value is an error, not the next flag taken as one.
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) if !v.starts_with('-') || v == "-" => v.as_str(),
                _ => "",
            },
        };
        if value.is_empty() {
            return Err(ArgError::MissingValue(name));
        }
        if slot.replace(value.to_string()).is_some() {
            return Err(ArgError::Repeated(name));
        }
    }
    let drain_timeout = match drain {
        None => Duration::from_secs(30),
        Some(v) => Duration::from_secs(v.parse().map_err(|_| ArgError::BadSeconds(v))?),
    };
    Ok(Command::Run(HostArgs {
        config: config.ok_or(ArgError::Required("--config"))?.into(),
        channel: channel.ok_or(ArgError::Required("--channel"))?.into(),
        root: root.map_or_else(|| PathBuf::from("/"), PathBuf::from),
        drain_timeout,
    }))
}

fn host_main(args: HostArgs) -> i32 {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            log::error(&format!(
                "cannot read config {}: {e}",
                args.config.display()
            ));
            return 125;
        }
    };
    let spec = match guestinfo::spec_from_vmx(&text) {
        Ok(s) => s,
        Err(e) => {
            log::error(&format!("config {}: {e}", args.config.display()));
            return 125;
        }
    };
    log::set_level(spec.debug);
    // Orphans of our sessions are reparented to us, so we reap them as PID 1 would.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes integer arguments only; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let channel = channel::ChannelSpec::for_path(&args.channel);
    let device = match &channel {
        channel::ChannelSpec::Device(p) => match channel::open_device(p) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::error(&format!("cannot open channel device: {e}"));
                return 125;
            }
        },
        channel::ChannelSpec::Socket(_) => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            log::error(&format!("cannot start the runtime: {e}"));
            return 125;
        }
    };
    let cfg = agent::AgentConfig {
        spec,
        root: args.root,
        channel,
        device,
        drain_timeout: args.drain_timeout,
        network: Vec::new(),
    };
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&runtime, agent::run(cfg));
    outcome.exit_code
}

fn main() {
    if std::process::id() == 1 {
        pid1::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_host_args(&args) {
        Ok(Command::Run(a)) => std::process::exit(host_main(a)),
        Ok(Command::Help) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{USAGE}\n\n{HELP}");
        }
        Err(e) => {
            log::error(&format!("{e}\n{USAGE}"));
            std::process::exit(125);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ArgError> {
        parse_host_args(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> HostArgs {
        match parse(args) {
            Ok(Command::Run(a)) => a,
            Ok(Command::Help) => panic!("help for {args:?}"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn flags_take_a_value_after_them_or_after_an_equals_sign() {
        let a = run(&["--config", "c.vmx", "--channel=/run/ch.sock"]);
        assert_eq!(a.config, PathBuf::from("c.vmx"));
        assert_eq!(a.channel, PathBuf::from("/run/ch.sock"));
        assert_eq!(a.root, PathBuf::from("/"));
        assert_eq!(a.drain_timeout, Duration::from_secs(30));
        let a = run(&[
            "--root",
            "/srv/root",
            "--drain-timeout=5",
            "--channel",
            "-",
            "--config",
            "a=b.vmx",
        ]);
        assert_eq!(a.root, PathBuf::from("/srv/root"));
        assert_eq!(a.drain_timeout, Duration::from_secs(5));
        assert_eq!(a.channel, PathBuf::from("-"));
        assert_eq!(a.config, PathBuf::from("a=b.vmx"));
    }

    #[test]
    fn help_is_asked_for_anywhere() {
        assert!(matches!(parse(&["--help"]), Ok(Command::Help)));
        assert!(matches!(parse(&["--config", "c", "-h"]), Ok(Command::Help)));
    }

    #[test]
    fn mistakes_are_errors_that_name_the_flag() {
        let e = |args: &[&str]| match parse(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{args:?} parsed"),
        };
        assert_eq!(
            e(&["--config", "c", "--verbose"]),
            "unknown flag \"--verbose\""
        );
        assert_eq!(e(&["--colour=never"]), "unknown flag \"--colour\"");
        assert_eq!(e(&["-x"]), "unknown flag \"-x\"");
        assert_eq!(
            e(&["c.vmx"]),
            "unexpected argument \"c.vmx\": tether takes flags only"
        );
        assert_eq!(e(&["--config"]), "--config needs a value");
        assert_eq!(e(&["--config", "--channel", "s"]), "--config needs a value");
        assert_eq!(e(&["--config", "-h"]), "--config needs a value");
        assert_eq!(e(&["--root="]), "--root needs a value");
        assert_eq!(
            e(&["--config", "a", "--config", "b"]),
            "--config is given more than once"
        );
        assert_eq!(e(&["--channel", "s"]), "--config is required");
        assert_eq!(e(&["--config", "c"]), "--channel is required");
        assert_eq!(
            e(&["--config", "c", "--channel", "s", "--drain-timeout", "1.5"]),
            "--drain-timeout: \"1.5\" is not a whole number of seconds"
        );
    }
}
