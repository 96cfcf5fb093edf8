//! `docker volume create/ls/inspect/rm/prune` and the volumes `docker create` asks for, with
//! the stock docker CLI against `appliance serve` (no VM boots here: containers are created,
//! never started), with docker's words for what is refused, and the volumes kept across a
//! restart of the server.

mod common;
// The image tests' module: this test takes its fixture archive only.
#[allow(dead_code)]
mod image_support;

use std::collections::BTreeSet;

use serde_json::Value;

use common::detached::{text, Detached};
use image_support::{fixtures, TAG};

fn volume_names(d: &Detached, extra: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["volume", "ls", "-q"];
    args.extend_from_slice(extra);
    d.ok(&args).lines().map(String::from).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn inspect_volume(d: &Detached, name: &str) -> Value {
    let v: Value = serde_json::from_str(&d.ok(&["volume", "inspect", name])).unwrap();
    v[0].clone()
}

/// The virtual size of a qcow2, by qemu-img.
fn virtual_size(disk: &str) -> u64 {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", disk])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{disk}");
    info["virtual-size"].as_u64().unwrap()
}

/// `docker create ARGS` exits 1 with a message containing `want`.
fn create_refused(d: &Detached, args: &[&str], want: &str) {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    let e = d.fails(&all);
    assert!(e.contains(want), "docker {all:?}: {e}");
}

