//! A vNIC found by its PCI slot, as VIC's `slotToPCIPath` + `pciToLinkName` find it:
//! `/sys/bus/pci/devices/0000:00:DD.F/net/NAME` on the root bus, or behind the bridge the slot's
//! bus number names, `/sys/bus/pci/devices/0000:00:BB.F/0000:XX:DD.0/net/NAME`, where XX is
//! whatever bus number the kernel gave the bridge's secondary side.

use std::path::PathBuf;

use guestinfo::PciSlot;

use crate::net::ops::NetOs;

pub const PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// Matches one sysfs step against a pattern from [`PciSlot::sysfs_steps`], where `*` stands for
/// the bus number (two hex digits).
fn step_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            name.len() == head.len() + 2 + tail.len()
                && name.starts_with(head)
                && name.ends_with(tail)
                && name[head.len()..head.len() + 2]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit())
        }
    }
}

/// The kernel's name for the NIC at `slot`, or why there is none: the text names the slot, the
/// sysfs path looked at and what was there.
pub fn interface_at(os: &dyn NetOs, slot: PciSlot) -> Result<String, String> {
    let mut dir = PathBuf::from(PCI_DEVICES);
    for pattern in slot.sysfs_steps() {
        let entries = os.list_dir(&dir).unwrap_or_default();
        let found: Vec<&String> = entries
            .iter()
            .filter(|e| step_matches(&pattern, e))
            .collect();
        match found.as_slice() {
            [one] => dir.push(one),
            [] => {
                return Err(format!(
                    "no PCI device at {slot}: {}/{pattern} does not exist",
                    dir.display()
                ))
            }
            many => {
                return Err(format!(
                    "{} PCI devices match {slot} under {}: {many:?}",
                    many.len(),
                    dir.display()
                ))
            }
        }
    }
    // A NIC hot-plugged under QEMU's q35 sits in the PCIe root port at its slot (the root
    // complex itself takes no hot-plug): the port's one device at 00.0 is the NIC.
    if net_dir(os, &dir).is_none() {
        let below: Vec<String> = os
            .list_dir(&dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| step_matches("0000:*:00.0", e))
            .collect();
        if let [one] = below.as_slice() {
            dir.push(one);
        }
    }
    let net = net_dir(os, &dir).unwrap_or_else(|| dir.join("net"));
    match os.list_dir(&net).unwrap_or_default().as_slice() {
        [name] => Ok(name.clone()),
        [] => Err(format!(
            "the PCI device at {slot} ({}) is not a network interface (no net/ entry): is its driver (virtio-net, vmxnet3) in the kernel?",
            dir.display()
        )),
        many => Err(format!(
            "{} interfaces at {slot} ({}): {many:?}",
            many.len(),
            net.display()
        )),
    }
}

/// The `net/` directory of the PCI device at `dir`: vmxnet3 is the PCI device's own driver
/// (`net/` under it); virtio-net sits on a virtio device below it (`virtioN/net/`).
fn net_dir(os: &dyn NetOs, dir: &std::path::Path) -> Option<PathBuf> {
    let net = dir.join("net");
    if os.list_dir(&net).is_ok() {
        return Some(net);
    }
    os.list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.starts_with("virtio"))
        .map(|v| dir.join(v).join("net"))
        .filter(|n| os.list_dir(n).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ops::recording::Recording;

    #[test]
    fn finds_nics_on_the_root_bus_and_behind_bridges() {
        let os = Recording::default()
            .nic(&["0000:00:03.0"], "eth0", 2)
            .nic(&["0000:00:11.0", "0000:01:04.0"], "eth1", 3)
            .nic(&["0000:00:15.1", "0000:0a:00.0"], "eth2", 4);
        assert_eq!(
            interface_at(&os, PciSlot::from_parts(0, 3, 0)).unwrap(),
            "eth0"
        );
        assert_eq!(
            interface_at(&os, PciSlot::from_parts(1, 4, 0)).unwrap(),
            "eth1"
        );
        // VIC's slot 1184: bus 5 function 1, behind 00:15.1.
        assert_eq!(interface_at(&os, PciSlot(1184)).unwrap(), "eth2");
    }

    #[test]
    fn a_missing_nic_names_the_slot_and_the_path() {
        let os = Recording::default().nic(&["0000:00:03.0"], "eth0", 2);
        let e = interface_at(&os, PciSlot::from_parts(0, 7, 0)).unwrap_err();
        assert_eq!(
            e,
            "no PCI device at PCI slot 7 (0000:00:07.0): /sys/bus/pci/devices/0000:00:07.0 does not exist"
        );
        let e = interface_at(&os, PciSlot::from_parts(2, 0, 0)).unwrap_err();
        assert!(e.contains("0000:00:12.0"), "{e}");
    }

    #[test]
    fn a_virtio_nic_is_found_below_its_virtio_device() {
        let mut os = Recording::default();
        os.dirs
            .insert(PCI_DEVICES.into(), vec!["0000:00:08.0".into()]);
        os.dirs.insert(
            format!("{PCI_DEVICES}/0000:00:08.0"),
            vec!["driver".into(), "virtio1".into()],
        );
        os.dirs.insert(
            format!("{PCI_DEVICES}/0000:00:08.0/virtio1/net"),
            vec!["eth0".into()],
        );
        assert_eq!(
            interface_at(&os, PciSlot::from_parts(0, 8, 0)).unwrap(),
            "eth0"
        );
    }

    #[test]
    fn a_hot_plugged_nic_is_found_in_the_root_port_at_its_slot() {
        let os = Recording::default().nic(&["0000:00:09.0", "0000:02:00.0"], "eth1", 3);
        assert_eq!(
            interface_at(&os, PciSlot::from_parts(0, 9, 0)).unwrap(),
            "eth1"
        );
        // An empty port is no NIC, and the error says where it looked.
        let mut empty = Recording::default();
        empty
            .dirs
            .insert(PCI_DEVICES.into(), vec!["0000:00:0a.0".into()]);
        empty
            .dirs
            .insert(format!("{PCI_DEVICES}/0000:00:0a.0"), vec!["driver".into()]);
        let e = interface_at(&empty, PciSlot::from_parts(0, 10, 0)).unwrap_err();
        assert!(
            e.contains("0000:00:0a.0") && e.contains("no net/ entry"),
            "{e}"
        );
    }

    #[test]
    fn the_bus_glob_takes_two_hex_digits_only() {
        assert!(step_matches("0000:*:04.0", "0000:1f:04.0"));
        assert!(!step_matches("0000:*:04.0", "0000:1:04.0"));
        assert!(!step_matches("0000:*:04.0", "0000:zz:04.0"));
        assert!(!step_matches("0000:*:04.0", "0000:01:04.1"));
    }
}
