//! What the image tests share: the podman-built archives (made once per run) and a detached
//! `appliance serve` driven with the stock docker CLI.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::detached::Detached;
use crate::common::sha256_hex;

const CONTAINERFILE: &str = r#"FROM scratch
ADD busybox /bin/busybox
ENV GREETING=hello PATH=/bin
WORKDIR /work
USER 1000:1000
LABEL org.example.kind=test org.example.name="tether images"
EXPOSE 8080/tcp
VOLUME /data
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/busybox"]
CMD ["echo", "hi"]
"#;

/// A second image under the same tag, to see a tag move.
const OTHER: &str = "FROM scratch\nADD note.txt /note.txt\nLABEL org.example.kind=other\n";

pub const TAG: &str = "localhost/tether-test:v1";

/// The archives every test loads, built once per test run.
pub struct Fixtures {
    pub docker: PathBuf,
    pub oci: PathBuf,
    /// The same image saved by id: no tags.
    pub untagged: PathBuf,
    /// Another image, also tagged [`TAG`].
    pub other: PathBuf,
}

use crate::common::detached::succeeded;

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build_fixtures)
}

fn build_fixtures() -> Fixtures {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Earlier runs' fixtures go; this run's are made anew.
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with("image-fixtures-")
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = base.join(format!("image-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ctx")).unwrap();
    std::fs::create_dir_all(dir.join("ctx2")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("ctx/busybox"))
        .expect("/bin/busybox (Debian's busybox-static): run scripts/install-deps.sh system");
    std::fs::write(dir.join("ctx/Containerfile"), CONTAINERFILE).unwrap();
    std::fs::write(dir.join("ctx2/note.txt"), "another image\n").unwrap();
    std::fs::write(dir.join("ctx2/Containerfile"), OTHER).unwrap();
    // podman refuses a runroot path over 50 characters.
    let runroot = std::env::temp_dir().join(format!("tpr-{}", std::process::id()));
    let podman = |args: &[&str]| {
        for d in ["home", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // Its own store (vfs needs no kernel overlay), HOME and runtime dirs: the machine's
        // podman setup is never touched.
        let out = Command::new("podman")
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(&runroot)
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .args(args)
            .current_dir(&dir)
            .env("HOME", dir.join("home"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("XDG_CONFIG_HOME", dir.join("home/.config"))
            .env("XDG_DATA_HOME", dir.join("home/.local/share"))
            .env("TMPDIR", dir.join("tmp"))
            .stdin(Stdio::null())
            .output()
            .expect("podman (Debian's podman): run scripts/install-deps.sh system");
        succeeded(&out, &format!("podman {args:?}"), "")
            .trim()
            .to_string()
    };
    let build = "build --isolation=chroot -q -t";
    let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    let mut b = args(build);
    b.extend([TAG.to_string(), "ctx".into()]);
    let id = podman(&b.iter().map(String::as_str).collect::<Vec<_>>());
    let id = id.lines().last().unwrap_or_default().to_string();
    let f = Fixtures {
        docker: dir.join("docker.tar"),
        oci: dir.join("oci.tar"),
        untagged: dir.join("untagged.tar"),
        other: dir.join("other.tar"),
    };
    let path = |p: &Path| p.to_str().unwrap().to_string();
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        &path(&f.docker),
        TAG,
    ]);
    podman(&["save", "--format", "oci-archive", "-o", &path(&f.oci), TAG]);
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        &path(&f.untagged),
        &id,
    ]);
    podman(&["build", "--isolation=chroot", "-q", "-t", TAG, "ctx2"]);
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        &path(&f.other),
        TAG,
    ]);
    // The store (vfs copies every layer) is no longer needed.
    podman(&["system", "reset", "-f"]);
    let _ = std::fs::remove_dir_all(dir.join("storage"));
    let _ = std::fs::remove_dir_all(&runroot);
    f
}

/// A member of a tar archive.
pub fn member(archive: &Path, name: &str) -> Vec<u8> {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            return out;
        }
    }
    panic!("{name} is not in {}", archive.display());
}

/// The config blob of a docker-save archive's first image, and its id (`sha256:` + digest).
pub fn docker_config(archive: &Path) -> (Value, String) {
    let manifest: Value = serde_json::from_slice(&member(archive, "manifest.json")).unwrap();
    let bytes = member(archive, manifest[0]["Config"].as_str().unwrap());
    (
        serde_json::from_slice(&bytes).unwrap(),
        format!("sha256:{}", sha256_hex(&bytes)),
    )
}

/// The id an OCI archive's image must get: the digest of the config its manifest names,
/// computed from the blob itself.
pub fn oci_id(archive: &Path) -> String {
    let index: Value = serde_json::from_slice(&member(archive, "index.json")).unwrap();
    let blob = |digest: &str| member(archive, &format!("blobs/sha256/{}", &digest[7..]));
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    format!(
        "sha256:{}",
        sha256_hex(&blob(manifest["config"]["digest"].as_str().unwrap()))
    )
}

/// A detached server in a home of its own, with the image verbs the tests use.
pub struct Server(Detached);

impl Server {
    pub fn start(tag: &str) -> Self {
        Self(Detached::started(&format!("images-{tag}")))
    }

    pub fn load(&self, archive: &Path) -> String {
        self.ok(&["load", "-i", archive.to_str().unwrap()])
    }

    /// What is in `$TETHER_HOME/images`, dot-files included, and each layer's directory in
    /// the layer store (`layers/<chain id>`): the store's own empty `layers` is no entry.
    pub fn image_dir_entries(&self) -> BTreeSet<String> {
        let list = |dir: std::path::PathBuf| {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<BTreeSet<String>>()
        };
        let images = self.home.join("images");
        let mut entries = list(images.clone());
        if entries.remove("layers") {
            entries.extend(
                list(images.join("layers"))
                    .into_iter()
                    .map(|l| format!("layers/{l}")),
            );
        }
        entries
    }

    /// The disk an image's containers boot: the top of its chain in the layer store (a
    /// one-layer image's chain id is its layer's diff id).
    pub fn image_disk(&self, id: &str) -> std::path::PathBuf {
        let layers = &self.inspect(id)["RootFS"]["Layers"];
        let layers: Vec<&str> = layers
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(layers.len(), 1, "a one-layer image");
        self.home
            .join("images/layers")
            .join(layers[0].trim_start_matches("sha256:"))
            .join("disk.qcow2")
    }
}

impl std::ops::Deref for Server {
    type Target = Detached;

    fn deref(&self) -> &Detached {
        &self.0
    }
}

pub fn sorted<const N: usize>(mut rows: [String; N]) -> Vec<String> {
    rows.sort();
    rows.to_vec()
}

pub fn short(id: &str) -> &str {
    &id[7..19]
}
