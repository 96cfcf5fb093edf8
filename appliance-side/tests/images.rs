//! `docker load`, `images`, `image inspect`, `tag` and `rmi` with the stock docker CLI against
//! `appliance serve`, on archives Debian's podman builds here from a `FROM scratch` Containerfile
//! holding the static busybox (`podman build --isolation=chroot`, then `podman save` as
//! docker-archive and oci-archive), in a podman store of its own under the test's directory.

mod common;
mod image_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use image_support::{docker_config, fixtures, member, oci_id, short, sorted, Server, TAG};

/// `archive` loads as [`TAG`], and image `id` is then the one image, under that tag.
fn loads_as_tag(s: &Server, archive: &std::path::Path, id: &str) {
    assert_eq!(s.load(archive), format!("Loaded image: {TAG}\n"));
    assert_eq!(s.images(&[]), [format!("{} {TAG}", short(id))]);
}

#[test]
fn docker_archive_loads_with_its_config_and_builds_the_disk_once() {
    let f = fixtures();
    let (config, id) = docker_config(&f.docker);
    let s = Server::start("docker");
    loads_as_tag(&s, &f.docker, &id);

    let i = s.inspect(TAG);
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["RepoTags"], serde_json::json!([TAG]));
    assert_eq!(i["Os"], "linux");
    assert_eq!(i["Architecture"], "amd64");
    assert_eq!(i["Created"], config["created"]);
    assert_eq!(i["RootFS"]["Type"], "layers");
    assert_eq!(i["RootFS"]["Layers"], config["rootfs"]["diff_ids"]);
    let c = &i["Config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/busybox"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo", "hi"]));
    let env: BTreeSet<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(env, BTreeSet::from(["GREETING=hello", "PATH=/bin"]));
    assert_eq!(c["WorkingDir"], "/work");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["org.example.kind"], "test");
    assert_eq!(c["Labels"]["org.example.name"], "tether images");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    // The busybox binary is the image's content; docker's size counts it.
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    let size = i["Size"].as_u64().unwrap();
    assert!(size >= busybox && size < busybox + 4096, "size {size}");

    // Every reference form docker accepts names it.
    for name in [&id[..], &id[7..], short(&id), "localhost/tether-test:v1"] {
        assert_eq!(s.inspect(name)["Id"], id.as_str(), "{name}");
    }

    // The disk is a qcow2, built once: a second load only (re)tags.
    let disk = s.image_disk(&id);
    let magic = std::fs::read(&disk).unwrap();
    assert_eq!(&magic[..4], b"QFI\xfb");
    let built = std::fs::metadata(&disk).unwrap().modified().unwrap();
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), built);
    assert_eq!(s.ok(&["info", "--format", "{{.Images}}"]).trim(), "1");
    let layer = disk
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    assert_eq!(
        s.image_dir_entries(),
        BTreeSet::from([id[7..].to_string(), format!("layers/{layer}")])
    );
}

#[test]
fn oci_archive_gives_the_same_image_as_docker_archive() {
    let f = fixtures();
    let id = oci_id(&f.oci);
    assert_eq!(id, docker_config(&f.docker).1);
    let s = Server::start("oci");
    assert_eq!(s.load(&f.oci), format!("Loaded image: {TAG}\n"));
    let i = s.inspect(TAG);
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["Config"]["WorkingDir"], "/work");
    loads_as_tag(&s, &f.docker, &id);
}

#[test]
fn untagged_archive_loads_by_id_and_lists_as_none() {
    let f = fixtures();
    let (_, id) = docker_config(&f.untagged);
    let s = Server::start("untagged");
    assert_eq!(s.load(&f.untagged), format!("Loaded image ID: {id}\n"));
    assert_eq!(s.images(&[]), [format!("{} <none>:<none>", short(&id))]);
    assert_eq!(s.images(&["--filter", "dangling=true"]).len(), 1);
    assert!(s.images(&["--filter", "dangling=false"]).is_empty());
    assert_eq!(s.inspect(short(&id))["RepoTags"], serde_json::json!([]));
    assert_eq!(s.ok(&["rmi", short(&id)]), format!("Deleted: {id}\n"));
    assert!(s.images(&[]).is_empty());
    assert!(s.image_dir_entries().is_empty());
}

