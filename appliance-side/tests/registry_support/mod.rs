//! What the pull tests share: Debian's `docker-registry` (the CNCF distribution registry)
//! started on 127.0.0.1 with a config this writes (plain HTTP, TLS, htpasswd), OCI layouts
//! built here by hand and pushed into it with Debian's `skopeo`, and a detached
//! `appliance serve` driven with the stock docker CLI. Everything started is stopped on drop,
//! a panicking test's too.

#![allow(dead_code)]

pub mod fake;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

pub use crate::common::detached::succeeded;
use crate::common::detached::Detached;
pub use crate::common::sha256_hex;

/// A fresh directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("pull-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Default)]
pub struct RegistryOpts {
    /// Certificate and key files (PEM) to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// An htpasswd file (bcrypt) to require basic auth with.
    pub htpasswd: Option<PathBuf>,
    /// The `auth:` section of a token server (`token::TokenServer::registry_auth`): bearer
    /// tokens from it required.
    pub token_auth: Option<String>,
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    pub addr: String,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Registry {
    pub fn start(tag: &str, opts: RegistryOpts) -> Self {
        let dir = TempDir::new(&format!("registry-{tag}"));
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut http = format!("http:\n  addr: {addr}\n");
        if let Some((cert, key)) = &opts.tls {
            http += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        let auth = opts.token_auth.clone().unwrap_or_default();
        let auth = opts.htpasswd.as_ref().map_or(auth, |p| {
            format!(
                "auth:\n  htpasswd:\n    realm: tether-test\n    path: {}\n",
                p.display()
            )
        });
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n{http}{auth}",
            dir.0.join("storage").display()
        );
        std::fs::write(dir.0.join("config.yml"), config).unwrap();
        let log = dir.0.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.0.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("/usr/bin/docker-registry (Debian's docker-registry): run make deps");
        let r = Self {
            addr,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry never listened:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many GETs of blob `digest` the registry answered (any repository).
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// Pushes the OCI layout at `layout` (its `tag`) as `name:tag` with skopeo.
    pub fn push(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(c) = creds {
            cmd.args(["--dest-creds", c]);
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.addr))
            .env("HOME", layout.parent().unwrap())
            .stdin(Stdio::null())
            .output()
            .expect("skopeo (Debian's skopeo): run make deps");
        succeeded(&out, "skopeo copy", &self.log());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gzipped tar of `files` (path, mode, content); directories are made as needed.
pub fn layer(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut dirs = std::collections::BTreeSet::new();
    for (path, mode, data) in files {
        let mut d = Path::new(path).parent();
        let mut parents = Vec::new();
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
            parents.push(p.to_path_buf());
            d = p.parent();
        }
        for p in parents.into_iter().rev() {
            if dirs.insert(p.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                b.append_data(&mut h, format!("{}/", p.display()), &[][..])
                    .unwrap();
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn gunzip_sha(gz: &[u8]) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .unwrap();
    format!("sha256:{}", sha256_hex(&out))
}

/// An OCI image as blobs: what a layout or a fake registry serves.
pub struct Image {
    pub layers: Vec<Vec<u8>>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl Image {
    /// An image of these gzipped layers, with a config for linux/`arch` whose Cmd is `cmd`.
    pub fn new(layers: Vec<Vec<u8>>, arch: &str, cmd: &[&str]) -> Self {
        let diff_ids: Vec<String> = layers.iter().map(|l| gunzip_sha(l)).collect();
        let config = serde_json::to_vec(&json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", sha256_hex(&config)),
                "size": config.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", sha256_hex(l)),
                "size": l.len(),
            })).collect::<Vec<_>>(),
        }))
        .unwrap();
        Self {
            layers,
            config,
            manifest,
        }
    }

    /// `sha256:<config digest>`: the image id docker shows.
    pub fn id(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.config))
    }

    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.manifest))
    }

    pub fn layer_digest(&self, i: usize) -> String {
        format!("sha256:{}", sha256_hex(&self.layers[i]))
    }

    /// Writes an OCI image layout of this image, tagged `tag`, at `dir`.
    pub fn write_layout(&self, dir: &Path, tag: &str) {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        for b in self.layers.iter().chain([&self.config, &self.manifest]) {
            std::fs::write(blobs.join(sha256_hex(b)), b).unwrap();
        }
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.manifest_digest(),
            "size": self.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// Bytes that do not compress, the same every run.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A three-layer image: busybox, then a file, then another that changes it.
pub fn three_layer_image() -> Image {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian's busybox-static)");
    Image::new(
        vec![
            layer(&[("bin/busybox", 0o755, &busybox)]),
            layer(&[("etc/greeting", 0o644, b"hello from layer two\n")]),
            layer(&[("etc/greeting", 0o644, b"hello from layer three\n")]),
        ],
        "amd64",
        &["/bin/busybox", "cat", "/etc/greeting"],
    )
}

/// A detached `appliance serve` with its own TETHER_HOME and docker config directory.
pub struct Appliance(Detached);

impl Appliance {
    pub fn start(tag: &str, serve_args: &[&str]) -> Self {
        let d = Detached::new(&format!("pull-home-{tag}")).with_docker_config();
        let mut serve = d.serve_command(serve_args);
        // This tier boots no VMs, whatever boot files the machine has: images of several
        // layers get flattened disks here. Layers applied in VMs: tests/tests/layers.rs.
        serve.env("TETHER_KERNEL", d.home.join("no-vms-in-this-tier"));
        d.serve_ok_by(serve);
        Self(d)
    }

    /// `docker images` with full ids.
    pub fn images(&self) -> Vec<String> {
        self.0.images(&["--no-trunc"])
    }

    /// What is in `$TETHER_HOME/images` (dot-files too) and in its blob cache.
    pub fn store_entries(&self) -> (Vec<String>, Vec<String>) {
        let list = |p: PathBuf| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        (
            list(self.home.join("images")),
            list(self.home.join("images/blobs/sha256")),
        )
    }
}

impl std::ops::Deref for Appliance {
    type Target = Detached;

    fn deref(&self) -> &Detached {
        &self.0
    }
}
