//! Tether's footprint: its RSS as an ordinary process (the same static binary the VMs boot),
//! idle and with ten sessions streaming.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance::store::records::NewContainer;
use e2e::Appliance;

use crate::util::rss;

/// tether (a static release binary, `bin`) as an ordinary process with one idle session, then
/// with ten sessions streaming: its RSS in KiB (idle VmRSS, peak VmHWM while streaming).
pub fn tether_memory(bin: &Path) -> (u64, u64) {
    let app = Appliance::start("bench-rss");
    let (rec, _) = appliance::store::records::create(
        &app.home,
        &NewContainer {
            args: vec!["/bin/sleep".into(), "30".into()],
            ..Default::default()
        },
    )
    .unwrap();
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

/// The tether binary this tree builds, and, with `BENCH_TETHER_BASELINE=PATH`, another one
/// (an older build) to measure beside it in the same run.
pub fn binaries() -> (PathBuf, Option<PathBuf>) {
    let ours = e2e::workspace().join("target/x86_64-unknown-linux-musl/release/tether");
    let baseline = std::env::var_os("BENCH_TETHER_BASELINE").map(PathBuf::from);
    (ours, baseline)
}
