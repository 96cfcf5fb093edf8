//! Container networks, the guest half (issue 15): NICs found by PCI slot, DHCP from QEMU's
//! user-mode server and from dnsmasq (renewed at T1), static addresses and routes, the firewall
//! per trust level, and the report tether sends back. Traffic stays in QEMU user mode (its
//! 10.0.2.2 is the host's loopback) or in network namespaces these tests create and remove.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guestinfo::network::{ContainerNetwork, NetworkEndpoint};
use guestinfo::{PciSlot, TrustLevel};

use e2e::netns::NetNs;
use e2e::{named_sh, text, Appliance, VmExtras};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One endpoint on network `name` at `slot`, DHCP unless `ip` is given.
fn endpoint(
    interface: &str,
    slot: PciSlot,
    ip: Option<&str>,
    gateway: Option<&str>,
) -> NetworkEndpoint {
    NetworkEndpoint {
        interface: interface.into(),
        slot,
        static_ipv4: ip.map(|a| a.parse().unwrap()),
        network: ContainerNetwork {
            name: interface.into(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            default: true,
            trust: TrustLevel::Open,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn extras(networks: Vec<(&str, NetworkEndpoint)>, qemu_args: Vec<String>) -> VmExtras {
    let networks: BTreeMap<String, NetworkEndpoint> = networks
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    VmExtras {
        spec: Some(Box::new(move |spec| spec.networks = networks)),
        qemu_args,
        wrapper: vec![],
    }
}

/// A user-mode NIC at root-bus slot `dev`.
fn user_nic(dev: u32, extra: &str) -> Vec<String> {
    args(&[
        "-netdev",
        &format!("user,id=n{dev}{extra}"),
        "-device",
        &format!("virtio-net-pci,netdev=n{dev},bus=pcie.0,addr={dev:#x}"),
    ])
}

fn network_report(app: &Appliance, id: &str) -> serde_json::Value {
    app.state(id)["network"].clone()
}

#[test]
fn a_dhcp_lease_from_qemu_user_mode_is_reported_as_ip_addr_shows_it() {
    let mut app = Appliance::start("net-dhcp");
    let mut ep = endpoint("bridge", PciSlot::from_parts(0, 8, 0), None, None);
    ep.network.trust = TrustLevel::Published;
    let id = app.run_with(
        named_sh(
            "dhcp",
            "ip -4 -o addr show dev bridge; ip route; cat /etc/resolv.conf; ls /sys/class/net",
        ),
        extras(vec![("bridge", ep)], user_nic(8, "")),
    );
    app.wait_exit(&id, 120, 0);
    let logs = app.logs("dhcp");
    let report = network_report(&app, &id);
    let ep = &report[0];
    assert_eq!(ep["network"], "bridge", "{report}");
    assert_eq!(ep["interface"], "bridge");
    assert_eq!(ep["ipv4"][0], "10.0.2.15/24", "{report}");
    assert_eq!(ep["gateway"], "10.0.2.2");
    assert_eq!(ep["nameservers"][0], "10.0.2.3");
    assert_eq!(ep["lease"]["server"], "10.0.2.2");
    assert!(ep["lease"]["lease_secs"].as_u64().unwrap() > 0);
    assert_eq!(ep["error"], "");
    // What tether reported is what the interface has.
    let shown = logs
        .lines()
        .find(|l| l.contains(" inet "))
        .unwrap_or_else(|| panic!("no address shown: {logs}"));
    assert!(
        shown.contains(&format!("inet {} ", ep["ipv4"][0].as_str().unwrap())),
        "{shown} vs {report}"
    );
    assert!(logs.contains("default via 10.0.2.2 dev bridge"), "{logs}");
    assert!(logs.contains("nameserver 10.0.2.3"), "{logs}");
    // Only the NIC and lo (the kernel has no SIT driver, whose sit0 would be here too).
    assert!(logs.ends_with("bridge\nlo\n"), "{logs}");
    let mac = ep["mac"].as_str().unwrap();
    assert_eq!(mac.len(), 17, "{mac}");
}

#[test]
fn a_static_address_behind_a_pci_bridge_routes_by_default_through_its_gateway() {
    let mut app = Appliance::start("net-static");
    // A file on the host's loopback, which QEMU user mode shows the guest as 10.0.2.2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nfrom-the-lan");
    });
    let slot = PciSlot::from_parts(1, 3, 0);
    let ep = endpoint("lan", slot, Some("10.0.2.77/24"), Some("10.0.2.2/24"));
    let mut qemu = args(&[
        "-device",
        "pci-bridge,id=br1,bus=pcie.0,addr=0x11,chassis_nr=1",
        "-netdev",
        "user,id=n1",
        "-device",
        "virtio-net-pci,netdev=n1,bus=br1,addr=0x3",
    ]);
    qemu.extend(args(&[]));
    let id = app.run_with(
        named_sh(
            "static",
            &format!(
                "ip -o addr show dev lan; ip route; wget -q -O - http://10.0.2.2:{port}/; echo"
            ),
        ),
        extras(vec![("lan", ep)], qemu),
    );
    app.wait_exit(&id, 120, 0);
    server.join().unwrap();
    let logs = app.logs("static");
    assert!(logs.contains("inet 10.0.2.77/24"), "{logs}");
    assert!(logs.contains("default via 10.0.2.2 dev lan"), "{logs}");
    assert!(logs.contains("from-the-lan"), "{logs}");
    let report = network_report(&app, &id);
    assert_eq!(report[0]["ipv4"][0], "10.0.2.77/24", "{report}");
    assert_eq!(report[0]["interface"], "lan");
    assert!(report[0]["lease"].is_null());
}

#[test]
fn a_nic_missing_at_its_slot_fails_the_start_with_125_naming_the_slot() {
    let mut app = Appliance::start("net-noslot");
    let ep = endpoint("ghost", PciSlot::from_parts(0, 9, 0), None, None);
    let id = app.run_with(
        named_sh("noslot", "true"),
        extras(vec![("ghost", ep)], vec![]),
    );
    app.wait_status(&id, 120, "failed");
    let out = app.inspect("noslot", "{{.State.ExitCode}}|{{.State.Error}}");
    assert!(out.starts_with("125|"), "{out}");
    assert!(out.contains("PCI slot 9 (0000:00:09.0)"), "{out}");
    assert!(out.contains("\"ghost\""), "{out}");
    app.powered_off_console(&id, 60);
}

#[test]
fn network_none_has_only_lo() {
    let mut app = Appliance::start("net-none");
    // Every interface, every one that is not down, and every address: lo alone (no sit0: the
    // kernel has no SIT driver).
    let id = app.run_with(
        named_sh(
            "none",
            "ls /sys/class/net; for i in /sys/class/net/*; do [ \"$(cat $i/operstate)\" = down ] || echo ${i##*/}; done; ip -o addr show | cut -d' ' -f2 | sort -u",
        ),
        extras(vec![], vec![]),
    );
    app.wait_exit(&id, 120, 0);
    assert_eq!(app.logs("none"), "lo\nlo\nlo\n");
    assert_eq!(network_report(&app, &id), serde_json::json!([]));
}

/// A tap NIC in `ns` at root slot 8 with a fixed MAC.
fn tap_nic() -> Vec<String> {
    args(&[
        "-netdev",
        "tap,id=t0,ifname=tap0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=t0,bus=pcie.0,addr=0x8,mac=52:54:00:00:77:08",
    ])
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_dnsmasq_lease_is_renewed_at_t1_and_the_address_kept_across_three_renewals() {
    let mut app = Appliance::start("net-renew");
    let mut ns = NetNs::new("renew", 77);
    // dnsmasq's shortest lease is two minutes; T1 at 20 s makes the renewals come quickly.
    let log = ns.dnsmasq(app.home.root(), "2m", 20, 40);
    let mut ep = endpoint("eth0", PciSlot::from_parts(0, 8, 0), None, None);
    ep.network.trust = TrustLevel::Published;
    let mut x = extras(vec![("lan", ep)], tap_nic());
    x.wrapper = ns.wrapper();
    let id = app.run_with(named_sh("renew", "while :; do sleep 1; done"), x);
    app.wait_status(&id, 120, "running");
    let mut seen: Vec<(String, u64)> = Vec::new();
    wait_until("three renewals", 240, || {
        let r = network_report(&app, &id);
        if let (Some(addr), Some(at)) = (
            r[0]["ipv4"][0].as_str(),
            r[0]["lease"]["obtained_unix"].as_u64(),
        ) {
            if seen.last().map(|(_, t)| *t) != Some(at) {
                seen.push((addr.to_string(), at));
            }
        }
        seen.len() >= 4
    });
    let first = &seen[0].0;
    assert!(first.starts_with("10.77.0."), "{seen:?}");
    assert!(
        seen.iter().all(|(a, _)| a == first),
        "address changed: {seen:?}"
    );
    let report = network_report(&app, &id);
    assert_eq!(report[0]["lease"]["renew_secs"], 20, "{report}");
    assert_eq!(report[0]["lease"]["server"], ns.gateway.as_str());
    let dnsmasq = std::fs::read_to_string(&log).unwrap();
    let acks = dnsmasq
        .lines()
        .filter(|l| l.contains("DHCPACK(br0)"))
        .count();
    assert!(acks >= 4, "{dnsmasq}");
    // A stop releases the lease.
    assert!(app.docker(&["stop", "-t", "2", "renew"]).status.success());
    wait_until("the release", 60, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("DHCPRELEASE(br0)")
    });
}

/// A containerVM in `ns` at `10.N.0.5` with trust `trust` and `ports` published, serving
/// HTTP on ports 80 and 81.
fn firewalled(
    app: &mut Appliance,
    ns: &NetNs,
    name: &str,
    trust: TrustLevel,
    ports: &[&str],
) -> String {
    let addr = format!("{}.5/24", ns.prefix);
    let gw = format!("{}/24", ns.gateway);
    let mut ep = endpoint("eth0", PciSlot::from_parts(0, 8, 0), Some(&addr), Some(&gw));
    ep.network.trust = trust;
    ep.ports = ports.iter().map(|p| p.parse().unwrap()).collect();
    let mut x = extras(vec![("lan", ep)], tap_nic());
    x.wrapper = ns.wrapper();
    let id = app.run_with(
        named_sh(
            name,
            "mkdir -p /www && echo served > /www/index.html && httpd -p 80 -h /www && httpd -p 81 -h /www && echo up; while :; do sleep 1; done",
        ),
        x,
    );
    app.wait_for(&id, 120, |_| app.logs(name).contains("up"));
    id
}

/// `curl`'s exit code for `http://ADDR:PORT/` from inside the namespace (0: it answered, 7:
/// connection refused, 28: timed out).
fn curl_from(ns: &NetNs, port: u16) -> i32 {
    let out = ns
        .command("curl")
        .args(["-s", "-m", "10", "-o", "/dev/null"])
        .arg(format!("http://{}.5:{port}/", ns.prefix))
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn trust_closed_refuses_inbound_connections_while_outbound_ones_work() {
    let mut app = Appliance::start("net-closed");
    let mut ns = NetNs::new("closed", 78);
    let www = app.home.root().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from-the-namespace\n").unwrap();
    let listen = format!("{}:8000", ns.gateway);
    ns.spawn(
        "busybox",
        &["httpd", "-f", "-p", &listen, "-h", www.to_str().unwrap()],
    );
    firewalled(&mut app, &ns, "closed", TrustLevel::Closed, &["80/tcp"]);
    assert_eq!(curl_from(&ns, 80), 7, "port 80 must be refused");
    assert_eq!(curl_from(&ns, 81), 7, "port 81 must be refused");
    let out = app.docker(&[
        "exec",
        "closed",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{listen}/"),
    ]);
    assert_eq!(
        text(&out.stdout),
        "from-the-namespace\n",
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn trust_published_lets_only_the_published_port_answer() {
    let mut app = Appliance::start("net-published");
    let ns = NetNs::new("published", 79);
    firewalled(&mut app, &ns, "pub", TrustLevel::Published, &["80/tcp"]);
    assert_eq!(curl_from(&ns, 80), 0, "the published port answers");
    assert_eq!(curl_from(&ns, 81), 7, "an unpublished port is refused");
    // Open lets both in.
    let mut app2 = Appliance::start("net-open");
    drop(ns);
    let ns = NetNs::new("open", 80);
    firewalled(&mut app2, &ns, "open", TrustLevel::Open, &[]);
    assert_eq!(curl_from(&ns, 80), 0);
    assert_eq!(curl_from(&ns, 81), 0);
}
