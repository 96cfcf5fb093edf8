//! PID 1 boot steps, each against the `Os` trait: base mounts, config, the image disk by label
//! (bounded wait), the container root with its own /dev, hostname and hosts, and the switch into
//! it. After the switch tether's own files (the initramfs) are unreachable: the image is `/`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guestinfo::contract::{FW_CFG_NAME, FW_CFG_PATH};
use guestinfo::ContainerSpec;
use thiserror::Error;

use crate::os::Os;
use crate::vmware::GuestinfoError;

pub mod copy;
pub mod kernel_fs;
pub mod volumes;

use kernel_fs::{KernelMount, BASE_MOUNTS, DEVICES, DEV_LINKS, DEV_MOUNTS, ROOT_MOUNTS};

/// Where the image disk is mounted before it becomes `/`.
pub const NEW_ROOT: &str = "/mnt/containerfs";

/// A boot step that failed, and what it failed on. The messages go to the console and, as the
/// container's failure, to the appliance.
#[derive(Debug, Error)]
pub enum BootError {
    /// Neither fw_cfg nor `tether.config=` has a config (and there is no guestinfo).
    #[error(
        "config: no config found (looked at {}); pass it with -fw_cfg name={FW_CFG_NAME},file=... \
         or as guestinfo",
        looked.join(", ")
    )]
    ConfigMissing { looked: Vec<String> },
    #[error("config {path}: not UTF-8")]
    ConfigNotUtf8 { path: String },
    /// The config text is there but is not a valid spec.
    #[error("config does not decode: {0}")]
    ConfigInvalid(#[source] guestinfo::ConfigError),
    #[error(transparent)]
    Guestinfo(#[from] GuestinfoError),
    /// No block device with the image's ext4 label appeared within the wait.
    #[error(
        "no disk labelled {label:?} appeared within {} ms; block devices seen: {}. Attach the \
         image disk (bootstrap-iso disk labels it {label:?})",
        waited.as_millis(),
        if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
    )]
    DiskNotFound {
        label: String,
        waited: Duration,
        /// Each device seen, with its label or the lack of one.
        seen: Vec<String>,
    },
    #[error("mkdir {}: {}", path.display(), OsText(source))]
    Mkdir { path: PathBuf, source: io::Error },
    /// mount(2) failed; `source` holds its errno.
    #[error("mount {fstype} on {}: {}", target.display(), OsText(source))]
    Mount {
        fstype: String,
        target: PathBuf,
        source: io::Error,
    },
    /// Mounting the image disk itself failed.
    #[error("mounting the image disk {}: {source}", disk.display())]
    ImageDisk {
        disk: PathBuf,
        source: Box<BootError>,
    },
    /// A node of the container's `/dev` (a path inside the container).
    #[error("mknod {path}: {}", OsText(source))]
    Mknod { path: String, source: io::Error },
    #[error("symlink {path}: {}", OsText(source))]
    Symlink { path: String, source: io::Error },
    #[error("sethostname {hostname:?}: {}", OsText(source))]
    Hostname { hostname: String, source: io::Error },
    /// A file of the container's `/etc` (a path inside the container).
    #[error("writing {path}: {}", OsText(source))]
    Write { path: String, source: io::Error },
    #[error("chdir {}: {}", path.display(), OsText(source))]
    Chdir { path: PathBuf, source: io::Error },
    #[error("move mount {} to /: {}", root.display(), OsText(source))]
    MoveRoot { root: PathBuf, source: io::Error },
    #[error("chroot: {}", OsText(source))]
    Chroot { source: io::Error },
    /// A volume or tmpfs mount (`mounts`).
    #[error(transparent)]
    Volume(Box<volumes::VolumeError>),
    /// An ExtraHosts entry (`network/hosts`) that is not `NAME:ADDR`.
    #[error("config network/hosts: entry {entry:?} is not NAME:ADDR: {problem}")]
    ExtraHost {
        entry: String,
        problem: &'static str,
    },
    /// A network endpoint could not be set up (its NIC missing at its slot, ...).
    #[error("{0}")]
    Network(Box<crate::net::NetError>),
}

impl From<crate::net::NetError> for BootError {
    fn from(e: crate::net::NetError) -> Self {
        Self::Network(Box::new(e))
    }
}

impl From<volumes::VolumeError> for BootError {
    fn from(e: volumes::VolumeError) -> Self {
        Self::Volume(Box::new(e))
    }
}

/// An OS error as the console shows it: `ENOENT: No such file or directory`, with the errno's
/// name; an error without an errno as it is.
struct OsText<'a>(&'a io::Error);

impl std::fmt::Display for OsText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.raw_os_error() {
            Some(errno) => write!(f, "{}", nix::errno::Errno::from_raw(errno)),
            None => write!(f, "{}", self.0),
        }
    }
}

