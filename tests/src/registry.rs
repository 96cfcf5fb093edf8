//! Debian's `docker-registry` (the CNCF distribution registry) on 127.0.0.1 with plain HTTP,
//! its storage in a temporary directory, killed on drop; images pushed into it with skopeo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::succeeded;

pub struct Registry {
    pub addr: String,
    child: Child,
    dir: PathBuf,
}

impl Registry {
    pub fn start(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("e2e-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
             filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/docker-registry (Debian's docker-registry): run make deps");
        let r = Self { addr, child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// How many GETs of blob `digest` the registry answered (any repository), from its
    /// access log.
    pub fn blob_gets(&self, digest: &str) -> usize {
        std::fs::read_to_string(self.dir.join("registry.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// `skopeo copy SOURCE docker://ADDR/DEST`.
    pub fn push(&self, source: &str, dest: &str) {
        skopeo(
            &[source, &format!("docker://{}/{dest}", self.addr)],
            &self.dir,
        );
    }
}

/// `skopeo copy` (TLS verification off: the registry is plain HTTP on loopback).
pub fn skopeo(args: &[&str], home: &Path) {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(args)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("skopeo (Debian's skopeo): run make deps");
    succeeded(&out, &format!("skopeo copy {args:?}"), "");
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
