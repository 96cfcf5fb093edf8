//! Boot to network-ready, a static address against a DHCP lease: the same containerVM with one
//! virtio-net NIC on QEMU's user-mode network (root-bus slot 8, trust level `published`, as the
//! engine's default network), once with the address QEMU's DHCP server would give (10.0.2.15/24,
//! gateway 10.0.2.2) configured statically and once by DHCP from that server. Interleaved, the
//! order alternating run by run.

use std::collections::BTreeMap;

use guestinfo::network::{ContainerNetwork, NetworkEndpoint};
use guestinfo::{PciSlot, TrustLevel};

use e2e::VmExtras;

use crate::guest::{boot_with, BootRun};

/// One kind of run's figures, ms: each list one value per run.
#[derive(Default)]
pub struct NetSide {
    /// Guest clock, kernel start to `network_ready` (the sessions may start).
    pub ready: Vec<f64>,
    /// `disk_found` to `network_ready`: the network's part of the boot and the root's mount,
    /// without the kernel's boot (which varies most on a shared machine).
    pub from_disk: Vec<f64>,
    /// `disk_found` to `network_up`: NIC found, renamed, up, addresses, routes, firewall.
    pub up: Vec<f64>,
    /// `root_ready` to `network_ready`: what the agent waits for (the first lease).
    pub wait: Vec<f64>,
    /// Host clock, QEMU launch to the first stdout byte at the server.
    pub first_byte: Vec<f64>,
}

pub struct NetRun {
    pub fixed: NetSide,
    pub dhcp: NetSide,
}

fn extras(static_addr: bool) -> VmExtras {
    let ep = NetworkEndpoint {
        interface: "eth0".into(),
        slot: PciSlot::from_parts(0, 8, 0),
        static_ipv4: static_addr.then(|| "10.0.2.15/24".parse().unwrap()),
        network: ContainerNetwork {
            name: "bridge".into(),
            gateway: static_addr.then(|| "10.0.2.2/24".parse().unwrap()),
            default: true,
            trust: TrustLevel::Published,
            ..Default::default()
        },
        ..Default::default()
    };
    let networks = BTreeMap::from([("bridge".to_string(), ep)]);
    VmExtras {
        spec: Some(Box::new(move |spec| spec.networks = networks)),
        qemu_args: [
            "-netdev",
            "user,id=n8",
            "-device",
            "virtio-net-pci,netdev=n8,bus=pcie.0,addr=0x8",
        ]
        .map(String::from)
        .to_vec(),
        wrapper: vec![],
    }
}

fn stage(run: &BootRun, name: &str) -> f64 {
    run.stages
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no `{name}` stage in {:?}", run.stages))
}

fn record(side: &mut NetSide, run: &BootRun) {
    side.ready.push(stage(run, "network_ready"));
    side.from_disk
        .push(stage(run, "network_ready") - stage(run, "disk_found"));
    side.up
        .push(stage(run, "network_up") - stage(run, "disk_found"));
    side.wait
        .push(stage(run, "network_ready") - stage(run, "root_ready"));
    side.first_byte.push(run.first_byte_ms);
}

pub fn network_boot(runs: usize) -> NetRun {
    let mut r = NetRun {
        fixed: NetSide::default(),
        dhcp: NetSide::default(),
    };
    for i in 0..runs {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for static_addr in order {
            let run = boot_with(extras(static_addr));
            let side = if static_addr {
                &mut r.fixed
            } else {
                &mut r.dhcp
            };
            record(side, &run);
        }
        eprintln!(
            "  net {i}: network_ready static {:.0} ms, DHCP {:.0} ms",
            r.fixed.ready[i], r.dhcp.ready[i]
        );
    }
    r
}
