//! vSphere's network serial port under QEMU: the containerVM's COM port as a telnet client of
//! the appliance's vSPC, straight (QEMU's client socket speaks no telnet: relayed raw) and
//! through a host relay that plays ESXi's VMX (telnet, VMware's extension) and vMotions the VM
//! mid-stream: once to a second connection, once aborted, once more to a third. The container's
//! output, random bytes (0xFF included), reaches an attached `docker attach` byte for byte, and
//! the server's one connection never saw a break.

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use appliance::store::records::NewContainer;
use appliance::testing::vmotion::{HostKind, HostRelay, Outcome};
use e2e::{sh, text, Appliance, Transport};
use sha2::{Digest, Sha256};

/// 256 KiB of random data, its sha256 on stderr, then the data on stdout in 32 paced chunks.
const SCRIPT: &str = "head -c 262144 /dev/urandom > /tmp/d && sha256sum /tmp/d >&2 && \
    i=0; while [ $i -lt 32 ]; do dd if=/tmp/d bs=8192 skip=$i count=1 2>/dev/null; \
    i=$((i+1)); sleep 0.1; done";

fn attached_container(name: &str) -> NewContainer {
    NewContainer {
        name: Some(name.into()),
        // The process starts at the first attach: the client sees every byte.
        attach: true,
        ..sh(SCRIPT)
    }
}

/// `docker attach NAME`, started once the container's channel is up; its stdout is read on a
/// thread as it comes (the count shared).
struct Attached {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl Attached {
    fn start(app: &Appliance, id: &str, name: &str) -> Self {
        app.wait_status(id, 90, "running");
        let mut child = app
            .docker_command(&["attach", name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            out.read_to_end(&mut all).unwrap();
            all
        });
        Self { child, reader }
    }

    /// Waits for the attach to end: (its stdout, the sha256 the container printed, exit code).
    fn finish(mut self) -> (Vec<u8>, String, i32) {
        let start = Instant::now();
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "docker attach never ended"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let stdout = self.reader.join().unwrap();
        let hash = err
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        (stdout, hash, code)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The container's link counters: one connection, nothing lost, nothing resent.
fn assert_one_clean_connection(app: &Appliance, id: &str) {
    let link = &app.state(id)["link"];
    assert_eq!(link["connections"], 1, "{link}");
    for counter in ["bytes_dropped", "gaps", "retransmits"] {
        assert_eq!(link[counter], 0, "{counter}: {link}");
    }
}

#[test]
fn a_com_port_as_a_telnet_client_straight_into_the_vspc() {
    let mut app = Appliance::start("vspc-com");
    let (vspc, addr) = app.start_vspc();
    let id = app.run_on(
        attached_container("com"),
        Transport::ComTo { addr, telnet: true },
        "containerfs",
    );
    let attached = Attached::start(&app, &id, "com");
    let (stdout, hash, code) = attached.finish();
    assert_eq!(code, 0);
    assert_eq!(stdout.len(), 262_144);
    assert_eq!(
        sha256_hex(&stdout),
        hash,
        "the container's bytes, every one"
    );
    assert_eq!(vspc.stats.ports.load(Ordering::Relaxed), 1);
    assert_eq!(app.wait_vms_off(60), vec![0]);
}

#[test]
fn vmotions_under_an_attached_client_complete_abort_and_complete_without_a_break() {
    let mut app = Appliance::start("vspc-vmotion");
    let (vspc, addr) = app.start_vspc();
    let (relay, relay_addr) = app.block_on(HostRelay::listen(addr, HostKind::Esxi));
    let id = app.run_on(
        attached_container("moving"),
        Transport::ComTo {
            addr: relay_addr,
            telnet: false,
        },
        "containerfs",
    );
    let attached = Attached::start(&app, &id, "moving");
    for (at, outcome) in [
        (60_000, Outcome::Complete),
        (120_000, Outcome::Abort),
        (180_000, Outcome::Complete),
    ] {
        let start = Instant::now();
        while relay.relayed.load(Ordering::Relaxed) < at {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "the stream stalled before {at} bytes; console:\n{}",
                app.console(&id)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        app.block_on(relay.vmotion(outcome)).unwrap();
    }
    let (stdout, hash, code) = attached.finish();
    assert_eq!(code, 0, "docker attach returns the container's code");
    assert_eq!(stdout.len(), 262_144);
    assert_eq!(
        sha256_hex(&stdout),
        hash,
        "sha256-identical across three vMotions"
    );
    assert_one_clean_connection(&app, &id);
    assert_eq!(vspc.stats.vmotions_completed.load(Ordering::Relaxed), 2);
    assert_eq!(vspc.stats.vmotions_aborted.load(Ordering::Relaxed), 1);
    assert!(text(&app.docker(&["logs", "moving"]).stderr).contains("/tmp/d"));
    assert_eq!(app.wait_vms_off(60), vec![0]);
}
