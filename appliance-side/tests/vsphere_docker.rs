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

    fn boots(&self) -> Vec<vcsim_support::guests::Boot> {
        self.guests.as_ref().unwrap().boots.lock().unwrap().clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.guests.take());
    }
}

fn vm_name(id: &str) -> String {
    format!("tether-{}", &id[..12])
}

#[test]
fn docker_run_stop_start_rm_drive_vms_in_the_simulator() {
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
}

#[test]
fn a_name_clash_or_a_missing_datastore_is_a_clear_docker_error_leaving_nothing() {
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

    // Volumes: refused at launch (not yet supported on vSphere), nothing created.
    let out = d.docker(&["run", "--rm", "-v", "/data", IMAGE, "true"]);
    let e = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{e}");
    assert!(
        e.contains("the container mounts 1 volume(s): volumes are not yet supported on the vsphere backend"),
        "{e}"
    );
    assert_eq!(env.vms(), vec![], "no VM for a refused container");
    assert_eq!(d.ok(&["ps", "-aq"]), "", "--rm removed the container");

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
