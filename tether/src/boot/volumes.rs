//! The container's volumes and tmpfs mounts (the config's `mounts`), mounted into the new root
//! before the switch, parents before what is under them.
//!
//! A volume is an ext4 disk found by its label (a bounded wait that names the label). It is
//! mounted at a private staging path in the initramfs, `/volumes/LABEL`, and its data directory
//! `data` is bind-mounted onto the destination; the staging mount is then dropped, so only the
//! bind holds the filesystem and nothing of it but the data is reachable (its `lost+found`
//! stays hidden). On the volume's first use (an empty data directory, copy mode `New`) the
//! image's files under the destination are copied in first, owners, modes, times, xattrs,
//! links and holes kept, and the volume's root takes the image directory's owner and mode: a
//! non-root user can write to a volume whose image directory it owns. The copy goes to
//! `data.copying` and is renamed onto `data` whole, so a boot cut short mid-copy copies again
//! next time instead of leaving half a copy that looks like data.
//!
//! `ro` is applied last ([`seal`]), once tether has written the container's /etc files and
//! made the mount points of nested mounts. At shutdown [`release`] ends every process left and
//! unmounts each mount, children first: the last unmount of a volume's filesystem writes its
//! journal and marks it clean.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guestinfo::mounts::in_mount_order;
use guestinfo::{ContainerSpec, CopyMode, MountSource, MountSpec};
use thiserror::Error;

use super::{find_disk, mount, BootError, OsText};
use crate::os::Os;

/// Where volume disks are mounted before their data directory is bound into the container.
pub const STAGING: &str = "/volumes";
/// The directory of a volume's filesystem that the container sees.
pub const DATA_DIR: &str = "data";
/// Where a first-use copy is made before it becomes [`DATA_DIR`].
const COPYING: &str = "data.copying";
const LOST_FOUND: &str = "lost+found";
/// How long the processes left at shutdown get to die before the volumes are unmounted.
const END_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error(
        "volume for {destination}: no disk labelled {label:?} appeared within {} ms; block \
         devices seen: {}. The appliance attaches each volume's disk at boot: check that the \
         volume exists and that its disk is intact",
        waited.as_millis(),
        if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
    )]
    DiskNotFound {
        label: String,
        destination: String,
        waited: Duration,
        seen: Vec<String>,
    },
    #[error("{what} for {destination}: {step}: {}", OsText(source))]
    Step {
        /// `volume "LABEL"` or `tmpfs`.
        what: String,
        destination: String,
        step: &'static str,
        source: io::Error,
    },
    #[error(
        "{what} for {destination}: the image has a file there, not a directory; a volume \
         can only be mounted on a directory"
    )]
    NotADirectory { what: String, destination: String },
}

