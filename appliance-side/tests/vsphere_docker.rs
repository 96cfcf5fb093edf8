//! The stock docker CLI against `appliance serve --backend vsphere`, pointed at govmomi's
//! simulator: `docker run/stop/start/rm` create, power and destroy the containers' VMs there.
//! The simulator runs no guests, so a host-mode tether stands in for each VM's guest, fed the
//! guestinfo read back from the VM's extraConfig, its channel going through an ESXi host's
//! telnet relay to the appliance's vSPC (`vcsim_support::guests`).

mod common;
mod vcsim_support;

use std::path::Path;

use appliance::backend::vsphere::soap::MoRef;
use common::detached::{text, Detached};
use vcsim_support::guests::{client, Guests};
use vcsim_support::Vcsim;

const IMAGE: &str = "localhost/vs-test:1";

/// Appends a root-owned regular file to a tar archive.
fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    tar.append_data(&mut h, name, bytes).unwrap();
}

/// A docker-save archive of a one-file image (its content does not matter: the stand-in
/// guests run their sessions on this host).
fn image_archive(dir: &Path) -> std::path::PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "note.txt", b"on vSphere\n");
    let layer = layer.into_inner().unwrap();
    let layer_hex = common::sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    })
    .to_string();
    let config_hex = common::sha256_hex(config.as_bytes());
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [IMAGE],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }])
    .to_string();
    let mut out = tar::Builder::new(Vec::new());
    append(&mut out, "manifest.json", manifest.as_bytes());
    append(&mut out, &format!("{config_hex}.json"), config.as_bytes());
    append(&mut out, &format!("{layer_hex}/layer.tar"), &layer);
    let path = dir.join("image.tar");
    std::fs::write(&path, out.into_inner().unwrap()).unwrap();
    path
}

/// A detached `serve --backend vsphere` on the simulator, with guests standing in for its
/// VMs and the test image loaded.
struct Env {
    sim: Vcsim,
    d: Detached,
    // Dropped before the server: the guests go as their VMs would.
    guests: Option<Guests>,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn start(tag: &str) -> Self {
        let sim = Vcsim::start();
        let d = Detached::new(tag);
        let mut serve = d.serve_command(&[
            "--backend",
            "vsphere",
            "--vsphere-url",
            &sim.url,
            "--vsphere-user",
            "tether",
            "--datastore",
            "LocalDS_0",
            "--folder",
            "/DC0/vm",
            "--pool",
            "/DC0/host/DC0_C0/Resources",
            "--vspc",
            "127.0.0.1:0",
        ]);
        serve.env("TETHER_VSPHERE_PASSWORD", "s3cret");
        d.serve_ok_by(serve);
        let vspc = std::fs::read_to_string(d.home.join("vspc.tcp")).unwrap();
        let guest_dir = d.home.join("guests");
        std::fs::create_dir_all(&guest_dir).unwrap();
        let guests = Guests::start(
            &sim.url,
            "/DC0/vm",
            vspc.trim().parse().unwrap(),
            &guest_dir,
            common::tether_bin(),
        );
        let archive = image_archive(&d.home);
        d.ok(&["load", "-i", archive.to_str().unwrap()]);
        Self {
            sim,
            d,
            guests: Some(guests),
            rt: common::runtime(),
        }
    }

