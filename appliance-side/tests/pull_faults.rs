//! `docker pull` from registries that lie or fail: a blob whose digest does not match, a blob
//! cut short, a manifest list with no linux/amd64 image, a config for another platform, an
//! unknown media type, a registry that is down and one that never answers. Each ends with the
//! CLI exiting 1 on an error that names the image and the cause, and nothing half-written in
//! the store. The lies need a registry that tells them: a small HTTP server
//! (`registry_support/fake.rs`) serves the crafted manifests and blobs (the happy paths use
//! the real docker-registry, tests/pull.rs).

mod common;
mod registry_support;

use std::collections::HashMap;

use registry_support::fake::{self, Answer, Fake, MANIFEST};
use registry_support::{sha256_hex, three_layer_image, Appliance, Image};
use serde_json::json;

fn honest(image: &Image) -> HashMap<String, Answer> {
    fake::honest(image, "bad")
}

fn layer_path(image: &Image, i: usize) -> String {
    format!("/v2/bad/blobs/{}", image.layer_digest(i))
}

/// Pulls `bad:v1` from `addr`, which must fail with exit 1; the CLI's stderr. Afterwards the
/// store holds no image, no work directory and no partial blob.
/// `pull_fails` from a fake registry that serves `routes`.
fn pull_fails_from(tag: &str, routes: HashMap<String, Answer>) -> String {
    let fake = Fake::start(routes, true);
    pull_fails(tag, &fake.addr)
}

/// Fails unless the error `err` names each of `parts`.
fn mentions(err: &str, parts: &[&str]) {
    for part in parts {
        assert!(err.contains(part), "no {part:?} in: {err}");
    }
}

fn pull_fails(tag: &str, addr: &str) -> String {
    let app = Appliance::start(tag, &["--registry-timeout", "1"]);
    let name = format!("{addr}/bad:v1");
    let err = app.fails(&["pull", &name]);
    assert!(err.contains(&name), "the error names the image: {err}");
    assert!(app.images().is_empty());
    let (entries, blobs) = app.store_entries();
    for e in &entries {
        assert!(e == "blobs", "left in the store: {entries:?}");
    }
    for b in &blobs {
        assert!(!b.starts_with('.'), "partial blob left: {blobs:?}");
    }
    err
}

#[test]
fn a_blob_whose_digest_does_not_match_is_refused() {
    let image = three_layer_image();
    let mut routes = honest(&image);
    let mut lie = image.layers[1].clone();
    let last = lie.len() - 1;
    lie[last] ^= 0xff;
    routes.insert(
        layer_path(&image, 1),
        Answer::Body("application/octet-stream", lie.clone()),
    );
    let err = pull_fails_from("digest", routes);
    mentions(
        &err,
        &[
            "does not match its digest",
            &image.layer_digest(1),
            &sha256_hex(&lie),
        ],
    );
}

#[test]
fn a_truncated_blob_is_refused_after_bounded_retries() {
    let image = three_layer_image();
    let mut routes = honest(&image);
    routes.insert(layer_path(&image, 0), Answer::Cut(image.layers[0].clone()));
    let err = pull_fails_from("truncated", routes);
    let want = image.layers[0].len();
    mentions(
        &err,
        &[
            "is truncated",
            &format!("{} of {want} bytes", want / 2),
            "in each of 3 tries",
        ],
    );
}

#[test]
fn a_manifest_list_for_another_platform_only_is_refused() {
    let image = three_layer_image();
    let mut routes = honest(&image);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST, "digest": image.manifest_digest(), "size": image.manifest.len(),
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
        }],
    }))
    .unwrap();
    routes.insert(
        "/v2/bad/manifests/v1".into(),
        Answer::Body("application/vnd.oci.image.index.v1+json", index),
    );
    let err = pull_fails_from("platform", routes);
    mentions(&err, &["no linux/amd64 image", "linux/arm64/v8"]);
}

#[test]
fn a_manifest_whose_config_is_for_another_platform_is_refused() {
    let arm = Image::new(three_layer_image().layers, "arm64", &["/bin/true"]);
    let fake = Fake::start(honest(&arm), true);
    let err = pull_fails("config-platform", &fake.addr);
    assert!(
        err.contains("no linux/amd64 image") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn an_unknown_media_type_is_refused() {
    let image = three_layer_image();
    let mut routes = honest(&image);
    let mut m: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    m["layers"][2]["mediaType"] = json!("application/vnd.example.layer.v1.squashfs");
    routes.insert(
        "/v2/bad/manifests/v1".into(),
        Answer::Body(MANIFEST, serde_json::to_vec(&m).unwrap()),
    );
    let err = pull_fails_from("media", routes);
    mentions(
        &err,
        &[
            "unsupported media type",
            "application/vnd.example.layer.v1.squashfs",
            &image.layer_digest(2),
        ],
    );

    // And a manifest of a type no pull reads.
    let mut routes = honest(&image);
    routes.insert(
        "/v2/bad/manifests/v1".into(),
        Answer::Body(
            "application/vnd.example.manifest+json",
            br#"{"schemaVersion":2,"mediaType":"application/vnd.example.manifest+json"}"#.to_vec(),
        ),
    );
    let err = pull_fails_from("media-manifest", routes);
    mentions(
        &err,
        &[
            "unsupported media type",
            "application/vnd.example.manifest+json",
        ],
    );
}

#[test]
fn a_registry_that_is_down_is_a_clear_error() {
    let port = registry_support::free_port();
    let started = std::time::Instant::now();
    let err = pull_fails("down", &format!("127.0.0.1:{port}"));
    assert!(err.contains("cannot reach the registry"), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_registry_that_never_answers_times_out() {
    let fake = Fake::start(HashMap::new(), false);
    let started = std::time::Instant::now();
    let err = pull_fails("slow", &fake.addr);
    assert!(err.contains("did not answer within 1 s"), "{err}");
    // Three tries of HTTPS then HTTP, a second each, and the backoff between.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