/// The error for a failed `step` of mounting `m`.
fn step_error(m: &MountSpec) -> impl Fn(&'static str, io::Error) -> VolumeError + '_ {
    move |step, source| VolumeError::Step {
        what: what(m),
        destination: m.destination.clone(),
        step,
        source,
    }
}

fn what(m: &MountSpec) -> String {
    match &m.source {
        MountSource::Label(l) => format!("volume {l:?}"),
        MountSource::Tmpfs => "tmpfs".to_string(),
    }
}

/// Mounts the spec's volumes and tmpfs mounts under `root`, in order; returns the mount points
/// to make read-only once the root is otherwise ready ([`seal`]).
pub fn mount_all(
    os: &dyn Os,
    root: &Path,
    spec: &ContainerSpec,
) -> Result<Vec<PathBuf>, BootError> {
    let mut read_only = Vec::new();
    for m in in_mount_order(&spec.mounts) {
        let step = step_error(m);
        let target = os
            .resolve_in(root, Path::new(&m.destination))
            .map_err(|e| step("resolving the path in the image", e))?;
        let image_dir = mount_point(os, m, &target)?;
        match &m.source {
            MountSource::Label(label) => {
                let wait = Duration::from_millis(spec.disk_wait_ms);
                let disk = find_disk(os, label, wait).map_err(|e| match e {
                    BootError::DiskNotFound { seen, .. } => VolumeError::DiskNotFound {
                        label: label.clone(),
                        destination: m.destination.clone(),
                        waited: wait,
                        seen,
                    },
                    other => step("finding its disk", io::Error::other(other.to_string())),
                })?;
                mount_volume(os, m, label, &disk, &target, image_dir)?;
            }
            MountSource::Tmpfs => {
                let (flags, data) = tmpfs_options(m);
                mount(os, "tmpfs", &target, "tmpfs", flags, &data)?;
            }
        }
        crate::log::info(&format!(
            "{} mounted on {}{}",
            what(m),
            m.destination,
            if m.read_only() { " (read-only)" } else { "" }
        ));
        if m.read_only() {
            read_only.push(target);
        }
    }
    Ok(read_only)
}

/// The mount point in the image: its directory (`Some`, what a first use copies), or a new one
/// (`None`) when the image has nothing there.
fn mount_point(os: &dyn Os, m: &MountSpec, target: &Path) -> Result<Option<PathBuf>, VolumeError> {
    let step = step_error(m);
    match os.stat(target) {
        Ok(s) if s.is_dir => Ok(Some(target.to_path_buf())),
        Ok(_) => Err(VolumeError::NotADirectory {
            what: what(m),
            destination: m.destination.clone(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            os.mkdir_all(target)
                .map_err(|e| step("creating the mount point", e))?;
            Ok(None)
        }
        Err(e) => Err(step("looking at the mount point", e)),
    }
}

/// The disk at its staging path, first-use copy, the data directory bound onto `target`; the
/// staging mount is dropped whatever happens.
fn mount_volume(
    os: &dyn Os,
    m: &MountSpec,
    label: &str,
    disk: &Path,
    target: &Path,
    image_dir: Option<PathBuf>,
) -> Result<(), BootError> {
    let staging = Path::new(STAGING).join(label);
    mount(
        os,
        &disk.to_string_lossy(),
        &staging,
        "ext4",
        0,
        "noinit_itable",
    )?;
    let bound = fill_and_bind(os, m, &staging, target, image_dir);
    let step = step_error(m);
    let dropped = os
        .unmount(&staging)
        .map_err(|e| step("unmounting its staging path", e))
        .and_then(|()| {
            os.rmdir(&staging)
                .map_err(|e| step("removing its staging path", e))
        });
    bound?;
    Ok(dropped?)
}

fn fill_and_bind(
    os: &dyn Os,
    m: &MountSpec,
    staging: &Path,
    target: &Path,
    image_dir: Option<PathBuf>,
) -> Result<(), BootError> {
    let step = step_error(m);
    let copying = staging.join(COPYING);
    if os.stat(&copying).is_ok() {
        // A first use cut short: its copy is not the volume's data.
        os.remove_tree(&copying)
            .map_err(|e| step("removing an unfinished copy", e))?;
    }
    let data = data_dir(os, staging).map_err(|e| step("preparing its data directory", e))?;
    if let (CopyMode::New, Some(image_dir)) = (m.copy, image_dir) {
        let empty = visible_entries(os, &data)
            .map_err(|e| step("listing its data directory", e))?
            .is_empty();
        if empty {
            os.copy_tree(&image_dir, &copying)
                .map_err(|e| step("copying the image's files into it", e))?;
            os.rename(&copying, &data)
                .map_err(|e| step("putting the copy in place", e))?;
            crate::log::debug(&format!("{}: filled from the image", what(m)));
        }
    }
    mount(
        os,
        &data.to_string_lossy(),
        target,
        "bind",
        libc::MS_BIND,
        "",
    )
}

/// The volume's data directory, made on its first mount. A filesystem without one that holds
/// more than `lost+found` (a disk made elsewhere) is used whole, as VIC did.
fn data_dir(os: &dyn Os, staging: &Path) -> io::Result<PathBuf> {
    let data = staging.join(DATA_DIR);
    match os.stat(&data) {
        Ok(_) => Ok(data),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if visible_entries(os, staging)?.is_empty() {
                os.mkdir_all(&data)?;
                Ok(data)
            } else {
                Ok(staging.to_path_buf())
            }
        }
        Err(e) => Err(e),
    }
}

/// A directory's entries but `lost+found`.
fn visible_entries(os: &dyn Os, dir: &Path) -> io::Result<Vec<String>> {
    Ok(os
        .list_dir(dir)?
        .into_iter()
        .filter(|n| n != LOST_FOUND)
        .collect())
}

/// A tmpfs mount's flags and data from its mode: `noexec`, `nosuid` and `nodev` as flags (their
/// opposites clear them), `size=`, `mode=`, `uid=`, `gid=`, `nr_inodes=` as data. `ro` is
/// applied by [`seal`].
fn tmpfs_options(m: &MountSpec) -> (u64, String) {
    let mut flags = 0u64;
    let mut data = Vec::new();
    for o in m.options() {
        match o {
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "ro" | "rw" => {}
            valued => data.push(valued),
        }
    }
    (flags, data.join(","))
}

/// Makes the read-only mounts read-only, once nothing more is written through them at boot.
pub fn seal(os: &dyn Os, read_only: &[PathBuf]) -> Result<(), BootError> {
    for target in read_only {
        os.remount_bind_readonly(target)
            .map_err(|source| BootError::Mount {
                fstype: "read-only remount".into(),
                target: target.clone(),
                source,
            })?;
    }
    Ok(())
}

/// At shutdown (or after a failed boot, under the new root): ends every process left, then
/// unmounts each mount, children first, and syncs. A mount that cannot be unmounted is made
/// read-only instead, which also writes its journal.
pub fn release(os: &dyn Os, root: &Path, mounts: &BTreeMap<String, MountSpec>) {
    if mounts.is_empty() {
        return;
    }
    os.end_all_processes(END_WAIT);
    for m in in_mount_order(mounts).into_iter().rev() {
        let Ok(target) = os.resolve_in(root, Path::new(&m.destination)) else {
            continue;
        };
        match os.unmount(&target) {
            Ok(()) => {}
            // Not mounted (a boot that failed before it): nothing to do.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
            Err(e) => {
                crate::log::warn(&format!(
                    "unmounting {} on {}: {}; making it read-only",
                    what(m),
                    m.destination,
                    OsText(&e)
                ));
                if let Err(e) = os.remount_readonly(&target) {
                    crate::log::error(&format!(
                        "{} on {} stays writable: {}",
                        what(m),
                        m.destination,
                        OsText(&e)
                    ));
                }
            }
        }
    }
    os.sync();
}

#[cfg(test)]
mod tests;
