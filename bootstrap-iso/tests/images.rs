//! docker save and OCI images to a root filesystem: layers in order, whiteouts, digests verified.

mod common;

use std::io::Write;
use std::path::Path;

use bootstrap::image::{detect, materialize, Error, Kind};
use common::scratch;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A layer tar with the given (path, contents) files; `None` contents is a directory.
fn layer(files: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000_000);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, c.as_bytes()).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn lower() -> Vec<u8> {
    layer(&[
        ("etc", None),
        ("etc/a", Some("a from layer 1\n")),
        ("etc/b", Some("b from layer 1\n")),
        ("data", None),
        ("data/old", Some("old\n")),
        ("keep", Some("kept\n")),
    ])
}

fn upper() -> Vec<u8> {
    layer(&[
        ("etc/.wh.a", Some("")),
        ("data/.wh..wh..opq", Some("")),
        ("data/new", Some("new\n")),
        ("etc/b", Some("b from layer 2\n")),
    ])
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn check_rootfs(root: &Path) {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    assert_eq!(read("etc/a"), None, "whiteout deleted etc/a");
    assert_eq!(
        read("etc/b").as_deref(),
        Some("b from layer 2\n"),
        "upper layer wins"
    );
    assert_eq!(
        read("data/old"),
        None,
        "opaque directory hid the lower content"
    );
    assert_eq!(read("data/new").as_deref(), Some("new\n"));
    assert_eq!(read("keep").as_deref(), Some("kept\n"));
    assert!(!root.join("etc/.wh.a").exists() && !root.join("data/.wh..wh..opq").exists());
    assert_dir_mtimes_recorded(root, &["etc", "data"]);
}

/// Directories carry the mtime their tar entry recorded, not the time files were unpacked
/// into them (the upper layer wrote into both).
fn assert_dir_mtimes_recorded(root: &Path, dirs: &[&str]) {
    use std::os::unix::fs::MetadataExt;
    for d in dirs {
        let m = std::fs::metadata(root.join(d)).unwrap();
        assert_eq!(m.mtime(), 1_000_000_000, "mtime of {d}/");
    }
}

/// A `docker save` tree (legacy layout): uncompressed layers, diff_ids in the config.
fn docker_save(dir: &Path) {
    let (l1, l2) = (lower(), upper());
    for (name, data) in [("l1", &l1), ("l2", &l2)] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join("layer.tar"), data).unwrap();
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex(&l1)), format!("sha256:{}", hex(&l2))]},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", hex(&config_bytes));
    std::fs::write(dir.join(&config_name), &config_bytes).unwrap();
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["t:latest"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]);
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

/// An OCI layout: gzip layers as blobs named by their digests.
fn oci(dir: &Path) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let h = hex(data);
        std::fs::write(blobs.join(&h), data).unwrap();
        h
    };
    let l1 = put(&gzip(&lower()));
    let l2 = put(&gzip(&upper()));
    let config = put(br#"{"architecture":"amd64","os":"linux"}"#);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config}"), "size": 1},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{l1}"), "size": 1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{l2}"), "size": 1},
        ],
    });
    let m = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{m}"), "size": 1}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    l2
}

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn docker_save_tarball_layers_apply_with_whiteouts() {
    let d = scratch("save");
    docker_save(&d.join("tree"));
    tar_dir(&d.join("tree"), &d.join("image.tar"));
    assert_eq!(detect(&d.join("image.tar")).unwrap(), Kind::ImageTar);
    let root = materialize(&d.join("image.tar"), &d.join("work")).unwrap();
    check_rootfs(&root);
}

#[test]
fn oci_layouts_as_directory_and_tar_apply_with_whiteouts() {
    let d = scratch("oci");
    oci(&d.join("layout"));
    assert_eq!(detect(&d.join("layout")).unwrap(), Kind::ImageDir);
    check_rootfs(&materialize(&d.join("layout"), &d.join("w1")).unwrap());
    tar_dir(&d.join("layout"), &d.join("layout.tar"));
    check_rootfs(&materialize(&d.join("layout.tar"), &d.join("w2")).unwrap());
}

#[test]
fn a_tampered_layer_is_refused_naming_the_digest() {
    let d = scratch("tamper");
    let upper_digest = oci(&d.join("layout"));
    let blob = d.join("layout/blobs/sha256").join(&upper_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = materialize(&d.join("layout"), &d.join("w"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&upper_digest) && err.contains("does not match its digest"),
        "{err}"
    );

    let d2 = scratch("tamper-save");
    docker_save(&d2.join("tree"));
    std::fs::write(d2.join("tree/l2/layer.tar"), layer(&[("evil", Some("x"))])).unwrap();
    let err = materialize(&d2.join("tree"), &d2.join("w"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer 2") && err.contains("does not match its digest"),
        "{err}"
    );
}

#[test]
fn a_plain_rootfs_tar_is_taken_as_it_is() {
    let d = scratch("plain");
    std::fs::write(d.join("rootfs.tar"), lower()).unwrap();
    assert_eq!(detect(&d.join("rootfs.tar")).unwrap(), Kind::RootfsTar);
    let root = materialize(&d.join("rootfs.tar"), &d.join("w")).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/a")).unwrap(),
        "a from layer 1\n"
    );
    assert_dir_mtimes_recorded(&root, &["etc", "data"]);
}

/// The tar format reads an empty file as an empty archive; taken as an image it would make an
/// empty disk. It is refused, naming the file.
#[test]
fn an_empty_file_is_refused_naming_it_not_taken_as_an_empty_image() {
    let d = scratch("empty");
    let empty = d.join("image.tar");
    std::fs::write(&empty, b"").unwrap();
    let err = materialize(&empty, &d.join("w")).unwrap_err();
    assert!(
        matches!(&err, Error::EmptyFile(p) if p == &empty),
        "{err:?}"
    );
    assert!(err.to_string().contains(&*empty.to_string_lossy()), "{err}");
    assert!(!d.join("w/rootfs").exists());
}

#[test]
fn a_file_that_is_not_a_tar_is_refused_naming_it() {
    let d = scratch("not-tar");
    let junk = d.join("image.tar");
    std::fs::write(&junk, vec![0xa5u8; 1500]).unwrap();
    let err = detect(&junk).unwrap_err();
    assert!(
        matches!(&err, Error::NotTar { path, .. } if path == &junk),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a tar archive"), "{err}");
}
