//! The `networks` map: VIC-style key sets, malformed ones, and encode/decode round trips.

use std::net::IpAddr;

use guestinfo::network::{Cidr, ContainerNetwork, NetworkEndpoint, PciSlot, PortRange, Protocol};
use guestinfo::{spec_from_vmx, spec_to_vmx, ContainerSpec, SessionSpec, TrustLevel};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

const BASE: &str = r#"
guestinfo.vice./common/id = "c0ffee"
guestinfo.vice./channel/secret@secret = "c2VjcmV0"
guestinfo.vice./sessions = "c0ffee"
guestinfo.vice./sessions|c0ffee/cmd/Path = "/bin/sh"
"#;

const VIC_STYLE: &str = r#"
guestinfo.vice./networks = "bridge|7Cbackend"
guestinfo.vice./networks|bridge/common/id = "192"
guestinfo.vice./networks|bridge/common/name = "bridge"
guestinfo.vice./networks|bridge/static = "false"
guestinfo.vice./networks|bridge/ip = "<nil>"
guestinfo.vice./networks|bridge/ports = "1"
guestinfo.vice./networks|bridge/ports~ = "80/tcp|7C53/udp"
guestinfo.vice./networks|bridge/network/common/name = "bridge"
guestinfo.vice./networks|bridge/network/default = "true"
guestinfo.vice./networks|bridge/network/gateway = "172.16.0.1/16"
guestinfo.vice./networks|bridge/network/dns = "0"
guestinfo.vice./networks|bridge/network/dns~ = "172.16.0.1"
guestinfo.vice./networks|backend/common/id = "1184"
guestinfo.vice./networks|backend/common/name = "backend"
guestinfo.vice./networks|backend/static = "true"
guestinfo.vice./networks|backend/ip = "10.9.0.5/24"
guestinfo.vice./networks|backend/ip6 = "0"
guestinfo.vice./networks|backend/ip6~ = "fd00:9::5/64"
guestinfo.vice./networks|backend/network/destinations = "0"
guestinfo.vice./networks|backend/network/destinations~ = "10.10.0.0/16"
guestinfo.vice./networks|backend/network/gateway = "10.9.0.1/24"
guestinfo.vice./networks|backend/network/aliases = "1"
guestinfo.vice./networks|backend/network/aliases~ = "db|7Cprimary"
guestinfo.vice./networks|backend/network/hosts = "0"
guestinfo.vice./networks|backend/network/hosts~ = "cache:10.9.0.7"
guestinfo.vice./networks|backend/network/trust = "peers"
"#;

#[test]
fn decodes_vic_style_endpoints() {
    let spec = spec_from_vmx(&format!("{BASE}{VIC_STYLE}")).unwrap();
    assert_eq!(spec.networks.len(), 2);
    let bridge = &spec.networks["bridge"];
    assert_eq!(bridge.slot, PciSlot(192));
    assert_eq!(bridge.slot.sysfs_steps(), ["0000:00:16.0", "0000:*:00.0"]);
    assert!(bridge.is_dhcp());
    assert!(bridge.network.default);
    assert_eq!(bridge.network.trust, TrustLevel::Published);
    assert_eq!(
        bridge.network.gateway,
        Some("172.16.0.1/16".parse().unwrap())
    );
    assert_eq!(
        bridge.ports,
        [
            PortRange {
                first: 80,
                last: 80,
                protocol: Protocol::Tcp
            },
            PortRange {
                first: 53,
                last: 53,
                protocol: Protocol::Udp
            }
        ]
    );
    let backend = &spec.networks["backend"];
    assert_eq!(backend.static_ipv4, Some("10.9.0.5/24".parse().unwrap()));
    assert_eq!(backend.static_ipv6, ["fd00:9::5/64".parse().unwrap()]);
    assert!(!backend.network.default);
    assert_eq!(backend.network.aliases, ["db", "primary"]);
    assert_eq!(backend.network.hosts, ["cache:10.9.0.7"]);
    assert_eq!(backend.network.trust, TrustLevel::Peers);
    // No networks: only lo.
    assert!(spec_from_vmx(BASE).unwrap().networks.is_empty());
}

fn err_of(extra: &str) -> String {
    spec_from_vmx(&format!("{BASE}{extra}"))
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_endpoints_name_the_key() {
    let one = |lines: &str| format!("guestinfo.vice./networks = \"n\"\n{lines}");
    let slot = "guestinfo.vice./networks|n/common/id = \"3\"\n";
    assert!(err_of(&one("")).contains("`guestinfo.vice./networks|n/common/id`: required"));
    assert!(
        err_of(&one("guestinfo.vice./networks|n/common/id = \"9000\"\n")).contains("pciSlotNumber")
    );
    let cases = [
        ("guestinfo.vice./networks|n/ip = \"10.0.0.1\"\n", "networks|n/ip`"),
        ("guestinfo.vice./networks|n/ip = \"fd00::1/64\"\n", "ip6"),
        ("guestinfo.vice./networks|n/static = \"true\"\n", "no address"),
        (
            "guestinfo.vice./networks|n/common/name = \"a-very-long-ifname\"\n",
            "at most 15 bytes",
        ),
        (
            "guestinfo.vice./networks|n/network/trust = \"trusted\"\n",
            "unknown trust level",
        ),
        (
            "guestinfo.vice./networks|n/ports = \"0\"\nguestinfo.vice./networks|n/ports~ = \"http\"\n",
            "not a port",
        ),
        (
            "guestinfo.vice./networks|n/network/hosts = \"0\"\nguestinfo.vice./networks|n/network/hosts~ = \"nocolon\"\n",
            "NAME:ADDR",
        ),
        (
            "guestinfo.vice./networks|n/network/gateway6 = \"10.0.0.1\"\n",
            "not an IPv6",
        ),
    ];
    for (line, want) in cases {
        let e = err_of(&one(&format!("{slot}{line}")));
        assert!(e.contains(want), "{line}: {e}");
    }
    let two = "guestinfo.vice./networks = \"a|7Cb\"\nguestinfo.vice./networks|a/common/id = \"3\"\nguestinfo.vice./networks|b/common/id = \"3\"\n";
    assert!(err_of(two).contains("its own vNIC"), "{}", err_of(two));
}

fn ipv4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(IpAddr::from)
}

