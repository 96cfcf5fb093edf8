//! The QEMU backend: the container's writable layer is a qcow2 overlay on the cached image disk
//! (the QEMU analogue of VIC's linked-clone delta disks), and the VM is a q35 machine with the
//! config in fw_cfg and the channel on the session server.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::backend::accel::accelerator;
use crate::backend::boot_files::kernel_and_initramfs;
use crate::backend::qemu_args::{hotplug_port, qemu_args, BootMedium, ChannelEnd, QemuNic, VmSpec};
use crate::backend::qmp::Qmp;
use crate::backend::{
    spawn_detached, Backend, BackendError, LaunchRequest, Launched, Nic, NicAttachment, Transport,
};
use crate::home::Home;

pub struct QemuBackend {
    home: Home,
    /// Given paths; `None` looks in `$TETHER_KERNEL`/`$TETHER_INITRAMFS`, then the cache.
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
}

impl QemuBackend {
    pub fn new(home: Home, kernel: Option<PathBuf>, initramfs: Option<PathBuf>) -> Self {
        Self {
            home,
            kernel,
            initramfs,
        }
    }
}

impl Backend for QemuBackend {
    fn can_boot(&self) -> Result<(), BackendError> {
        kernel_and_initramfs(self.kernel.clone(), self.initramfs.clone()).map(|_| ())
    }

    fn network_plumbing(&self) -> Option<std::sync::Arc<dyn crate::backend::net::NetworkPlumbing>> {
        Some(std::sync::Arc::new(
            crate::backend::net::netns::NetnsPlumbing::new(self.home.clone()),
        ))
    }

    fn hot_add_nic(&self, container_dir: &std::path::Path, nic: &Nic) -> Result<(), BackendError> {
        let NicAttachment::Tap(tap) = &nic.attachment else {
            return Err(BackendError::Failed(
                "only a user network's NIC (a tap) can be hot-plugged: QEMU's user-mode network cannot be added to a running VM here".into(),
            ));
        };
        let slot = nic.slot;
        let (netdev, device) = hotplug_ids(slot);
        let mut q = monitor(container_dir)?;
        q.getfd(&netdev, std::os::fd::AsFd::as_fd(&**tap))
            .map_err(qmp_failed("passing the tap of", slot))?;
        q.netdev_add_tap(&netdev, &netdev)
            .map_err(qmp_failed("adding the network backend of", slot))?;
        if let Err(e) = q.device_add_virtio_net(&device, &netdev, &nic.mac, &hotplug_port(slot)) {
            let _ = q.netdev_del(&netdev);
            return Err(qmp_failed("plugging", slot)(e));
        }
        Ok(())
    }

    fn hot_removable(
        &self,
        container_dir: &std::path::Path,
        slot: u32,
    ) -> Result<(), BackendError> {
        let ports = std::fs::read_to_string(container_dir.join(HOTPLUG_SLOTS)).unwrap_or_default();
        if ports.split_whitespace().any(|s| s == slot.to_string()) {
            return Ok(());
        }
        Err(BackendError::Failed(format!(
            "the NIC at PCI slot {slot:#x} was plugged at boot, on QEMU's root bus, which cannot unplug it: stop the container to disconnect it"
        )))
    }

