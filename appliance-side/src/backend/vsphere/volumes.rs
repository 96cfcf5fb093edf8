//! Volumes on the datastore. A named volume's disk on vSphere is `<volume_dir>/<name>.vmdk`,
//! a flat VMDK (a descriptor and its extent `<name>-flat.vmdk`, the layout of a disk a VM
//! attaches as it is): the first VM that mounts the volume uploads the appliance's fresh ext4
//! disk there (the extent first, the descriptor last under a temporary name and renamed, so
//! the descriptor is there only once the disk is whole); from then on the datastore's copy is
//! the volume,
//! holding what containers wrote, and every VM that mounts it attaches that file. One writer at
//! a time is the engine's rule, as under QEMU. A VM's volumes are detached before it is
//! destroyed (vSphere deletes every disk still attached to a VM it destroys), and `docker
//! volume rm` deletes the file.

use std::path::Path;

use super::soap::MoRef;
use super::{api, VsphereBackend, VsphereError};

impl VsphereBackend {
    /// The datastore path (relative) of the volume whose local disk is `disk`
    /// (`volumes/<name>/disk.qcow2` in the appliance's home).
    fn volume_rel(&self, disk: &Path) -> String {
        format!("{}/{}.vmdk", self.cfg.volume_dir, Self::image_key(disk))
    }

    /// The datastore path of the volume whose local disk is `disk`.
    pub fn volume_on_datastore(&self, disk: &Path) -> String {
        self.ds_path(&self.volume_rel(disk))
    }

    /// Makes sure the volume's disk is on the datastore, uploading the local one if it is
    /// not there yet; its datastore path. `scratch` holds the VMDK while it uploads.
    pub async fn ensure_volume(&self, disk: &Path, scratch: &Path) -> Result<String, VsphereError> {
        let rel = self.volume_rel(disk);
        // One upload at a time, images' and volumes' alike.
        let _one = self.uploaded.lock().await;
        if !self.file_exists(&rel).await? {
            let key = Self::image_key(disk);
            let local = scratch.join(format!("{key}.vmdk"));
            let flat = scratch.join(format!("{key}-flat.vmdk"));
            let outcome = self.upload_flat(disk, &local, &flat, &rel).await;
            let _ = std::fs::remove_file(&local);
            let _ = std::fs::remove_file(&flat);
            outcome?;
            tracing::info!(path = %self.ds_path(&rel), "volume disk uploaded to the datastore");
        }
        Ok(self.ds_path(&rel))
    }

    async fn upload_flat(
        &self,
        disk: &Path,
        local: &Path,
        flat: &Path,
        rel: &str,
    ) -> Result<(), VsphereError> {
        let (d, out) = (disk.to_path_buf(), local.to_path_buf());
        tokio::task::spawn_blocking(move || {
            super::datastore::convert_to_vmdk_as(&d, &out, "monolithicFlat")
        })
        .await
        .map_err(|e| VsphereError::Setup(format!("converting the volume's disk: {e}")))?
        .map_err(|e| VsphereError::Setup(format!("converting {} to VMDK: {e}", disk.display())))?;
        self.put(flat, &flat_of(rel)).await?;
        self.put_whole(local, rel, "descriptor").await
    }

    /// Detaches the VM's volume disks, keeping their files.
    pub(super) async fn detach_volumes(&self, vm: &MoRef) -> Result<(), VsphereError> {
        let info = self
            .vim
            .vm_info(vm)
            .await
            .map_err(api("reading the VM's disks"))?;
        let prefix = self.ds_path(&format!("{}/", self.cfg.volume_dir));
        let disks: Vec<(i32, String)> = info
            .devices
            .iter()
            .filter(|d| d.kind == "VirtualDisk" && d.backing.starts_with(&prefix))
            .map(|d| (d.key, d.backing.clone()))
            .collect();
        if disks.is_empty() {
            return Ok(());
        }
        self.vim
            .reconfigure(vm, &super::spec::detach_disks(&disks))
            .await
            .map_err(api(format!("detaching the volumes of {}", info.name)))
    }

    /// Deletes the volume's disk from the datastore, if it is there.
    pub(super) async fn remove_volume_async(&self, disk: &Path) -> Result<(), VsphereError> {
        let rel = self.volume_rel(disk);
        // The descriptor first: a disk without one is no volume, and an extent left by a
        // failure here is overwritten by the next upload of that name.
        for file in [rel.clone(), flat_of(&rel)] {
            if self.file_exists(&file).await? {
                self.vim
                    .delete_file(&self.datacenter_ref, &self.ds_path(&file))
                    .await
                    .map_err(api(format!("deleting {}", self.ds_path(&file))))?;
            }
        }
        tracing::info!(path = %self.ds_path(&rel), "volume disk deleted from the datastore");
        Ok(())
    }
}

/// A flat VMDK's extent, beside its descriptor `rel`.
fn flat_of(rel: &str) -> String {
    match rel.strip_suffix(".vmdk") {
        Some(stem) => format!("{stem}-flat.vmdk"),
        None => format!("{rel}-flat"),
    }
}
