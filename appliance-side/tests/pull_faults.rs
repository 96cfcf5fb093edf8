//! `docker pull` from registries that lie or fail: a blob whose digest does not match, a blob
//! cut short, a manifest list with no linux/amd64 image, a config for another platform, an
//! unknown media type, a registry that is down and one that never answers. Each ends with the
//! CLI exiting 1 on an error that names the image and the cause, and nothing half-written in
//! the store. The lies need a registry that tells them: a small HTTP server here serves the
//! crafted manifests and blobs (the happy paths use the real docker-registry, tests/pull.rs).

mod common;
mod registry_support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use registry_support::{sha256_hex, three_layer_image, Appliance, Image};
use serde_json::json;

/// What the fake serves at one path.
#[derive(Clone)]
enum Answer {
    /// 200 with this content type and body.
    Body(&'static str, Vec<u8>),
    /// 200 announcing the whole body's length, then the connection cut halfway.
    Cut(Vec<u8>),
}

/// A registry that serves fixed answers, stopped on drop.
struct Fake {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(routes: HashMap<String, Answer>, answer: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                if answer {
                    serve(c, &routes);
                } else {
                    // Accepted and never answered.
                    held.push(c);
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut c: TcpStream, routes: &HashMap<String, Answer>) {
    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let answer = if path == "/v2/" {
        Some(Answer::Body("application/json", b"{}".to_vec()))
    } else {
        routes.get(&path).cloned()
    };
    let (ctype, body, cut) = match answer {
        Some(Answer::Body(t, b)) => (t, b, false),
        Some(Answer::Cut(b)) => ("application/octet-stream", b, true),
        None => {
            let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
            let _ = write!(
                c,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(body);
            return;
        }
    };
    let _ = write!(
        c,
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let end = if cut { body.len() / 2 } else { body.len() };
    let _ = c.write_all(&body[..end]);
    let _ = c.flush();
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The routes that serve `image` as `bad:v1`, honestly.
fn honest(image: &Image) -> HashMap<String, Answer> {
    let mut r = HashMap::new();
    r.insert(
        "/v2/bad/manifests/v1".into(),
        Answer::Body(MANIFEST, image.manifest.clone()),
    );
    let blob = |b: &Vec<u8>| (format!("/v2/bad/blobs/sha256:{}", sha256_hex(b)), b.clone());
    for b in image.layers.iter().chain([&image.config]) {
        let (p, b) = blob(b);
        r.insert(p, Answer::Body("application/octet-stream", b));
    }
    r
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
