//! What a pull keeps and records beside the image, with the stock docker CLI against
//! `appliance serve` and Debian's docker-registry (or, to hold a download in flight, the fake
//! registry of `registry_support/fake.rs`) on 127.0.0.1: docker's digest references
//! (`RepoDigests`, `docker images --digests`, `<none>` tags for a pull by digest, create by
//! `repo@sha256:…`); no blob kept once the image is built, none collected under a pull in
//! flight; a layer the store has already not downloaded again ("Already exists").

mod common;
mod registry_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::detached::{succeeded, text};
use serde_json::json;

use registry_support::fake::{self, Answer, Fake, Gate};
use registry_support::{
    layer, three_layer_image, Appliance, Image, Registry, RegistryOpts, TempDir,
};

fn push(reg: &Registry, image: &Image, dir: &TempDir, name: &str, tag: &str) {
    let layout = dir.0.join(format!("layout-{}", name.replace('/', "-")));
    image.write_layout(&layout, tag);
    reg.push(&layout, tag, name, None);
}

/// `docker images --digests` rows: repository, tag, digest, full id.
fn digest_rows(app: &Appliance) -> Vec<String> {
    let format = "{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}}";
    let out = app.ok(&["images", "--digests", "--no-trunc", "--format", format]);
    let mut rows: Vec<String> = out.lines().map(String::from).collect();
    rows.sort();
    rows
}

#[test]
fn a_pull_by_digest_then_by_tag_records_the_manifest_digest_per_repository() {
    let dir = TempDir::new("refs");
    let reg = Registry::start("refs", RegistryOpts::default());
    let image = three_layer_image();
    push(&reg, &image, &dir, "tether/refs", "v1");
    let app = Appliance::start("refs", &[]);
    let repo = format!("{}/tether/refs", reg.addr);
    let digest = image.manifest_digest();
    let by_digest = format!("{repo}@{digest}");
    let id = image.id();

    // docker create by digest of an image not here: the CLI pulls it by digest, and the
    // create then resolves the digest reference.
    let out = app.docker(&["create", "--name", "c1", &by_digest]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("Unable to find image '{by_digest}' locally")),
        "{err}"
    );
    assert!(err.contains(&format!("Digest: {digest}")), "{err}");
    assert!(
        err.contains(&format!("Status: Downloaded newer image for {by_digest}")),
        "{err}"
    );
    assert_eq!(
        app.ok(&["inspect", "-f", "{{.Config.Image}}", "c1"]).trim(),
        by_digest
    );

    // Pulled by digest only: no tag, one digest reference; docker shows the tag as <none>.
    let i = app.inspect(&by_digest);
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["RepoTags"], json!([]));
    assert_eq!(i["RepoDigests"], json!([by_digest]));
    assert_eq!(digest_rows(&app), [format!("{repo} <none> {digest} {id}")]);
    let table = app.ok(&["images"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], [repo.as_str(), "<none>", &id[7..19]], "{table}");
    // Untagged, so dangling (digest references do not count, as on docker).
    let dangling = app.ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert_eq!(dangling.trim(), id);
    // A tag beside the digest is ignored, as docker's reference store does.
    assert_eq!(
        app.inspect(&format!("{repo}:other@{digest}"))["Id"],
        id.as_str()
    );

    // Pulled again by tag: nothing is downloaded, the image gains the tag (which dockerd
    // reports as a newer image for it) and keeps its one digest reference.
    let tagged = format!("{repo}:v1");
    let out = app.ok(&["pull", &tagged]);
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {tagged}")),
        "{out}"
    );
    assert_eq!(out.matches(": Already exists").count(), 3, "{out}");
    let i = app.inspect(&tagged);
    assert_eq!(i["RepoTags"], json!([tagged]));
    assert_eq!(i["RepoDigests"], json!([by_digest]));
    assert_eq!(digest_rows(&app), [format!("{repo} v1 {digest} {id}")]);
    assert_eq!(
        app.ok(&["images", "-q", "--filter", "dangling=true"])
            .trim(),
        ""
    );

    // rmi of the repository's last tag takes its digest reference too, then the image (once
    // its container is gone).
    app.ok(&["rm", "c1"]);
    let out = app.ok(&["rmi", &tagged]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("Untagged: {tagged}"),
            format!("Untagged: {by_digest}"),
            format!("Deleted: {id}"),
        ],
        "{out}"
    );
    assert!(app.images().is_empty());
    let err = app.fails(&["image", "inspect", &by_digest]);
    assert!(
        err.contains(&format!("No such image: {by_digest}")),
        "{err}"
    );
}

#[test]
fn rmi_of_a_digest_reference_keeps_the_tag_and_a_loaded_image_has_no_digests() {
    let dir = TempDir::new("refs-rmi");
    let reg = Registry::start("refs-rmi", RegistryOpts::default());
    let image = three_layer_image();
    push(&reg, &image, &dir, "tether/rmi", "v1");
    let app = Appliance::start("refs-rmi", &[]);
    let repo = format!("{}/tether/rmi", reg.addr);
    let by_digest = format!("{repo}@{}", image.manifest_digest());
    let tagged = format!("{repo}:v1");
    app.ok(&["pull", &tagged]);
    assert_eq!(app.inspect(&tagged)["RepoDigests"], json!([by_digest]));

    let out = app.ok(&["rmi", &by_digest]);
    assert_eq!(out.trim(), format!("Untagged: {by_digest}"));
    let i = app.inspect(&tagged);
    assert_eq!(i["RepoDigests"], json!([]));
    assert_eq!(i["RepoTags"], json!([tagged]));
    assert_eq!(
        digest_rows(&app),
        [format!("{repo} v1 <none> {}", image.id())]
    );
    // No longer resolvable by that digest reference; by the image's own id as a digest, yes.
    let err = app.fails(&["image", "inspect", &by_digest]);
    assert!(err.contains("No such image"), "{err}");
    assert_eq!(
        app.inspect(&format!("{repo}@{}", image.id()))["Id"],
        image.id().as_str()
    );
}

