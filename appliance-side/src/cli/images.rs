//! `appliance image export-vmdk IMAGE DIR`: the image's disk as one VMDK a vSphere datastore
//! accepts. The disk's whole chain (every layer below the image's top) is read through and
//! written as a single **streamOptimized** VMDK: the compressed, grain-by-grain subformat that an
//! OVF import or an NFC upload takes and that ESXi turns into a datastore disk of its own
//! (monolithicSparse or a flat VMDK are not accepted by those paths). A datastore builds its own
//! chains: each container's writable delta is a child disk (a snapshot or linked clone) that
//! vSphere makes on top of the uploaded base, so a delta is never exported from here.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::args::ExportVmdkArgs;
use crate::cli::client::{CliError, Client};

/// The VMDK of the disk at `disk` (qcow2, with its backing chain) at `out`.
pub fn convert(disk: &Path, out: &Path) -> Result<(), CliError> {
    crate::backend::vsphere::datastore::convert_to_vmdk(disk, out).map_err(CliError::Failed)
}

pub async fn export_vmdk(client: &Client, a: &ExportVmdkArgs) -> Result<ExitCode, CliError> {
    let v = client
        .json("GET", &format!("/images/{}/json", a.image), None)
        .await?;
    let disk = v["GraphDriver"]["Data"]["Disk"]
        .as_str()
        .ok_or_else(|| CliError::Failed("the server did not say where the disk is".into()))?;
    let id = v["Id"].as_str().unwrap_or_default();
    let short = id.strip_prefix("sha256:").unwrap_or(id);
    let short = &short[..short.len().min(12)];
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| CliError::Failed(format!("creating {}: {e}", a.dir.display())))?;
    let out = a.dir.join(format!("{short}.vmdk"));
    // Written beside and renamed: a failed export leaves no partial VMDK under the final name.
    let part = a.dir.join(format!(".{short}.vmdk.part"));
    convert(Path::new(disk), &part)?;
    std::fs::rename(&part, &out)
        .map_err(|e| CliError::Failed(format!("writing {}: {e}", out.display())))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
