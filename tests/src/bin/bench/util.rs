//! Small pieces every benchmark section uses: commands, statistics, binaries, /proc readings.

use std::path::PathBuf;
use std::process::Command;

/// Runs of each repeated measurement (`BENCH_RUNS` overrides, for a quick look); medians are
/// quoted with min and max.
const DEFAULT_RUNS: usize = 5;

pub fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_RUNS)
}

pub fn run(cmd: &mut Command) -> String {
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
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(xs: &[f64]) -> Stats {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// The value below which `p` percent of the samples lie (nearest rank).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn fmt(s: Stats, unit: &str) -> String {
    format!("{:.1} {unit} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// Per-run ratios a/b, as "median (min–max)".
pub fn ratio(a: &[f64], b: &[f64]) -> String {
    let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let s = stats(&r);
    format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
}

/// Builds one release binary of this workspace (for `target`, if given); returns its path.
pub fn release_binary(package: &str, bin: &str, target: Option<&str>) -> PathBuf {
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

/// Disk use of everything under `dir`: allocated blocks x 512, so sparse files count what they
/// hold.
pub fn du_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// VmRSS and VmHWM of a process, KiB.
pub fn rss(pid: u32) -> (u64, u64) {
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

/// Raises this process's open-file limit (children inherit it): 10,000 channels need 20,000.
pub fn raise_fd_limit(want: u64) {
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

pub fn machine(accel: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let qemu = run(Command::new("qemu-system-x86_64").arg("--version"));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cores} cores ({cpu}), {}; {}; QEMU accel: {accel}",
        run(Command::new("uname").args(["-sr"])).trim(),
        qemu.lines().next().unwrap_or("").trim()
    )
}