    /// The VMs in the simulator's folder: (name, power state).
    fn vms(&self) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let vim = client(&self.sim.url).await;
            let folder = vim.find_by_path("/DC0/vm").await.unwrap().unwrap();
            let mut out = Vec::new();
            for vm in vim.vms_in(&folder).await.unwrap() {
                let info = vim.vm_info(&vm).await.unwrap();
                out.push((info.name, info.power_state));
            }
            out.sort();
            out
        })
    }

    /// A VM's vmxnet3 NICs as vSphere holds them, (port group, pciSlotNumber), and its
    /// guestinfo's networks, (docker network, the slot tether looks at), decoded from the same
    /// VM's extraConfig.
    fn nics_and_guest_slots(&self, name: &str) -> (Placed, Placed) {
        self.rt.block_on(async {
            let vim = client(&self.sim.url).await;
            let folder = vim.find_by_path("/DC0/vm").await.unwrap().unwrap();
            let vm = vim
                .find_child(&folder, name)
                .await
                .unwrap()
                .expect("the VM");
            let info = vim.vm_info(&vm).await.unwrap();
            let nics = info
                .devices
                .iter()
                .filter(|d| d.kind == "VirtualVmxnet3")
                .map(|d| (d.backing.clone(), d.pci_slot.expect("a NIC's PCI slot")))
                .collect();
            let (_, spec) = vcsim_support::guests::held_spec(&info).expect("guestinfo");
            let slots = spec
                .networks
                .iter()
                .map(|(net, ep)| (net.clone(), ep.slot.0))
                .collect();
            (nics, slots)
        })
    }

    /// A VM's disks as vSphere holds them, (file, SCSI unit), and its guestinfo's volume
    /// mounts, (destination, source), decoded from the same VM's extraConfig.
    fn disks_and_guest_mounts(&self, name: &str) -> (Placed, Vec<(String, String)>) {
        self.rt.block_on(async {
            let vim = client(&self.sim.url).await;
            let folder = vim.find_by_path("/DC0/vm").await.unwrap().unwrap();
            let vm = vim
                .find_child(&folder, name)
                .await
                .unwrap()
                .expect("the VM");
            let info = vim.vm_info(&vm).await.unwrap();
            let disks = info
                .devices
                .iter()
                .filter(|d| d.kind == "VirtualDisk")
                .map(|d| (d.backing.clone(), d.unit.expect("a disk's unit")))
                .collect();
            let (_, spec) = vcsim_support::guests::held_spec(&info).expect("guestinfo");
            let mounts = spec
                .mounts
                .values()
                .map(|m| {
                    let source = match &m.source {
                        guestinfo::MountSource::Label(l) => format!("label://{l}"),
                        other => format!("{other:?}"),
                    };
                    (m.destination.clone(), source)
                })
                .collect();
            (disks, mounts)
        })
    }

    fn boots(&self) -> Vec<vcsim_support::guests::Boot> {
        self.guests.as_ref().unwrap().boots.lock().unwrap().clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.guests.take());
    }
}

/// (name, number) pairs: a VM's devices (port group and slot, file and unit) or what its
/// guestinfo says of them.
type Placed = Vec<(String, u32)>;

fn vm_name(id: &str) -> String {
    format!("tether-{}", &id[..12])
}

