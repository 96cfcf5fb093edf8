//! The container verbs that are one request each (`ps`, `inspect`, `kill`, `wait`), and `create`,
//! which writes the record locally: the server picks it up when the containerVM connects.

use std::process::ExitCode;

use serde_json::json;

use crate::cli::args::{ContainerArg, CreateArgs, KillArgs, PsArgs};
use crate::cli::client::{CliError, Client, Result};
use crate::home::Home;
use crate::store::records;

/// `appliance ps`: a table of the containers (running ones unless `-a`).
pub async fn ps(client: &Client, a: &PsArgs) -> Result<ExitCode> {
    let all = if a.all { "1" } else { "0" };
    let list = client
        .json("GET", &format!("/containers/json?all={all}"), None)
        .await?;
    println!(
        "{:<14}{:<20}{:<16}COMMAND",
        "CONTAINER ID", "NAME", "STATUS"
    );
    for c in list.as_array().into_iter().flatten() {
        let id = c["Id"].as_str().unwrap_or("");
        let name = c["Names"][0].as_str().unwrap_or("").trim_start_matches('/');
        println!(
            "{:<14}{:<20}{:<16}{}",
            &id[..12.min(id.len())],
            name,
            c["Status"].as_str().unwrap_or(""),
            c["Command"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `appliance inspect`: the inspect document, as docker prints it (a one-element array).
pub async fn inspect(client: &Client, a: &ContainerArg) -> Result<ExitCode> {
    let v = client
        .json("GET", &format!("/containers/{}/json", a.container), None)
        .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!([v])).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// `appliance kill`: signals the main process; prints the container as given.
pub async fn kill(client: &Client, a: &KillArgs) -> Result<ExitCode> {
    client
        .call(
            "POST",
            &format!("/containers/{}/kill?signal={}", a.container, a.signal),
            None,
        )
        .await?;
    println!("{}", a.container);
    Ok(ExitCode::SUCCESS)
}

/// `appliance wait`: blocks until the container exits; prints its exit code.
pub async fn wait(client: &Client, a: &ContainerArg) -> Result<ExitCode> {
    let v = client
        .json("POST", &format!("/containers/{}/wait", a.container), None)
        .await?;
    println!("{}", v["StatusCode"]);
    Ok(ExitCode::SUCCESS)
}

/// `appliance create`: writes the container record and its config; prints the id, and on stderr
/// where the config for tether is.
pub fn create(home: &Home, a: CreateArgs) -> Result<()> {
    let (rec, _) = records::create(home, &a.into_new_container())
        .map_err(|e| CliError::Failed(format!("cannot create the container record: {e}")))?;
    println!("{}", rec.id);
    eprintln!(
        "config for tether: {}",
        home.container(&rec.id).join("config.vmx").display()
    );
    Ok(())
}
