//! The store's rules on records put in directly, and archive reading on archives made here by
//! hand (the podman-built ones are in tests/images.rs).

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveError};
use super::load::LoadEvent;
use super::reference::parse_normalized;
use super::{ImageStore, StoreError};
use crate::home::Home;

fn temp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("img-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const A: &str = "aaaa000000000000000000000000000000000000000000000000000000000001";
const A2: &str = "aaaa000000000000000000000000000000000000000000000000000000000002";
const B: &str = "bbbb000000000000000000000000000000000000000000000000000000000003";

#[test]
fn references_resolve_in_every_form_docker_accepts() {
    let dir = temp("resolve");
    let store = ImageStore::new(Home::at(&dir));
    store.insert_for_tests(A, &["busybox", "localhost/app:v1"], "2024-01-01T00:00:00Z");
    store.insert_for_tests(A2, &[], "2024-01-02T00:00:00Z");
    store.insert_for_tests(B, &["user/tool:2"], "2023-06-01T00:00:00.5Z");
    let id = |r: &str| store.resolve(r).map(|i| i.id);
    let a = Some(format!("sha256:{A}"));
    for r in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
        "localhost/app:v1",
        &format!("sha256:{A}"),
        A,
    ] {
        assert_eq!(id(r), a, "{r}");
    }
    assert_eq!(id("user/tool:2"), Some(format!("sha256:{B}")));
    assert_eq!(id("bbbb"), Some(format!("sha256:{B}")));
    assert_eq!(id("sha256:bbbb"), Some(format!("sha256:{B}")));
    // Ambiguous prefixes, other tags, malformed names: nothing.
    for r in [
        &A[..63],
        "aaaa",
        "busybox:1",
        "localhost/app",
        "user/tool",
        "Busybox",
        "",
        "sha256:",
    ] {
        assert_eq!(id(r), None, "{r}");
    }
    // Docker's order: newest first; tags as docker shows them, sorted.
    let list = store.list();
    let ids: Vec<&str> = list.iter().map(|i| &i.id[7..]).collect();
    assert_eq!(ids, [A2, A, B]);
    assert_eq!(list[1].tags, ["busybox:latest", "localhost/app:v1"]);
    assert_eq!(list[1].short_id(), "aaaa00000000");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tag_moves_and_deleted_disks_wait_for_their_containers() {
    let dir = temp("tags");
    let store = ImageStore::new(Home::at(&dir));
    let a = store.insert_for_tests(A, &["app:1"], "2024-01-01T00:00:00Z");
    let b = store.insert_for_tests(B, &[], "2024-01-01T00:00:00Z");
    let tag = parse_normalized("app:1").unwrap();
    assert_eq!(store.tag(&b, &tag).unwrap(), Some(a.clone()));
    assert_eq!(store.tag(&b, &tag).unwrap(), None);
    assert_eq!(store.resolve("app:1").unwrap().id, b);
    assert!(store.resolve(&a).unwrap().tags.is_empty());
    assert!(store.untag(&b, &tag).unwrap());
    assert!(!store.untag(&b, &tag).unwrap());
    assert!(matches!(
        store.tag("sha256:nope", &tag),
        Err(StoreError::NoSuchImage(_))
    ));

    // Deleted with a container on it: gone from the list, the disk kept until unused.
    store.delete(&a, true).unwrap();
    assert!(store.resolve(&a).is_none());
    assert_eq!(store.list().len(), 1);
    let disk = dir.join("images").join(A).join("disk.qcow2");
    assert!(disk.exists());
    store.prune_removed(&|_| true).unwrap();
    assert!(disk.exists());
    store.prune_removed(&|_| false).unwrap();
    assert!(!dir.join("images").join(A).exists());
    store.delete(&b, false).unwrap();
    assert!(store.list().is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.join("images")).unwrap().collect();
    assert!(left.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a tar of `members` (name, bytes) to `path`.
fn tar_of(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// A one-file layer tar and a config naming it, as docker writes them.
fn layer_and_config(arch: &str) -> (Vec<u8>, Vec<u8>) {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_cksum();
    layer.append_data(&mut h, "hello", &b"hi\n"[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let config = json!({
        "created": "2024-05-06T07:08:09.123Z",
        "os": "linux",
        "architecture": arch,
        "config": {"Cmd": ["/hello"], "Env": ["A=1"], "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&layer))]},
    });
    (layer, serde_json::to_vec(&config).unwrap())
}

fn read(archive: &Path) -> Result<Vec<archive::Candidate>, ArchiveError> {
    let out = archive.with_extension("d");
    let _ = std::fs::remove_dir_all(&out);
    archive::unpack(archive, &out)?;
    archive::read(&out)
}

#[test]
fn docker_save_archives_give_their_id_tags_and_config() {
    let dir = temp("docker");
    let (layer, config) = layer_and_config("amd64");
    let id = hex(&config);
    let manifest = |tags: serde_json::Value, cfg: &str| {
        serde_json::to_vec(&json!([{"Config": cfg, "RepoTags": tags, "Layers": ["l/layer.tar"]}]))
            .unwrap()
    };
    let cfg_name = format!("blobs/sha256/{id}");
    let good = dir.join("good.tar");
    tar_of(
        &good,
        &[
            (&cfg_name, config.clone()),
            ("l/layer.tar", layer.clone()),
            (
                "manifest.json",
                manifest(json!(["app:1", "docker.io/x/y:z"]), &cfg_name),
            ),
        ],
    );
    let found = read(&good).unwrap();
    assert_eq!(found.len(), 1);
    let c = &found[0];
    assert_eq!(c.file.id, format!("sha256:{id}"));
    assert_eq!(c.file.created, "2024-05-06T07:08:09.123Z");
    assert_eq!(c.file.config.cmd, Some(vec!["/hello".to_string()]));
    assert_eq!(c.file.config.entrypoint, None);
    assert_eq!(c.file.config.exposed_ports, ["80/tcp"]);
    let tags: Vec<String> = c.tags.iter().map(|t| t.familiar()).collect();
    assert_eq!(tags, ["app:1", "x/y:z"]);

    let case = |name: &str, members: &[(&str, Vec<u8>)]| {
        let p = dir.join(name);
        tar_of(&p, members);
        read(&p).map(|_| ()).unwrap_err().to_string()
    };
    let wrong = format!("blobs/sha256/{}", "0".repeat(64));
    let e = case(
        "mismatch.tar",
        &[
            (&wrong, config.clone()),
            ("l/layer.tar", layer.clone()),
            ("manifest.json", manifest(json!([]), &wrong)),
        ],
    );
    assert!(
        e.contains(&format!("{wrong} in the archive does not match its digest")),
        "{e}"
    );
    let e = case(
        "missing.tar",
        &[
            (&cfg_name, config.clone()),
            ("manifest.json", manifest(json!([]), &cfg_name)),
        ],
    );
    assert!(
        e.contains("names l/layer.tar but does not contain it"),
        "{e}"
    );
    let e = case(
        "badtag.tar",
        &[
            (&cfg_name, config.clone()),
            ("l/layer.tar", layer.clone()),
            ("manifest.json", manifest(json!(["App:1"]), &cfg_name)),
        ],
    );
    assert!(e.contains("invalid tag \"App:1\""), "{e}");
    let e = case(
        "escape.tar",
        &[
            ("l/layer.tar", layer.clone()),
            ("manifest.json", manifest(json!([]), "../../etc/passwd")),
        ],
    );
    assert!(e.contains("../../etc/passwd"), "{e}");
    let (layer_arm, config_arm) = layer_and_config("arm64");
    let arm = format!("blobs/sha256/{}", hex(&config_arm));
    let e = case(
        "arm.tar",
        &[
            (&arm, config_arm),
            ("l/layer.tar", layer_arm),
            ("manifest.json", manifest(json!([]), &arm)),
        ],
    );
    assert_eq!(
        e,
        "cannot load linux/arm64 image: containerVMs here run linux/amd64"
    );
    // A manifest that is a link out of the archive (here to an endless device) is refused,
    // not read.
    let link = dir.join("link.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&link).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "manifest.json", "/dev/zero").unwrap();
    b.finish().unwrap();
    drop(b);
    let e = read(&link).map(|_| ()).unwrap_err().to_string();
    assert_eq!(
        e,
        "\"manifest.json\" in the archive points outside the archive"
    );
    let e = case("none.tar", &[("hello.txt", b"hi".to_vec())]);
    assert!(e.contains("neither manifest.json"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn oci_archives_follow_the_index_to_linux_amd64_and_take_full_ref_names() {
    let dir = temp("oci");
    let (layer, config) = layer_and_config("amd64");
    let blob = |b: &[u8]| (format!("blobs/sha256/{}", hex(b)), b.to_vec());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": {"digest": format!("sha256:{}", hex(&config))},
        "layers": [{"digest": format!("sha256:{}", hex(&layer))}],
    }))
    .unwrap();
    let nested = serde_json::to_vec(&json!({"manifests": [
        {"digest": format!("sha256:{}", "1".repeat(64)), "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": format!("sha256:{}", hex(&manifest)), "platform": {"os": "linux", "architecture": "amd64"}},
    ]}))
    .unwrap();
    let index = |annotations: serde_json::Value| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{}", hex(&nested)),
            "annotations": annotations,
        }]}))
        .unwrap()
    };
    let members = |index: Vec<u8>| {
        let blobs = [blob(&layer), blob(&config), blob(&manifest), blob(&nested)];
        let mut m: Vec<(String, Vec<u8>)> = blobs.to_vec();
        m.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        m.push(("index.json".into(), index));
        m
    };
    let load = |name: &str, annotations: serde_json::Value| {
        let p = dir.join(name);
        let m = members(index(annotations));
        let refs: Vec<(&str, Vec<u8>)> = m.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        tar_of(&p, &refs);
        read(&p)
    };
    let found = load(
        "full.tar",
        json!({"io.containerd.image.name": "docker.io/library/app:3",
               "org.opencontainers.image.ref.name": "3"}),
    )
    .unwrap();
    assert_eq!(found[0].file.id, format!("sha256:{}", hex(&config)));
    assert_eq!(found[0].tags[0].familiar(), "app:3");
    let found = load(
        "ref.tar",
        json!({"org.opencontainers.image.ref.name": "localhost/a:b"}),
    )
    .unwrap();
    assert_eq!(found[0].tags[0].familiar(), "localhost/a:b");
    // A bare ref name is a tag without a repository: the image loads untagged.
    let found = load(
        "bare.tar",
        json!({"org.opencontainers.image.ref.name": "v1"}),
    )
    .unwrap();
    assert!(found[0].tags.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_named_and_a_load_leaves_no_work_directory() {
    let dir = temp("badload");
    let store = ImageStore::new(Home::at(&dir));
    let cases: [(&[u8], &str); 3] = [
        (b"", "empty archive"),
        (b"not a tar at all", "not a tar archive"),
        (&[0u8; 2048], "not a tar archive (it has no entries)"),
    ];
    for (bytes, want) in cases {
        let work = store.begin_load().unwrap();
        std::fs::write(work.archive(), bytes).unwrap();
        let mut events = Vec::new();
        let err = store
            .load(&work, &mut |e: LoadEvent| events.push(e), None)
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(events.is_empty());
        drop(work);
        let left: Vec<_> = std::fs::read_dir(dir.join("images")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
    // A dead process's work directory is swept by the next load.
    let stale = dir.join("images/.load-999999999-00.work");
    std::fs::create_dir_all(&stale).unwrap();
    drop(store.begin_load().unwrap());
    assert!(!stale.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