#[test]
fn docker_run_stop_start_rm_and_restart_policies_drive_vms_in_the_simulator() {
    let env = Env::start("vs-docker-life");
    let d = &env.d;

    // run --rm: the output, the exit code, and the VM gone afterwards.
    let out = d.docker(&[
        "run",
        "--rm",
        IMAGE,
        "sh",
        "-c",
        "echo from-vsphere; echo to-err >&2; exit 3",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(3), "from-vsphere\n".into(), "to-err\n".into()),
        "server log:\n{}",
        d.log()
    );
    let boots = env.boots();
    assert_eq!(boots.len(), 1, "one VM booted");
    assert_eq!(
        boots[0].spec.channel_device.as_deref(),
        Some(guestinfo::contract::COM_DEVICE),
        "the guest's channel is its COM port (the network serial port)"
    );
    assert_eq!(env.vms(), vec![], "--rm destroyed the VM");
    assert_eq!(d.ok(&["ps", "-aq"]), "");
    // The image's disk was uploaded to the datastore, once, under its final name only.
    let images = env.sim.datastore_dir.join("tether/images");
    let uploaded: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    let disk = std::fs::read(&uploaded[0]).unwrap();
    assert_eq!(&disk[..4], b"KDMV", "a sparse VMDK");
    assert!(String::from_utf8_lossy(&disk[512..1536]).contains("createType=\"streamOptimized\""));

    // run -d, stop: the VM powered off and kept; start: the same VM on again; rm: gone.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "bg",
            IMAGE,
            "sh",
            "-c",
            "echo up; while :; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    let name = vm_name(&id);
    d.wait_state("bg", "running");
    assert_eq!(env.vms(), vec![(name.clone(), "poweredOn".into())]);
    // Its NIC (docker's default network, on the first port group) is where its guestinfo
    // tells tether to look: VIC's first NIC slot, 192 (behind the bridge at 00:16.0).
    let nics_meant = (
        vec![("VM Network".to_string(), 192)],
        vec![("bridge".to_string(), 192)],
    );
    assert_eq!(env.nics_and_guest_slots(&name), nics_meant);
    d.ok(&["stop", "bg"]);
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            "bg"
        ])
        .trim(),
        "exited 143"
    );
    assert_eq!(env.vms(), vec![(name.clone(), "poweredOff".into())]);
    d.ok(&["start", "bg"]);
    assert_eq!(env.vms(), vec![(name.clone(), "poweredOn".into())]);
    assert_eq!(
        env.nics_and_guest_slots(&name),
        nics_meant,
        "a restart keeps the one NIC"
    );
    assert_eq!(env.boots().len(), 3, "a second boot of the same VM");
    assert_eq!(env.boots()[2].vm, name);
    d.ok(&["stop", "-t", "1", "bg"]);
    assert_eq!(env.vms(), vec![(name.clone(), "poweredOff".into())]);
    assert_eq!(d.ok(&["logs", "bg"]), "up\nup\n");
    assert_eq!(
        std::fs::read(&uploaded[0]).unwrap(),
        disk,
        "the image was not uploaded again"
    );
    assert_eq!(d.log().matches("image disk uploaded").count(), 1);
    d.ok(&["rm", "bg"]);
    assert_eq!(env.vms(), vec![], "rm destroyed the VM");
    assert!(
        !env.sim.datastore_dir.join(&name).exists(),
        "the VM's files are gone from the datastore"
    );
    assert_eq!(d.ok(&["ps", "-aq"]), "");

    // A restart policy: on-failure:2 boots the VM of a process that exits 3 twice more (the
    // same VM, powered on again), then it stays exited.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "rp",
            "--restart",
            "on-failure:2",
            IMAGE,
            "sh",
            "-c",
            "echo try; exit 3",
        ])
        .trim()
        .to_string();
    let name = vm_name(&id);
    let given_up = "not restarting: the policy's retries are used up";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !d.log().contains(given_up) {
        assert!(
            std::time::Instant::now() < deadline,
            "the policy never gave up; server log:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        d.ok(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
            "rp"
        ])
        .trim(),
        "exited 3 2"
    );
    let rp_boots = env.boots().iter().filter(|b| b.vm == name).count();
    assert_eq!(rp_boots, 3, "the first boot and two restarts");
    assert_eq!(d.ok(&["logs", "rp"]), "try\ntry\ntry\n");
    assert_eq!(env.vms(), vec![(name.clone(), "poweredOff".into())]);
    d.ok(&["rm", "rp"]);
    assert_eq!(env.vms(), vec![]);
}