    fn hot_remove_nic(
        &self,
        container_dir: &std::path::Path,
        slot: u32,
    ) -> Result<(), BackendError> {
        let (netdev, device) = hotplug_ids(slot);
        let mut q = monitor(container_dir)?;
        q.device_del(&device)
            .map_err(qmp_failed("unplugging", slot))?;
        q.wait_device_deleted(&device, RELEASE_WAIT)
            .map_err(qmp_failed("unplugging", slot))?;
        q.netdev_del(&netdev)
            .map_err(qmp_failed("removing the network backend of", slot))?;
        Ok(())
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Launched, BackendError> {
        // Looked up at each launch: `make boot` may run while the appliance does.
        let (kernel, initramfs) =
            kernel_and_initramfs(self.kernel.clone(), self.initramfs.clone())?;
        let overlay = req.container_dir.join("disk.qcow2");
        // A restarted container keeps its writable layer, as docker keeps its filesystem.
        if !overlay.exists() {
            create_overlay(&req.image_disk, &overlay)?;
        }
        let channel = match &req.transport {
            Transport::Virtio(sock) => ChannelEnd::Unix(sock.clone()),
            Transport::Serial(addr) => ChannelEnd::Tcp(addr.clone()),
        };
        let mut qemu = match vm_time_limit() {
            // A test knob: every VM under a hard limit. `timeout` passes SIGTERM on to QEMU, and
            // the engine kills the VM's whole process group, so QEMU is never orphaned.
            Some(secs) => {
                let mut c = Command::new("timeout");
                c.args([secs.to_string().as_str(), "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        qemu.args(qemu_args(&VmSpec {
            accel: accelerator(&self.home, &kernel),
            memory_mb: req.memory_mb,
            cpus: req.cpus,
            boot: BootMedium::Direct { kernel, initramfs },
            disk: overlay,
            volumes: req.volumes.clone(),
            config: req.config.clone(),
            console: req.container_dir.join("console.log"),
            channel,
            nics: req.nics.iter().map(qemu_nic).collect(),
            hotplug_slots: req.hotplug_slots.clone(),
            qmp: Some(QMP_SOCKET.into()),
        }));
        // QEMU binds the QMP socket relative to here (`QMP_SOCKET`); every other path it is
        // given is absolute.
        qemu.current_dir(&req.container_dir);
        // The taps' descriptors, inherited by QEMU (and by nothing else: they are O_CLOEXEC
        // here, and only this child clears the flag).
        let inherited: Vec<i32> = req
            .nics
            .iter()
            .filter_map(|n| match &n.attachment {
                NicAttachment::Tap(fd) => Some(fd.as_raw_fd()),
                NicAttachment::UserMode { .. } => None,
            })
            .collect();
        if !inherited.is_empty() {
            // SAFETY: between fork and exec the closure calls only fcntl(2), which is
            // async-signal-safe, on descriptors this process owns (kept open by `req`).
            unsafe {
                qemu.pre_exec(move || {
                    for fd in &inherited {
                        if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        // QEMU's own complaints (a host port it cannot forward, a bad option) are kept.
        let qemu_log = req.container_dir.join("qemu.log");
        let stderr = std::fs::File::create(&qemu_log)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        // The VM outlives the command that started it (it powers itself off when the container
        // ends), so it gets its own process group.
        let child = spawn_detached(&mut qemu, stderr, "qemu-system-x86_64")?;
        let slots: String = req.hotplug_slots.iter().map(|s| format!("{s}\n")).collect();
        let slots_file = req.container_dir.join(HOTPLUG_SLOTS);
        std::fs::write(&slots_file, slots).map_err(|source| BackendError::Io {
            what: "writing",
            path: slots_file,
            source,
        })?;
        let pid_file = req.container_dir.join("qemu.pid");
        std::fs::write(&pid_file, format!("{}\n", child.id())).map_err(|source| {
            BackendError::Io {
                what: "writing",
                path: pid_file,
                source,
            }
        })?;
        Ok(Launched {
            pid: child.id(),
            child: Some(child),
        })
    }
}

/// The QMP monitor's socket in the container's directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// The slots of the VM's hot-plug root ports (decimal, one a line), kept for
/// [`Backend::hot_removable`].
const HOTPLUG_SLOTS: &str = "hotplug-slots";
/// How long the guest may take to release a NIC being unplugged.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// The hot-plugged NIC at `slot`: its netdev's and its device's ids.
fn hotplug_ids(slot: u32) -> (String, String) {
    (format!("hpnet{slot:x}"), format!("hpnic{slot:x}"))
}

fn qmp_failed(
    what: &str,
    slot: u32,
) -> impl FnOnce(crate::backend::qmp::QmpError) -> BackendError + '_ {
    move |e| BackendError::Failed(format!("{what} the NIC at PCI slot {slot:#x}: {e}"))
}

fn monitor(container_dir: &std::path::Path) -> Result<Qmp, BackendError> {
    Qmp::connect(&container_dir.join(QMP_SOCKET)).map_err(|e| {
        BackendError::Failed(format!(
            "{e}: a containerVM started before this appliance version has no monitor; restart it"
        ))
    })
}

/// A NIC as QEMU's `-netdev` and `-device` take it.
fn qemu_nic(nic: &Nic) -> QemuNic {
    let netdev = match &nic.attachment {
        NicAttachment::UserMode { hostfwd } => {
            let mut n = String::from("user");
            for rule in hostfwd {
                n.push_str(",hostfwd=");
                n.push_str(rule);
            }
            n
        }
        NicAttachment::Tap(fd) => format!("tap,fd={}", fd.as_raw_fd()),
    };
    QemuNic {
        slot: nic.slot,
        mac: nic.mac.clone(),
        netdev,
    }
}

/// `$TETHER_VM_TIMEOUT_SECS`: a hard limit on each VM's life, for test tiers.
fn vm_time_limit() -> Option<u64> {
    std::env::var("TETHER_VM_TIMEOUT_SECS")
        .ok()?
        .parse()
        .ok()
        .filter(|s| *s > 0)
}

/// The container's writable layer: a qcow2 overlay whose backing file is the image's disk.
fn create_overlay(
    image_disk: &std::path::Path,
    overlay: &std::path::Path,
) -> Result<(), BackendError> {
    let created = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image_disk)
        .arg(overlay)
        .status()
        .map_err(|source| BackendError::Tool {
            program: "qemu-img",
            source,
        })?;
    if !created.success() {
        return Err(BackendError::Failed(
            "qemu-img create failed for the container's writable layer".into(),
        ));
    }
    Ok(())
}
