//! Where containerVMs run. A backend turns a container (its directory, config and image) into
//! a running VM whose tether dials the session server. Today: QEMU on this host ([`qemu`]); the
//! vSphere backend implements the same trait with a ConfigSpec and a datastore.

pub mod accel;
pub mod boot_files;
pub mod disk_cache;
pub mod net;
pub mod qemu;
pub mod qemu_args;
pub mod qmp;
pub mod vsphere;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use thiserror::Error;

/// How the VM's channel reaches the session server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A virtio-serial port on the server's Unix socket.
    Virtio(PathBuf),
    /// The guest's COM port on the server's TCP address (what vSphere's network serial does).
    Serial(String),
}

/// One container to boot.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    /// `$TETHER_HOME/containers/<id>`: the VM's writable disk, console log and pid go here.
    pub container_dir: PathBuf,
    /// The image's disk (read-only, shared by every container of the image); the container's
    /// writable layer goes on top of it.
    pub image_disk: PathBuf,
    /// The guestinfo config tether reads (already written).
    pub config: PathBuf,
    pub memory_mb: u32,
    /// vCPUs (docker's NanoCpus / CpuCount); 0 is one.
    pub cpus: u32,
    pub transport: Transport,
    /// Volume disks (qcow2 with an ext4 each), attached after the image disk (on vSphere the
    /// seed of the volume's VMDK on the datastore).
    pub volumes: Vec<PathBuf>,
    /// The VM's NICs, in the order of its networks.
    pub nics: Vec<Nic>,
    /// PCI slots where a NIC may be hot-plugged later (`docker network connect` of the running
    /// container): the QEMU backend puts an empty PCIe root port at each.
    pub hotplug_slots: Vec<u32>,
}

/// One NIC of a VM, at a fixed PCI slot (where tether looks for it).
#[derive(Debug, Clone)]
pub struct Nic {
    /// The slot in VMware's `pciSlotNumber` encoding ([`guestinfo::PciSlot`]), as the
    /// container's guestinfo names it: [`Backend::nic_slot`] of the NIC's index.
    pub slot: u32,
    /// The docker network the NIC is on (a vSphere backend picks the port group by it).
    pub network: String,
    pub mac: String,
    pub attachment: NicAttachment,
}

/// What a NIC is plugged into.
#[derive(Debug, Clone)]
pub enum NicAttachment {
    /// QEMU's user-mode network (docker's default network): its DHCP server, its NAT out,
    /// and `hostfwd` rules (`tcp:127.0.0.1:18080-:80`) for published ports.
    UserMode { hostfwd: Vec<String> },
    /// A tap on a user network's bridge, opened in its namespace (`net::tap`).
    Tap(std::sync::Arc<std::os::fd::OwnedFd>),
}

