//! The vSphere backend against govmomi's vSphere simulator (tests/vcsim/main.go, built offline
//! against Debian's govmomi sources): the VM it creates is read back and compared with what was
//! meant (devices, extraConfig, power state), through a restart and a destroy; bad credentials,
//! a missing datastore or folder and a name clash are clear errors that leave nothing behind.
//!
//! The simulator's VMs never boot: what ran inside (tether, dialling the vSPC) is not part of
//! these tests. The QEMU tier covers that side (tests/tests/vspc.rs).

mod common;
mod vcsim_support;

use std::path::PathBuf;

use appliance::backend::vsphere::{recorded_vm_id, VsphereBackend, VsphereConfig, VsphereError};
use appliance::backend::{Backend, LaunchRequest, Nic, NicAttachment, Transport};
use appliance::store::records::{self, NewContainer};
use common::*;
use vcsim_support::Vcsim;

/// A container record with its guestinfo written, as the engine leaves it before a launch.
fn container(home: &TempHome) -> (PathBuf, LaunchRequest) {
    let (rec, spec) = records::create(
        home,
        &NewContainer {
            args: vec!["/bin/sh".into(), "-c".into(), "echo 'a | b'".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let dir = home.container(&rec.id);
    records::write_config(&dir, &spec).unwrap();
    let req = LaunchRequest {
        container_dir: dir.clone(),
        image_disk: image_disk(home),
        config: dir.join("config.vmx"),
        memory_mb: 512,
        cpus: 2,
        transport: Transport::Serial(String::new()),
        volumes: Vec::new(),
        // On docker's default network, at the slot the vsphere backend gives a first NIC.
        nics: vec![Nic {
            slot: 192,
            network: "bridge".into(),
            mac: String::new(),
            attachment: NicAttachment::UserMode {
                hostfwd: Vec::new(),
            },
        }],
        hotplug_slots: Vec::new(),
    };
    (dir, req)
}

/// An image disk in the image store (`images/img1/disk.qcow2`): a qcow2 with a few bytes on it.
fn image_disk(home: &TempHome) -> PathBuf {
    let disk = home.root().join("images/img1/disk.qcow2");
    if !disk.exists() {
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        let raw = disk.with_extension("raw");
        let mut bytes = vec![0u8; 1 << 20];
        bytes[4096..4096 + 12].copy_from_slice(b"image-bytes!");
        std::fs::write(&raw, bytes).unwrap();
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&disk)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::fs::remove_file(raw).unwrap();
    }
    disk
}

/// The files under the datastore's image directory.
fn image_files(sim: &Vcsim) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sim.datastore_dir.join("tether/images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The backend's calls are synchronous (the engine's), run on a runtime worker.
fn on_runtime<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    rt.block_on(async { tokio::spawn(async move { f() }).await.unwrap() })
}

#[test]
fn a_containervm_is_created_as_meant_powered_off_restarted_and_destroyed() {
    let sim = Vcsim::start();
    let home = TempHome::new("vsphere-vm");
    let rt = runtime();
    let backend = std::sync::Arc::new(
        rt.block_on(VsphereBackend::connect(sim.config()))
            .expect("the backend connects"),
    );
    let (dir, req) = container(&home);
    let name = VsphereBackend::vm_name(&dir);
    let b = backend.clone();
    let r = req.clone();
    on_runtime(&rt, move || b.launch(&r)).expect("launch");
    let id = recorded_vm_id(&dir).expect("the VM is recorded with the container");
    let vm = appliance::backend::vsphere::soap::MoRef::new("VirtualMachine", &id);
    let info = rt.block_on(backend.vim().vm_info(&vm)).unwrap();
    assert_eq!(info.name, name);
    assert_eq!(info.power_state, "poweredOn");
    assert_eq!((info.memory_mb, info.cpus), (512, 2));
    let of = |kind: &str| {
        info.devices
            .iter()
            .filter(|d| d.kind == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("ParaVirtualSCSIController").len(),
        1,
        "{:?}",
        info.devices
    );
    let disks = of("VirtualDisk");
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].backing, format!("[LocalDS_0] {name}/{name}.vmdk"));
    assert_eq!(disks[0].parent, "[LocalDS_0] tether/images/img1.vmdk");
    // The image's disk was uploaded there, whole, as a streamOptimized VMDK, under its name only.
    assert_eq!(image_files(&sim), ["img1.vmdk"]);
    let uploaded = std::fs::read(sim.datastore_dir.join("tether/images/img1.vmdk")).unwrap();
    assert_eq!(&uploaded[..4], b"KDMV", "a sparse VMDK");
    let local = home.root().join("local.vmdk");
    appliance::backend::vsphere::datastore::convert_to_vmdk(&req.image_disk, &local).unwrap();
    let descriptor = |b: &[u8]| {
        String::from_utf8_lossy(&b[512..1536])
            .lines()
            .filter(|l| l.starts_with("createType") || l.starts_with("RW "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        descriptor(&uploaded),
        [
            "createType=\"streamOptimized\"",
            "RW 2048 SPARSE \"img1.vmdk\""
        ]
    );
    assert_eq!(
        uploaded.len(),
        std::fs::metadata(&local).unwrap().len() as usize
    );
    assert!(
        sim.datastore_dir
            .join(&name)
            .join(format!("{name}.vmdk"))
            .exists(),
        "the writable delta was created on the datastore"
    );
    let cdroms = of("VirtualCdrom");
    assert_eq!(cdroms.len(), 1);
    assert_eq!(cdroms[0].backing, "[LocalDS_0] tether/bootstrap.iso");
    let serial = of("VirtualSerialPort");
    assert_eq!(serial.len(), 1);
    assert_eq!(serial[0].backing, "telnet://192.0.2.1:2377");
    let nics = of("VirtualVmxnet3");
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].backing, "VM Network");
    assert_eq!(nics[0].pci_slot, Some(192));
    // The guestinfo, key for key, as the QEMU backend's fw_cfg file holds it.
    let meant = guestinfo::vmx::parse(&std::fs::read_to_string(&req.config).unwrap()).unwrap();
    for (k, v) in &meant {
        let got = info.extra_config.iter().find(|(key, _)| key == k);
        assert_eq!(got.map(|(_, v)| v), Some(v), "extraConfig {k}");
    }
    let spec = guestinfo::spec::decode(&guestinfo::KeySet::from_pairs(
        info.extra_config
            .iter()
            .filter(|(k, _)| k.starts_with("guestinfo."))
            .cloned()
            .collect::<Vec<_>>(),
    ))
    .unwrap();
    assert_eq!(
        spec.main_session().unwrap().args,
        ["/bin/sh", "-c", "echo 'a | b'"]
    );
    // Stop: powered off, kept. Start again: the same VM, reconfigured and on.
    let b = backend.clone();
    let d = dir.clone();
    on_runtime(&rt, move || b.power_off(&d)).unwrap();
    assert_eq!(
        rt.block_on(backend.vim().power_state(&vm)).unwrap(),
        "poweredOff"
    );
    // The second boot's NICs are what its request says: here none (its network disconnected).
    assert_eq!(backend.nic_slot(0), 192);
    assert_eq!(backend.nic_slot(2), 256);
    let b = backend.clone();
    let mut r = req.clone();
    r.nics.clear();
    on_runtime(&rt, move || b.launch(&r)).expect("relaunch");
    assert_eq!(recorded_vm_id(&dir).as_deref(), Some(id.as_str()));
    let again = rt.block_on(backend.vim().vm_info(&vm)).unwrap();
    assert_eq!(again.power_state, "poweredOn");
    assert!(
        !again.devices.iter().any(|d| d.kind == "VirtualVmxnet3"),
        "the NIC of a disconnected network removed: {:?}",
        again.devices
    );
    // rm: gone from the inventory.
    let b = backend.clone();
    let d = dir.clone();
    on_runtime(&rt, move || b.destroy(&d)).unwrap();
    assert_eq!(
        rt.block_on(backend.vim().vms_in(backend.folder())).unwrap(),
        vec![]
    );
    assert_eq!(recorded_vm_id(&dir), None);
}

#[test]
fn bad_credentials_a_missing_datastore_or_folder_and_a_name_clash_are_clear_and_leave_nothing() {
    let sim = Vcsim::start();
    let rt = runtime();
    let connect = |cfg: VsphereConfig| rt.block_on(VsphereBackend::connect(cfg));
    let err = |r: Result<VsphereBackend, VsphereError>| r.err().expect("refused").to_string();
    let e = err(connect(VsphereConfig {
        password: "wrong".into(),
        ..sim.config()
    }));
    assert!(e.starts_with("vSphere login as tether at "), "{e}");
    assert!(
        e.contains("InvalidLogin") && e.contains("check the user and password"),
        "{e}"
    );
    let e = err(connect(VsphereConfig {
        datastore: "NoSuchDS".into(),
        ..sim.config()
    }));
    assert!(
        e.contains("the datastore \"/DC0/datastore/NoSuchDS\" is not in the vSphere inventory"),
        "{e}"
    );
    let e = err(connect(VsphereConfig {
        folder: "/DC0/vm/missing".into(),
        ..sim.config()
    }));
    assert!(e.contains("VM folder \"/DC0/vm/missing\""), "{e}");
    let e = err(connect(VsphereConfig {
        pool: "/DC0/host/nope/Resources".into(),
        ..sim.config()
    }));
    assert!(e.contains("resource pool"), "{e}");

    // A name clash: another appliance's VM (same name, not recorded here) is not touched.
    let backend = std::sync::Arc::new(connect(sim.config()).unwrap());
    let home_a = TempHome::new("vsphere-clash-a");
    let (_, req_a) = container(&home_a);
    let b = backend.clone();
    on_runtime(&rt, move || b.launch(&req_a)).unwrap();
    let before = rt.block_on(backend.vim().vms_in(backend.folder())).unwrap();
    assert_eq!(before.len(), 1);
    let home_b = TempHome::new("vsphere-clash-b");
    let (dir_b, mut req_b) = container(&home_b);
    // The same VM name: container directories named alike.
    let same = home_b.containers().join(
        home_a
            .containers()
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name(),
    );
    std::fs::rename(&dir_b, &same).unwrap();
    req_b.container_dir = same.clone();
    req_b.config = same.join("config.vmx");
    let b = backend.clone();
    let e = on_runtime(&rt, move || b.launch(&req_b))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("already exists in /DC0/vm") && e.contains("not this appliance's"),
        "{e}"
    );
    assert_eq!(
        rt.block_on(backend.vim().vms_in(backend.folder())).unwrap(),
        before,
        "nothing created"
    );
    assert_eq!(recorded_vm_id(&same), None);
}

