//! `docker run` of an image that is not in the store: the stock CLI gets the 404 "No such
//! image" from create, pulls the image itself (`POST /images/create`) from Debian's
//! docker-registry on 127.0.0.1, creates again, and the three-layer image boots as a real
//! containerVM whose filesystem is every layer applied in order.

use std::path::Path;
use std::process::Command;

use e2e::registry::{skopeo, Registry};
use e2e::{busybox_image_archive, text, Appliance};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sha(b: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// A gzipped tar (root-owned, mtime 0) of `files` under a fresh directory; (blob, diff id).
fn layer(work: &Path, name: &str, files: &[(&str, &str)]) -> (Vec<u8>, String) {
    let root = work.join(name);
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let tar = Command::new("tar")
        .args([
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(&root)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut gz = Command::new("gzip")
        .arg("-nc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    gz.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let out = gz.wait_with_output().unwrap();
    (out.stdout, sha(&tar.stdout))
}

/// Layers above busybox: each a name and its files.
type Tops<'a> = &'a [(&'a str, &'a [(&'a str, &'a str)])];

/// The podman busybox image with `tops` layered on it, as an OCI layout at `dir/name` tagged
/// `name`; returns the image id (its config's digest) and its layers' blob digests.
fn layout_on_busybox(dir: &Path, name: &str, tops: Tops) -> (String, Vec<String>) {
    let (archive, _) = busybox_image_archive();
    let layout = dir.join(name);
    skopeo(
        &[
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:base", layout.display()),
        ],
        dir,
    );
    let blobs = layout.join("blobs/sha256");
    let blob = |d: &str| std::fs::read(blobs.join(&d[7..])).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let mut config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    for (top, files) in tops {
        let (gz, diff_id) = layer(&dir.join(format!("src-{name}")), top, files);
        std::fs::write(blobs.join(&sha(&gz)[7..]), &gz).unwrap();
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .push(json!(diff_id));
        manifest["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha(&gz), "size": gz.len(),
        }));
    }
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let config = serde_json::to_vec(&config).unwrap();
    std::fs::write(blobs.join(&sha(&config)[7..]), &config).unwrap();
    manifest["config"]["digest"] = json!(sha(&config));
    manifest["config"]["size"] = json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(blobs.join(&sha(&manifest)[7..]), &manifest).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": name},
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    (sha(&config), layers)
}

const LAYER_TWO: (&str, &[(&str, &str)]) = ("two", &[("etc/greeting", "hello from layer two\n")]);

/// Busybox, then a file, then another that changes it, as the layout `three`.
fn three_layer_layout(dir: &Path) -> String {
    let three: &[(&str, &str)] = &[
        ("etc/greeting", "hello from layer three\n"),
        ("etc/layer3", "3\n"),
    ];
    layout_on_busybox(dir, "three", &[LAYER_TWO, ("three", three)]).0
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn docker_run_of_an_image_not_pulled_pulls_it_from_the_registry_and_boots_it() {
    let dir = temp_dir("pull");
    let id = three_layer_layout(&dir);
    let reg = Registry::start("pull-run");
    reg.push(
        &format!("oci:{}:three", dir.join("three").display()),
        "tether/three:e2e",
    );
    let image = format!("{}/tether/three:e2e", reg.addr);

    let app = Appliance::start_process("pull-run");
    let out = app.docker(&["run", "--rm", &image, "cat /etc/greeting /etc/layer3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // The CLI's own words, then the pull's progress, on stderr; the process's output on stdout.
    assert!(
        stderr.contains(&format!("Unable to find image '{image}' locally")),
        "{stderr}"
    );
    assert!(
        stderr.contains("e2e: Pulling from tether/three"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Status: Downloaded newer image for {image}")),
        "{stderr}"
    );
    assert_eq!(stdout, "hello from layer three\n3\n");

    let images = app.docker(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Repository}}:{{.Tag}}",
    ]);
    assert_eq!(text(&images.stdout), format!("{id} {image}\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_pull_on_the_same_lower_layers_downloads_only_its_own() {
    let dir = temp_dir("pull-shared");
    let greeting: &[(&str, &str)] = &[("etc/greeting", "hello from image a\n")];
    let (_, a_layers) = layout_on_busybox(&dir, "a", &[LAYER_TWO, ("a", greeting)]);
    let greeting: &[(&str, &str)] = &[("etc/greeting", "hello from image b\n")];
    let (b_id, b_layers) = layout_on_busybox(&dir, "b", &[LAYER_TWO, ("b", greeting)]);
    assert_eq!(
        a_layers[..2],
        b_layers[..2],
        "busybox and layer two are shared"
    );
    assert_ne!(a_layers[2], b_layers[2]);
    let reg = Registry::start("pull-shared");
    for name in ["a", "b"] {
        let src = format!("oci:{}:{name}", dir.join(name).display());
        reg.push(&src, &format!("tether/{name}:v1"));
    }
    let (a, b) = (
        format!("{}/tether/a:v1", reg.addr),
        format!("{}/tether/b:v1", reg.addr),
    );

    let app = Appliance::start_process("pull-shared");
    let pull = |name: &str| {
        let out = app.docker(&["pull", name]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
        stdout
    };
    pull(&a);
    for d in &a_layers {
        assert_eq!(reg.blob_gets(d), 1, "{d}");
    }
    // The lower layers are in the layer store, known by their blobs' recorded DiffIDs: not
    // fetched again, and docker's "Already exists" says so.
    let out = pull(&b);
    for d in &b_layers[..2] {
        assert!(
            out.contains(&format!("{}: Already exists", &d[7..19])),
            "{out}"
        );
        assert_eq!(reg.blob_gets(d), 1, "{d} fetched again:\n{out}");
    }
    assert!(
        out.contains(&format!("{}: Pull complete", &b_layers[2][7..19])),
        "{out}"
    );
    assert_eq!(reg.blob_gets(&b_layers[2]), 1);
    assert_eq!(app.inspect(&b, "{{.Id}}").trim(), b_id);

    // b's chain: the shared layers below, its own on top.
    // The image's entrypoint is `sh -c`: the command is one string.
    let out = app.docker(&["run", "--rm", &b, "cat /etc/greeting"]);
    assert_eq!(
        text(&out.stdout),
        "hello from image b\n",
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
