//! The VM a containerVM is on vSphere, as a `VirtualMachineConfigSpec` (XML, elements in the
//! schema's order, which vCenter checks): the bootstrap ISO as a CD-ROM (the VM boots it), the
//! image disk as the read-only parent of a thin writable delta on a paravirtual SCSI
//! controller (VIC's linked-clone layout), vmxnet3 NICs at fixed PCI slots, the serial port as
//! a network serial port whose proxy is the appliance's vSPC, and the container spec as
//! extraConfig guestinfo keys (the same encoder that writes the QEMU backend's fw_cfg file).

use super::soap::{el, escape};

/// Where the first NIC sits; each next one 32 slots on (VIC's slot plan: `pciSlotNumber` 0xc0
/// and up in steps of 1 << 5, KB 2047927), each the first device behind its own PCI bridge.
pub const FIRST_NIC_SLOT: u32 = 192;
pub const NIC_SLOT_STEP: u32 = 32;
/// The `pciSlotNumber` VIC's plan ends before (bus numbers stop at 31).
pub const NIC_SLOT_END: u32 = 1 << 10;

/// Device keys in the spec: negative, as the API wants for new devices.
const SCSI_KEY: i32 = -100;
const DISK_KEY: i32 = -101;
const CDROM_KEY: i32 = -102;
const SERIAL_KEY: i32 = -103;
const NIC_KEY: i32 = -110;
const VOLUME_KEY: i32 = -120;
/// The SCSI unit the controller itself takes (no disk there).
const CONTROLLER_UNIT: u32 = 7;
/// Volume disks a VM can have: units 1 to 15 on its one controller, but the controller's.
pub const MAX_VOLUMES: usize = 14;
/// The IDE controller every VM has (the CD-ROM's).
const IDE_KEY: i32 = 200;

/// What a containerVM's VM is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// `[datastore]` (the VM's files go in a directory named after it).
    pub datastore: String,
    pub memory_mb: u32,
    pub cpus: u32,
    /// `[ds] path/bootstrap.iso`.
    pub iso: String,
    /// `[ds] path/image.vmdk`: the image's disk, shared read-only.
    pub image_disk: String,
    /// `[ds] dir/name.vmdk`: the container's writable delta, created with the VM.
    pub delta_disk: String,
    /// `[ds] tether/volumes/NAME.vmdk`: the container's volume disks, attached as they are
    /// (no file operation) after the image disk, independent of snapshots.
    pub volumes: Vec<String>,
    /// The vmxnet3 NICs, in the order of the container's networks.
    pub nics: Vec<VmNic>,
    /// `telnet://appliance:2377`: where the serial port connects (the vSPC).
    pub vspc_uri: String,
    /// The serial port's service URI, naming the container (the vSPC routes by the channel's
    /// own handshake; this is for people reading the VM's settings).
    pub service_uri: String,
    /// guestinfo keys and values (the container spec).
    pub extra_config: Vec<(String, String)>,
}

/// The SCSI unit of the `index`th volume disk: after the image disk's 0, skipping the
/// controller's 7.
pub fn volume_unit(index: usize) -> u32 {
    let unit = 1 + index as u32;
    if unit >= CONTROLLER_UNIT {
        unit + 1
    } else {
        unit
    }
}

/// One vmxnet3 NIC: its port group and its `pciSlotNumber` (the slot the container's
/// guestinfo names, so tether finds it there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub port_group: String,
    pub slot: u32,
}

/// The `pciSlotNumber` of a container's `index`th NIC on vSphere.
pub fn nic_slot(index: usize) -> u32 {
    FIRST_NIC_SLOT + NIC_SLOT_STEP * index as u32
}

fn device_change(operation: &str, file_operation: Option<&str>, device: &str) -> String {
    let file_op = file_operation
        .map(|f| el("fileOperation", f))
        .unwrap_or_default();
    format!(
        "<deviceChange>{}{file_op}{device}</deviceChange>",
        el("operation", operation)
    )
}

fn option_values(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "<extraConfig xsi:type=\"OptionValue\">{}<value xsi:type=\"xsd:string\">{}</value></extraConfig>",
                el("key", k),
                escape(v)
            )
        })
        .collect()
}

/// A vmxnet3 NIC at its slot (the slot given, not one vSphere picks: tether looks there).
fn nic_device(key: i32, nic: &VmNic) -> String {
    format!(
        "<device xsi:type=\"VirtualVmxnet3\"><key>{key}</key>\
         <backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\">{}</backing>\
         <connectable><startConnected>true</startConnected><allowGuestControl>false</allowGuestControl>\
         <connected>true</connected></connectable>\
         <slotInfo xsi:type=\"VirtualDevicePciBusSlotInfo\"><pciSlotNumber>{}</pciSlotNumber></slotInfo>\
         <addressType>generated</addressType></device>",
        el("deviceName", &nic.port_group),
        nic.slot
    )
}

