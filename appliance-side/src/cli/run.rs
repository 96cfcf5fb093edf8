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

use std::process::ExitCode;

use guestinfo::contract::COM_DEVICE;

use crate::backend::qemu::QemuBackend;
use crate::backend::{boot_files, disk_cache, Backend, LaunchRequest, Transport};
use crate::cli::args::{RunArgs, DEFAULT_DETACH_KEYS};
use crate::cli::CliError;
use crate::home::Home;
use crate::store::records;
use crate::store::state::{ContainerStatus, State};

type Result<T> = std::result::Result<T, CliError>;

fn err(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

pub async fn run(home: &Home, r: RunArgs) -> Result<ExitCode> {
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
    let backend = QemuBackend::new(home.clone(), Some(kernel), Some(initramfs));
    // The VM outlives this command: it powers itself off when the container ends.
    let _vm = backend
        .launch(&LaunchRequest {
            container_dir: dir.clone(),
            image_disk,
            config: dir.join("config.vmx"),
            memory_mb: r.memory_mb,
            cpus: 0,
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
    let client = crate::cli::client::Client::new(home);
    crate::cli::attach::attach_container(&client, &rec.id, true, DEFAULT_DETACH_KEYS).await
}
