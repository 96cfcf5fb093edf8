use super::ops::recording::Recording;
use super::*;
use guestinfo::network::ContainerNetwork;
use guestinfo::{PciSlot, TrustLevel};

fn spec_with(networks: Vec<(&str, NetworkEndpoint)>) -> ContainerSpec {
    ContainerSpec {
        id: "c0ffee".into(),
        networks: networks
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ..Default::default()
    }
}

fn static_endpoint() -> NetworkEndpoint {
    NetworkEndpoint {
        interface: "web".into(),
        slot: PciSlot::from_parts(0, 3, 0),
        static_ipv4: Some("10.9.0.5/24".parse().unwrap()),
        static_ipv6: vec!["fd00:9::5/64".parse().unwrap()],
        network: ContainerNetwork {
            gateway: Some("10.9.0.1/24".parse().unwrap()),
            gateway6: Some("fd00:9::1".parse().unwrap()),
            default: true,
            destinations: vec!["10.10.0.7/16".parse().unwrap()],
            nameservers: vec!["10.9.0.53".parse().unwrap()],
            aliases: vec!["db".into()],
            hosts: vec!["cache:10.9.0.7".into()],
            trust: TrustLevel::Closed,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn a_static_endpoint_is_renamed_addressed_routed_announced_and_firewalled() {
    let os = Recording::default().nic(&["0000:00:03.0"], "eth0", 2);
    let spec = spec_with(vec![("backend", static_endpoint())]);
    let eps = bring_up(&os, &spec).unwrap();
    assert_eq!(
        os.calls(),
        [
            "rename 2 web",
            "up 2",
            "addr-add 2 fd00:9::5/64",
            "route-add ::/0 via fd00:9::1 dev 2",
            "addr-add 2 10.9.0.5/24",
            "route-add 0.0.0.0/0 via 10.9.0.1 dev 2",
            "route-add 10.10.0.0/16 via 10.9.0.1 dev 2",
            "arp web 10.9.0.5",
            "firewall 1",
        ]
    );
    let st = status(&os, &eps);
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].interface, "web");
    assert_eq!(st[0].mac, "52:54:00:12:34:02");
    assert_eq!(st[0].ipv4, ["10.9.0.5/24"]);
    assert_eq!(st[0].ipv6, ["fd00:9::5/64"]);
    assert_eq!(st[0].gateway.as_deref(), Some("10.9.0.1"));
    assert_eq!(st[0].error, "");
    let fw = os.firewall.borrow().clone().unwrap();
    assert_eq!(fw.endpoints[0].interface, "web");
    assert!(!fw.endpoints[0].dhcp);
    assert_eq!(nameservers(&spec, &eps), ["10.9.0.53"]);
    assert_eq!(
        hosts_lines("box.example", &eps),
        [
            ("10.9.0.5".to_string(), "box.example box db".to_string()),
            ("fd00:9::5".to_string(), "box.example box db".to_string()),
            ("10.9.0.7".to_string(), "cache".to_string()),
        ]
    );
}

#[test]
fn a_missing_nic_is_a_boot_error_naming_the_slot() {
    let os = Recording::default().nic(&["0000:00:03.0"], "eth0", 2);
    let mut e = static_endpoint();
    e.slot = PciSlot::from_parts(0, 9, 0);
    let err = bring_up(&os, &spec_with(vec![("backend", e)])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "network \"backend\": no PCI device at PCI slot 9 (0000:00:09.0): /sys/bus/pci/devices/0000:00:09.0 does not exist; the VM has no NIC at the configured slot"
    );
    assert!(os.calls().is_empty());
}

#[test]
fn a_dhcp_endpoint_comes_up_without_an_address_then_follows_its_lease() {
    let os = Recording::default().nic(&["0000:00:11.0", "0000:01:00.0"], "eth0", 3);
    let mut e = static_endpoint();
    e.interface = String::new();
    e.slot = PciSlot::from_parts(1, 0, 0);
    e.static_ipv4 = None;
    e.static_ipv6.clear();
    e.network.gateway = None;
    e.network.gateway6 = None;
    e.network.nameservers.clear();
    e.network.destinations.clear();
    let spec = spec_with(vec![("bridge", e)]);
    let mut eps = bring_up(&os, &spec).unwrap();
    assert_eq!(os.calls(), ["up 3", "firewall 1"]);
    assert_eq!(eps[0].error, "DHCP: no lease yet");
    assert!(os.firewall.borrow().as_ref().unwrap().endpoints[0].dhcp);
    // Nothing known: the image's resolv.conf is not replaced by an empty one.
    assert!(nameservers(&spec, &eps).is_empty());
    os.calls.borrow_mut().clear();
    let lease = |a: &str| Some((a.parse().unwrap(), Some("10.0.2.2".parse().unwrap())));
    set_ipv4(&os, &mut eps[0], lease("10.0.2.15/24")).unwrap();
    // A renewal with the same address refreshes it and announces nothing.
    set_ipv4(&os, &mut eps[0], lease("10.0.2.15/24")).unwrap();
    // A new address replaces the old one.
    set_ipv4(&os, &mut eps[0], lease("10.0.2.16/24")).unwrap();
    // Expiry removes it.
    set_ipv4(&os, &mut eps[0], None).unwrap();
    assert_eq!(
        os.calls(),
        [
            "addr-add 3 10.0.2.15/24",
            "route-add 0.0.0.0/0 via 10.0.2.2 dev 3",
            "arp eth0 10.0.2.15",
            "addr-add 3 10.0.2.15/24",
            "route-add 0.0.0.0/0 via 10.0.2.2 dev 3",
            "route-del 0.0.0.0/0 via 10.0.2.2 dev 3",
            "addr-del 3 10.0.2.15/24",
            "addr-add 3 10.0.2.16/24",
            "route-add 0.0.0.0/0 via 10.0.2.2 dev 3",
            "arp eth0 10.0.2.16",
            "route-del 0.0.0.0/0 via 10.0.2.2 dev 3",
            "addr-del 3 10.0.2.16/24",
        ]
    );
    assert!(os.addresses(3).unwrap().is_empty());
    // With no DNS from anywhere, the gateway is the last resort.
    set_ipv4(&os, &mut eps[0], lease("10.0.2.15/24")).unwrap();
    assert_eq!(nameservers(&spec, &eps), ["10.0.2.2"]);
    eps[0].lease_dns = vec!["10.0.2.3".parse().unwrap()];
    assert_eq!(nameservers(&spec, &eps), ["10.0.2.3"]);
}

#[test]
fn an_internal_network_gets_no_default_route_and_a_failed_call_names_its_step() {
    let os = Recording::default().nic(&["0000:00:03.0"], "eth0", 2);
    let mut e = static_endpoint();
    e.internal = true;
    e.static_ipv6.clear();
    e.network.gateway6 = None;
    bring_up(&os, &spec_with(vec![("backend", e.clone())])).unwrap();
    assert!(!os.calls().iter().any(|c| c.contains("0.0.0.0/0")));
    let mut os = Recording::default().nic(&["0000:00:03.0"], "eth0", 2);
    os.fail.insert("addr-add", libc::EADDRNOTAVAIL);
    let err = bring_up(&os, &spec_with(vec![("backend", e)])).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("network \"backend\" (web): adding 10.9.0.5/24:"),
        "{err}"
    );
}
