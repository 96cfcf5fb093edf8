//! `appliance run`: `docker run` for containerVMs. IMAGE is anything `bootstrap-iso disk` takes:
//! a `docker save` tarball, an OCI layout, a rootfs directory or tarball. Builds the image disk (cached by the input's
//! digest), creates the container record and config, gives the container a qcow2 overlay as its
//! writable layer, boots QEMU with the channel on the running server, and, unless detached,
//! attaches: the main process waits for that first attach, so no output is missed.
//!
//! The kernel and initramfs come from `--kernel`/`--initramfs`, else `$TETHER_KERNEL` and
//! `$TETHER_INITRAMFS`, else `~/.cache/tether/boot/` (which `make boot` fills).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use crate::backend::qemu::{qemu_args, BootMedium, ChannelEnd, VmSpec};
use crate::cli::args::{RunArgs, DEFAULT_DETACH_KEYS};
use crate::cli::CliError;
use crate::home::Home;
use crate::store::records;

type Result<T> = std::result::Result<T, CliError>;

fn err(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

fn boot_file(flag: Option<PathBuf>, env: &str, name: &str) -> Result<PathBuf> {
    let path = flag
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/tether/boot").join(name)
        });
    if !path.exists() {
        return Err(err(format!(
            "{} not found: run `make boot` in the tether tree, or pass --{} / set ${env}",
            path.display(),
            if name == "bzImage" {
                "kernel"
            } else {
                "initramfs"
            }
        )));
    }
    Ok(path)
}

/// The image's disk, built once per distinct input and kept under `$TETHER_HOME/images`.
fn image_disk(home: &Home, image: &Path) -> Result<PathBuf> {
    let meta =
        std::fs::metadata(image).map_err(|e| err(format!("image {}: {e}", image.display())))?;
    let digest = if meta.is_dir() {
        bootstrap::disk::dir_digest(image)
    } else {
        bootstrap::disk::sha256_file(image)
    }
    .map_err(|e| err(format!("reading image {}: {e}", image.display())))?;
    let images = home.root().join("images");
    std::fs::create_dir_all(&images).map_err(|e| err(e.to_string()))?;
    let disk = images.join(format!("{}.qcow2", &digest[..32]));
    if disk.exists() {
        return Ok(disk);
    }
    eprintln!(
        "appliance: building the image disk for {} (cached afterwards)",
        image.display()
    );
    let work = images.join(format!("{}.work", &digest[..32]));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| err(e.to_string()))?;
    let rootfs = bootstrap::image::materialize(image, &work)
        .map_err(|e| err(format!("image {}: {e}", image.display())))?;
    let raw = work.join("disk.raw");
    let tmp = work.join("disk.qcow2");
    bootstrap::disk::ext4_from_dir(&rootfs, &raw, "containerfs", 0)
        .and_then(|_| bootstrap::disk::convert(&raw, &tmp, bootstrap::disk::Format::Qcow2))
        .and_then(|_| std::fs::rename(&tmp, &disk))
        .map_err(|e| err(format!("building the image disk: {e}")))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(disk)
}

/// KVM when a short probe boot proves it works, TCG otherwise. The probe boots our kernel with
/// an init that does not exist: a working KVM reaches the panic (and, with `-no-reboot`, exits) in
/// well under a second; a /dev/kvm that hangs ordinary guests (nested PVM) is cut off at 5 s. The
/// verdict is cached per kernel in `$TETHER_HOME/accel-<kernel digest>`.
fn accelerator(home: &Home, kernel: &Path) -> &'static str {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "tcg";
    }
    let digest = bootstrap::disk::sha256_file(kernel).unwrap_or_default();
    let cache = home
        .root()
        .join(format!("accel-{}", &digest[..16.min(digest.len())]));
    if let Ok(v) = std::fs::read_to_string(&cache) {
        return if v.trim() == "kvm" { "kvm" } else { "tcg" };
    }
    eprintln!("appliance: probing whether KVM works here (once, up to 5 s)");
    let out = Command::new("timeout")
        .args([
            "5",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-m",
            "64",
        ])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 init=/tether-kvm-probe"])
        .stdin(Stdio::null())
        .output();
    let works = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Kernel panic"));
    let verdict = if works { "kvm" } else { "tcg" };
    let _ = std::fs::write(&cache, verdict);
    verdict
}

pub async fn run(home: &Home, r: RunArgs) -> Result<ExitCode> {
    if std::os::unix::net::UnixStream::connect(home.docker_socket()).is_err() {
        return Err(err(format!(
            "the appliance is not running at {}: start it with `appliance serve --detach`",
            home.docker_socket().display()
        )));
    }
    let kernel = boot_file(r.kernel.clone(), "TETHER_KERNEL", "bzImage")?;
    let initramfs = boot_file(r.initramfs.clone(), "TETHER_INITRAMFS", "initramfs.gz")?;
    let image = image_disk(home, &r.image)?;
    let (rec, mut spec) =
        records::create(home, &r.new).map_err(|e| err(format!("creating the container: {e}")))?;
    let dir = home.container(&rec.id);
    if r.transport_serial {
        spec.channel_device = Some("/dev/ttyS1".into());
    }
    let config = dir.join("config.vmx");
    records::write_atomic(&config, guestinfo::spec_to_vmx(&spec).as_bytes())
        .map_err(|e| err(e.to_string()))?;
    let overlay = dir.join("disk.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image)
        .arg(&overlay)
        .status()
        .map_err(|e| err(format!("qemu-img: {e} (run `make deps`)")))?;
    if !ok.success() {
        return Err(err(
            "qemu-img create failed for the container's writable layer",
        ));
    }
    let accel = accelerator(home, &kernel);
    let channel = if r.transport_serial {
        let tcp = std::fs::read_to_string(home.channel_tcp_file())
            .map_err(|e| err(format!("the server's TCP address: {e}")))?;
        ChannelEnd::Tcp(tcp.trim().to_string())
    } else {
        ChannelEnd::Unix(home.channel_socket())
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(qemu_args(&VmSpec {
        accel,
        memory_mb: r.memory_mb,
        boot: BootMedium::Direct { kernel, initramfs },
        disk: overlay,
        config,
        console: dir.join("console.log"),
        channel,
    }));
    // The VM outlives this command (it powers itself off when the container ends).
    use std::os::unix::process::CommandExt;
    let child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| err(format!("qemu-system-x86_64: {e} (run `make deps`)")))?;
    let _ = std::fs::write(dir.join("qemu.pid"), format!("{}\n", child.id()));
    if r.detach {
        println!("{}", rec.id);
        return Ok(ExitCode::SUCCESS);
    }
    // Wait for the VM's channel, then attach (which releases the waiting main process).
    for _ in 0..600 {
        let state = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if state.is_some_and(|s| s["status"] == "running" || s["status"] == "failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let client = crate::cli::client::Client::new(home);
    crate::cli::attach::attach_container(&client, &rec.id, true, DEFAULT_DETACH_KEYS).await
}