#[test]
fn tag_filter_and_rmi_follow_dockers_rules() {
    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let sid = short(&id);
    let s = Server::start("tags");
    s.load(&f.docker);
    assert_eq!(s.ok(&["tag", TAG, "tbox"]), "");
    assert_eq!(s.ok(&["tag", sid, "example.com/team/app:2"]), "");
    assert_eq!(
        s.images(&[]),
        [
            format!("{sid} example.com/team/app:2"),
            format!("{sid} {TAG}"),
            format!("{sid} tbox:latest"),
        ]
    );
    assert_eq!(
        s.inspect("docker.io/library/tbox:latest")["RepoTags"],
        serde_json::json!(["example.com/team/app:2", TAG, "tbox:latest"])
    );
    // Filters: a reference glob keeps the tags it matches; labels and dangling whole images.
    assert_eq!(s.images(&["tbox"]), [format!("{sid} tbox:latest")]);
    assert_eq!(
        s.images(&["--filter", "reference=*/*"]),
        [format!("{sid} {TAG}")]
    );
    assert_eq!(
        s.images(&["--filter", "label=org.example.kind=test"]).len(),
        3
    );
    assert_eq!(s.images(&["--filter", "label=org.example.name"]).len(), 3);
    assert!(s
        .images(&["--filter", "label=org.example.kind=prod"])
        .is_empty());
    assert!(s.images(&["--filter", "dangling=true"]).is_empty());
    assert!(s
        .fails(&["images", "--filter", "colour=blue"])
        .contains("invalid filter 'colour'"));

    // Unknown images: 404, exit 1.
    assert!(s
        .fails(&["rmi", "nosuch"])
        .contains("Error response from daemon: No such image: nosuch:latest"));
    assert!(s
        .fails(&["tag", "nosuch", "x"])
        .contains("No such image: nosuch:latest"));
    assert!(s
        .fails(&["image", "inspect", "nosuch"])
        .contains("No such image: nosuch"));

    // By id with several tags: refused without force.
    assert!(s.fails(&["rmi", sid]).contains(&format!(
        "conflict: unable to delete {sid} (must be forced) - image is referenced in multiple \
         repositories"
    )));
    // By tag: only that tag goes while others are left.
    assert_eq!(s.ok(&["rmi", "tbox"]), "Untagged: tbox:latest\n");
    assert_eq!(s.images(&[]).len(), 2);
    // Forced by id: every tag, then the image.
    assert_eq!(
        s.ok(&["rmi", "-f", sid]),
        format!("Untagged: example.com/team/app:2\nUntagged: {TAG}\nDeleted: {id}\n")
    );
    assert!(s.images(&[]).is_empty());
    assert!(s.image_dir_entries().is_empty());

    // The last tag takes the image with it.
    s.load(&f.docker);
    assert_eq!(
        s.ok(&["rmi", TAG]),
        format!("Untagged: {TAG}\nDeleted: {id}\n")
    );
    assert!(s.image_dir_entries().is_empty());
}

#[test]
fn a_second_image_with_the_same_tag_takes_it() {
    let f = fixtures();
    let (_, first) = docker_config(&f.docker);
    let (_, second) = docker_config(&f.other);
    assert_ne!(first, second);
    let s = Server::start("retag");
    s.load(&f.docker);
    assert_eq!(
        s.load(&f.other),
        format!(
            "The image {TAG} already exists, renaming the old one with ID {first} to empty \
             string\nLoaded image: {TAG}\n"
        )
    );
    assert_eq!(
        s.images(&[]),
        sorted([
            format!("{} <none>:<none>", short(&first)),
            format!("{} {TAG}", short(&second)),
        ])
    );
    assert_eq!(
        s.inspect(TAG)["Config"]["Labels"]["org.example.kind"],
        "other"
    );
    // Newest first, as docker lists.
    let ids = s.ok(&["images", "-q"]);
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        [short(&second), short(&first)]
    );
}