#[test]
fn an_image_already_on_the_datastore_is_used_and_a_failed_upload_leaves_nothing() {
    let sim = Vcsim::start();
    let rt = runtime();
    // An admin put the image there already: used as it is, not uploaded again.
    let images = sim.datastore_dir.join("tether/images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("img1.vmdk"), "the admin's disk").unwrap();
    let backend = std::sync::Arc::new(rt.block_on(VsphereBackend::connect(sim.config())).unwrap());
    let home = TempHome::new("vsphere-kept-image");
    let (dir, req) = container(&home);
    let b = backend.clone();
    on_runtime(&rt, move || b.launch(&req)).expect("launch");
    assert_eq!(
        std::fs::read_to_string(images.join("img1.vmdk")).unwrap(),
        "the admin's disk"
    );
    let b = backend.clone();
    on_runtime(&rt, move || b.destroy(&dir)).unwrap();

    // A disk that cannot be converted: a clear error, no VM, nothing new on the datastore.
    let home = TempHome::new("vsphere-bad-image");
    let (_, mut req) = container(&home);
    let bad = home.root().join("images/bad/disk.qcow2");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "not a disk").unwrap();
    req.image_disk = bad;
    let b = backend.clone();
    let e = on_runtime(&rt, move || b.launch(&req))
        .unwrap_err()
        .to_string();
    assert!(e.contains("converting") && e.contains("to VMDK"), "{e}");
    assert_eq!(
        rt.block_on(backend.vim().vms_in(backend.folder())).unwrap(),
        vec![]
    );
    assert_eq!(image_files(&sim), ["img1.vmdk"]);
}

