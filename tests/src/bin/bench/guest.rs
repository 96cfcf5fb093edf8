//! Real containerVMs running tether, measured at the in-process session server: boot stages,
//! stdout and stdin throughput, tty echo latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance::server::container::Container;
use appliance::store::records::NewContainer;
use e2e::{Appliance, Transport, VmExtras};
use wire::{StreamKey, StreamKind};

/// A booted containerVM and its server-side container.
struct Guest {
    app: Appliance,
    id: String,
    container: Arc<Container>,
    launch: Instant,
}

impl Guest {
    fn start(new: NewContainer, transport: Transport) -> Self {
        Self::launched(|app| app.run_on(new, transport, "containerfs"))
    }

    /// Over the virtio port, with `extras` (NICs and the spec's networks).
    fn start_with(new: NewContainer, extras: VmExtras) -> Self {
        Self::launched(|app| app.run_with(new, extras))
    }

    fn launched(run: impl FnOnce(&mut Appliance) -> String) -> Self {
        let mut app = Appliance::start("bench");
        let id = run(&mut app);
        let launch = app.last_launch().expect("a VM was launched");
        let server = app.server().expect("in-process server").clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        let container = loop {
            if let Some(c) = server.container(&id) {
                break c;
            }
            assert!(Instant::now() < deadline, "the containerVM never connected");
            std::thread::sleep(Duration::from_millis(1));
        };
        Self {
            app,
            id,
            container,
            launch,
        }
    }

    /// Bytes of the main session's stdout persisted in the log store so far.
    fn stdout_held(&self) -> u64 {
        let key = StreamKey::new(1, StreamKind::Stdout);
        self.container
            .inner
            .lock()
            .expect("container lock")
            .streams
            .in_stream(key)
            .map_or(0, |s| s.released())
    }

    /// Polls (every `step`) until the stdout held reaches `bytes`; returns when it did.
    fn wait_stdout(&self, bytes: u64, step: Duration) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if self.stdout_held() >= bytes {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "timed out waiting for stdout");
            std::thread::sleep(step);
        }
    }

    fn finish(mut self) {
        self.app.wait_vms_off(120);
    }
}

/// One tether boot: (QEMU launch -> first stdout byte at the server, ms; guest stages, ms since
/// kernel start; bytes/s of the stream, if any).
pub struct BootRun {
    pub first_byte_ms: f64,
    pub stages: Vec<(String, f64)>,
    pub throughput: Option<f64>,
}

/// Boots a container that prints `up`, then `cat`s `bytes` of 100-byte lines (made first, in
/// tmpfs: busybox `yes` writes a line per system call, which under TCG would measure `yes`).
pub fn boot_and_stream(bytes: u64, transport: Transport) -> BootRun {
    let script = if bytes == 0 {
        "echo up".to_string()
    } else {
        format!(
            "yes {} | head -c {bytes} > /tmp/stream; echo up; cat /tmp/stream",
            "0".repeat(99)
        )
    };
    measure(Guest::start(e2e::sh(&script), transport), bytes)
}

/// A container that prints `up` booted with `extras` (its NICs and networks): launch to the
/// first byte, and the guest's stages (`network_up`, `network_ready`, ...).
pub fn boot_with(extras: VmExtras) -> BootRun {
    measure(Guest::start_with(e2e::sh("echo up"), extras), 0)
}

/// Waits for `up` and then `bytes` more of stdout; the boot's figures.
fn measure(g: Guest, bytes: u64) -> BootRun {
    let first = g.wait_stdout(1, Duration::from_micros(500));
    let first_byte_ms = (first - g.launch).as_secs_f64() * 1000.0;
    let end = g.wait_stdout(bytes + 3, Duration::from_micros(500)); // + "up\n"
    let throughput = (bytes > 0).then(|| bytes as f64 / (end - first).as_secs_f64());
    g.app
        .wait_for(&g.id, 60, |s| s["timings"]["main_spawn"].is_u64());
    let timings = g.app.state(&g.id)["timings"].clone();
    let mut stages: Vec<(String, f64)> = timings
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()? as f64 / 1e6)))
        .collect();
    stages.sort_by(|a, b| a.1.total_cmp(&b.1));
    g.finish();
    BootRun {
        first_byte_ms,
        stages,
        throughput,
    }
}

/// The server writes `bytes` to the main process's stdin and closes it; `cat > /dev/null` takes
/// them and the shell answers `done`. Bytes/s from the first byte offered to `done` held at the
/// server. (Not `head -c`: busybox's takes 0.7 s for 16 MiB of a file under TCG by itself.)
pub fn stdin_rate(bytes: u64) -> f64 {
    let g = Guest::start(
        NewContainer {
            open_stdin: true,
            ..e2e::sh("echo up; cat > /dev/null; echo done")
        },
        Transport::Virtio,
    );
    g.wait_stdout(3, Duration::from_millis(1));
    let block = vec![b'0'; 64 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        let took = g.container.write_stdin(1, &block[..n], left == n as u64);
        left -= took as u64;
        if took < n {
            // The stream buffer is full until tether acknowledges.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let end = g.wait_stdout(3 + 5, Duration::from_micros(200));
    g.finish();
    bytes as f64 / (end - start).as_secs_f64()
}

/// `n` one-byte round trips in a tty session: the server writes a byte to the main process's
/// stdin; the guest's terminal echoes it (canonical mode, `cat` waiting for a line); timed until
/// the echo is held at the server. Each in ms.
pub fn tty_echo_ms(n: usize) -> Vec<f64> {
    let g = Guest::start(
        NewContainer {
            tty: true,
            open_stdin: true,
            ..e2e::sh("echo up; exec cat")
        },
        Transport::Virtio,
    );
    g.wait_stdout(4, Duration::from_millis(1)); // "up\r\n"
                                                // Let the shell reach `cat` and the terminal settle.
    std::thread::sleep(Duration::from_millis(500));
    let base = g.stdout_held();
    let mut out = Vec::with_capacity(n);
    for echoed in 1..=n as u64 {
        let t = Instant::now();
        assert_eq!(g.container.write_stdin(1, b"x", false), 1);
        let held = g.wait_stdout(base + echoed, Duration::from_micros(50));
        out.push((held - t).as_secs_f64() * 1000.0);
    }
    // End the line and close stdin: cat sees the line, then end of file, and exits.
    g.container.write_stdin(1, b"\n", true);
    g.finish();
    out
}
