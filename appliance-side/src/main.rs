//! `appliance`: the session server and its command line (`appliance --help`, and `--help` on
//! each verb). The grammar is `appliance::cli::args`; the verbs are in `appliance::cli`.
//!
//! Exit codes as docker's: 125 for our own usage and start-up errors, 1 for an error from the
//! server (with its message), the process's own code for attach, exec and run.

use std::process::ExitCode;

use appliance::cli::args::{Cli, Command, LogFormat, ServeArgs};
use appliance::home::Home;
use clap::Parser;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("appliance: {msg}");
    ExitCode::from(125)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; anything else is a usage error.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(125)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let home = Home::from_env();
    match cli.command {
        Command::Serve(a) => serve(&home, a, cli.log_level, cli.log_format),
        Command::Create(a) => match appliance::cli::containers::create(&home, a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        verb => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            match rt.block_on(appliance::cli::execute(&home, verb)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn serve(home: &Home, a: ServeArgs, log_level: Option<String>, log_format: LogFormat) -> ExitCode {
    let defaults = appliance::daemon::ServeOptions::default();
    let opts = appliance::daemon::ServeOptions {
        detach: a.detach,
        tcp: a.tcp.unwrap_or(defaults.tcp),
        vspc: a.vspc,
        backend: match appliance::daemon::BackendChoice::from_args(
            &a.backend,
            appliance::daemon::VsphereArgs {
                url: a.vsphere_url,
                user: a.vsphere_user,
                datastore: a.datastore,
                folder: a.folder,
                pool: a.pool,
                networks: a.vsphere_network,
                vspc_uri: a.vspc_uri,
                ca_file: a.vsphere_ca,
            },
        ) {
            Ok(b) => b,
            Err(e) => return fail(e),
        },
        api_tcp: appliance::api::tls::TcpApiFlags {
            addr: a.api_tcp,
            cert: a.tls_cert,
            key: a.tls_key,
            ca: a.tls_ca,
            insecure: a.api_insecure_tcp,
        },
        unresponsive_after: a
            .unresponsive_after
            .map_or(defaults.unresponsive_after, std::time::Duration::from_secs),
        registry: appliance::registry::RegistryConfig {
            insecure: a.insecure_registry,
            ca_files: a.registry_ca,
            timeout: a
                .registry_timeout
                .filter(|t| t.is_finite() && *t > 0.0)
                .map_or(
                    defaults.registry.timeout,
                    std::time::Duration::from_secs_f64,
                ),
            ..defaults.registry
        },
        log_level,
        log_format: match log_format {
            LogFormat::Text => appliance::logging::LogFormat::Text,
            LogFormat::Json => appliance::logging::LogFormat::Json,
        },
    };
    appliance::daemon::serve(home, &opts)
}