/// The `config` of CreateVM_Task.
pub fn config_spec(s: &VmSpec) -> String {
    let mut devices = String::new();
    devices.push_str(&device_change(
        "add",
        None,
        &format!(
            "<device xsi:type=\"ParaVirtualSCSIController\"><key>{SCSI_KEY}</key>\
             <busNumber>0</busNumber><sharedBus>noSharing</sharedBus></device>"
        ),
    ));
    devices.push_str(&device_change(
        "add",
        Some("create"),
        &format!(
            "<device xsi:type=\"VirtualDisk\"><key>{DISK_KEY}</key>\
             <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}<thinProvisioned>true</thinProvisioned>\
             <parent xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</parent></backing>\
             <controllerKey>{SCSI_KEY}</controllerKey><unitNumber>0</unitNumber>\
             <capacityInKB>0</capacityInKB></device>",
            el("fileName", &s.delta_disk),
            el("diskMode", "persistent"),
            el("fileName", &s.image_disk),
            el("diskMode", "persistent"),
        ),
    ));
    for (i, volume) in s.volumes.iter().enumerate() {
        devices.push_str(&device_change(
            "add",
            None,
            &format!(
                "<device xsi:type=\"VirtualDisk\"><key>{}</key>\
                 <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</backing>\
                 <controllerKey>{SCSI_KEY}</controllerKey><unitNumber>{}</unitNumber>\
                 <capacityInKB>0</capacityInKB></device>",
                VOLUME_KEY - i as i32,
                el("fileName", volume),
                el("diskMode", "independent_persistent"),
                volume_unit(i)
            ),
        ));
    }
    devices.push_str(&device_change(
        "add",
        None,
        &format!(
            "<device xsi:type=\"VirtualCdrom\"><key>{CDROM_KEY}</key>\
             <backing xsi:type=\"VirtualCdromIsoBackingInfo\">{}</backing>\
             <connectable><startConnected>true</startConnected><allowGuestControl>false</allowGuestControl>\
             <connected>true</connected></connectable>\
             <controllerKey>{IDE_KEY}</controllerKey><unitNumber>0</unitNumber></device>",
            el("fileName", &s.iso)
        ),
    ));
    devices.push_str(&device_change(
        "add",
        None,
        &format!(
            "<device xsi:type=\"VirtualSerialPort\"><key>{SERIAL_KEY}</key>\
             <backing xsi:type=\"VirtualSerialPortURIBackingInfo\">{}{}{}</backing>\
             <connectable><startConnected>true</startConnected><allowGuestControl>false</allowGuestControl>\
             <connected>true</connected></connectable>\
             <yieldOnPoll>true</yieldOnPoll></device>",
            el("serviceURI", &s.service_uri),
            el("direction", "client"),
            el("proxyURI", &s.vspc_uri)
        ),
    ));
    for (i, nic) in s.nics.iter().enumerate() {
        devices.push_str(&device_change(
            "add",
            None,
            &nic_device(NIC_KEY - i as i32, nic),
        ));
    }
    format!(
        "<config>{}{}<files>{}</files>{}{}{devices}{}\
         <bootOptions><bootOrder xsi:type=\"VirtualMachineBootOptionsBootableCdromDevice\"/></bootOptions></config>",
        el("name", &s.name),
        el("guestId", "otherLinux64Guest"),
        el("vmPathName", &format!("[{}]", s.datastore)),
        el("numCPUs", &s.cpus.max(1).to_string()),
        el("memoryMB", &s.memory_mb.to_string()),
        option_values(&s.extra_config),
    )
}

/// A `spec` for ReconfigVM_Task that detaches disks (device key, file) and keeps their files:
/// the volumes, before a destroy (which deletes every disk still attached).
pub fn detach_disks(disks: &[(i32, String)]) -> String {
    let changes: String = disks
        .iter()
        .map(|(key, file)| {
            device_change(
                "remove",
                None,
                &format!(
                    "<device xsi:type=\"VirtualDisk\"><key>{key}</key>\
                     <backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\">{}{}</backing>\
                     <capacityInKB>0</capacityInKB></device>",
                    el("fileName", file),
                    el("diskMode", "independent_persistent"),
                ),
            )
        })
        .collect();
    format!("<spec>{changes}</spec>")
}

/// A VM's vmxnet3 NIC as read back: its device key and what [`VmNic`] it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldNic {
    pub key: i32,
    pub nic: VmNic,
}

