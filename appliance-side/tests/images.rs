//! `docker load`, `images`, `image inspect`, `tag` and `rmi` with the stock docker CLI against
//! `appliance serve`, on archives Debian's podman builds here from a `FROM scratch` Containerfile
//! holding the static busybox (`podman build --isolation=chroot`, then `podman save` as
//! docker-archive and oci-archive), in a podman store of its own under the test's directory.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

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

const TAG: &str = "localhost/tether-test:v1";

/// The archives every test loads, built once per test run.
struct Fixtures {
    docker: PathBuf,
    oci: PathBuf,
    /// The same image saved by id: no tags.
    untagged: PathBuf,
    /// Another image, also tagged [`TAG`].
    other: PathBuf,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(build_fixtures)
}

fn build_fixtures() -> Fixtures {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Earlier runs' fixtures go; this run's are made anew.
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("image-fixtures-") {
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
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_string()
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
    podman(&["save", "--format", "docker-archive", "-o", &path(&f.docker), TAG]);
    podman(&["save", "--format", "oci-archive", "-o", &path(&f.oci), TAG]);
    podman(&["save", "--format", "docker-archive", "-o", &path(&f.untagged), &id]);
    podman(&["build", "--isolation=chroot", "-q", "-t", TAG, "ctx2"]);
    podman(&["save", "--format", "docker-archive", "-o", &path(&f.other), TAG]);
    // The store (vfs copies every layer) is no longer needed.
    podman(&["system", "reset", "-f"]);
    let _ = std::fs::remove_dir_all(dir.join("storage"));
    let _ = std::fs::remove_dir_all(&runroot);
    f
}

/// A member of a tar archive.
fn member(archive: &Path, name: &str) -> Vec<u8> {
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

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The config blob of a docker-save archive's first image, and its id (`sha256:` + digest).
fn docker_config(archive: &Path) -> (Value, String) {
    let manifest: Value = serde_json::from_slice(&member(archive, "manifest.json")).unwrap();
    let bytes = member(archive, manifest[0]["Config"].as_str().unwrap());
    (
        serde_json::from_slice(&bytes).unwrap(),
        format!("sha256:{}", sha256_hex(&bytes)),
    )
}

/// The id an OCI archive's image must get: the digest of the config its manifest names,
/// computed from the blob itself.
fn oci_id(archive: &Path) -> String {
    let index: Value = serde_json::from_slice(&member(archive, "index.json")).unwrap();
    let blob = |digest: &str| member(archive, &format!("blobs/sha256/{}", &digest[7..]));
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    format!(
        "sha256:{}",
        sha256_hex(&blob(manifest["config"]["digest"].as_str().unwrap()))
    )
}

struct Server {
    home: PathBuf,
}

impl Server {
    fn start(tag: &str) -> Self {
        let home = std::env::temp_dir().join(format!("images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        let s = Self { home };
        s.serve();
        s
    }

    fn serve(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
            .args(["serve", "--detach"])
            .env("TETHER_HOME", &self.home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "serve --detach: {}",
            text(&out.stderr)
        );
    }

    /// Stops the server by its pid file and waits until the process is gone.
    fn stop(&self) {
        let Ok(pid) = std::fs::read_to_string(self.home.join("appliance.pid")) else {
            return;
        };
        let pid = pid.trim().to_string();
        let _ = Command::new("kill").arg(&pid).status();
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie its new parent has not reaped yet.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server (pid {pid}) did not stop");
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.home.join("docker.sock").display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the docker CLI is installed")
    }

    /// Runs docker, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs docker, which must fail with exit code 1; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "docker {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    fn load(&self, archive: &Path) -> String {
        self.ok(&["load", "-i", archive.to_str().unwrap()])
    }

    /// `docker images` as `id repo:tag` lines, sorted (the CLI prints an image's repositories
    /// in map order).
    fn images(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"];
        args.extend_from_slice(extra);
        let mut rows: Vec<String> = self.ok(&args).lines().map(String::from).collect();
        rows.sort();
        rows
    }

    fn inspect(&self, name: &str) -> Value {
        let out = self.ok(&["image", "inspect", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    /// What is in `$TETHER_HOME/images`, dot-files included.
    fn image_dir_entries(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.home.join("images"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn sorted<const N: usize>(mut rows: [String; N]) -> Vec<String> {
    rows.sort();
    rows.to_vec()
}

fn short(id: &str) -> &str {
    &id[7..19]
}

#[test]
fn docker_archive_loads_with_its_config_and_builds_the_disk_once() {
    let f = fixtures();
    let (config, id) = docker_config(&f.docker);
    let s = Server::start("docker");
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
    assert_eq!(s.images(&[]), [format!("{} {TAG}", short(&id))]);

    let i = s.inspect(TAG);
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["RepoTags"], serde_json::json!([TAG]));
    assert_eq!(i["Os"], "linux");
    assert_eq!(i["Architecture"], "amd64");
    assert_eq!(i["Created"], config["created"]);
    assert_eq!(i["RootFS"]["Type"], "layers");
    assert_eq!(i["RootFS"]["Layers"], config["rootfs"]["diff_ids"]);
    let c = &i["Config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/busybox"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo", "hi"]));
    let env: BTreeSet<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(env, BTreeSet::from(["GREETING=hello", "PATH=/bin"]));
    assert_eq!(c["WorkingDir"], "/work");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Labels"]["org.example.kind"], "test");
    assert_eq!(c["Labels"]["org.example.name"], "tether images");
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    // The busybox binary is the image's content; docker's size counts it.
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    let size = i["Size"].as_u64().unwrap();
    assert!(size >= busybox && size < busybox + 4096, "size {size}");

    // Every reference form docker accepts names it.
    for name in [
        &id[..],
        &id[7..],
        short(&id),
        "localhost/tether-test:v1",
    ] {
        assert_eq!(s.inspect(name)["Id"], id.as_str(), "{name}");
    }

    // The disk is a qcow2, built once: a second load only (re)tags.
    let disk = s.home.join("images").join(&id[7..]).join("disk.qcow2");
    let magic = std::fs::read(&disk).unwrap();
    assert_eq!(&magic[..4], b"QFI\xfb");
    let built = std::fs::metadata(&disk).unwrap().modified().unwrap();
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), built);
    assert_eq!(s.ok(&["info", "--format", "{{.Images}}"]).trim(), "1");
    assert_eq!(s.image_dir_entries(), BTreeSet::from([id[7..].to_string()]));
}

#[test]
fn oci_archive_gives_the_same_image_as_docker_archive() {
    let f = fixtures();
    let id = oci_id(&f.oci);
    assert_eq!(id, docker_config(&f.docker).1);
    let s = Server::start("oci");
    assert_eq!(s.load(&f.oci), format!("Loaded image: {TAG}\n"));
    let i = s.inspect(TAG);
    assert_eq!(i["Id"], id.as_str());
    assert_eq!(i["Config"]["WorkingDir"], "/work");
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
    assert_eq!(s.images(&[]), [format!("{} {TAG}", short(&id))]);
}

#[test]
fn untagged_archive_loads_by_id_and_lists_as_none() {
    let f = fixtures();
    let (_, id) = docker_config(&f.untagged);
    let s = Server::start("untagged");
    assert_eq!(s.load(&f.untagged), format!("Loaded image ID: {id}\n"));
    assert_eq!(s.images(&[]), [format!("{} <none>:<none>", short(&id))]);
    assert_eq!(s.images(&["--filter", "dangling=true"]).len(), 1);
    assert!(s.images(&["--filter", "dangling=false"]).is_empty());
    assert_eq!(s.inspect(short(&id))["RepoTags"], serde_json::json!([]));
    assert_eq!(s.ok(&["rmi", short(&id)]), format!("Deleted: {id}\n"));
    assert!(s.images(&[]).is_empty());
    assert!(s.image_dir_entries().is_empty());
}

#[test]
fn tag_filter_and_rmi_follow_dockers_rules() {
    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let sid = short(&id);
    let s = Server::start("tags");
    s.load(&f.docker);
    assert_eq!(s.ok(&["tag", TAG, "tbox"]), "");
    assert_eq!(s.ok(&["tag", sid, "example.com/team/app:2"]), "");
    assert_eq!(
        s.images(&[]),
        [
            format!("{sid} example.com/team/app:2"),
            format!("{sid} {TAG}"),
            format!("{sid} tbox:latest"),
        ]
    );
    assert_eq!(
        s.inspect("docker.io/library/tbox:latest")["RepoTags"],
        serde_json::json!(["example.com/team/app:2", TAG, "tbox:latest"])
    );
    // Filters: a reference glob keeps the tags it matches; labels and dangling whole images.
    assert_eq!(s.images(&["tbox"]), [format!("{sid} tbox:latest")]);
    assert_eq!(
        s.images(&["--filter", "reference=*/*"]),
        [format!("{sid} {TAG}")]
    );
    assert_eq!(
        s.images(&["--filter", "label=org.example.kind=test"]).len(),
        3
    );
    assert_eq!(s.images(&["--filter", "label=org.example.name"]).len(), 3);
    assert!(s.images(&["--filter", "label=org.example.kind=prod"]).is_empty());
    assert!(s.images(&["--filter", "dangling=true"]).is_empty());
    assert!(s
        .fails(&["images", "--filter", "colour=blue"])
        .contains("invalid filter 'colour'"));

    // Unknown images: 404, exit 1.
    assert!(s
        .fails(&["rmi", "nosuch"])
        .contains("Error response from daemon: No such image: nosuch:latest"));
    assert!(s
        .fails(&["tag", "nosuch", "x"])
        .contains("No such image: nosuch:latest"));
    assert!(s
        .fails(&["image", "inspect", "nosuch"])
        .contains("No such image: nosuch"));

    // By id with several tags: refused without force.
    assert!(s.fails(&["rmi", sid]).contains(&format!(
        "conflict: unable to delete {sid} (must be forced) - image is referenced in multiple \
         repositories"
    )));
    // By tag: only that tag goes while others are left.
    assert_eq!(s.ok(&["rmi", "tbox"]), "Untagged: tbox:latest\n");
    assert_eq!(s.images(&[]).len(), 2);
    // Forced by id: every tag, then the image.
    assert_eq!(
        s.ok(&["rmi", "-f", sid]),
        format!("Untagged: example.com/team/app:2\nUntagged: {TAG}\nDeleted: {id}\n")
    );
    assert!(s.images(&[]).is_empty());
    assert!(s.image_dir_entries().is_empty());

    // The last tag takes the image with it.
    s.load(&f.docker);
    assert_eq!(
        s.ok(&["rmi", TAG]),
        format!("Untagged: {TAG}\nDeleted: {id}\n")
    );
    assert!(s.image_dir_entries().is_empty());
}

#[test]
fn a_second_image_with_the_same_tag_takes_it() {
    let f = fixtures();
    let (_, first) = docker_config(&f.docker);
    let (_, second) = docker_config(&f.other);
    assert_ne!(first, second);
    let s = Server::start("retag");
    s.load(&f.docker);
    assert_eq!(
        s.load(&f.other),
        format!(
            "The image {TAG} already exists, renaming the old one with ID {first} to empty \
             string\nLoaded image: {TAG}\n"
        )
    );
    assert_eq!(
        s.images(&[]),
        sorted([
            format!("{} <none>:<none>", short(&first)),
            format!("{} {TAG}", short(&second)),
        ])
    );
    assert_eq!(s.inspect(TAG)["Config"]["Labels"]["org.example.kind"], "other");
    // Newest first, as docker lists.
    let ids = s.ok(&["images", "-q"]);
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        [short(&second), short(&first)]
    );
}

#[test]
fn rmi_refuses_an_image_a_container_uses() {
    use appliance::home::Home;
    use appliance::store::records::{self, NewContainer};
    use appliance::store::state::{ContainerStatus, State};

    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let sid = short(&id);
    let s = Server::start("inuse");
    s.load(&f.docker);
    let home = Home::at(&s.home);
    let (rec, _) = records::create(
        &home,
        &NewContainer {
            args: vec!["/bin/busybox".into(), "true".into()],
            image: id.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let cid = &rec.id[..12];
    assert!(s.fails(&["rmi", TAG]).contains(&format!(
        "conflict: unable to remove repository reference \"{TAG}\" (must force) - container \
         {cid} is using its referenced image {sid}"
    )));
    assert!(s.fails(&["rmi", sid]).contains(&format!(
        "conflict: unable to delete {sid} (must be forced) - image is being used by stopped \
         container {cid}"
    )));

    let dir = home.container(&rec.id);
    let mut state = State::load(&dir);
    state.status = ContainerStatus::Running;
    state.save(&dir).unwrap();
    assert!(s.fails(&["rmi", "-f", sid]).contains(&format!(
        "conflict: unable to delete {sid} (cannot be forced) - image is being used by running \
         container {cid}"
    )));
    // Forcing the last tag off a running container's image untags it and keeps it.
    assert_eq!(s.ok(&["rmi", "-f", TAG]), format!("Untagged: {TAG}\n"));
    assert_eq!(s.images(&[]), [format!("{sid} <none>:<none>")]);

    // Stopped: forced removal deletes the image, but its disk stays under the container's.
    state.status = ContainerStatus::Exited;
    state.save(&dir).unwrap();
    assert_eq!(s.ok(&["rmi", "-f", sid]), format!("Deleted: {id}\n"));
    assert!(s.images(&[]).is_empty());
    assert!(s.fails(&["image", "inspect", sid]).contains("No such image"));
    let disk = s.home.join("images").join(&id[7..]).join("disk.qcow2");
    assert!(disk.exists());
    // Once no container uses it, the next removal takes the disk too.
    std::fs::remove_dir_all(&dir).unwrap();
    let (_, other) = docker_config(&f.other);
    s.load(&f.other);
    assert_eq!(
        s.ok(&["rmi", TAG]),
        format!("Untagged: {TAG}\nDeleted: {other}\n")
    );
    assert!(s.image_dir_entries().is_empty());
}

/// Where the first member's data (padded to tar's 512-byte blocks) ends.
fn first_member_end(archive: &Path) -> usize {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let e = a.entries().unwrap().next().unwrap().unwrap();
    (e.raw_file_position() + e.size().div_ceil(512) * 512) as usize
}

/// `archive` rewritten member by member, `change` editing each member's bytes.
fn rewrite(archive: &Path, out: &Path, change: impl Fn(&str, &mut Vec<u8>)) {
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut header = e.header().clone();
        if header.entry_type().is_symlink() {
            b.append(&header, std::io::empty()).unwrap();
            continue;
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        change(&name, &mut data);
        header.set_size(data.len() as u64);
        header.set_cksum();
        b.append(&header, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn bad_archives_fail_with_the_reason_and_leave_nothing() {
    let f = fixtures();
    let (config, _) = docker_config(&f.docker);
    let manifest: Value = serde_json::from_slice(&member(&f.docker, "manifest.json")).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap().to_string();
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let s = Server::start("bad");
    let dir = s.home.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let whole = std::fs::read(&f.docker).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut cases: Vec<(PathBuf, String)> = vec![
        (write("empty.tar", b""), "empty archive".into()),
        (write("garbage.tar", &garbage), "not a tar archive".into()),
        (write("text.tar", b"hello, world\n"), "not a tar archive".into()),
        (
            write("cut.tar", &whole[..whole.len() / 2]),
            format!("the archive is truncated or corrupt: {layer_name} ends early"),
        ),
        (
            write("cut-at-member.tar", &whole[..first_member_end(&f.docker)]),
            "the archive is truncated or corrupt: it ends after entry 1 without tar's \
             end-of-archive blocks"
                .into(),
        ),
    ];
    let changed = dir.join("config.tar");
    rewrite(&f.docker, &changed, |name, data| {
        if name == config_name {
            let s = String::from_utf8(data.clone()).unwrap();
            *data = s.replace("GREETING=hello", "GREETING=hellx").into_bytes();
        }
    });
    cases.push((
        changed,
        format!("{config_name} in the archive does not match its digest"),
    ));
    let layer = dir.join("layer.tar");
    rewrite(&f.docker, &layer, |name, data| {
        if name == layer_name {
            let at = data.len() / 2;
            data[at] ^= 1;
        }
    });
    cases.push((
        layer,
        format!("layer 1 ({layer_name}) does not match its digest"),
    ));
    let no_manifest = dir.join("no-manifest.tar");
    rewrite(&f.docker, &no_manifest, |name, data| {
        if name == "manifest.json" {
            *data = b"{not json".to_vec();
        }
    });
    cases.push((no_manifest, "manifest.json in the archive is not valid".into()));
    assert!(config["config"].is_object());

    for (archive, want) in &cases {
        let err = s.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(
            err.contains(want.as_str()),
            "{}: wanted {want:?} in {err:?}",
            archive.display()
        );
        assert!(
            s.image_dir_entries().is_empty(),
            "{} left {:?}",
            archive.display(),
            s.image_dir_entries()
        );
    }
    assert!(s.images(&[]).is_empty());
    // Nothing broken stays either: the same server still loads a good archive.
    assert_eq!(s.load(&f.docker), format!("Loaded image: {TAG}\n"));
}

#[test]
fn images_survive_a_server_restart() {
    let f = fixtures();
    let (_, id) = docker_config(&f.docker);
    let (_, other) = docker_config(&f.other);
    let s = Server::start("restart");
    s.load(&f.docker);
    s.ok(&["tag", TAG, "kept:1"]);
    s.load(&f.other);
    let before = s.images(&[]);
    assert_eq!(
        before,
        sorted([
            format!("{} kept:1", short(&id)),
            format!("{} {TAG}", short(&other)),
        ])
    );
    s.stop();
    s.serve();
    assert_eq!(s.images(&[]), before);
    assert_eq!(s.inspect("kept:1")["Id"], id.as_str());
    assert_eq!(s.inspect(TAG)["Id"], other.as_str());
}
