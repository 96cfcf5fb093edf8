//! `appliance run`: `docker run` for containerVMs from an image on disk, as a client of the
//! engine's API like any other verb. IMAGE is anything `bootstrap-iso disk` takes: a `docker
//! save` tarball, an OCI layout, a rootfs directory or tarball; the engine builds its disk once
//! (cached by the input's digest). Unless detached, it attaches before it starts the container,
//! so none of the output is missed, and exits with the container's code.
//!
//! The engine (`appliance serve`) boots the VM with the kernel and initramfs from
//! `$TETHER_KERNEL` and `$TETHER_INITRAMFS`, else `~/.cache/tether/boot/` (which `make boot`
//! fills).

use std::process::ExitCode;

use serde_json::json;

use crate::cli::args::{RunArgs, DEFAULT_DETACH_KEYS};
use crate::cli::attach::{exit, pump};
use crate::cli::client::Client;
use crate::cli::CliError;
use crate::home::Home;

type Result<T> = std::result::Result<T, CliError>;

/// docker's exit code for a container that could not start, from the engine's reason.
fn start_failure_code(message: &str) -> u8 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
    {
        127
    } else if message.contains("permission denied") || message.contains("is a directory") {
        126
    } else {
        125
    }
}

/// Starts the container; `Some(code)` when it could not (the reason is printed).
async fn start(client: &Client, id: &str) -> Result<Option<ExitCode>> {
    match client
        .call("POST", &format!("/containers/{id}/start"), None)
        .await
    {
        Ok(_) => Ok(None),
        Err(CliError::Server { message }) => {
            eprintln!("appliance: {message}");
            Ok(Some(ExitCode::from(start_failure_code(&message))))
        }
        Err(e) => Err(e),
    }
}

pub async fn run(home: &Home, r: RunArgs) -> Result<ExitCode> {
    let client = Client::new(home);
    let image = std::path::absolute(&r.image)
        .map_err(|e| CliError::Failed(format!("image {}: {e}", r.image.display())))?;
    if !image.exists() {
        return Err(CliError::Failed(format!(
            "image {} not found: give a docker save tarball, an OCI layout, or a rootfs directory or tarball",
            image.display()
        )));
    }
    let n = &r.new;
    let attached = !r.detach;
    let body = json!({
        "Image": image,
        "Cmd": n.args,
        "Env": n.env,
        "WorkingDir": n.dir,
        "User": n.user,
        "Tty": n.tty,
        "OpenStdin": n.open_stdin,
        "StdinOnce": n.open_stdin && attached,
        "AttachStdin": n.open_stdin && attached,
        "AttachStdout": attached,
        "AttachStderr": attached,
        "HostConfig": {
            "Memory": u64::from(r.memory_mb) * 1024 * 1024,
            // Extension: the channel over the COM port, as vSphere's network serial port.
            "TetherTransport": if r.transport_serial { "serial" } else { "virtio" },
        },
    });
    let name = n
        .name
        .as_deref()
        .map(|n| format!("?name={n}"))
        .unwrap_or_default();
    let created = client
        .json("POST", &format!("/containers/create{name}"), Some(body))
        .await?;
    let id = created["Id"].as_str().unwrap_or_default().to_string();
    if r.detach {
        if let Some(code) = start(&client, &id).await? {
            return Ok(code);
        }
        println!("{id}");
        return Ok(ExitCode::SUCCESS);
    }
    let stdin = n.open_stdin;
    let path = format!(
        "/containers/{id}/attach?stream=1&stdout=1&stderr=1&stdin={}&detachKeys={DEFAULT_DETACH_KEYS}",
        u8::from(stdin)
    );
    let io = client.hijack(&path, None).await?;
    if let Some(code) = start(&client, &id).await? {
        return Ok(code);
    }
    pump(
        &client,
        io,
        n.tty,
        stdin,
        &format!("/containers/{id}/resize"),
    )
    .await;
    let after = client
        .json("GET", &format!("/containers/{id}/json"), None)
        .await?;
    if after["State"]["Running"].as_bool().unwrap_or(false) {
        return Ok(ExitCode::SUCCESS); // detached with the detach keys
    }
    Ok(exit(after["State"]["ExitCode"].as_i64().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_failures_get_dockers_codes() {
        assert_eq!(
            start_failure_code("exec \"x\": executable file not found in PATH"),
            127
        );
        assert_eq!(
            start_failure_code("open /x: no such file or directory"),
            127
        );
        assert_eq!(start_failure_code("exec /etc: permission denied"), 126);
        assert_eq!(start_failure_code("the containerVM did not start"), 125);
    }
}
