//! `appliance run`: `docker run` for containerVMs. IMAGE is anything `bootstrap-iso disk` takes:
//! a `docker save` tarball, an OCI layout, a rootfs directory or tarball. Builds the image disk (cached by the input's
//! digest), creates the container record and config, gives the container a qcow2 overlay as its
//! writable layer, boots QEMU with the channel on the running server, and, unless detached,
//! attaches: the main process waits for that first attach, so no output is missed.
//!
//! The kernel and initramfs come from `--kernel`/`--initramfs`, else `$TETHER_KERNEL` and
//! `$TETHER_INITRAMFS`, else `~/.cache/tether/boot/` (which `make boot` fills).
//!
//! Until [engine] gives the API container create and start, this verb launches through the
//! backend in-process: the one place `cli` reaches past the API.

use std::path::PathBuf;
use std::process::ExitCode;

use guestinfo::contract::{COM_DEVICE, DEFAULT_PATH};

use crate::backend::qemu::QemuBackend;
use crate::backend::{boot_files, disk_cache, Backend, LaunchRequest, Transport};
use crate::cli::CliError;
use crate::home::Home;
use crate::store::records::{self, NewContainer};
use crate::store::state::{ContainerStatus, State};

type Result<T> = std::result::Result<T, CliError>;

fn err(msg: impl Into<String>) -> CliError {
    CliError(msg.into())
}

#[derive(Debug, Default)]
struct RunArgs {
    detach: bool,
    new: NewContainer,
    transport_serial: bool,
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
    image: PathBuf,
    memory_mb: u32,
}

fn parse(args: &[String]) -> Result<RunArgs> {
    let mut r = RunArgs {
        memory_mb: 256,
        ..Default::default()
    };
    let mut it = args.iter();
    let mut image = None;
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| err(format!("{a} needs a value")))
        };
        match a.as_str() {
            "-d" | "--detach" => r.detach = true,
            "-t" | "--tty" => r.new.tty = true,
            "-i" | "--interactive" => r.new.open_stdin = true,
            "--name" => r.new.name = Some(value()?),
            "-e" | "--env" => r.new.env.push(value()?),
            "-w" | "--workdir" => r.new.dir = value()?,
            "-u" | "--user" => r.new.user = value()?,
            "-m" | "--memory" => {
                let v = value()?;
                r.memory_mb = v
                    .trim_end_matches(['m', 'M'])
                    .parse()
                    .map_err(|_| err(format!("--memory {v:?}: give MiB, e.g. 512m")))?;
            }
            "--transport" => match value()?.as_str() {
                "virtio" => r.transport_serial = false,
                "serial" => r.transport_serial = true,
                other => return Err(err(format!("--transport {other:?}: use virtio or serial"))),
            },
            "--kernel" => r.kernel = Some(value()?.into()),
            "--initramfs" => r.initramfs = Some(value()?.into()),
            "--" => {
                r.new.args = it.by_ref().cloned().collect();
            }
            other if other.starts_with('-') => {
                return Err(err(format!("unknown option {other:?}")))
            }
            other if image.is_none() => image = Some(PathBuf::from(other)),
            other => {
                r.new.args = std::iter::once(other.to_string())
                    .chain(it.by_ref().cloned())
                    .collect();
            }
        }
    }
    r.image = image
        .ok_or_else(|| err("`appliance run` needs an IMAGE (docker save tarball, OCI layout, rootfs directory or tarball)"))?;
    if r.new.args.is_empty() {
        return Err(err(
            "`appliance run` needs a command: appliance run IMAGE -- CMD [ARGS...]",
        ));
    }
    if r.new.env.iter().all(|e| !e.starts_with("PATH=")) {
        r.new.env.push(format!("PATH={DEFAULT_PATH}"));
    }
    r.new.image = r.image.display().to_string();
    r.new.attach = !r.detach;
    Ok(r)
}

pub async fn run(home: &Home, args: &[String]) -> Result<ExitCode> {
    let r = parse(args)?;
    if std::os::unix::net::UnixStream::connect(home.docker_socket()).is_err() {
        return Err(err(format!(
            "the appliance is not running at {}: start it with `appliance serve --detach`",
            home.docker_socket().display()
        )));
    }
    let (kernel, initramfs) =
        boot_files::kernel_and_initramfs(r.kernel.clone(), r.initramfs.clone())
            .map_err(|e| err(e.to_string()))?;
    let image_disk = disk_cache::image_disk(home, &r.image).map_err(|e| err(e.to_string()))?;
    let (rec, mut spec) =
        records::create(home, &r.new).map_err(|e| err(format!("creating the container: {e}")))?;
    let dir = home.container(&rec.id);
    let transport = if r.transport_serial {
        spec.channel_device = Some(COM_DEVICE.into());
        let tcp = std::fs::read_to_string(home.channel_tcp_file())
            .map_err(|e| err(format!("the server's TCP address: {e}")))?;
        Transport::Serial(tcp.trim().to_string())
    } else {
        Transport::Virtio(home.channel_socket())
    };
    records::write_config(&dir, &spec).map_err(|e| err(e.to_string()))?;
    let backend = QemuBackend::new(home.clone(), kernel, initramfs);
    backend
        .launch(&LaunchRequest {
            container_dir: dir.clone(),
            image_disk,
            config: dir.join("config.vmx"),
            memory_mb: r.memory_mb,
            transport,
        })
        .map_err(|e| err(e.to_string()))?;
    if r.detach {
        println!("{}", rec.id);
        return Ok(ExitCode::SUCCESS);
    }
    // Wait for the VM's channel, then attach (which releases the waiting main process).
    for _ in 0..600 {
        let status = State::load(&dir).status;
        if matches!(status, ContainerStatus::Running | ContainerStatus::Failed) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    crate::cli::run(home, "attach", std::slice::from_ref(&rec.id)).await
}
