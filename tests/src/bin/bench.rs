//! `make bench`: measures boot, footprint and stream throughput of real containerVMs, side by side
//! with the physical limit on this machine (the same kernel booting a trivial static init that
//! writes to the same virtio port), and writes docs/benchmarks.md. Measurement only: nothing
//! here passes or fails on a number.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::records::NewContainer;
use appliance::vm::{qemu_args, BootMedium, ChannelEnd, VmSpec};
use e2e::{Appliance, Transport};
use wire::{StreamKey, StreamKind};

/// Runs of each measurement (`BENCH_RUNS` overrides, for a quick look); medians are quoted with
/// min and max.
const DEFAULT_RUNS: usize = 5;

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_RUNS)
}
/// Bytes streamed in a throughput run: 100-byte text lines.
const STREAM_BYTES: u64 = 16 << 20;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Median, min and max of some measurements.
#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(xs: &[f64]) -> Stats {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn fmt(s: Stats, unit: &str) -> String {
    format!("{:.1} {unit} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// Builds one release binary of this workspace (for `target`, if given); returns its path.
fn release_binary(package: &str, bin: &str, target: Option<&str>) -> PathBuf {
    let ws = e2e::workspace();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "--release", "-p", package, "--bin", bin])
        .current_dir(&ws);
    let dir = match target {
        Some(t) => {
            cmd.args(["--target", t]);
            ws.join("target").join(t).join("release")
        }
        None => ws.join("target/release"),
    };
    run(&mut cmd);
    dir.join(bin)
}

struct Baseline {
    initramfs: PathBuf,
}

impl Baseline {
    /// bench-init, static, as /init of its own initramfs.
    fn build(dir: &Path) -> Self {
        let init = release_binary("tether", "bench-init", Some("x86_64-unknown-linux-musl"));
        let init = std::fs::read(init).unwrap();
        let initramfs = dir.join("bench-initramfs.gz");
        std::fs::write(&initramfs, bootstrap::initramfs::build(&init).unwrap()).unwrap();
        Self { initramfs }
    }