/// Mounts a filesystem, creating the mount point; an already-mounted target (EBUSY) is fine.
fn mount(
    os: &dyn Os,
    source: &str,
    target: &Path,
    fstype: &str,
    flags: u64,
    data: &str,
) -> Result<(), BootError> {
    os.mkdir_all(target).map_err(|source| BootError::Mkdir {
        path: target.to_path_buf(),
        source,
    })?;
    match os.mount(source, target, fstype, flags, data) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        r => r.map_err(|source| BootError::Mount {
            fstype: fstype.to_string(),
            target: target.to_path_buf(),
            source,
        }),
    }
}

fn mount_all(os: &dyn Os, root: &Path, table: &[KernelMount]) -> Result<(), BootError> {
    for &(source, target, fstype, flags, data) in table {
        mount(os, source, &root.join(target), fstype, flags, data)?;
    }
    Ok(())
}

/// The kernel gives PID 1 nothing: mount what tether itself needs.
pub fn mount_base(os: &dyn Os) -> Result<(), BootError> {
    mount_all(os, Path::new("/"), &BASE_MOUNTS)
}

/// The config text: fw_cfg (QEMU), else the file named by `tether.config=` on the kernel command
/// line. (The VMware backdoor source is read by the caller when neither is present.)
pub fn read_config(os: &dyn Os) -> Result<String, BootError> {
    let text = |path: &str, bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| BootError::ConfigNotUtf8 {
            path: path.to_string(),
        })
    };
    let mut looked = vec![FW_CFG_PATH.to_string()];
    if let Ok(bytes) = os.read_file(Path::new(FW_CFG_PATH)) {
        return text(FW_CFG_PATH, bytes);
    }
    let cmdline = os.read_file(Path::new("/proc/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if let Some(path) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tether.config="))
    {
        looked.push(path.to_string());
        if let Ok(bytes) = os.read_file(Path::new(path)) {
            return text(path, bytes);
        }
    }
    Err(BootError::ConfigMissing { looked })
}

/// The ext4 volume label of a block device, if it has one.
fn ext4_label(os: &dyn Os, dev: &Path) -> Option<String> {
    let sb = os.read_at(dev, 1024, 256).ok()?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Finds the block device whose ext4 label is `label`, waiting up to `wait` for it to appear.
/// The error names every device seen and its label.
pub fn find_disk(os: &dyn Os, label: &str, wait: Duration) -> Result<PathBuf, BootError> {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        let mut seen = Vec::new();
        for name in os
            .list_dir(Path::new("/sys/class/block"))
            .unwrap_or_default()
        {
            if name.starts_with("loop") || name.starts_with("ram") {
                continue;
            }
            let dev = Path::new("/dev").join(&name);
            match ext4_label(os, &dev) {
                Some(l) if l == label => return Ok(dev),
                Some(l) => seen.push(format!("{name} (ext4 label {l:?})")),
                None => seen.push(format!("{name} (no ext4 label)")),
            }
        }
        if waited >= wait {
            return Err(BootError::DiskNotFound {
                label: label.to_string(),
                waited: wait,
                seen,
            });
        }
        os.sleep(step);
        waited += step;
    }
}

/// Mounts the image disk and builds the container's view in it: its own /dev (standard nodes,
/// a private devpts, shm; never the channel device), /proc, /sys (read-only), hostname, hosts.
/// `network` holds the endpoints as boot configured them (static addresses are known already):
/// their addresses, aliases and peers go into /etc/hosts, their nameservers into resolv.conf.
pub fn prepare_root(
    os: &dyn Os,
    disk: &Path,
    spec: &ContainerSpec,
    network: &[crate::net::Endpoint],
) -> Result<PathBuf, BootError> {
    let root = PathBuf::from(NEW_ROOT);
    let hostname = spec.effective_hostname();
    // Checked before anything is mounted: a bad entry is a config error, not a half-built root.
    let hosts = hosts_file(
        &hostname,
        &spec.extra_hosts,
        &crate::net::hosts_lines(&hostname, network),
    )?;
    // noinit_itable: no background thread zeroing inode tables; on a TCG guest's one vCPU it
    // delayed the container's start by ~6 ms (`make bench`). The image is one container's, and
    // the kernel handles never-zeroed tables correctly without it.
    let (flags, data) = image_disk_mount(spec);
    mount(os, &disk.to_string_lossy(), &root, "ext4", flags, data).map_err(|e| {
        BootError::ImageDisk {
            disk: disk.to_path_buf(),
            source: Box::new(e),
        }
    })?;
    crate::timing::mark("disk_mounted");
    // A maintenance boot (main session `hold`: docker cp on a stopped container, an image
    // layer applied) runs only tether's built-ins on the disk and must leave its files as they
    // were: a layer built in one must hold the layer's files and nothing of this boot's, not
    // even the mount points of /proc, /sys and /dev (and a layer's own sys/ or dev/ entries
    // must land on the disk, not on a kernel filesystem mounted over it).
    if spec.main_session().is_some_and(|s| s.is_hold()) {
        // Its volumes, though, at their paths: a copy under one reaches the volume, as in the
        // running container. (A layer build has none.)
        let read_only = volumes::mount_all(os, &root, spec)?;
        volumes::seal(os, &read_only)?;
        return loopback(os, root);
    }
    mount_all(os, &root, &ROOT_MOUNTS)?;
    let dev = root.join("dev");
    for (name, major, minor) in DEVICES {
        os.mknod_char(&dev.join(name), 0o666, major, minor)
            .map_err(|source| BootError::Mknod {
                path: format!("/dev/{name}"),
                source,
            })?;
    }
    for (link, target) in DEV_LINKS {
        os.symlink(target, &dev.join(link))
            .map_err(|source| BootError::Symlink {
                path: format!("/dev/{link}"),
                source,
            })?;
    }
    mount_all(os, &root, &DEV_MOUNTS)?;
    let read_only = volumes::mount_all(os, &root, spec)?;
    os.sethostname(&hostname)
        .map_err(|source| BootError::Hostname {
            hostname: hostname.clone(),
            source,
        })?;
    let etc = root.join("etc");
    os.mkdir_all(&etc).map_err(|source| BootError::Mkdir {
        path: PathBuf::from("/etc"),
        source,
    })?;
    let write = |name: &str, contents: &[u8]| {
        os.write_file(&etc.join(name), contents)
            .map_err(|source| BootError::Write {
                path: format!("/etc/{name}"),
                source,
            })
    };
    write("hosts", hosts.as_bytes())?;
    write("hostname", format!("{hostname}\n").as_bytes())?;
    let nameservers = crate::net::nameservers(spec, network);
    if let Some(resolv) = resolv_conf(&nameservers, &spec.dns_search) {
        write("resolv.conf", resolv.as_bytes())?;
    }
    volumes::seal(os, &read_only)?;
    loopback(os, root)
}

