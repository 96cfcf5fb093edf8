//! govmomi's vSphere simulator for the vSphere tests: tests/vcsim/main.go, built offline
//! against Debian's govmomi sources, started on 127.0.0.1 and stopped on drop.

#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use appliance::backend::vsphere::VsphereConfig;

pub mod guests;

/// The simulator, running; stopped on drop.
pub struct Vcsim {
    child: Child,
    pub url: String,
    pub datastore_dir: PathBuf,
}

fn vcsim_bin() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = ws.join("target/vcsim/vcsim");
    let src = ws.join("tests/vcsim/main.go");
    let stale = match (bin.metadata(), src.metadata()) {
        (Ok(b), Ok(s)) => b.modified().unwrap() < s.modified().unwrap(),
        _ => true,
    };
    if stale {
        let ok = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg("./tests/vcsim")
            .current_dir(&ws)
            // Offline, against Debian's govmomi (golang-github-vmware-govmomi-dev).
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", ws.join("target/vcsim/cache"))
            .env("GOFLAGS", "")
            .status()
            .expect("go is installed (make deps)")
            .success();
        assert!(ok, "building tests/vcsim failed");
    }
    bin
}

impl Vcsim {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Serving HTTPS with the certificate and key (PEM files) given.
    pub fn start_tls(cert: &Path, key: &Path) -> Self {
        Self::start_with(&[
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
        ])
    }

    fn start_with(extra: &[&str]) -> Self {
        let mut child = Command::new(vcsim_bin())
            .args(["-user", "tether", "-pass", "s3cret"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut words = line.split_whitespace();
        let url = words.next().expect("vcsim prints its URL").to_string();
        let datastore_dir = PathBuf::from(words.next().expect("and its datastore"));
        Self {
            child,
            url,
            datastore_dir,
        }
    }

    pub fn config(&self) -> VsphereConfig {
        VsphereConfig {
            url: self.url.clone(),
            user: "tether".into(),
            password: "s3cret".into(),
            datastore: "LocalDS_0".into(),
            folder: "/DC0/vm".into(),
            pool: "/DC0/host/DC0_C0/Resources".into(),
            iso: "tether/bootstrap.iso".into(),
            image_dir: "tether/images".into(),
            volume_dir: "tether/volumes".into(),
            networks: vec!["VM Network".into()],
            vspc_uri: "telnet://192.0.2.1:2377".into(),
            ca_file: None,
        }
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        // Its standard input closed, it removes its datastore directory and exits.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
