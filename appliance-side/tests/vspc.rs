//! The vSPC (vSphere's network serial ports) against the real session server: a raw client, a
//! plain telnet client and an ESXi host whose VM is vMotioned mid-stream (completed, aborted,
//! completed again) by the host relay of `appliance::testing::vmotion`. Every byte of a
//! random stream (0xFF bytes included) must land once, over one server connection that never
//! saw a break.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use appliance::server::vspc::Vspc;
use appliance::store::logs::Stream;
use appliance::testing::vmotion::{HostKind, HostRelay, Outcome};
use common::*;

fn random_bytes(n: usize) -> Vec<u8> {
    // xorshift: reproducible, every byte value, 0xFF included.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The link counters of the container's boot: one connection, nothing lost or repaired.
fn assert_one_clean_connection(home: &TempHome, id: &str) {
    let link = &state(home, id)["link"];
    assert_eq!(link["connections"], 1, "{link}");
    for counter in ["frames_rejected", "bytes_dropped", "gaps", "retransmits"] {
        assert_eq!(link[counter], 0, "{counter}: {link}");
    }
}

#[test]
fn a_raw_client_and_a_plain_telnet_host_stream_every_byte() {
    let home = TempHome::new("vspc-plain");
    let rt = runtime();
    let server = start_server(&rt, &home);
    let (_vspc, addr) = rt.block_on(Vspc::listen(&server, "127.0.0.1:0")).unwrap();
    let data = random_bytes(300_000);
    // A client that speaks no telnet (QEMU's client socket): relayed raw.
    let (raw_id, secret) = simulated_container(&home);
    rt.block_on(async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        simulated_tether_on(s, raw_id.clone(), secret, data.clone()).await;
    });
    // A telnet client without VMware's extension: binary mode, IAC doubled.
    let (plain_id, secret) = simulated_container(&home);
    rt.block_on(async {
        let (relay, _) = HostRelay::listen(addr, HostKind::PlainTelnet).await;
        let (vm, host) = tokio::io::duplex(64 * 1024);
        let (rd, wr) = tokio::io::split(host);
        relay.attach(rd, wr).await;
        simulated_tether_on(vm, plain_id.clone(), secret, data.clone()).await;
    });
    for id in [&raw_id, &plain_id] {
        wait_for("the exit is stored", 10, || {
            state(&home, id)["sessions"]["1"]["exit_code"] == 0
        });
        assert_eq!(
            sha256_hex(&main_log(&home, id, Stream::Stdout)),
            sha256_hex(&data)
        );
        assert_one_clean_connection(&home, id);
    }
}

#[test]
fn vmotions_mid_stream_keep_the_channel_whole_and_an_abort_keeps_it_relaying() {
    let home = TempHome::new("vspc-vmotion");
    let rt = runtime();
    let server = start_server(&rt, &home);
    let mut news = server.lifecycle();
    let (vspc, addr) = rt.block_on(Vspc::listen(&server, "127.0.0.1:0")).unwrap();
    let data = random_bytes(6 << 20);
    let (id, secret) = simulated_container(&home);
    let relay: Arc<HostRelay> = rt.block_on(async {
        let (relay, _) = HostRelay::listen(addr, HostKind::Esxi).await;
        relay
    });
    let (vm, host) = tokio::io::duplex(64 * 1024);
    let guest = {
        let relay = relay.clone();
        let data = data.clone();
        let id = id.clone();
        rt.spawn(async move {
            let (rd, wr) = tokio::io::split(host);
            relay.attach(rd, wr).await;
            simulated_tether_on(vm, id, secret, data).await;
        })
    };
    // Three vMotions while the stream runs: completed, aborted, completed.
    for (at, outcome) in [
        (1 << 20, Outcome::Complete),
        (5 << 19, Outcome::Abort),
        (4 << 20, Outcome::Complete),
    ] {
        wait_for("the stream reaches the next vMotion", 60, || {
            relay.relayed.load(Ordering::Relaxed) >= at
        });
        rt.block_on(relay.vmotion(outcome)).unwrap();
    }
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), guest).await })
        .expect("the stream ends")
        .unwrap();
    wait_for("the exit is stored", 10, || {
        state(&home, &id)["sessions"]["1"]["exit_code"] == 0
    });
    assert_eq!(
        sha256_hex(&main_log(&home, &id, Stream::Stdout)),
        sha256_hex(&data),
        "every byte once, in order"
    );
    assert_one_clean_connection(&home, &id);
    assert_eq!(vspc.stats.vmotions_begun.load(Ordering::Relaxed), 3);
    assert_eq!(vspc.stats.vmotions_completed.load(Ordering::Relaxed), 2);
    assert_eq!(vspc.stats.vmotions_aborted.load(Ordering::Relaxed), 1);
    assert_eq!(vspc.stats.held_bytes_dropped.load(Ordering::Relaxed), 0);
    assert_eq!(vspc.stats.ports.load(Ordering::Relaxed), 1);
    let mut connected = 0;
    while let Ok(n) = news.try_recv() {
        if matches!(n, appliance::server::Lifecycle::Connected { .. }) {
            connected += 1;
        }
    }
    assert_eq!(
        connected, 1,
        "the server saw one handshake: the vMotions were invisible to it"
    );
}
