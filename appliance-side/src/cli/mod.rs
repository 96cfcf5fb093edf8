//! The command line: docker's everyday verbs against `$TETHER_HOME/docker.sock`, with docker's
//! exit-code conventions (the command's own code for exec and attach; 126/127 when it could not
//! start; 1 for an error from the server, with its message; 125 for a usage error).
//!
//! One job per module, imports pointing one way (no module here imports this one's items):
//! `args` (the grammar, clap) and `client` (HTTP over the socket, [`CliError`]) stand alone;
//! `tty` is our terminal; `attach` (attach, exec, the hijacked stream) uses `client` and `tty`;
//! `logs` uses `attach`'s output writer; `containers` (ps, inspect, kill, wait, create) and `run`
//! use `client`; [`execute`] below dispatches to them.

use std::process::ExitCode;

pub mod args;
pub mod attach;
pub mod client;
pub mod containers;
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
        Command::Serve(_) | Command::Create(_) => Err(CliError::Failed(
            "serve and create run without the client runtime".into(),
        )),
    }
}