#[test]
fn the_vcenter_tls_certificate_is_trusted_by_the_ca_given_and_only_then() {
    let home = TempHome::new("vsphere-tls");
    let common::test_ca::TestCerts {
        ca_pem,
        cert_pem,
        key_pem,
    } = common::test_ca::write_test_ca(home.root(), "tether vCenter test CA", &["127.0.0.1"]);
    let sim = Vcsim::start_tls(&cert_pem, &key_pem);
    assert!(sim.url.starts_with("https://127.0.0.1:"), "{}", sim.url);
    let rt = runtime();
    let connect = |cfg: VsphereConfig| rt.block_on(VsphereBackend::connect(cfg));
    // The system's roots do not know the test CA.
    let e = connect(sim.config()).err().expect("refused").to_string();
    assert!(e.contains(&sim.url) && e.contains("certificate"), "{e:?}");
    let with_ca = VsphereConfig {
        ca_file: Some(ca_pem.clone()),
        ..sim.config()
    };
    let backend = connect(with_ca).expect("trusted with --vsphere-ca");
    assert_eq!(
        rt.block_on(backend.vim().vms_in(backend.folder())).unwrap(),
        vec![]
    );
    // A file with no certificate in it is refused, naming it.
    let e = connect(VsphereConfig {
        ca_file: Some(key_pem.clone()),
        ..sim.config()
    })
    .err()
    .expect("refused")
    .to_string();
    assert!(
        e.starts_with(&format!(
            "--vsphere-ca {}: no PEM certificate",
            key_pem.display()
        )),
        "{e}"
    );
}
