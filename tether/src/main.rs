//! tether: PID 1 of a containerVM, or (with --config) an ordinary process for host-mode tests.
//!
//! Host mode: `tether --config FILE --channel PATH [--root DIR] [--drain-timeout SECS]`
//! runs the container spec in FILE (VMX `key = "value"` text) with sessions chrooted into DIR
//! (default `/`, no chroot) and the channel at PATH (a Unix socket to connect to, or a device).
//! The exit code is the main session's.

mod agent;
mod boot;
mod channel;
mod clock;
mod controller;
mod fdio;
mod link;
mod log;
mod os;
mod pid1;
mod process;
mod pumps;
mod reaper;
mod session;
mod spawn;
mod state;
mod timing;
mod users;
mod vmware;

use std::path::PathBuf;
use std::time::Duration;

struct HostArgs {
    config: PathBuf,
    channel: PathBuf,
    root: PathBuf,
    drain_timeout: Duration,
}

const USAGE: &str =
    "usage: tether --config FILE --channel PATH [--root DIR] [--drain-timeout SECS]";

// Four flags do not justify clap's weight in a binary that must stay under 2 MiB.
fn parse_host_args(args: &[String]) -> Result<HostArgs, String> {
    let mut config = None;
    let mut channel = None;
    let mut root = PathBuf::from("/");
    let mut drain = Duration::from_secs(30);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--channel" => channel = Some(PathBuf::from(value()?)),
            "--root" => root = PathBuf::from(value()?),
            "--drain-timeout" => {
                let v = value()?;
                drain =
                    Duration::from_secs(v.parse().map_err(|_| {
                        format!("--drain-timeout: {v:?} is not a number of seconds")
                    })?);
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(HostArgs {
        config: config.ok_or_else(|| format!("--config is required\n{USAGE}"))?,
        channel: channel.ok_or_else(|| format!("--channel is required\n{USAGE}"))?,
        root,
        drain_timeout: drain,
    })
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
    };
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&runtime, agent::run(cfg));
    outcome.exit_code
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::process::id() == 1 {
        pid1::main();
    }
    match parse_host_args(&args) {
        Ok(a) => std::process::exit(host_main(a)),
        Err(msg) => {
            log::error(&msg);
            std::process::exit(125);
        }
    }
}
