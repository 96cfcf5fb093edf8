//! docs/benchmarks.md: each section's method and numbers, in the order they were measured.

use crate::churn::ChurnRun;
use crate::disk::DiskRun;
use crate::docker_run::DockerRun;
use crate::layers::{LayersRun, BASE_FILES, CHAIN_LAYERS, LARGER_BYTES, SMALL_BYTES};
use crate::net::NetRun;
use crate::scale::{rows, ScaleRun};
use crate::util::{fmt, machine, percentile, ratio, stats};
use crate::{COM_STREAM_BYTES, ECHOES, STDIN_BYTES, STREAM_BYTES};

pub struct Report {
    text: String,
}

fn mb(bytes: u64) -> u64 {
    bytes >> 20
}

impl Report {
    pub fn new(runs: usize, kvm: &Result<f64, String>) -> Self {
        let accel = match kvm {
            Ok(ms) => format!("TCG; a KVM probe booted bench-init in {ms:.0} ms"),
            Err(e) => format!(
                "TCG; KVM not used: the probe (bench-init under `-accel kvm`, 20 s limit) failed: {e}"
            ),
        };
        Self {
            text: format!(
                "# Benchmarks

Written by `make bench` (`tests/src/bin/bench/`); rerun it to refresh. Medians of {runs} runs,
with (min–max), unless a section says otherwise. Tether and its baseline run interleaved in the
same session, so ratios compare like with like. What was changed to close gaps, with before and
after: [benchmarks-history.md](benchmarks-history.md).

**Machine:** {}
",
                machine(&accel)
            ),
        }
    }