#[test]
fn volumes_are_made_listed_inspected_refused_while_used_and_kept_across_a_restart() {
    let d = Detached::started("vol-api");
    assert_eq!(d.ok(&["volume", "create", "data"]), "data\n");
    d.ok(&[
        "volume",
        "create",
        "--opt",
        "size=64m",
        "--label",
        "team=core",
        "big",
    ]);
    // Made again: the same volume, docker's idempotent create.
    assert_eq!(d.ok(&["volume", "create", "data"]), "data\n");
    assert_eq!(volume_names(&d, &[]), set(&["big", "data"]));

    let big = inspect_volume(&d, "big");
    assert_eq!(big["Driver"], "local");
    assert_eq!(big["Scope"], "local");
    assert_eq!(big["Options"]["size"], "64m");
    assert_eq!(big["Labels"]["team"], "core");
    let label = big["Status"]["Label"].as_str().unwrap().to_string();
    assert!(label.len() <= 16 && !label.is_empty(), "{label}");
    assert_eq!(virtual_size(big["Mountpoint"].as_str().unwrap()), 64 << 20);
    let data = inspect_volume(&d, "data");
    assert_eq!(
        virtual_size(data["Mountpoint"].as_str().unwrap()),
        1 << 30,
        "1 GiB by default"
    );
    assert_ne!(data["Status"]["Label"], big["Status"]["Label"]);
    // Sparse: an empty 1 GiB volume takes a few MiB.
    assert!(
        data["Status"]["DiskUsage"].as_u64().unwrap() < 16 << 20,
        "{data}"
    );

    // What is refused, in docker's words (the CLI's exit 1).
    for (args, want) in [
        (
            &["volume", "create", "a"][..],
            "create a: volume name is too short",
        ),
        (
            &["volume", "create", "bad/name"],
            "\"bad/name\" includes invalid characters for a local volume name",
        ),
        (
            &["volume", "create", "-o", "type=nfs", "v2"],
            "create v2: invalid option: \"type\"",
        ),
        (
            &["volume", "create", "-o", "size=1m", "v2"],
            "at least 16 MiB",
        ),
        (
            &["volume", "create", "-d", "nfs", "v2"],
            "error looking up volume plugin nfs: plugin \"nfs\" not found",
        ),
        (&["volume", "inspect", "nope"], "get nope: no such volume"),
        (&["volume", "rm", "nope"], "get nope: no such volume"),
        (&["volume", "ls", "-f", "bogus=1"], "invalid filter 'bogus'"),
    ] {
        let e = d.fails(args);
        assert!(e.contains(want), "docker {args:?}: {e}");
    }
    d.ok(&["volume", "rm", "-f", "nope"]);
    assert!(!volume_names(&d, &[]).contains("v2"), "nothing half-made");

    // Containers: `-v NAME:PATH`, a new name made on the way, the image's VOLUME /data
    // anonymous, tmpfs by --mount and --tmpfs.
    d.ok(&["load", "-i", fixtures().docker.to_str().unwrap()]);
    let c1 = d
        .ok(&[
            "create",
            "--name",
            "c1",
            "-v",
            "data:/srv:ro",
            "-v",
            "fresh:/cache",
            "--mount",
            "type=tmpfs,target=/run/t,tmpfs-size=1048576",
            "--tmpfs",
            "/scratch:size=2m",
            TAG,
        ])
        .trim()
        .to_string();
    let all = volume_names(&d, &[]);
    assert_eq!(all.len(), 4, "{all:?}");
    let anonymous: Vec<&String> = all.iter().filter(|n| n.len() == 64).collect();
    assert_eq!(anonymous.len(), 1, "{all:?}");
    let anon = anonymous[0].clone();
    assert!(all.contains("fresh"));
    assert_eq!(
        inspect_volume(&d, &anon)["Labels"]["com.docker.volume.anonymous"],
        ""
    );
    let mounts: Value =
        serde_json::from_str(&d.ok(&["inspect", "-f", "{{json .Mounts}}", "c1"])).unwrap();
    let view: BTreeSet<(String, String, String, bool)> = mounts
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Type"].as_str().unwrap().to_string(),
                m["Name"].as_str().unwrap_or_default().to_string(),
                m["Destination"].as_str().unwrap().to_string(),
                m["RW"].as_bool().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String, bool)> = [
        ("volume", "data", "/srv", false),
        ("volume", "fresh", "/cache", true),
        ("volume", anon.as_str(), "/data", true),
        ("tmpfs", "", "/run/t", true),
        ("tmpfs", "", "/scratch", true),
    ]
    .iter()
    .map(|(t, n, p, rw)| (t.to_string(), n.to_string(), p.to_string(), *rw))
    .collect();
    assert_eq!(view, want);
    assert_eq!(volume_names(&d, &["-f", "dangling=true"]), set(&["big"]));
    let df = d.ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}} {{.TotalCount}} {{.Active}}",
    ]);
    assert!(df.contains("Local Volumes 4 3"), "{df}");
    assert_eq!(volume_names(&d, &["-f", "label=team=core"]), set(&["big"]));
    assert_eq!(volume_names(&d, &["-f", "name=fre"]), set(&["fresh"]));

    // In use (by a container that is not even running, as docker counts it): 409, naming it.
    let e = d.fails(&["volume", "rm", "data"]);
    assert!(
        e.contains(&format!("remove data: volume is in use - [{c1}]")),
        "{e}"
    );
    // Host paths have nothing to show in a VM: refused, saying why; nothing is made.
    create_refused(
        &d,
        &["-v", "/etc:/host-etc", TAG],
        "bind mounts of host paths are not supported (/etc:/host-etc): a containerVM shares no filesystem with the host",
    );
    create_refused(
        &d,
        &["--mount", "type=bind,source=/tmp,target=/t", TAG],
        "bind mounts of host paths are not supported",
    );
    create_refused(
        &d,
        &["-v", "data:/x", "-v", "big:/x", TAG],
        "Duplicate mount point: /x",
    );
    create_refused(&d, &["-v", "data:x", TAG], "mount path must be absolute");
    create_refused(&d, &["-v", "data:/x:rx", TAG], "invalid mode: rx");
    assert_eq!(
        volume_names(&d, &[]).len(),
        4,
        "a refused create made no volume"
    );

    // The server restarts: volumes, their disks and who uses them are all still there.
    let before = inspect_volume(&d, "data");
    d.stop();
    d.serve_ok();
    assert_eq!(volume_names(&d, &[]), all);
    assert_eq!(inspect_volume(&d, "data"), before);
    assert!(d
        .fails(&["volume", "rm", "data"])
        .contains("volume is in use"));

    // rm -v: the container's anonymous volume goes, named ones stay; then they can go.
    d.ok(&["rm", "-v", "c1"]);
    assert_eq!(volume_names(&d, &[]), set(&["big", "data", "fresh"]));
    d.ok(&["volume", "rm", "data"]);
    assert!(!std::path::Path::new(before["Mountpoint"].as_str().unwrap()).exists());

    // prune: unused anonymous volumes only, unless --all; a used one never.
    let c2 = d.ok(&["create", TAG]).trim().to_string();
    let c3 = d.ok(&["create", TAG]).trim().to_string();
    d.ok(&["rm", &c2]); // without -v: its anonymous volume stays, unused
    assert_eq!(volume_names(&d, &[]).len(), 4);
    let pruned = d.ok(&["volume", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    let left = volume_names(&d, &[]);
    assert_eq!(left.len(), 3, "{left:?}: only c2's anonymous volume went");
    assert!(left.contains("big") && left.contains("fresh"));
    d.ok(&["volume", "prune", "-af"]);
    assert_eq!(volume_names(&d, &[]).len(), 1, "c3's volume is in use");
    d.ok(&["rm", "-v", &c3]);
    assert!(volume_names(&d, &[]).is_empty());
    assert!(text(&d.docker(&["volume", "ls"]).stdout).starts_with("DRIVER"));
}
