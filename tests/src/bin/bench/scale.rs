//! Server scale: N simulated tethers (`appliance::testing::sim`, the guest side of the real handshake and
//! streams, no VMs) against one real `appliance serve` process on its Unix socket. Memory per
//! idle channel; docker-API exec round trips, idle and with 100 channels streaming; the
//! aggregate rate those streams are persisted at.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::cli::Client;
use appliance::home::Home;
use appliance::store::records::NewContainer;
use appliance::testing::sim::GuestBehaviour;
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::util::{percentile, release_binary, rss};

/// Channels that stream during the loaded phase.
const STREAMERS: usize = 100;
/// Exec round trips per phase.
pub const EXECS: usize = 200;
/// How long the loaded phase's aggregate rate is measured.
const LOAD_SECS: u64 = 5;

pub struct ScaleRun {
    /// Which server binary: "this tree" or the baseline's path.
    pub server: String,
    pub channels: usize,
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub connect_secs: f64,
    /// Exec round trips (ms) with every channel idle, then with STREAMERS streaming.
    pub exec_idle_ms: Vec<f64>,
    pub exec_loaded_ms: Vec<f64>,
    /// The loaded round trips' phases (see `exec_round_trip`).
    pub exec_loaded_phases: Vec<[f64; 3]>,
    /// Bytes/s the server persisted and acknowledged, summed over the streaming channels.
    pub aggregate: f64,
    pub server_cpu_secs_loaded: f64,
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// One exec through the docker Engine API as `docker exec` does it: create, start with the
/// output attached until the stream ends, inspect for the exit code. Milliseconds: in all, and
/// its three phases (create; start until the output ends; inspect until the exit code).
async fn exec_round_trip(client: &Client, container: &str) -> (f64, [f64; 3]) {
    let t = Instant::now();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let created = client
        .json(
            "POST",
            &format!("/containers/{container}/exec"),
            Some(json!({"AttachStdout": true, "AttachStderr": true, "Cmd": ["echo", "hello"]})),
        )
        .await
        .unwrap_or_else(|e| panic!("exec create: {e}"));
    let exec_id = created["Id"].as_str().expect("exec id").to_string();
    let created_ms = ms(t);
    let mut io = client
        .hijack(
            &format!("/exec/{exec_id}/start"),
            Some(json!({"Detach": false, "Tty": false})),
        )
        .await
        .unwrap_or_else(|e| panic!("exec start: {e}"));
    let mut output = Vec::new();
    io.read_to_end(&mut output).await.expect("exec output");
    // docker's stream framing: an 8-byte header, then the line.
    assert!(
        output.ends_with(b"hello\n"),
        "exec output {:?}",
        String::from_utf8_lossy(&output)
    );
    let output_ms = ms(t);
    loop {
        let v = client
            .json("GET", &format!("/exec/{exec_id}/json"), None)
            .await
            .unwrap_or_else(|e| panic!("exec inspect: {e}"));
        if let Some(code) = v["ExitCode"].as_i64() {
            assert_eq!(code, 0);
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let total = ms(t);
    (
        total,
        [created_ms, output_ms - created_ms, total - output_ms],
    )
}

/// The `appliance` binary this tree builds, and, with `BENCH_APPLIANCE_BASELINE=PATH`, another
/// one (an older build) to run the same way beside it.
pub fn binaries() -> (PathBuf, Option<PathBuf>) {
    let ours = release_binary("appliance-side", "appliance", None);
    (
        ours,
        std::env::var_os("BENCH_APPLIANCE_BASELINE").map(PathBuf::from),
    )
}

/// Channel counts to measure: `BENCH_SCALE=1000,10000` overrides.
pub fn sizes() -> Vec<usize> {
    std::env::var("BENCH_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000, 100_000])
}

pub fn server_scale(n: usize, appliance_bin: &Path) -> ScaleRun {
    let root = std::env::temp_dir().join(format!("bench-scale-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let home = Home::at(&root);
    std::fs::create_dir_all(home.containers()).unwrap();
    let ids: Vec<(String, Vec<u8>)> = (0..n)
        .map(|_| {
            let (rec, spec) = appliance::store::records::create(
                &home,
                &NewContainer {
                    args: vec!["/bin/true".into()],
                    ..Default::default()
                },
            )
            .unwrap();
            (rec.id, spec.secret)
        })
        .collect();
    let mut server = std::process::Command::new(appliance_bin)
        .arg("serve")
        .env("TETHER_HOME", &root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(home.docker_socket()).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_before_kib = rss(server.id()).0;
    // The channels that will stream run on a runtime of their own: sharing one with the idle
    // guests, a guest answering an exec would wait behind 100 busy writers, which measures the
    // simulation, not the server (real guests each have their own vCPU).
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let (rt, rt_streamers) = (runtime(), runtime());
    let start = Instant::now();
    let sock = home.channel_socket();
    let connected = Arc::new(AtomicUsize::new(0));
    let behaviours: Vec<GuestBehaviour> = (0..n).map(|_| GuestBehaviour::default()).collect();
    // A bounded number of handshakes at a time: the server caps pending handshakes.
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    for (i, ((id, secret), behaviour)) in ids
        .iter()
        .cloned()
        .zip(behaviours.iter().cloned())
        .enumerate()
    {
        let (sock, gate, connected) = (sock.clone(), gate.clone(), connected.clone());
        let on = if i < STREAMERS { &rt_streamers } else { &rt };
        on.spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let (reader, streams) = appliance::testing::sim::handshake_as(&mut s, id, secret).await;
            drop(permit);
            connected.fetch_add(1, Ordering::Relaxed);
            appliance::testing::sim::run_guest(s, reader, streams, behaviour).await;
        });
    }
    while connected.load(Ordering::Relaxed) < n {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let rss_connected_kib = rss(server.id()).0;

    let client = Client::new(&home);
    // The API client gets a runtime of its own: on the simulated guests' runtime, 100 streaming
    // guests would delay the client, not the server.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut pick = 0x9e3779b97f4a7c15u64;
    let mut next_container = || {
        pick ^= pick << 13;
        pick ^= pick >> 7;
        pick ^= pick << 17;
        ids[(pick % n as u64) as usize].0.clone()
    };
    let mut exec_idle_ms = Vec::with_capacity(EXECS);
    for _ in 0..EXECS {
        let c = next_container();
        exec_idle_ms.push(client_rt.block_on(exec_round_trip(&client, &c)).0);
    }

    // The loaded phase: the first STREAMERS channels stream while execs go to the others.
    let streamers = &behaviours[..STREAMERS.min(n)];
    for b in streamers {
        b.stream_main.store(true, Ordering::Relaxed);
    }
    let acked = || -> u64 {
        streamers
            .iter()
            .map(|b| b.acked.load(Ordering::Relaxed))
            .sum()
    };
    std::thread::sleep(Duration::from_secs(1));
    let (a0, t0, cpu0) = (acked(), Instant::now(), cpu_secs(server.id()));
    let mut exec_loaded_ms = Vec::with_capacity(EXECS);
    let mut exec_loaded_phases = Vec::with_capacity(EXECS);
    while exec_loaded_ms.len() < EXECS || t0.elapsed() < Duration::from_secs(LOAD_SECS) {
        let c = next_container();
        if ids[..STREAMERS.min(n)].iter().any(|(id, _)| *id == c) {
            continue;
        }
        let (ms, phases) = client_rt.block_on(exec_round_trip(&client, &c));
        if exec_loaded_ms.len() < EXECS {
            exec_loaded_ms.push(ms);
            exec_loaded_phases.push(phases);
        }
    }
    let (a1, secs, cpu1) = (acked(), t0.elapsed().as_secs_f64(), cpu_secs(server.id()));
    for b in streamers {
        b.stream_main.store(false, Ordering::Relaxed);
    }
    drop(rt);
    drop(rt_streamers);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&root);
    ScaleRun {
        server: String::new(),
        channels: n,
        rss_before_kib,
        rss_connected_kib,
        connect_secs,
        exec_idle_ms,
        exec_loaded_ms,
        exec_loaded_phases,
        aggregate: (a1 - a0) as f64 / secs,
        server_cpu_secs_loaded: (cpu1 - cpu0) / secs,
    }
}

/// The table rows for some runs.
pub fn rows(runs: &[ScaleRun]) -> String {
    let mut s = String::new();
    for r in runs {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} MB/s ({:.0}% of a core) |\n",
            r.server,
            r.channels,
            r.rss_before_kib,
            r.rss_connected_kib,
            r.rss_connected_kib.saturating_sub(r.rss_before_kib) as f64 / r.channels as f64,
            r.connect_secs,
            percentile(&r.exec_idle_ms, 50.0),
            percentile(&r.exec_idle_ms, 99.0),
            percentile(&r.exec_loaded_ms, 50.0),
            percentile(&r.exec_loaded_ms, 99.0),
            r.aggregate / 1e6,
            r.server_cpu_secs_loaded * 100.0,
        ));
    }
    s
}

/// p50 / p99 of each phase of the loaded round trips, for the log and the notes.
pub fn phases(r: &ScaleRun) -> String {
    let names = ["create", "start to end of output", "inspect to exit code"];
    (0..3)
        .map(|i| {
            let v: Vec<f64> = r.exec_loaded_phases.iter().map(|p| p[i]).collect();
            format!(
                "{} {:.1}/{:.1} ms",
                names[i],
                percentile(&v, 50.0),
                percentile(&v, 99.0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