#[test]
fn volumes_and_a_name_clash_or_a_missing_datastore_as_docker_has_them() {
    let env = Env::start("vs-docker-fail");
    let d = &env.d;

    // A VM of the name the container's would have, not this appliance's: refused, untouched.
    let id = d.ok(&["create", "--name", "clash", IMAGE, "true"]);
    let name = vm_name(id.trim());
    env.rt.block_on(async {
        let vim = client(&env.sim.url).await;
        let folder = vim.find_by_path("/DC0/vm").await.unwrap().unwrap();
        let pool = vim
            .find_by_path("/DC0/host/DC0_C0/Resources")
            .await
            .unwrap()
            .unwrap();
        let spec = format!(
            "<config><name>{name}</name><guestId>otherGuest</guestId>\
             <files><vmPathName>[LocalDS_0]</vmPathName></files></config>"
        );
        vim.create_vm(&folder, &pool, &spec).await.unwrap();
    });
    let before = env.vms();
    assert_eq!(before, vec![(name.clone(), "poweredOff".into())]);
    let e = d.fails(&["start", "clash"]);
    assert!(
        e.contains(&format!("a VM named {name} already exists in /DC0/vm"))
            && e.contains("rename or remove it"),
        "{e}"
    );
    assert_eq!(env.vms(), before, "nothing created, the other VM untouched");
    assert_eq!(
        d.ok(&["inspect", "-f", "{{.State.Status}}", "clash"])
            .trim(),
        "created"
    );
    d.ok(&["rm", "clash"]);
    assert_eq!(env.vms(), before, "rm leaves a VM that is not its own");
    env.rt.block_on(async {
        let vim = client(&env.sim.url).await;
        let folder = vim.find_by_path("/DC0/vm").await.unwrap().unwrap();
        for vm in vim.vms_in(&folder).await.unwrap() {
            vim.destroy(&vm).await.unwrap();
        }
    });

    // A named volume: its disk uploaded to the datastore and attached to the VM as a second
    // disk on the pvscsi controller, the guestinfo naming its label; one writer at a time,
    // and no `volume rm` while a container mounts it.
    // Small: a flat VMDK's extent goes up whole.
    d.ok(&["volume", "create", "--opt", "size=16m", "data"]);
    let id = d
        .ok(&[
            "run",
            "-d",
            "--name",
            "vol1",
            "-v",
            "data:/data",
            IMAGE,
            "sh",
            "-c",
            "while :; do sleep 0.1; done",
        ])
        .trim()
        .to_string();
    d.wait_state("vol1", "running");
    let name = vm_name(&id);
    let volume_vmdk = "[LocalDS_0] tether/volumes/data.vmdk";
    let (disks, mounts) = env.disks_and_guest_mounts(&name);
    assert_eq!(
        disks,
        vec![
            (format!("[LocalDS_0] {name}/{name}.vmdk"), 0),
            (volume_vmdk.to_string(), 1)
        ]
    );
    let label = d.ok(&["volume", "inspect", "-f", "{{.Status.Label}}", "data"]);
    assert_eq!(
        mounts,
        vec![("/data".to_string(), format!("label://{}", label.trim()))]
    );
    // A flat VMDK: its descriptor names the extent beside it, which holds the ext4 whole.
    let on_ds = env.sim.datastore_dir.join("tether/volumes/data.vmdk");
    let flat = env.sim.datastore_dir.join("tether/volumes/data-flat.vmdk");
    let descriptor = std::fs::read_to_string(&on_ds).expect("the volume's descriptor");
    assert!(
        descriptor.contains("createType=\"monolithicFlat\""),
        "{descriptor}"
    );
    assert!(
        descriptor.contains("RW 32768 FLAT \"data-flat.vmdk\" 0"),
        "{descriptor}"
    );
    let vmdk = std::fs::read(&flat).expect("the volume's extent");
    assert_eq!(vmdk.len(), 16 << 20);
    assert_eq!(
        &vmdk[1024 + 0x38..1024 + 0x3a],
        [0x53, 0xef],
        "an ext4 superblock"
    );
    let ext4_label = String::from_utf8_lossy(&vmdk[1024 + 0x78..1024 + 0x88])
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(
        ext4_label,
        label.trim(),
        "the disk tether finds by that label"
    );
    let out = d.docker(&["volume", "rm", "data"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("remove data: volume is in use"), "{e}");
    let out = d.docker(&["run", "--rm", "-v", "data:/data", IMAGE, "true"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{e}");
    assert!(
        e.contains("volume data is in use by running container"),
        "{e}"
    );
    d.ok(&["stop", "-t", "1", "vol1"]);
    d.ok(&["rm", "vol1"]);
    assert_eq!(env.vms(), vec![], "no VM left");
    assert_eq!(
        std::fs::read(&flat).unwrap(),
        vmdk,
        "the volume outlives the VM, its disk untouched"
    );
    d.ok(&["volume", "rm", "data"]);
    assert!(
        !on_ds.exists() && !flat.exists(),
        "volume rm deleted its disk on the datastore"
    );
    assert_eq!(d.ok(&["ps", "-aq"]), "");

    // The datastore gone from the inventory after the appliance started.
    env.rt.block_on(async {
        let vim = client(&env.sim.url).await;
        let ds = vim
            .find_by_path("/DC0/datastore/LocalDS_0")
            .await
            .unwrap()
            .unwrap();
        vim.destroy(&MoRef::new("Datastore", &ds.id)).await.unwrap();
    });
    let out = d.docker(&["run", "--rm", IMAGE, "true"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{e}");
    assert!(e.contains("LocalDS_0"), "{e}");
    assert_eq!(env.vms(), vec![], "nothing half-created");
    assert_eq!(d.ok(&["ps", "-aq"]), "", "--rm removed the container");
}
