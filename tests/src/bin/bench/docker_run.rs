//! `docker run` against the engine's API used directly: the stock CLI's `docker run --rm IMAGE
//! echo up` (image already loaded) to its first stdout byte, against a client that makes only
//! the calls a run needs (create with AutoRemove, attach, start) on the same server and reads
//! the first byte of the attached stream. The difference is the CLI's own work: its start-up,
//! the version ping, the extra wait request, and its attach and start done as docker does them.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use appliance::cli::Client;
use e2e::{busybox_image_archive, text, Appliance};
use serde_json::json;
use tokio::io::AsyncReadExt;

pub struct DockerRun {
    /// ms from spawning the CLI to the first byte of its stdout.
    pub cli_ms: Vec<f64>,
    /// ms from the create request to the first byte of the attached stream.
    pub direct_ms: Vec<f64>,
}

/// The stock CLI: spawn to the first stdout byte; then waits for it to exit 0.
fn cli_first_byte(app: &Appliance, image: &str) -> f64 {
    let t = Instant::now();
    let mut child = app
        .docker_command(&["run", "--rm", image, "echo up"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the docker CLI is installed");
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let got = out.read(&mut first).unwrap_or(0);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(got == 1 && status.success(), "docker run: {status}: {err}");
    assert_eq!(&first, b"u", "docker run's first byte");
    ms
}

/// The API directly: create (AutoRemove, as `--rm`), attach, start; to the first output byte.
/// Then the rest of the stream, and waits until the container is gone.
async fn direct_first_byte(client: &Client, image: &str) -> f64 {
    let t = Instant::now();
    let created = client
        .json(
            "POST",
            "/containers/create",
            Some(json!({
                "Image": image,
                "Cmd": ["echo up"],
                "AttachStdout": true,
                "AttachStderr": true,
                "HostConfig": {"AutoRemove": true},
            })),
        )
        .await
        .unwrap_or_else(|e| panic!("create: {e}"));
    let id = created["Id"].as_str().expect("container id").to_string();
    let mut io = client
        .hijack(
            &format!("/containers/{id}/attach?stream=1&stdout=1&stderr=1"),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("attach: {e}"));
    client
        .call("POST", &format!("/containers/{id}/start"), None)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    // docker's stream framing: an 8-byte header, then the bytes; the first payload byte is
    // the container's first output byte.
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.expect("attached output");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(head[8], b'u', "the attached stream's first byte");
    let mut rest = Vec::new();
    let _ = io.read_to_end(&mut rest).await;
    // Removed (AutoRemove) before the next run, so both start from the same state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .call("GET", &format!("/containers/{id}/json"), None)
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "{id} was not auto-removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ms
}

/// `runs` of each, interleaved, the order alternating; one untimed run of each first.
pub fn docker_run(runs: usize) -> DockerRun {
    let app = Appliance::start_process("bench-run");
    let (archive, image) = busybox_image_archive();
    let load = app.docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(load.status.success(), "docker load: {}", text(&load.stderr));
    let client = Client::new(&app.home);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut cli_ms, mut direct_ms) = (vec![], vec![]);
    for i in 0..=runs {
        let (c, d) = if i % 2 == 0 {
            let c = cli_first_byte(&app, image);
            (c, rt.block_on(direct_first_byte(&client, image)))
        } else {
            let d = rt.block_on(direct_first_byte(&client, image));
            (cli_first_byte(&app, image), d)
        };
        if i == 0 {
            continue;
        }
        eprintln!("  docker run {i}: CLI {c:.0} ms, API directly {d:.0} ms");
        cli_ms.push(c);
        direct_ms.push(d);
    }
    DockerRun { cli_ms, direct_ms }
}
