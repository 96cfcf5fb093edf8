//! `make bench`: measures boot, throughput, latency, footprint, server scale and disk builds of
//! real containerVMs and the real server, side by side with the physical limit on this machine
//! where there is one (the same kernel booting `bench-init`, a trivial static init, on the same
//! virtio port), and writes docs/benchmarks.md. Measurement only: nothing here passes or fails
//! on a number.
//!
//! `BENCH_RUNS=N` changes the number of repeated runs (default 5); `BENCH_ONLY=a,b` runs only
//! those sections (boot, run, stream, interactive, footprint, scale, disk, churn, layers,
//! net) and writes
//! target/bench/benchmarks-partial.md instead.

mod baseline;
mod churn;
mod disk;
mod docker_run;
mod footprint;
mod guest;
mod layers;
mod net;
mod report;
mod scale;
mod stock_kernel;
mod util;

use std::time::Instant;

use baseline::{Baseline, Via};
use e2e::Transport;
use util::{fmt, percentile, runs, stats};

/// Bytes streamed in a throughput run: 100-byte text lines.
const STREAM_BYTES: u64 = 16 << 20;
/// Over the emulated 16550 the same run would take minutes.
const COM_STREAM_BYTES: u64 = 1 << 20;
/// Bytes written to a process's stdin in the stdin run.
const STDIN_BYTES: u64 = 16 << 20;
/// One-byte round trips in each echo run.
const ECHOES: usize = 200;
/// Containers through the churn soak (`BENCH_CHURN` overrides).
const CHURN_CONTAINERS: usize = 200;

fn selected(section: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(list) if !list.is_empty() => list.split(',').any(|s| s.trim() == section),
        _ => true,
    }
}