/// A `spec` for ReconfigVM_Task (a restart): the new guestinfo keys, and the NICs made what
/// the boot's guestinfo says: each NIC not wanted (its port group or slot changed, or its
/// network disconnected) removed, each wanted one not there added.
pub fn reconfigure(pairs: &[(String, String)], held: &[HeldNic], wanted: &[VmNic]) -> String {
    let mut devices = String::new();
    for h in held.iter().filter(|h| !wanted.contains(&h.nic)) {
        devices.push_str(&device_change(
            "remove",
            None,
            &format!(
                "<device xsi:type=\"VirtualVmxnet3\"><key>{}</key></device>",
                h.key
            ),
        ));
    }
    for (i, nic) in wanted
        .iter()
        .filter(|w| !held.iter().any(|h| h.nic == **w))
        .enumerate()
    {
        devices.push_str(&device_change(
            "add",
            None,
            &nic_device(NIC_KEY - i as i32, nic),
        ));
    }
    format!("<spec>{devices}{}</spec>", option_values(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "tether-abc".into(),
            datastore: "LocalDS_0".into(),
            memory_mb: 256,
            cpus: 2,
            iso: "[LocalDS_0] tether/bootstrap.iso".into(),
            image_disk: "[LocalDS_0] tether/images/img.vmdk".into(),
            delta_disk: "[LocalDS_0] tether-abc/tether-abc.vmdk".into(),
            volumes: (0..7)
                .map(|i| format!("[LocalDS_0] tether/volumes/v{i}.vmdk"))
                .collect(),
            nics: vec![
                VmNic {
                    port_group: "VM Network".into(),
                    slot: nic_slot(0),
                },
                VmNic {
                    port_group: "DPortGroup".into(),
                    slot: nic_slot(1),
                },
            ],
            vspc_uri: "telnet://10.0.0.1:2377".into(),
            service_uri: "tether://abc".into(),
            extra_config: vec![("guestinfo.vice./common/id".into(), "a<b&\"c\"".into())],
        }
    }

    #[test]
    fn the_config_spec_is_well_formed_xml_holding_every_device() {
        let xml = format!(
            "<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"x\">{}</r>",
            config_spec(&spec())
        );
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let types: Vec<String> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "device")
            .filter_map(super::super::soap::xsi_type)
            .collect();
        assert_eq!(
            types,
            [
                "ParaVirtualSCSIController",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualDisk",
                "VirtualCdrom",
                "VirtualSerialPort",
                "VirtualVmxnet3",
                "VirtualVmxnet3"
            ]
        );
        let slots: Vec<&str> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "pciSlotNumber")
            .filter_map(|n| n.text())
            .collect();
        assert_eq!(slots, ["192", "224"]);
        let units: Vec<&str> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "unitNumber")
            .filter_map(|n| n.text())
            .collect();
        // The image disk at 0, seven volumes around the controller's 7, the CD-ROM's IDE 0.
        assert_eq!(units, ["0", "1", "2", "3", "4", "5", "6", "8", "0"]);
        assert_eq!(volume_unit(MAX_VOLUMES - 1), 15);
        let value = doc
            .descendants()
            .find(|n| n.tag_name().name() == "value")
            .and_then(|n| n.text())
            .unwrap();
        assert_eq!(value, "a<b&\"c\"", "values escaped, and read back whole");
        // The schema's order: name, guestId, files, numCPUs, memoryMB, deviceChange, extraConfig.
        let order: Vec<&str> = doc
            .descendants()
            .find(|n| n.tag_name().name() == "config")
            .unwrap()
            .children()
            .map(|n| n.tag_name().name())
            .collect();
        let first = |name| order.iter().position(|n| *n == name).unwrap();
        assert!(first("name") < first("guestId"));
        assert!(first("files") < first("numCPUs"));
        assert!(first("memoryMB") < first("deviceChange"));
        assert!(first("deviceChange") < first("extraConfig"));
    }

    #[test]
    fn a_restart_removes_the_nics_not_wanted_and_adds_the_missing_ones() {
        let nic = |pg: &str, slot| VmNic {
            port_group: pg.into(),
            slot,
        };
        let held = [
            HeldNic {
                key: 4000,
                nic: nic("VM Network", 192),
            },
            HeldNic {
                key: 4001,
                nic: nic("VM Network", 224),
            },
        ];
        let wanted = [nic("VM Network", 192), nic("DPortGroup", 224)];
        let xml = format!(
            "<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{}</r>",
            reconfigure(&[("guestinfo.a".into(), "b".into())], &held, &wanted)
        );
        let doc = roxmltree::Document::parse(&xml).expect("well-formed");
        let changes: Vec<(String, String)> = doc
            .descendants()
            .filter(|n| n.tag_name().name() == "deviceChange")
            .map(|c| {
                let text = |name: &str| {
                    c.descendants()
                        .find(|n| n.tag_name().name() == name)
                        .and_then(|n| n.text())
                        .unwrap_or_default()
                        .to_string()
                };
                (
                    text("operation"),
                    format!("{} {}", text("key"), text("deviceName")),
                )
            })
            .collect();
        assert_eq!(
            changes,
            [
                ("remove".to_string(), "4001 ".to_string()),
                ("add".to_string(), "-110 DPortGroup".to_string()),
            ]
        );
        assert!(reconfigure(&[], &held[..1], &wanted[..1]) == "<spec></spec>");
    }
}