    /// `same_work`: bench-init's same-work boot per run, entry -> root ready and spawn (ms).
    pub fn boot(
        &mut self,
        tether: &[f64],
        trivial: &[f64],
        stage_runs: &[Vec<(String, f64)>],
        same_work: &[f64],
    ) {
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
        let span = |to: &str| -> Vec<f64> {
            stage_runs
                .iter()
                .filter_map(|r| {
                    let get = |n: &str| r.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
                    Some(get(to)? - get("pid1_entry")?)
                })
                .collect()
        };
        let (share, to_root) = (span("main_spawn"), span("root_ready"));
        self.text.push_str(&format!(
            "
## Boot

QEMU launch to the container's first stdout byte held by the session server (host clock), against
the physical limit: the same kernel and QEMU command line booting `bench-init`, a static init that
only mounts devtmpfs/sysfs, finds the same virtio port and writes one line (launch to that line
at the host). Direct kernel boot, 256 MiB, q35, TCG.

| | median (min–max) |
|---|---|
| tether: launch → first container byte at the server | {} |
| trivial init: launch → its line | {} |
| ratio tether / trivial init (per run) | {}; goal ≤ 1.05 |

Tether's own stages, reported over the channel as `Timing` records (guest CLOCK_BOOTTIME, ms
since the kernel started):

| stage | median (min–max) |
|---|---|
{stage_lines}
Tether's share of the boot against the same work without tether: `bench-init same-work` (its
same_work.rs) does tether's steps from PID 1's entry as plainly as they can be written (the same
base mounts, the image disk found by its ext4 label and mounted with the same options, the
container's /proc, /sys and /dev with its nodes, links, devpts and shm, hostname, /etc/hosts
and /etc/hostname, `lo` up, the move mount and chroot, then fork and exec of the image's
`/bin/true`), on the same kernel, disk and QEMU line, one boot of each per run, interleaved.
Both marks on the guest's CLOCK_BOOTTIME; the baseline has one instant for root ready and the
spawn, as nothing lies between them there. Tether's span to `main_spawn` holds what the baseline
has no counterpart for: decoding the config, its async runtime, the channel's handshake with the
server (a round trip to the host) and the start of the main session.

| | tether | same-work baseline | ratio (per run) |
|---|---|---|---|
| PID 1 entry → root ready (after the switch) | {} | {} | {} |
| PID 1 entry → main process spawn | {} | {} | {}; goal ≤ 1.2 |
",
            fmt(stats(tether), "ms"),
            fmt(stats(trivial), "ms"),
            ratio(tether, trivial),
            fmt(stats(&to_root), "ms"),
            fmt(stats(same_work), "ms"),
            ratio(&to_root, same_work),
            fmt(stats(&share), "ms"),
            fmt(stats(same_work), "ms"),
            ratio(&share, same_work),
        ));
    }

    pub fn docker_run(&mut self, d: &DockerRun) {
        self.text.push_str(&format!(
            "
## `docker run` against the API directly

One `appliance serve` process (debug build, as the QEMU tier runs it) with the busybox image
loaded. The stock CLI's `docker run --rm IMAGE 'echo up'`, from spawning it to the first byte
of its stdout; against a client in the bench making only the calls a run needs on the same
server (create with AutoRemove, attach, start) and reading the first byte of the attached
stream, from the create request. Interleaved, the order alternating, one untimed run of each
first; each container is removed before the next starts.

| | median (min–max) |
|---|---|
| `docker run` (stock CLI) → first output byte | {} |
| API directly → first output byte | {} |
| ratio CLI / direct (per run) | {}; goal ≤ 1.05 |
",
            fmt(stats(&d.cli_ms), "ms"),
            fmt(stats(&d.direct_ms), "ms"),
            ratio(&d.cli_ms, &d.direct_ms),
        ));
    }

    pub fn kernels(&mut self, k: &Result<(String, Vec<f64>, Vec<f64>), String>) {
        let body = match k {
            Ok((version, ours, theirs)) => format!(
                "| | median (min–max) |
|---|---|
| our kernel (kernel-config/) | {} |
| Debian's stock kernel ({version}) | {} |
| ratio stock / ours (per run) | {} |
",
                fmt(stats(ours), "ms"),
                fmt(stats(theirs), "ms"),
                ratio(theirs, ours),
            ),
            Err(e) => format!("Not measured: {e}\n"),
        };
        self.text.push_str(&format!(
            "
Kernels side by side: QEMU launch to bench-init's line over the COM port (ttyS1, built into
both kernels), same initramfs and QEMU line. Debian's stock kernel cannot boot tether: its
virtio, fw_cfg and ext4 drivers are modules, and a containerVM loads none.

{body}"
        ));
    }

    /// Rates per run, MB/s; `relay`: bench-init's pipe relay on the same port.
    pub fn stream(
        &mut self,
        tether: &[f64],
        raw: &[f64],
        relay: &[f64],
        com: &[f64],
        raw_com: &[f64],
    ) {
        self.text.push_str(&format!(
            "
## Stream throughput

{} MiB of 100-byte text lines, `cat` of a tmpfs file in the container → its stdout → tether →
virtio-serial → session server → log store (persisted, then acked), timed from the line before
the stream to its last byte held at the server; against bench-init doing what `cat FILE > PORT`
does (64 KiB `read`/`write` from a file in RAM) on the same port, the host only reading the
socket. The COM rows: tether over the emulated 16550 (ttyS1) bridged to the server's TCP port,
and bench-init doing the same `cat` to ttyS1 in raw mode at the same speed with the host
reading the TCP socket, {} MiB each. The relay row is the honest limit for a process's stdout:
bench-init forks a child that does the same `cat` into a pipe, and itself reads the pipe in
64 KiB chunks and writes the port (what any agent carrying a process's output must do at
least), the four kinds of run interleaved in each round. Over COM the raw writer (blocking 64 KiB `write`s to the
tty) has come out slower than tether (non-blocking writes woken by epoll); both go through the
same 8250 driver and QEMU chardev, and why is not yet understood.

| | MB/s, median (min–max) |
|---|---|
| tether, into the log store (virtio-serial) | {} |
| raw `cat` to the port | {} |
| ratio tether / raw (per run) | {} |
| pipe relay (bench-init: child `cat` → pipe → relay → port) | {} |
| ratio tether / relay (per run) | {}; goal ≥ 0.9 |
| tether over the COM port (TCP on the host) | {} |
| raw `cat` to the COM port | {} |
| ratio tether / raw over COM (per run) | {} |
",
            mb(STREAM_BYTES),
            mb(COM_STREAM_BYTES),
            fmt(stats(tether), "MB/s"),
            fmt(stats(raw), "MB/s"),
            ratio(tether, raw),
            fmt(stats(relay), "MB/s"),
            ratio(tether, relay),
            fmt_small(com),
            fmt_small(raw_com),
            ratio(com, raw_com),
        ));
    }

    /// Stdin rates per run (tether, raw port, pipe relay), MB/s; echo round trips, ms (tether,
    /// bare port echo, pty relay).
    pub fn interactive(&mut self, stdin: [&[f64]; 3], echo: [&[f64]; 3]) {
        let ([t_in, b_in, r_in], [t_echo, b_echo, p_echo]) = (stdin, echo);
        self.text.push_str(&format!(
            "
## Stdin and interactive latency

Stdin: the server offers {} MiB to the main process's stdin and closes it (`cat > /dev/null`,
then `echo done`), timed from the first byte offered to `done` held at the server; against the
host writing the same bytes into the port for bench-init, which reads them and answers `done`;
and against bench-init's relay, the honest limit: it reads the port in 64 KiB chunks and
writes a pipe that a forked child reads to its end, answering `done` once the child has exited.

| | MB/s, median (min–max) |
|---|---|
| tether: server → process stdin | {} |
| raw: host → port read by bench-init | {} |
| ratio tether / raw (per run) | {} |
| relay: host → port → relay → pipe → child | {} |
| ratio tether / relay (per run) | {}; goal ≥ 0.9 |

Echo: one byte written to a tty session's stdin at the server (`cat` in canonical mode: the
guest's terminal echoes it), timed until the echo is held at the server, {ECHOES} round trips per
run, all runs pooled; against one byte through bench-init's read-and-write-back loop on the port,
and through bench-init's pty relay (port → pty master, the terminal's echo read back from the
master → port: the same path minus the agent's framing and the server).

| | p50 | p99 |
|---|---|---|
| tether: tty echo | {:.2} ms | {:.2} ms |
| raw: port echo | {:.2} ms | {:.2} ms |
| pty relay echo | {:.2} ms | {:.2} ms |
| ratio tether / pty relay | {:.2} (goal ≤ 1.5) | {:.2} |
",
            mb(STDIN_BYTES),
            fmt(stats(t_in), "MB/s"),
            fmt(stats(b_in), "MB/s"),
            ratio(t_in, b_in),
            fmt(stats(r_in), "MB/s"),
            ratio(t_in, r_in),
            percentile(t_echo, 50.0),
            percentile(t_echo, 99.0),
            percentile(b_echo, 50.0),
            percentile(b_echo, 99.0),
            percentile(p_echo, 50.0),
            percentile(p_echo, 99.0),
            percentile(t_echo, 50.0) / percentile(p_echo, 50.0),
            percentile(t_echo, 99.0) / percentile(p_echo, 99.0),
        ));
    }

    /// RSS figures in KiB per run; `baseline`: another tether binary measured alternately.
    pub fn footprint(
        &mut self,
        idle: &[f64],
        peak: &[f64],
        baseline: Option<&(std::path::PathBuf, Vec<f64>, Vec<f64>)>,
        iso_ms: &[f64],
    ) {
        let kib = |v: &[f64]| fmt(stats(v), "KiB");
        let mut baseline_rows = String::new();
        if let Some((bin, b_idle, b_peak)) = baseline {
            baseline_rows = format!(
                "| baseline binary `{}`: idle / peak with ten streams | {} / {} |\n",
                bin.display(),
                kib(b_idle),
                kib(b_peak)
            );
        }
        let a = e2e::artifacts();
        let ws = e2e::workspace();
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let tether = size(&ws.join("target/x86_64-unknown-linux-musl/release/tether"));
        self.text.push_str(&format!(
            "
## Footprint

| | |
|---|---|
| tether binary (static musl, stripped) | {tether} bytes ({:.2} MiB; goal ≤ 2 MiB) |
| tether RSS, one idle session (host mode, same binary) | {} (goal ≤ 2048 KiB) |
| tether peak RSS (VmHWM), ten sessions streaming 20 MB each | {} (goal ≤ 4096 KiB) |
{baseline_rows}| initramfs (tether as /init, gzip) | {} bytes |
| bootstrap ISO (kernel + initramfs + isolinux) | {} bytes |
| bootstrap ISO build time | {} |
",
            tether as f64 / (1024.0 * 1024.0),
            kib(idle),
            kib(peak),
            size(&a.initramfs),
            size(&a.iso),
            fmt(stats(iso_ms), "ms"),
        ));
    }

    pub fn scale(&mut self, runs: &[ScaleRun]) {
        self.text.push_str(&format!(
            "
## Server scale

Simulated tethers (`appliance::testing::sim`: the guest side of the real handshake and streams, no VMs)
open N channels to one `appliance serve` process (release build) on its Unix socket and
authenticate; they answer every exec as `echo` would. Server RSS from /proc before and with
all N connected and idle. Exec round trip: through the docker Engine API as `docker exec`
does it (create, start with output attached until the stream ends, inspect until the exit code),
to a random container, {} in a row, first with every channel idle, then while 100 of the
channels stream stdout as fast as the server persists it (aggregate: bytes persisted and acked
per second over those 100, with the server's CPU use). One run per N and server (with
`BENCH_APPLIANCE_BASELINE`, an older server binary runs the same way right after this tree's);
the simulated guests and the server share the machine's cores. Goals: ≤ 16 KiB per idle
channel, exec p99 ≤ 20 ms at 10,000 channels with 100 streaming.

| server | channels | RSS before (KiB) | RSS connected (KiB) | KiB per channel (goal ≤ 16) | s to connect all | exec p50 / p99, idle (ms) | exec p50 / p99, 100 streaming (ms) | aggregate stream rate |
|---|---|---|---|---|---|---|---|---|
{}",
            crate::scale::EXECS,
            rows(runs)
        ));
    }

    pub fn disk(&mut self, d: &DiskRun) {
        let rate = |xs: &[f64]| {
            let r: Vec<f64> = xs.iter().map(|s| d.rootfs_bytes as f64 / s / 1e6).collect();
            fmt(stats(&r), "MB/s")
        };
        self.text.push_str(&format!(
            "
## Image disk build

A {:.0} MB rootfs (the busybox image, 190 incompressible 1 MiB files, 2,000 files of 4 KiB) as a
plain tarball to a raw ext4 disk: `bootstrap-iso disk` (extract, reproducible `mkfs.ext4 -d`,
timestamps pinned with debugfs), against `tar x` + `mkfs.ext4 -d` by hand at the same size; and
the toolchain to VMDK. Medians of {} runs; rates are rootfs bytes per second of wall time.

| | seconds | rootfs MB/s |
|---|---|---|
| `bootstrap-iso disk --format raw` | {} | {} |
| by hand: `tar x` + `mkfs.ext4 -d` | {} | {} |
| ratio toolchain / by hand (time, per run) | {} | |
| `bootstrap-iso disk --format vmdk` | {} | {} |
",
            d.rootfs_bytes as f64 / 1e6,
            d.toolchain_raw.len(),
            fmt(stats(&d.toolchain_raw), "s"),
            rate(&d.toolchain_raw),
            fmt(stats(&d.by_hand), "s"),
            rate(&d.by_hand),
            ratio(&d.toolchain_raw, &d.by_hand),
            fmt(stats(&d.toolchain_vmdk), "s"),
            rate(&d.toolchain_vmdk),
        ));
    }

    pub fn churn(&mut self, run: &ChurnRun) {
        self.text.push_str(&format!(
            "
## Churn soak

{} containers one after another through one `appliance serve` process (debug build, as the
QEMU tier runs it): each `docker run -d` of the busybox image (a real containerVM under TCG),
its first output seen in `docker logs`, `docker stop -t 5`, `docker rm`. The server's RSS
(/proc VmRSS), its open file descriptors, and TETHER_HOME's disk use (the loaded image and its
cached disk included) sampled before the first, after 10, every 50 and after the last. Cycles
that failed: {}. Seconds per cycle: {}.

| containers done | server RSS (KiB) | open fds | TETHER_HOME (KiB) | container dirs |
|---|---|---|---|---|
{}",
            run.cycle_s.len(),
            run.failures,
            fmt(stats(&run.cycle_s), "s"),
            crate::churn::rows(run)
        ));
    }

    pub fn layers(&mut self, l: &LayersRun) {
        let added = l.after_b.saturating_sub(l.after_a);
        let added_c = l.after_c.saturating_sub(l.after_b);
        let kib = |b: u64| format!("{:.0} KiB", b as f64 / 1024.0);
        self.text.push_str(&format!(
            "
## Layer store

One `appliance serve` process (debug build), the stock docker CLI, images made as `docker save`
archives by hand (`e2e::save_archive`).

**Sharing.** Image A: a base layer of {BASE_FILES} incompressible 1 MiB files ({:.1} MB tar), the
busybox layer, and a small layer (a {} KiB incompressible file and a line of text); image B: the
same two lower layers and a different small layer of the same shape. `docker load` A, then B;
TETHER_HOME/images measured after each (allocated blocks x 512: image records, the layer store's
qcow2 disks and `layer.json`s). B's layer's qcow2 split by `qemu-img map`: the guest clusters it
holds (its files and the ext4 metadata the apply wrote), the rest qcow2's own tables. Then image
C, the same two lower layers and a top layer of the same shape with a {} KiB file, loaded
third: the same fixed cost beside a larger layer.

| | disk use |
|---|---|
| TETHER_HOME/images after A ({} layers) | {} |
| after B too ({} layers) | {} |
| added by B | {} |
| B's own layer (tar) | {} |
| added / own layer | {:.2}x |
| added / base layer tar | {:.2}% |
| B's layer's qcow2 | {} |
| of it guest data (files {} KiB + 4 KiB, ext4 metadata the rest) | {} |
| of it qcow2 metadata (header, L1, refcounts, L2 tables) | {} |
| added by C | {} |
| C's own layer (tar) | {} |
| added / own layer (C) | {:.2}x |

**Boot, chain vs flattened.** The same root filesystem (busybox and {} layers of one 256 KiB
incompressible file and one text file each) as a {CHAIN_LAYERS}-layer image (an ext4 bottom disk
and {} qcow2 layers of 4 KiB clusters above it, the container's writable qcow2 on top), as a
one-layer image (one tar of the union, {:.1} MB: one ext4 disk), and as a second {CHAIN_LAYERS}-layer
image (one more text file) whose {} layers were re-clustered at 64 KiB after the load (`qemu-img
convert -B parent -o cluster_size=65536`: what the store built before). One untimed run of each
first (all print the same files and checksums). Then `docker run --rm IMAGE echo up`, the three
in turn (the order rotating), {} runs each; wall time from spawning the CLI to the first stdout
byte and to the CLI's exit (the container removed).

| | first byte | exit |
|---|---|---|
| {CHAIN_LAYERS}-layer chain, 4 KiB clusters | {} | {} |
| {CHAIN_LAYERS}-layer chain, 64 KiB clusters | {} | {} |
| flattened | {} | {} |
| ratio chain (4 KiB) / flat (per run) | {} | {} |
| ratio chain (64 KiB) / flat (per run) | {} | {} |
",
            l.base_tar as f64 / 1e6,
            SMALL_BYTES >> 10,
            LARGER_BYTES >> 10,
            l.layers_a,
            kib(l.after_a),
            l.layers_b,
            kib(l.after_b),
            kib(added),
            kib(l.b_own_tar),
            added as f64 / l.b_own_tar as f64,
            added as f64 * 100.0 / l.base_tar as f64,
            kib(l.b_disk),
            SMALL_BYTES >> 10,
            kib(l.b_disk_data),
            kib(l.b_disk.saturating_sub(l.b_disk_data)),
            kib(added_c),
            kib(l.c_own_tar),
            added_c as f64 / l.c_own_tar as f64,
            CHAIN_LAYERS - 1,
            CHAIN_LAYERS - 1,
            l.rootfs_tar as f64 / 1e6,
            CHAIN_LAYERS - 1,
            l.chain_first.len(),
            fmt(stats(&l.chain_first), "ms"),
            fmt(stats(&l.chain_exit), "ms"),
            fmt(stats(&l.wide_first), "ms"),
            fmt(stats(&l.wide_exit), "ms"),
            fmt(stats(&l.flat_first), "ms"),
            fmt(stats(&l.flat_exit), "ms"),
            ratio(&l.chain_first, &l.flat_first),
            ratio(&l.chain_exit, &l.flat_exit),
            ratio(&l.wide_first, &l.flat_first),
            ratio(&l.wide_exit, &l.flat_exit),
        ));
    }

    pub fn net(&mut self, n: &NetRun) {
        let (s, d) = (&n.fixed, &n.dhcp);
        // No ratio where the static side is about nothing (the wait for a lease).
        let row = |what: &str, a: &[f64], b: &[f64], with_ratio: bool| {
            format!(
                "| {what} | {} | {} | {} |\n",
                fmt(stats(a), "ms"),
                fmt(stats(b), "ms"),
                if with_ratio {
                    ratio(b, a)
                } else {
                    "–".into()
                }
            )
        };
        self.text.push_str(&format!(
            "
## Boot to network-ready

One containerVM (`echo up`) with one virtio-net NIC on QEMU's user-mode network (root-bus slot 8,
trust level `published`, as the engine's default network), booted {} times each way, the two
interleaved with the order alternating: **static** (10.0.2.15/24, gateway 10.0.2.2, the address
QEMU's DHCP server gives) and **DHCP** (tether's client against QEMU's server: discover, offer,
request, ack). Stages are tether's `Timing` records (guest CLOCK_BOOTTIME, ms since the kernel
started): `network_up` when the NIC is found by its slot, renamed, up, addressed, routed and the
firewall loaded (for DHCP: link up, the address comes later); `network_ready` when the agent
has its first lease (static: none to wait for) and the sessions may start. `root_ready` →
`network_ready` holds the agent's own start too (its runtime, the channel task), the same both
ways; the DHCP exchange is the difference. `disk_found` → `network_ready` leaves out the kernel's
boot, which varies most on this shared machine. Debug build of the bench and appliance (the
guest's figures are the static release tether's either way).

| | static | DHCP | ratio DHCP / static (per run) |
|---|---|---|---|
{}{}{}{}{}",
            s.ready.len(),
            row(
                "kernel start → `network_ready` (guest)",
                &s.ready,
                &d.ready,
                true
            ),
            row(
                "`disk_found` → `network_ready`",
                &s.from_disk,
                &d.from_disk,
                true
            ),
            row(
                "`disk_found` → `network_up`: link, addresses, routes, firewall",
                &s.up,
                &d.up,
                true
            ),
            row(
                "`root_ready` → `network_ready`: waiting for the lease",
                &s.wait,
                &d.wait,
                false
            ),
            row(
                "QEMU launch → first container byte at the server (host)",
                &s.first_byte,
                &d.first_byte,
                true
            ),
        ));
    }

    pub fn finish(mut self) -> String {
        self.text.push_str(
            "
## Not measured

KVM, where the probe above fails (this machine's /dev/kvm is a nested PVM device that hangs
ordinary guests); tether on Debian's stock kernel (its virtio, fw_cfg and ext4 drivers are
modules and tether loads none: a containerVM needs the kernel built from kernel-config/).
",
        );
        self.text
    }
}

/// Small rates need more than one decimal.
fn fmt_small(xs: &[f64]) -> String {
    let s = stats(xs);
    format!("{:.3} MB/s ({:.3}–{:.3})", s.median, s.min, s.max)
}
