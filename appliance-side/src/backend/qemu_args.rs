//! The QEMU command line of a containerVM, in one place: the QEMU backend and the QEMU test tier
//! both boot through it.

use std::ffi::OsString;
use std::path::PathBuf;

use guestinfo::contract::{FW_CFG_NAME, VIRTIO_PORT_NAME};

/// Where the VM's kernel comes from.
pub enum BootMedium {
    /// QEMU loads the kernel and initramfs itself (fastest).
    Direct { kernel: PathBuf, initramfs: PathBuf },
    /// SeaBIOS boots the bootstrap ISO through isolinux, as a vSphere VM would.
    Iso(PathBuf),
}

/// Where the VM's tether channel goes.
pub enum ChannelEnd {
    /// A virtio-serial port named org.tether.channel on the server's Unix socket.
    Unix(PathBuf),
    /// A 16550 COM port (ttyS1 in the guest) on the server's TCP address.
    Tcp(String),
    /// The COM port as a telnet client (`telnet=on`) of a vSPC at HOST:PORT, as vSphere's
    /// network serial port is. QEMU (7.2) negotiates nothing as a client; the vSPC takes it raw.
    Telnet(String),
}

pub struct VmSpec {
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    pub memory_mb: u32,
    /// vCPUs; 0 or 1 is one.
    pub cpus: u32,
    pub boot: BootMedium,
    /// The container's disk (a qcow2 overlay on the image).
    pub disk: PathBuf,
    /// Volume disks (qcow2), each one more virtio-blk disk.
    pub volumes: Vec<PathBuf>,
    /// The guestinfo config, passed through fw_cfg.
    pub config: PathBuf,
    /// Where ttyS0 (the guest console) is written.
    pub console: PathBuf,
    pub channel: ChannelEnd,
    /// NICs: virtio-net devices at fixed PCI slots.
    pub nics: Vec<QemuNic>,
    /// Empty PCIe root ports at these root-bus slots, for NICs hot-plugged later: q35's root
    /// complex takes no hot-plug, a root port does.
    pub hotplug_slots: Vec<u32>,
    /// The QMP monitor's socket (hot-plug goes through it); relative to QEMU's working
    /// directory, the container's, so a deep TETHER_HOME does not overflow `sun_path`.
    pub qmp: Option<PathBuf>,
}

/// The id of the root port at `slot` (a hot-plugged NIC's `bus`).
pub fn hotplug_port(slot: u32) -> String {
    format!("hp{slot:x}")
}

/// One virtio-net NIC on QEMU's command line.
pub struct QemuNic {
    /// The device's slot on the root bus (`addr=`), where tether finds it.
    pub slot: u32,
    pub mac: String,
    /// The `-netdev` backend without its id: `user,...` or `tap,fd=N`.
    pub netdev: String,
}