fn ipv6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(IpAddr::from)
}

fn cidr4() -> impl Strategy<Value = Cidr> {
    (ipv4(), 0u8..=32).prop_map(|(addr, prefix)| Cidr { addr, prefix })
}

fn cidr6() -> impl Strategy<Value = Cidr> {
    (ipv6(), 0u8..=128).prop_map(|(addr, prefix)| Cidr { addr, prefix })
}

fn port() -> impl Strategy<Value = PortRange> {
    (1u16.., 0u16..100, any::<bool>()).prop_map(|(first, span, udp)| PortRange {
        first,
        last: first.saturating_add(span),
        protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
    })
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9|\\\\ü-]{0,12}"
}

fn endpoint() -> impl Strategy<Value = NetworkEndpoint> {
    let network = (
        (name(), name(), name()),
        proptest::option::of(cidr4()),
        proptest::option::of(ipv6()),
        any::<bool>(),
        vec(prop_oneof![cidr4(), cidr6()], 0..3),
        vec(prop_oneof![ipv4(), ipv6()], 0..3),
        vec(cidr4(), 0..2),
        (vec(name(), 0..3), vec("[a-z]{1,5}:[0-9a-f.:]{1,9}", 0..3)),
        proptest::sample::select(TrustLevel::ALL.to_vec()),
    )
        .prop_map(
            |(
                (name, id, kind),
                gateway,
                gateway6,
                default,
                destinations,
                nameservers,
                pools,
                (aliases, hosts),
                trust,
            )| ContainerNetwork {
                name,
                id,
                kind,
                gateway,
                gateway6,
                default,
                destinations,
                nameservers,
                pools,
                aliases,
                hosts,
                trust,
            },
        );
    (
        "[a-z0-9_.-]{0,15}",
        0u32..(1 << 13),
        proptest::option::of(cidr4()),
        vec(cidr6(), 0..3),
        network,
        vec(port(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(interface, slot, static_ipv4, static_ipv6, network, ports, internal)| {
                NetworkEndpoint {
                    interface: if interface == "." || interface == ".." {
                        String::new()
                    } else {
                        interface
                    },
                    slot: PciSlot(slot),
                    static_ipv4,
                    static_ipv6,
                    network,
                    ports,
                    internal,
                }
            },
        )
}

proptest! {
    #[test]
    fn endpoints_round_trip(networks in btree_map("[a-zA-Z0-9][a-zA-Z0-9_.-]{0,8}", endpoint(), 0..4)) {
        // Each endpoint needs its own slot.
        let networks: std::collections::BTreeMap<_, _> = networks
            .into_iter()
            .enumerate()
            .map(|(i, (k, mut e))| {
                e.slot = PciSlot((e.slot.0 & !0x1f) | i as u32);
                (k, e)
            })
            .collect();
        let main = SessionSpec {
            id: "c0ffee".into(),
            path: "/bin/sh".into(),
            args: vec!["/bin/sh".into()],
            dir: "/".into(),
            stop_signal: "SIGTERM".into(),
            ..Default::default()
        };
        let spec = ContainerSpec {
            id: "c0ffee".into(),
            secret: b"s".to_vec(),
            networks,
            sessions: [("c0ffee".to_string(), main)].into(),
            ..Default::default()
        };
        let text = spec_to_vmx(&spec);
        prop_assert_eq!(spec_from_vmx(&text).unwrap(), spec);
    }
}

/// A hot-added NIC's endpoint travels alone (`Control::NetworkAdd`): the same keys, decoded by
/// the same code, and anything but exactly one endpoint is refused.
#[test]
fn one_endpoint_round_trips_alone() {
    let spec = spec_from_vmx(&format!("{BASE}{VIC_STYLE}")).unwrap();
    let backend = spec.networks["backend"].clone();
    let text = guestinfo::endpoint_to_vmx("backend", &backend);
    assert!(text.contains("networks|backend/common/id"), "{text}");
    assert_eq!(
        guestinfo::endpoint_from_vmx(&text).unwrap(),
        ("backend".to_string(), backend)
    );
    let e = guestinfo::endpoint_from_vmx(VIC_STYLE).unwrap_err();
    assert!(e.to_string().contains("2 given"), "{e}");
    let e = guestinfo::endpoint_from_vmx("").unwrap_err();
    assert!(e.to_string().contains("0 given"), "{e}");
}