#[test]
fn rmi_refuses_an_image_a_container_uses() {
    use appliance::home::Home;
    use appliance::store::records::{self, NewContainer};
    use appliance::store::state::{ContainerStatus, State};

    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let sid = short(&id);
    let s = Server::start("inuse");
    s.load(&f.docker);
    let home = Home::at(&s.home);
    let (rec, _) = records::create(
        &home,
        &NewContainer {
            args: vec!["/bin/busybox".into(), "true".into()],
            image: id.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let cid = &rec.id[..12];
    assert!(s.fails(&["rmi", TAG]).contains(&format!(
        "conflict: unable to remove repository reference \"{TAG}\" (must force) - container \
         {cid} is using its referenced image {sid}"
    )));
    assert!(s.fails(&["rmi", sid]).contains(&format!(
        "conflict: unable to delete {sid} (must be forced) - image is being used by stopped \
         container {cid}"
    )));

    let dir = home.container(&rec.id);
    let mut state = State::load(&dir);
    state.status = ContainerStatus::Running;
    state.save(&dir).unwrap();
    assert!(s.fails(&["rmi", "-f", sid]).contains(&format!(
        "conflict: unable to delete {sid} (cannot be forced) - image is being used by running \
         container {cid}"
    )));
    // Forcing the last tag off a running container's image untags it and keeps it.
    assert_eq!(s.ok(&["rmi", "-f", TAG]), format!("Untagged: {TAG}\n"));
    assert_eq!(s.images(&[]), [format!("{sid} <none>:<none>")]);

    // Stopped: forced removal deletes the image, but its disk stays under the container's.
    let disk = s.image_disk(&id);
    state.status = ContainerStatus::Exited;
    state.save(&dir).unwrap();
    assert_eq!(s.ok(&["rmi", "-f", sid]), format!("Deleted: {id}\n"));
    assert!(s.images(&[]).is_empty());
    assert!(s
        .fails(&["image", "inspect", sid])
        .contains("No such image"));
    assert!(disk.exists());
    // Once no container uses it, the next removal takes the disk too.
    std::fs::remove_dir_all(&dir).unwrap();
    let (_, other) = docker_config(&f.other);
    s.load(&f.other);
    assert_eq!(
        s.ok(&["rmi", TAG]),
        format!("Untagged: {TAG}\nDeleted: {other}\n")
    );
    assert!(s.image_dir_entries().is_empty());
}

/// Where the first member's data (padded to tar's 512-byte blocks) ends.
fn first_member_end(archive: &Path) -> usize {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let e = a.entries().unwrap().next().unwrap().unwrap();
    (e.raw_file_position() + e.size().div_ceil(512) * 512) as usize
}

/// `archive` rewritten member by member, `change` editing each member's bytes.
fn rewrite(archive: &Path, out: &Path, change: impl Fn(&str, &mut Vec<u8>)) {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut header = e.header().clone();
        if header.entry_type().is_symlink() {
            b.append(&header, std::io::empty()).unwrap();
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        change(&name, &mut data);
        header.set_size(data.len() as u64);
        header.set_cksum();
        b.append(&header, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn bad_archives_fail_with_the_reason_and_leave_nothing() {
    let f = fixtures();
    let (config, _) = docker_config(&f.docker);
    let manifest: Value = serde_json::from_slice(&member(&f.docker, "manifest.json")).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap().to_string();
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let s = Server::start("bad");
    let dir = s.home.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let whole = std::fs::read(&f.docker).unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut cases: Vec<(PathBuf, String)> = vec![
        (write("empty.tar", b""), "empty archive".into()),
        (write("garbage.tar", &garbage), "not a tar archive".into()),
        (
            write("text.tar", b"hello, world\n"),
            "not a tar archive".into(),
        ),
        (
            write("cut.tar", &whole[..whole.len() / 2]),
            format!("the archive is truncated or corrupt: {layer_name} ends early"),
        ),
        (
            write("cut-at-member.tar", &whole[..first_member_end(&f.docker)]),
            "the archive is truncated or corrupt: it ends after entry 1 without tar's \
             end-of-archive blocks"
                .into(),
        ),
    ];
    let changed = dir.join("config.tar");
    rewrite(&f.docker, &changed, |name, data| {
        if name == config_name {
            let s = String::from_utf8(data.clone()).unwrap();
            *data = s.replace("GREETING=hello", "GREETING=hellx").into_bytes();
        }
    });
    cases.push((
        changed,
        format!("{config_name} in the archive does not match its digest"),
    ));
    let layer = dir.join("layer.tar");
    rewrite(&f.docker, &layer, |name, data| {
        if name == layer_name {
            let at = data.len() / 2;
            data[at] ^= 1;
        }
    });
    cases.push((
        layer,
        format!("layer 1 ({layer_name}) does not match its diff id"),
    ));
    let no_manifest = dir.join("no-manifest.tar");
    rewrite(&f.docker, &no_manifest, |name, data| {
        if name == "manifest.json" {
            *data = b"{not json".to_vec();
        }
    });
    cases.push((
        no_manifest,
        "manifest.json in the archive is not valid".into(),
    ));
    assert!(config["config"].is_object());

    for (archive, want) in &cases {
        let err = s.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(
            err.contains(want.as_str()),
            "{}: wanted {want:?} in {err:?}",
            archive.display()
        );
        assert!(
            s.image_dir_entries().is_empty(),
            "{} left {:?}",
            archive.display(),
            s.image_dir_entries()
        );
    }
    assert!(s.images(&[]).is_empty());
    // Nothing broken stays either: the same server still loads a good archive.
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
}

#[test]
fn images_survive_a_server_restart() {
    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let (_, other) = docker_config(&f.other);
    let s = Server::start("restart");
    s.load(&f.docker);
    s.ok(&["tag", TAG, "kept:1"]);
    s.load(&f.other);
    let before = s.images(&[]);
    assert_eq!(
        before,
        sorted([
            format!("{} kept:1", short(&id)),
            format!("{} {TAG}", short(&other)),
        ])
    );
    s.stop();
    s.serve_ok();
    assert_eq!(s.images(&[]), before);
    assert_eq!(s.inspect("kept:1")["Id"], id.as_str());
    assert_eq!(s.inspect(TAG)["Id"], other.as_str());
}