fn main() {
    let a = e2e::artifacts();
    let dir = e2e::workspace().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = Baseline::build(&dir);
    let runs = runs();
    let kvm = baseline.probe_kvm();
    eprintln!("bench: {runs} runs; KVM probe: {kvm:?}");
    let mut r = report::Report::new(runs, &kvm);

    if selected("boot") {
        let (mut t_boot, mut b_boot, mut stage_runs) = (vec![], vec![], vec![]);
        let mut same_work = vec![];
        for i in 0..runs {
            let b = baseline.boot_ms("tcg");
            let w = baseline.same_work_ms();
            let t = guest::boot_and_stream(0, Transport::Virtio);
            eprintln!(
                "  boot {i}: tether {:.0} ms, trivial init {b:.0} ms; same-work baseline entry -> spawn {w:.1} ms",
                t.first_byte_ms
            );
            b_boot.push(b);
            same_work.push(w);
            t_boot.push(t.first_byte_ms);
            stage_runs.push(t.stages);
        }
        r.boot(&t_boot, &b_boot, &stage_runs, &same_work);
        // Kernels side by side: bench-init over the COM port (built into both).
        let kernels = stock_kernel::fetch().and_then(|(stock, version)| {
            let (mut ours, mut theirs) = (vec![], vec![]);
            for i in 0..runs {
                let o = baseline.com_boot_ms(&a.kernel)?;
                let t = baseline.com_boot_ms(&stock)?;
                eprintln!("  kernels {i}: ours {o:.0} ms, Debian's {t:.0} ms");
                ours.push(o);
                theirs.push(t);
            }
            Ok((version, ours, theirs))
        });
        r.kernels(&kernels);
    }

    if selected("run") {
        r.docker_run(&docker_run::docker_run(runs));
    }

    if selected("stream") {
        let (mut t_tp, mut b_tp, mut com, mut b_com) = (vec![], vec![], vec![], vec![]);
        let mut relay_tp = vec![];
        for i in 0..runs {
            let raw = baseline.stdout_rate(STREAM_BYTES, Via::Virtio) / 1e6;
            let relay = baseline.relay_stdout_rate(STREAM_BYTES) / 1e6;
            let raw_com = baseline.stdout_rate(COM_STREAM_BYTES, Via::Com) / 1e6;
            let ours = guest::boot_and_stream(STREAM_BYTES, Transport::Virtio)
                .throughput
                .unwrap()
                / 1e6;
            let serial = guest::boot_and_stream(COM_STREAM_BYTES, Transport::SerialTcp)
                .throughput
                .unwrap()
                / 1e6;
            eprintln!(
                "  stream {i}: tether {ours:.1} MB/s, raw {raw:.1} MB/s, relay {relay:.1} MB/s; COM: tether {serial:.2} MB/s, raw {raw_com:.2} MB/s"
            );
            t_tp.push(ours);
            b_tp.push(raw);
            relay_tp.push(relay);
            com.push(serial);
            b_com.push(raw_com);
        }
        r.stream(&t_tp, &b_tp, &relay_tp, &com, &b_com);
    }

    if selected("interactive") {
        let (mut t_in, mut b_in, mut t_echo, mut b_echo) = (vec![], vec![], vec![], vec![]);
        let (mut r_in, mut p_echo) = (vec![], vec![]);
        for i in 0..runs {
            let raw = baseline.stdin_rate(STDIN_BYTES) / 1e6;
            let relay = baseline.relay_stdin_rate(STDIN_BYTES) / 1e6;
            let ours = guest::stdin_rate(STDIN_BYTES) / 1e6;
            let raw_echo = baseline.echo_ms(ECHOES);
            let pty_echo = baseline.pty_echo_ms(ECHOES);
            let echo = guest::tty_echo_ms(ECHOES);
            eprintln!(
                "  stdin {i}: tether {ours:.1} MB/s, raw {raw:.1} MB/s, relay {relay:.1} MB/s; echo p50 tether {:.2} ms, raw {:.2} ms, pty relay {:.2} ms",
                percentile(&echo, 50.0),
                percentile(&raw_echo, 50.0),
                percentile(&pty_echo, 50.0)
            );
            t_in.push(ours);
            b_in.push(raw);
            r_in.push(relay);
            t_echo.extend(echo);
            b_echo.extend(raw_echo);
            p_echo.extend(pty_echo);
        }
        r.interactive([&t_in, &b_in, &r_in], [&t_echo, &b_echo, &p_echo]);
    }

    if selected("footprint") {
        // Alternating with the baseline binary when there is one; RSS varies little from run
        // to run (it is not timing), so three of each.
        let (ours, baseline_bin) = footprint::binaries();
        let (mut idle, mut peak, mut b_idle, mut b_peak) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs.min(3) {
            let (a, b) = footprint::tether_memory(&ours);
            eprintln!("  footprint {i}: tether idle {a} KiB, peak with ten streams {b} KiB");
            idle.push(a as f64);
            peak.push(b as f64);
            if let Some(bin) = &baseline_bin {
                let (a, b) = footprint::tether_memory(bin);
                eprintln!("  footprint {i}: baseline idle {a} KiB, peak {b} KiB");
                b_idle.push(a as f64);
                b_peak.push(b as f64);
            }
        }
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
        let baseline = baseline_bin.map(|bin| (bin, b_idle, b_peak));
        r.footprint(&idle, &peak, baseline.as_ref(), &iso_ms);
    }

    if selected("scale") {
        let sizes = scale::sizes();
        // Two fds per channel here (the guests' ends) and one in the server, plus headroom.
        util::raise_fd_limit(sizes.iter().max().map_or(0, |n| *n as u64) * 2 + 4096);
        let (ours, baseline_bin) = scale::binaries();
        let mut scale_runs = Vec::new();
        for n in sizes {
            let servers = std::iter::once((ours.clone(), "this tree".to_string())).chain(
                baseline_bin
                    .iter()
                    .map(|b| (b.clone(), format!("baseline `{}`", b.display()))),
            );
            for (bin, label) in servers {
                let mut s = scale::server_scale(n, &bin);
                s.server = label;
                eprintln!(
                    "  server scale {n} ({}): {} -> {} KiB; exec p50/p99 {:.1}/{:.1} ms idle, {:.1}/{:.1} ms loaded; {:.1} MB/s aggregate",
                    s.server,
                    s.rss_before_kib,
                    s.rss_connected_kib,
                    percentile(&s.exec_idle_ms, 50.0),
                    percentile(&s.exec_idle_ms, 99.0),
                    percentile(&s.exec_loaded_ms, 50.0),
                    percentile(&s.exec_loaded_ms, 99.0),
                    s.aggregate / 1e6
                );
                eprintln!("    loaded phases p50/p99: {}", scale::phases(&s));
                scale_runs.push(s);
            }
        }
        r.scale(&scale_runs);
    }

    if selected("disk") {
        let d = disk::disk_build(&dir, runs.min(3));
        eprintln!(
            "  disk: toolchain {}, by hand {}",
            fmt(stats(&d.toolchain_raw), "s"),
            fmt(stats(&d.by_hand), "s")
        );
        r.disk(&d);
    }

    if selected("churn") {
        let n = std::env::var("BENCH_CHURN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CHURN_CONTAINERS);
        r.churn(&churn::churn(n));
    }

    if selected("layers") {
        r.layers(&layers::layers(runs));
    }

    if selected("net") {
        r.net(&net::network_boot(runs));
    }

    let partial = std::env::var("BENCH_ONLY").is_ok_and(|v| !v.is_empty());
    let out = if partial {
        dir.join("benchmarks-partial.md")
    } else {
        e2e::workspace().join("docs/benchmarks.md")
    };
    std::fs::write(&out, r.finish()).unwrap();
    eprintln!("bench: wrote {}", out.display());
}