    /// Boots the trivial init; returns (QEMU launch -> its first line, bytes/s of the stream).
    fn boot(&self, dir: &Path, bytes: u64) -> (f64, f64) {
        let a = e2e::artifacts();
        let sock = dir.join("baseline.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let config = dir.join("baseline.cfg");
        std::fs::write(&config, bytes.to_string()).unwrap();
        let overlay = dir.join("baseline.qcow2");
        let _ = std::fs::remove_file(&overlay);
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&a.disk)
            .arg(&overlay));
        let args = qemu_args(&VmSpec {
            accel: "tcg",
            memory_mb: 256,
            boot: BootMedium::Direct {
                kernel: a.kernel.clone(),
                initramfs: self.initramfs.clone(),
            },
            disk: overlay,
            config,
            console: dir.join("baseline-console.log"),
            channel: ChannelEnd::Unix(sock),
        });
        let launch = Instant::now();
        let mut vm = Command::new("timeout")
            .args(["-k", "5", "300", "qemu-system-x86_64"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (mut port, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut seen = Vec::new();
        let first_line = loop {
            let n = port.read(&mut buf).unwrap();
            assert!(n > 0, "bench-init closed the port before its line");
            seen.extend_from_slice(&buf[..n]);
            if let Some(i) = seen.iter().position(|b| *b == b'\n') {
                let t = launch.elapsed();
                seen.drain(..=i);
                break t;
            }
        };
        let mut got = seen.len() as u64;
        let start = Instant::now();
        while got < bytes {
            let n = port.read(&mut buf).unwrap();
            assert!(n > 0, "bench-init closed the port after {got} bytes");
            got += n as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = vm.wait();
        (first_line.as_secs_f64() * 1000.0, bytes as f64 / secs)
    }
}

/// One tether boot: (QEMU launch -> first stdout byte at the server, ms; guest stages, ms since
/// kernel start; bytes/s of the stream, if any).
struct TetherRun {
    first_byte_ms: f64,
    stages: Vec<(String, f64)>,
    throughput: Option<f64>,
}

fn tether_boot(bytes: u64) -> TetherRun {
    let mut app = Appliance::start("bench");
    let script = if bytes == 0 {
        "echo up".to_string()
    } else {
        // The bytes are made first (busybox `yes` writes one line per syscall, which under TCG
        // would measure `yes`, not the channel); the stream is a plain `cat` of them.
        format!(
            "yes {} | head -c {bytes} > /tmp/stream; echo up; cat /tmp/stream",
            "0".repeat(99)
        )
    };
    let id = app.run(
        NewContainer {
            args: vec!["/bin/sh".into(), "-c".into(), script],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
        Transport::Virtio,
        "containerfs",
    );
    let launch = app.last_launch().expect("a VM was launched");
    let server = app.server().expect("in-process server").clone();
    let key = StreamKey::new(1, StreamKind::Stdout);
    let released = || {
        server.container(&id).map_or(0, |c| {
            c.inner
                .lock()
                .expect("container lock")
                .streams
                .in_stream(key)
                .map_or(0, |s| s.released())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut first = None;
    let mut stream_start = None;
    let total = bytes + 3; // "up\n"
    loop {
        assert!(Instant::now() < deadline, "tether run timed out");
        let r = released();
        if r > 0 && first.is_none() {
            first = Some(launch.elapsed());
            stream_start = Some(Instant::now());
        }
        if r >= total {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let throughput = (bytes > 0).then(|| {
        let secs = stream_start.expect("started").elapsed().as_secs_f64();
        bytes as f64 / secs
    });
    app.wait_for(&id, 60, |s| s["timings"]["main_spawn"].is_u64());
    let timings = app.state(&id)["timings"].clone();
    let mut stages: Vec<(String, f64)> = timings
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as f64 / 1e6)))
        .collect();
    stages.sort_by(|a, b| a.1.total_cmp(&b.1));
    app.wait_vms_off(120);
    TetherRun {
        first_byte_ms: first.expect("first byte").as_secs_f64() * 1000.0,
        stages,
        throughput,
    }
}

/// VmRSS and VmHWM of a process, KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// tether (the static release binary) as an ordinary process with one idle session, then with
/// ten sessions streaming: its RSS in KiB (idle VmRSS, peak VmHWM while streaming).
fn tether_memory() -> (u64, u64) {
    let app = Appliance::start("bench-rss");
    let (rec, _) = appliance::records::create(
        &app.home,
        &NewContainer {
            args: vec!["/bin/sleep".into(), "30".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let bin = e2e::workspace().join("target/x86_64-unknown-linux-musl/release/tether");
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(app.home.container(&rec.id).join("config.vmx"))
        .arg("--channel")
        .arg(app.home.channel_socket())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = app.server().unwrap().clone();
    let start = Instant::now();
    let c = loop {
        if let Some(c) = server.container(&rec.id) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    let (idle, _) = rss(child.id());
    for _ in 0..10 {
        let session = c.new_exec_session();
        c.send_control(wire::Control::Exec {
            session,
            name: format!("stream-{session}"),
            spec: wire::ExecSpec {
                path: "/bin/sh".into(),
                args: vec!["sh".into(), "-c".into(), "yes | head -c 20000000".into()],
                env: vec!["PATH=/usr/bin:/bin".into()],
                ..Default::default()
            },
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_secs(4));
    let (_, peak) = rss(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (idle, peak)
}

/// Raises this process's open-file limit (children inherit it): 10,000 channels need 20,000.
fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = want.max(lim.rlim_cur);
        lim.rlim_max = lim.rlim_max.max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// `n` simulated tethers hold authenticated, idle channels to a real `appliance serve` process.
/// Returns (server RSS before, with all connected, KiB; seconds for all handshakes).
fn server_scale(n: usize) -> (u64, u64, f64) {
    let appliance_bin = release_binary("appliance-side", "appliance", None);
    let root = std::env::temp_dir().join(format!("bench-scale-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let home = appliance::home::Home::at(&root);
    std::fs::create_dir_all(home.containers()).unwrap();
    let ids: Vec<(String, Vec<u8>)> = (0..n)
        .map(|_| {
            let (rec, spec) = appliance::records::create(
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
    let mut server = Command::new(appliance_bin)
        .arg("serve")
        .env("TETHER_HOME", &root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(home.docker_socket()).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(server.id()).0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let sock = home.channel_socket();
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.block_on(async {
        // A bounded number of handshakes at a time: the server caps pending handshakes.
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
        for (id, secret) in ids {
            let (sock, gate, connected) = (sock.clone(), gate.clone(), connected.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
                let _ = appliance::sim::handshake_as(&mut s, id, secret).await;
                drop(permit);
                connected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Idle, but alive: a Ping every 3 s keeps the server's keepalive content.
                let mut ping = Vec::new();
                wire::write_message(&wire::Message::Ping { token: 1 }, &mut ping);
                let mut buf = vec![0u8; 4096];
                loop {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if s.write_all(&ping).await.is_err() {
                        return;
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
                }
            });
        }
        while connected.load(std::sync::atomic::Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss(server.id()).0;
    drop(rt);
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&root);
    (before, after, secs)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let qemu = run(Command::new("qemu-system-x86_64").arg("--version"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cores} cores ({cpu}), {}; {}; QEMU accel: TCG (this machine's /dev/kvm is a nested PVM device that hangs ordinary guests)",
        run(Command::new("uname").args(["-sr"])).trim(),
        qemu.lines().next().unwrap_or("").trim()
    )
}

fn main() {
    let a = e2e::artifacts();
    let dir = e2e::workspace().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = Baseline::build(&dir);
    let runs = runs();
    eprintln!(
        "bench: {runs} runs each of boot and stream, tether and the trivial init interleaved"
    );
    let (mut t_boot, mut b_boot, mut t_tp, mut b_tp) = (vec![], vec![], vec![], vec![]);
    let mut stage_runs: Vec<Vec<(String, f64)>> = Vec::new();
    for i in 0..runs {
        let (b, _) = baseline.boot(&dir, 0);
        let t = tether_boot(0);
        eprintln!(
            "  boot {i}: tether {:.0} ms, trivial init {b:.0} ms",
            t.first_byte_ms
        );
        b_boot.push(b);
        t_boot.push(t.first_byte_ms);
        stage_runs.push(t.stages);
        let (_, braw) = baseline.boot(&dir, STREAM_BYTES);
        let ts = tether_boot(STREAM_BYTES).throughput.unwrap();
        eprintln!(
            "  stream {i}: tether {:.1} MB/s, raw {:.1} MB/s",
            ts / 1e6,
            braw / 1e6
        );
        b_tp.push(braw / 1e6);
        t_tp.push(ts / 1e6);
    }
    let (idle, peak) = tether_memory();
    raise_fd_limit(65_536);
    let mut scale_rows = String::new();
    for n in [1_000usize, 10_000] {
        let (before, after, secs) = server_scale(n);
        eprintln!("  server scale {n}: {before} -> {after} KiB in {secs:.1} s");
        scale_rows.push_str(&format!(
            "| {n} | {before} | {after} | {:.1} | {secs:.1} |\n",
            after.saturating_sub(before) as f64 / n as f64
        ));
    }
    let tether_size =
        std::fs::metadata(e2e::workspace().join("target/x86_64-unknown-linux-musl/release/tether"))
            .unwrap()
            .len();
    let mut iso_ms = Vec::new();
    for _ in 0..runs {
        let out = dir.join("bench.iso");
        let t = Instant::now();
        bootstrap::iso::build(
            &a.kernel,
            &a.initramfs,
            bootstrap::iso::DEFAULT_APPEND,
            &out,
        )
        .unwrap();
        iso_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let iso_size = std::fs::metadata(&a.iso).unwrap().len();
    let initramfs_size = std::fs::metadata(&a.initramfs).unwrap().len();

    // Stage medians across runs (each run reports the same stages).
    let mut stage_lines = String::new();
    if let Some(first) = stage_runs.first() {
        for (name, _) in first {
            let xs: Vec<f64> = stage_runs
                .iter()
                .filter_map(|r| r.iter().find(|(n, _)| n == name).map(|(_, v)| *v))
                .collect();
            stage_lines.push_str(&format!("| `{name}` | {} |\n", fmt(stats(&xs), "ms")));
        }
    }
    let share: Vec<f64> = stage_runs
        .iter()
        .filter_map(|r| {
            let get = |n: &str| r.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
            Some(get("main_spawn")? - get("pid1_entry")?)
        })
        .collect();
    let ratio_boot: Vec<f64> = t_boot.iter().zip(&b_boot).map(|(t, b)| t / b).collect();
    let ratio_tp: Vec<f64> = t_tp.iter().zip(&b_tp).map(|(t, b)| t / b).collect();
    let report = format!(
        "# Benchmarks

Written by `make bench` (`tests/src/bin/bench.rs`); rerun it to refresh. Medians of {runs} runs,
with (min–max). Tether and its baseline run interleaved in the same session, so ratios compare
like with like. What was changed to close gaps, with before and after:
[benchmarks-history.md](benchmarks-history.md).

**Machine:** {machine}

## Boot

QEMU launch to the container's first stdout byte held by the session server (host clock), against
the physical limit: the same kernel and QEMU command line booting `bench-init`, a static init that
only mounts devtmpfs/sysfs, finds the same virtio port and writes one line (launch to that line
at the host). Direct kernel boot, 256 MiB, q35, TCG.

| | median (min–max) |
|---|---|
| tether: launch → first container byte at the server | {} |
| trivial init: launch → its line | {} |
| ratio tether / trivial init (per run) | {:.2} ({:.2}–{:.2}); goal ≤ 1.10 |

Tether's own stages, reported over the channel as `Timing` records (guest CLOCK_BOOTTIME, ms
since the kernel started):

| stage | median (min–max) |
|---|---|
{stage_lines}
Tether's share, PID 1 entry → main process spawn (guest clock): {} (goal ≤ 5 ms).

## Stream throughput

{mib} MiB of 100-byte text lines, `cat` in the container → its stdout → tether → virtio-serial →
session server → log store (persisted, then acked), timed from the line before the stream to its
last byte at the server; against bench-init writing the same bytes to the same port with plain
`write(2)` of 64 KB blocks and the host reading the socket without persisting anything.

| | MB/s, median (min–max) |
|---|---|
| tether, into the log store | {} |
| raw write to the port | {} |
| ratio tether / raw (per run) | {:.2} ({:.2}–{:.2}); goal ≥ 0.9 |

## Footprint

| | |
|---|---|
| tether binary (static musl, stripped) | {tether_size} bytes ({:.2} MiB; goal ≤ 2 MiB) |
| tether RSS, one idle session (host mode, same binary) | {idle} KiB (goal ≤ 2048 KiB) |
| tether peak RSS, ten sessions streaming 20 MB each | {peak} KiB |
| initramfs (tether as /init, gzip) | {initramfs_size} bytes |
| bootstrap ISO (kernel + initramfs + isolinux) | {iso_size} bytes |
| bootstrap ISO build time | {} |

## Server scale

Simulated tethers (the guest side of the real handshake, `appliance::sim`) open N channels to
one `appliance serve` process on its Unix socket, authenticate, and stay idle (a Ping every 3 s).
Server RSS from /proc before and with all N connected; one run each.

| channels | RSS before (KiB) | RSS connected (KiB) | KiB per channel (goal ≤ 64) | seconds to connect all |
|---|---|---|---|---|
{scale_rows}
## Not measured yet

KVM (no working KVM here), Debian's stock kernel (its virtio drivers are modules; the
initramfs has none), the COM/TCP transport, stdin throughput and tty echo latency, the exec round
trip latency under load, image disk build throughput. See the open [bench] issue.
",
        fmt(stats(&t_boot), "ms"),
        fmt(stats(&b_boot), "ms"),
        stats(&ratio_boot).median,
        stats(&ratio_boot).min,
        stats(&ratio_boot).max,
        if share.is_empty() {
            "not reported".to_string()
        } else {
            fmt(stats(&share), "ms")
        },
        fmt(stats(&t_tp), "MB/s"),
        fmt(stats(&b_tp), "MB/s"),
        stats(&ratio_tp).median,
        stats(&ratio_tp).min,
        stats(&ratio_tp).max,
        tether_size as f64 / (1024.0 * 1024.0),
        fmt(stats(&iso_ms), "ms"),
        machine = machine(),
        runs = runs,
        mib = STREAM_BYTES >> 20,
    );
    let out = e2e::workspace().join("docs/benchmarks.md");
    std::fs::write(&out, report).unwrap();
    eprintln!("bench: wrote {}", out.display());
}
