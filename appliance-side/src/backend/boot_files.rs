//! The kernel and initramfs a containerVM boots: `--kernel`/`--initramfs`, else `$TETHER_KERNEL`
//! and `$TETHER_INITRAMFS`, else `~/.cache/tether/boot/` (which `make boot` fills).

use std::path::PathBuf;

use crate::backend::BackendError;

/// One boot file: the flag's path, else the environment's, else the cache's.
pub fn locate(
    flag: Option<PathBuf>,
    env: &'static str,
    name: &'static str,
) -> Result<PathBuf, BackendError> {
    let path = flag
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/tether/boot").join(name)
        });
    if !path.exists() {
        let flag_name = if name == "bzImage" {
            "kernel"
        } else {
            "initramfs"
        };
        return Err(BackendError::BootFileMissing {
            what: flag_name,
            path,
            hint: format!("run `make boot` in the tether tree, or pass --{flag_name} / set ${env}"),
        });
    }
    Ok(path)
}

/// The kernel and the initramfs.
pub fn kernel_and_initramfs(
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
) -> Result<(PathBuf, PathBuf), BackendError> {
    Ok((
        locate(kernel, "TETHER_KERNEL", "bzImage")?,
        locate(initramfs, "TETHER_INITRAMFS", "initramfs.gz")?,
    ))
}
