//! The churn soak: containers one after another through one `appliance serve` process, each
//! `docker run -d` (a real containerVM), seen running, `docker stop`, `docker rm`, with the
//! server's RSS, open file descriptors and TETHER_HOME's size sampled along the way. Nothing may
//! grow with the number of containers that have come and gone.

use std::path::Path;
use std::time::Instant;

use e2e::{busybox_image_archive, text, Appliance};

/// One sample of the server, after `after` containers have come and gone.
pub struct Sample {
    pub after: usize,
    pub rss_kib: u64,
    pub fds: usize,
    pub home_kib: u64,
    pub container_dirs: usize,
}

pub struct ChurnRun {
    pub samples: Vec<Sample>,
    /// Seconds per cycle (run -d to rm).
    pub cycle_s: Vec<f64>,
    /// Cycles in which a docker command failed (each is named on stderr).
    pub failures: usize,
}

fn du_kib(dir: &Path) -> u64 {
    crate::util::du_bytes(dir) / 1024
}

fn sample(app: &Appliance, after: usize) -> Sample {
    let pid = app.server_pid().expect("a server process");
    Sample {
        after,
        rss_kib: crate::util::rss(pid).0,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        home_kib: du_kib(app.home.root()),
        container_dirs: std::fs::read_dir(app.home.containers()).map_or(0, |d| d.count()),
    }
}

/// One container's life; false if a step failed.
fn cycle(app: &Appliance, image: &str, i: usize) -> bool {
    let step = |args: &[&str]| {
        let out = app.docker(args);
        if !out.status.success() {
            eprintln!(
                "  churn {i}: docker {}: {}",
                args.join(" "),
                text(&out.stderr)
            );
        }
        out.status.success().then(|| text(&out.stdout))
    };
    let Some(id) = step(&["run", "-d", image, "echo up; exec sleep 600"]) else {
        return false;
    };
    let id = id.trim().to_string();
    let start = Instant::now();
    // Running for real: its first output is in the log.
    while step(&["logs", &id]).as_deref() != Some("up\n") {
        if start.elapsed().as_secs() > 60 {
            eprintln!("  churn {i}: no output within 60 s");
            let _ = step(&["rm", "-f", &id]);
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    step(&["stop", "-t", "5", &id]).is_some() && step(&["rm", &id]).is_some()
}

pub fn churn(n: usize) -> ChurnRun {
    let app = Appliance::start_process("bench-churn");
    let (archive, image) = busybox_image_archive();
    let load = app.docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(load.status.success(), "docker load: {}", text(&load.stderr));
    let mut samples = vec![sample(&app, 0)];
    let mut cycle_s = Vec::new();
    let mut failures = 0;
    for i in 1..=n {
        let t = Instant::now();
        if !cycle(&app, image, i) {
            failures += 1;
        }
        cycle_s.push(t.elapsed().as_secs_f64());
        if i == 10 || i % 50 == 0 || i == n {
            let s = sample(&app, i);
            eprintln!(
                "  churn {i}: RSS {} KiB, {} fds, home {} KiB, {} container dirs",
                s.rss_kib, s.fds, s.home_kib, s.container_dirs
            );
            samples.push(s);
        }
    }
    ChurnRun {
        samples,
        cycle_s,
        failures,
    }
}

pub fn rows(run: &ChurnRun) -> String {
    run.samples
        .iter()
        .map(|s| {
            format!(
                "| {} | {} | {} | {} | {} |\n",
                s.after, s.rss_kib, s.fds, s.home_kib, s.container_dirs
            )
        })
        .collect()
}