#[test]
fn a_pull_keeps_no_blob_and_a_collection_spares_those_of_a_pull_in_flight() {
    let x = three_layer_image();
    let y = Image::new(
        vec![layer(&[("etc/y", 0o644, b"y\n")])],
        "amd64",
        &["/bin/true"],
    );
    // x's top layer is held back: its pull stays in flight until the gate opens.
    let gate = Gate::default();
    let mut routes = fake::honest(&x, "x");
    routes.insert(
        format!("/v2/x/blobs/{}", x.layer_digest(2)),
        Answer::Held(x.layers[2].clone(), gate.clone()),
    );
    routes.extend(fake::honest(&y, "y"));
    let reg = Fake::start(routes, true);
    let app = Appliance::start("blobs", &[]);
    let (xn, yn) = (format!("{}/x:v1", reg.addr), format!("{}/y:v1", reg.addr));

    // Built: its blobs are not kept (the layer store, or the flattened disk, holds the image).
    app.ok(&["pull", &yn]);
    assert_eq!(app.store_entries().1, Vec::<String>::new());

    let pull = app
        .docker_command(&["pull", &xn])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _opened_at_the_end = OpenOnDrop(gate.clone());
    let hex = |b: &[u8]| registry_support::sha256_hex(b);
    let fetched = [hex(&x.config), hex(&x.layers[0]), hex(&x.layers[1])];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fetched.iter().all(|h| app.store_entries().1.contains(h)) {
        assert!(Instant::now() < deadline, "{:?}", app.store_entries());
        std::thread::sleep(Duration::from_millis(50));
    }
    // An rmi collects the blobs no pull holds: not these.
    app.ok(&["rmi", &yn]);
    let blobs = app.home.join("images/blobs/sha256");
    for h in &fetched {
        let mode = std::fs::metadata(blobs.join(h)).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600), "blob {h} of the pull in flight");
    }
    gate.open();
    let out = pull.wait_with_output().unwrap();
    succeeded(&out, "docker pull", &app.log());
    assert_eq!(app.images(), [format!("{} {xn}", x.id())]);
    assert_eq!(
        app.store_entries().1,
        Vec::<String>::new(),
        "no orphan blob"
    );
    let out = app.ok(&["rmi", &xn]);
    assert!(out.contains(&format!("Deleted: {}", x.id())), "{out}");
    assert_eq!(app.store_entries().1, Vec::<String>::new());
}

/// Opens a gate when dropped, so a failing test never leaves the fake's thread waiting.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

#[test]
fn a_layer_the_store_has_is_not_downloaded_again() {
    // Two one-layer images on the same layer (their configs differ): a one-layer image goes
    // to the layer store even in this tier, which boots no VMs.
    let dir = TempDir::new("exists");
    let reg = Registry::start("exists", RegistryOpts::default());
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let base = layer(&[("bin/busybox", 0o755, &busybox)]);
    let a = Image::new(vec![base.clone()], "amd64", &["/bin/busybox", "true"]);
    let b = Image::new(vec![base], "amd64", &["/bin/busybox", "false"]);
    push(&reg, &a, &dir, "tether/a", "v1");
    push(&reg, &b, &dir, "tether/b", "v1");
    let shared = a.layer_digest(0);
    assert_eq!(shared, b.layer_digest(0));
    let app = Appliance::start("exists", &[]);
    let short = &shared[7..19];

    let out = app.ok(&["pull", &format!("{}/tether/a:v1", reg.addr)]);
    assert!(out.contains(&format!("{short}: Pull complete")), "{out}");
    assert_eq!(reg.blob_gets(&shared), 1);
    let out = app.ok(&["pull", &format!("{}/tether/b:v1", reg.addr)]);
    assert!(out.contains(&format!("{short}: Already exists")), "{out}");
    assert!(!out.contains(&format!("{short}: Pull complete")), "{out}");
    assert_eq!(reg.blob_gets(&shared), 1, "{}", reg.log());
    assert_eq!(
        reg.blob_gets(&format!(
            "sha256:{}",
            registry_support::sha256_hex(&b.config)
        )),
        1
    );

    // Once no image has the layer, its record goes with it, and the next pull downloads.
    app.ok(&["rmi", &format!("{}/tether/a:v1", reg.addr)]);
    app.ok(&["rmi", &format!("{}/tether/b:v1", reg.addr)]);
    let records = app.home.join("images/distribution/diffid-by-digest/sha256");
    assert_eq!(std::fs::read_dir(&records).map_or(0, |d| d.count()), 0);
    let out = app.ok(&["pull", &format!("{}/tether/b:v1", reg.addr)]);
    assert!(out.contains(&format!("{short}: Pull complete")), "{out}");
    assert_eq!(reg.blob_gets(&shared), 2);
}