/// Arguments for `qemu-system-x86_64`. q35: its ACPI gives tether a clean power-off. Whether
/// microvm boots faster with our kernel is not measured yet; that belongs to `make bench`.
pub fn qemu_args(s: &VmSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |x: &str| a.push(x.into());
    for x in [
        "-accel",
        s.accel,
        "-machine",
        "q35",
        "-display",
        "none",
        "-no-reboot",
        "-m",
    ] {
        push(x);
    }
    push(&s.memory_mb.to_string());
    // A test knob (tests/tests/clock.rs): the VM's RTC starts there (`2019-01-01`), so its
    // clock is years off until the appliance's time arrives.
    if let Ok(base) = std::env::var("TETHER_TEST_RTC_BASE") {
        push("-rtc");
        push(&format!("base={base}"));
    }
    if s.cpus > 1 {
        push("-smp");
        push(&s.cpus.to_string());
    }
    match &s.boot {
        BootMedium::Direct { kernel, initramfs } => {
            push("-kernel");
            push(&kernel.to_string_lossy());
            push("-initrd");
            push(&initramfs.to_string_lossy());
            push("-append");
            push(bootstrap::iso::DEFAULT_APPEND);
        }
        BootMedium::Iso(iso) => {
            push("-cdrom");
            push(&iso.to_string_lossy());
            push("-boot");
            push("d");
        }
    }
    push("-drive");
    push(&format!("file={},format=qcow2,if=virtio", s.disk.display()));
    for volume in &s.volumes {
        push("-drive");
        push(&format!("file={},format=qcow2,if=virtio", volume.display()));
    }
    // Entropy from the host: without it the guest's random generator takes about a second of a
    // TCG boot to seed, and tether's handshake nonces wait for it.
    push("-device");
    push("virtio-rng-pci");
    if s.nics.is_empty() {
        // Else QEMU adds its default NIC (q35: an e1000e on user-mode networking), which a
        // container on `--network none` must not have.
        push("-nic");
        push("none");
    }
    for (i, nic) in s.nics.iter().enumerate() {
        push("-netdev");
        push(&format!("{},id=net{i}", nic.netdev));
        push("-device");
        push(&format!(
            "virtio-net-pci,netdev=net{i},mac={},bus=pcie.0,addr={:#x}",
            nic.mac, nic.slot
        ));
    }
    for slot in &s.hotplug_slots {
        // No I/O window: virtio-net on PCIe needs only memory BARs, and nine ports' 4 KiB
        // windows would take half the I/O space.
        push("-device");
        push(&format!(
            "pcie-root-port,id={},bus=pcie.0,addr={slot:#x},chassis=1,slot={slot},io-reserve=0",
            hotplug_port(*slot)
        ));
    }
    if let Some(qmp) = &s.qmp {
        push("-qmp");
        push(&format!("unix:{},server=on,wait=off", qmp.display()));
    }
    push("-fw_cfg");
    push(&format!("name={FW_CFG_NAME},file={}", s.config.display()));
    push("-serial");
    push(&format!("file:{}", s.console.display()));
    match &s.channel {
        ChannelEnd::Unix(sock) => {
            push("-device");
            push("virtio-serial-pci");
            push("-chardev");
            push(&format!(
                "socket,id=ch0,path={},server=off,reconnect=1",
                sock.display()
            ));
            push("-device");
            push(&format!(
                "virtserialport,chardev=ch0,name={VIRTIO_PORT_NAME}"
            ));
        }
        ChannelEnd::Tcp(addr) => {
            push("-serial");
            push(&format!("tcp:{addr},reconnect=1"));
        }
        ChannelEnd::Telnet(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "2377"));
            push("-chardev");
            push(&format!(
                "socket,id=com1,host={host},port={port},server=off,telnet=on,reconnect=1"
            ));
            push("-serial");
            push("chardev:com1");
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(nics: Vec<QemuNic>) -> VmSpec {
        VmSpec {
            accel: "tcg",
            memory_mb: 256,
            cpus: 0,
            boot: BootMedium::Iso("/b.iso".into()),
            disk: "/d.qcow2".into(),
            volumes: Vec::new(),
            config: "/c.vmx".into(),
            console: "/console.log".into(),
            channel: ChannelEnd::Unix("/ch.sock".into()),
            nics,
            hotplug_slots: Vec::new(),
            qmp: None,
        }
    }

    fn args(s: &VmSpec) -> Vec<String> {
        qemu_args(s)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn nics_sit_at_their_slots_and_none_means_no_nic() {
        let a = args(&spec(vec![
            QemuNic {
                slot: 0x08,
                mac: "02:42:0a:00:02:0f".into(),
                netdev: "user,hostfwd=tcp:127.0.0.1:18080-:80".into(),
            },
            QemuNic {
                slot: 0x09,
                mac: "02:42:ac:12:00:02".into(),
                netdev: "tap,fd=7".into(),
            },
        ]));
        let joined = a.join(" ");
        assert!(joined.contains(
            "-netdev user,hostfwd=tcp:127.0.0.1:18080-:80,id=net0 -device virtio-net-pci,netdev=net0,mac=02:42:0a:00:02:0f,bus=pcie.0,addr=0x8"
        ), "{joined}");
        assert!(joined.contains("-netdev tap,fd=7,id=net1 -device virtio-net-pci,netdev=net1,mac=02:42:ac:12:00:02,bus=pcie.0,addr=0x9"), "{joined}");
        assert!(!joined.contains("-nic none"));
        let mut hot = spec(Vec::new());
        hot.hotplug_slots = vec![0x09];
        hot.qmp = Some("qmp.sock".into());
        let hot = args(&hot).join(" ");
        assert!(
            hot.contains(
                "-device pcie-root-port,id=hp9,bus=pcie.0,addr=0x9,chassis=1,slot=9,io-reserve=0"
            ),
            "{hot}"
        );
        assert!(
            hot.contains("-qmp unix:qmp.sock,server=on,wait=off"),
            "{hot}"
        );
        let none = args(&spec(Vec::new())).join(" ");
        assert!(none.contains("-nic none"), "{none}");
        assert!(!none.contains("-netdev"));
    }
}