/// The image disk's mount flags and ext4 options. A disk being built (an image layer applied
/// in a `hold-build` boot) is mounted with `noload` (ext4 without its journal: on a clean
/// filesystem the kernel allows it read-write) and `noatime`: every block the journal or an
/// atime update dirties would stay in the layer's qcow2 for good, and the appliance discards a
/// disk whose VM did not power off cleanly, so the journal's crash safety buys nothing there.
fn image_disk_mount(spec: &ContainerSpec) -> (u64, &'static str) {
    if spec.main_session().is_some_and(|s| s.is_build_hold()) {
        (libc::MS_NOATIME, "noinit_itable,noload")
    } else {
        (0, "noinit_itable")
    }
}

fn loopback(os: &dyn Os, root: PathBuf) -> Result<PathBuf, BootError> {
    if let Err(e) = os.loopback_up() {
        crate::log::warn(&format!("loopback interface not brought up: {e}"));
    }
    Ok(root)
}

/// /etc/hosts: localhost, the container's own name (on its network addresses, with their
/// aliases and peers, else on 127.0.1.1), then the config's ExtraHosts in order.
pub fn hosts_file(
    hostname: &str,
    extra: &[String],
    network: &[(String, String)],
) -> Result<String, BootError> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if network.is_empty() {
        out.push_str(&format!("127.0.1.1\t{hostname} {short}\n"));
    }
    for (addr, names) in network {
        out.push_str(&format!("{addr}\t{names}\n"));
    }
    for entry in extra {
        let (name, addr) = extra_host(entry)?;
        out.push_str(&format!("{addr}\t{name}\n"));
    }
    Ok(out)
}

/// An ExtraHosts entry, docker's `--add-host NAME:ADDR`: split at the first `:`, so an IPv6
/// address needs no brackets (`[...]` around it is accepted and removed, as docker does). The
/// address is not checked further (`host-gateway` stays as given), but neither part may be
/// empty or hold whitespace, which would break the hosts line.
fn extra_host(entry: &str) -> Result<(&str, &str), BootError> {
    let bad = |problem| BootError::ExtraHost {
        entry: entry.to_string(),
        problem,
    };
    let (name, addr) = entry.split_once(':').ok_or(bad("no ':'"))?;
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if addr.is_empty() {
        return Err(bad("the address is empty"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or a control character"));
    }
    Ok((name, addr))
}

/// /etc/resolv.conf from the nameservers (the config's, the networks': `net::nameservers`) and
/// search domains; `None` (neither) keeps the image's own file.
pub fn resolv_conf(nameservers: &[String], search: &[String]) -> Option<String> {
    if nameservers.is_empty() && search.is_empty() {
        return None;
    }
    let mut out = String::from("# written by tether from the container's config\n");
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    Some(out)
}

/// Makes `root` the filesystem root for tether and everything it starts (as switch_root does):
/// the initramfs, with tether's own files, is left unreachable underneath.
pub fn switch_root(os: &dyn Os, root: &Path) -> Result<(), BootError> {
    let chdir = |path: &Path| {
        os.chdir(path).map_err(|source| BootError::Chdir {
            path: path.to_path_buf(),
            source,
        })
    };
    chdir(root)?;
    os.move_mount(root, Path::new("/"))
        .map_err(|source| BootError::MoveRoot {
            root: root.to_path_buf(),
            source,
        })?;
    os.chroot(Path::new("."))
        .map_err(|source| BootError::Chroot { source })?;
    chdir(Path::new("/"))
}

#[cfg(test)]
mod tests;
