//! The command line: docker's everyday verbs against `$TETHER_HOME/docker.sock`, with docker's
//! exit-code conventions (the command's own code for exec and attach; 126/127 when it could not
//! start; 1 for an error from the server, with its message; 125 for a usage error).
//!
//! One job per module, imports pointing one way: `args` (the grammar, clap), `client` (HTTP over
//! the socket, [`CliError`]) and `tty` (our terminal) import no other module here; `attach`
//! (attach, exec, the hijacked stream) uses those three; `logs` uses `args`, `client` and
//! `attach`'s output writer; `containers` (ps, inspect, kill, wait, create) uses `args` and
//! `client`; `images` (export-vmdk) uses `args` and `client`; `run` uses `args`, `client` (through the re-export below) and `attach`. Only
//! [`execute`], here, uses them all.

use std::process::ExitCode;

pub mod args;
pub mod attach;
pub mod client;
pub mod containers;
pub mod images;
pub mod logs;
pub mod run;
pub mod tty;

pub use client::{CliError, Client};

use crate::home::Home;
use args::Command;

/// Runs a verb that talks to the server. `serve` and `create` need no runtime and no server:
/// `main` runs them itself (and gets `Err` here if it passes them).
pub async fn execute(home: &Home, command: Command) -> Result<ExitCode, CliError> {
    let client = Client::new(home);
    match command {
        Command::Ps(a) => containers::ps(&client, &a).await,
        Command::Inspect(a) => containers::inspect(&client, &a).await,
        Command::Logs(a) => logs::logs(&client, &a).await,
        Command::Kill(a) => containers::kill(&client, &a).await,
        Command::Wait(a) => containers::wait(&client, &a).await,
        Command::Attach(a) => attach::attach(&client, &a).await,
        Command::Exec(a) => attach::exec(&client, &a).await,
        Command::Run(a) => run::run(home, a.into()).await,
        Command::Image(args::ImageCmd::ExportVmdk(a)) => images::export_vmdk(&client, &a).await,
        Command::Serve(_) | Command::Create(_) => Err(CliError::Failed(
            "serve and create run without the client runtime".into(),
        )),
    }
}