/// A VM the backend started.
#[derive(Debug)]
pub struct Launched {
    pub pid: u32,
    /// The VM's process, when it is this process's child: waiting on it reaps it.
    pub child: Option<std::process::Child>,
}

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{what} not found at {path}: {hint}")]
    BootFileMissing {
        what: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("building the image disk for {path}: {source}")]
    DiskBuild {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: {source} (run `make deps`)")]
    Tool {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The root-bus slot of a QEMU VM's first NIC; the next NICs take the next slots. Clear of
/// what QEMU places itself on q35 (slots 1 to 7 for the devices it numbers, 0x1f for the ICH9
/// functions) and of the PCI bridges guestinfo's slot encoding puts from 0x11 on. A root-bus
/// slot with function 0 is its own `pciSlotNumber`.
pub const ROOT_BUS_FIRST_NIC_SLOT: u32 = 0x08;

/// What runs containerVMs.
pub trait Backend: Send + Sync {
    /// Where the VM's `index`th NIC sits, in VMware's `pciSlotNumber` encoding: the one slot
    /// the backend places the NIC at and the container's guestinfo tells tether to look at.
    /// By default the root bus from [`ROOT_BUS_FIRST_NIC_SLOT`] on (QEMU's `addr=`).
    fn nic_slot(&self, index: usize) -> u32 {
        ROOT_BUS_FIRST_NIC_SLOT + index as u32
    }

    /// Gives the container its writable layer on the image's disk and boots it.
    /// Returns once the VM process runs; tether connects to the server on its own.
    fn launch(&self, req: &LaunchRequest) -> Result<Launched, BackendError>;

    /// Whether a VM could be launched now (its boot files are there): what building image
    /// layers in VMs needs before it starts one.
    fn can_boot(&self) -> Result<(), BackendError>;

    /// Whether a launched VM is a process on this host ([`Launched::pid`]) whose end the engine
    /// watches. A vSphere VM is not: its life is its power state.
    fn runs_processes(&self) -> bool {
        true
    }

    /// Whether the guest's channel is its COM port (vSphere's network serial port, which the
    /// vSPC takes) whatever the container's transport says.
    fn serial_channel(&self) -> bool {
        false
    }

    /// Whether the container's VM is powered on, for a backend whose VMs are no processes
    /// here ([`Backend::runs_processes`] false): how the engine sees a guest power itself off.
    fn vm_on(&self, _container_dir: &std::path::Path) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Powers the container's VM off if it is still on (tether did not). A VM process is
    /// killed by the engine instead, so the default does nothing.
    fn power_off(&self, _container_dir: &std::path::Path) -> Result<(), BackendError> {
        Ok(())
    }

    /// Removes the container's VM for good (`docker rm`). A VM process leaves nothing behind.
    fn destroy(&self, _container_dir: &std::path::Path) -> Result<(), BackendError> {
        Ok(())
    }

    /// Removes what the backend keeps of a volume whose local disk is `disk` (`docker volume
    /// rm`): vSphere's copy on the datastore. QEMU uses the local disk itself.
    fn remove_volume(&self, _disk: &std::path::Path) -> Result<(), BackendError> {
        Ok(())
    }

    /// Plugs `nic` into the running VM of the container (`docker network connect`), at its
    /// slot. Backends that cannot say so.
    fn hot_add_nic(&self, _container_dir: &std::path::Path, nic: &Nic) -> Result<(), BackendError> {
        Err(BackendError::Failed(format!(
            "this backend cannot add a NIC to a running containerVM (slot {:#x}): stop the container, connect it, start it",
            nic.slot
        )))
    }

    /// Whether the NIC at `slot` can be unplugged from the running VM (it was hot-plugged),
    /// asked before the guest is told to let it go; the error says why not.
    fn hot_removable(
        &self,
        _container_dir: &std::path::Path,
        slot: u32,
    ) -> Result<(), BackendError> {
        Err(cannot_remove_nic(slot))
    }

    /// Unplugs the NIC at `slot` from the running VM (`docker network disconnect`), once the
    /// guest let it go.
    fn hot_remove_nic(
        &self,
        _container_dir: &std::path::Path,
        slot: u32,
    ) -> Result<(), BackendError> {
        Err(cannot_remove_nic(slot))
    }

    /// The host plumbing of user networks, where this backend has it.
    fn network_plumbing(&self) -> Option<std::sync::Arc<dyn net::NetworkPlumbing>> {
        None
    }
}

/// Starts a helper process that outlives the request that needs it (a VM, a network's
/// dnsmasq): no stdin or stdout, stderr to `stderr` (its log), and its own process group, so a
/// ctrl-c at the appliance's terminal does not reach it and the engine can kill the whole group.
pub(crate) fn spawn_detached(
    cmd: &mut Command,
    stderr: Stdio,
    program: &'static str,
) -> Result<Child, BackendError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .map_err(|source| BackendError::Tool { program, source })
}

/// The default hot-unplug refusal of a backend that cannot take a NIC out of a running VM.
fn cannot_remove_nic(slot: u32) -> BackendError {
    BackendError::Failed(format!(
        "this backend cannot remove a NIC from a running containerVM (slot {slot:#x}): stop the container first"
    ))
}
