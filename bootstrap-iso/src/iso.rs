//! The bootstrap ISO: ISO 9660 with an El Torito boot record, booted by isolinux (Debian's
//! `isolinux` and `syslinux-common` packages), holding the kernel and the initramfs. Built with
//! xorriso. Reproducible: every staged file's mtime is pinned and `SOURCE_DATE_EPOCH=0` fixes the
//! volume dates.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::SystemTime;

use crate::error::IoError;

pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The kernel command line a containerVM boots with. `no_timer_check`: under TCG on a loaded
/// host the kernel's IO-APIC timer check can miss its ticks and panic ("IO-APIC + timer doesn't
/// work"); a VM's timer is emulated and needs no check (cloud images boot with it too).
pub const DEFAULT_APPEND: &str = "console=ttyS0 panic=-1 no_timer_check quiet";

/// What can go wrong building the ISO.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source} (run `make deps` for isolinux and syslinux-common)", path.display())]
    Bootloader { path: PathBuf, source: io::Error },
    #[error("{what} {}: {source} (`make kernel` builds the kernel, `bootstrap-iso initramfs` the initramfs)", path.display())]
    Input {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot run xorriso: {0} (run `make deps`)")]
    Spawn(io::Error),
    #[error("xorriso failed ({status}): {stderr}")]
    Xorriso { status: ExitStatus, stderr: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

fn pin_mtime(path: &Path) -> Result<(), IoError> {
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(SystemTime::UNIX_EPOCH))
        .map_err(IoError::at(path))
}

/// Copies an input into the staging tree; `what` is `None` for the bootloader's files.
fn stage(src: &Path, dst: &Path, what: Option<&'static str>) -> Result<(), Error> {
    std::fs::copy(src, dst).map_err(|source| {
        let path = src.to_path_buf();
        match what {
            None => Error::Bootloader { path, source },
            Some(what) => Error::Input { what, path, source },
        }
    })?;
    Ok(())
}

/// Builds the ISO at `out` from a kernel and an initramfs.
pub fn build(kernel: &Path, initramfs: &Path, append: &str, out: &Path) -> Result<(), Error> {
    let staging = out.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    let r = stage_and_pack(&staging, kernel, initramfs, append, out);
    let _ = std::fs::remove_dir_all(&staging);
    r
}

fn stage_and_pack(
    staging: &Path,
    kernel: &Path,
    initramfs: &Path,
    append: &str,
    out: &Path,
) -> Result<(), Error> {
    for dir in ["isolinux", "boot"] {
        let dir = staging.join(dir);
        std::fs::create_dir_all(&dir).map_err(IoError::at(&dir))?;
    }
    stage(
        Path::new(ISOLINUX_BIN),
        &staging.join("isolinux/isolinux.bin"),
        None,
    )?;
    stage(
        Path::new(LDLINUX_C32),
        &staging.join("isolinux/ldlinux.c32"),
        None,
    )?;
    stage(kernel, &staging.join("boot/vmlinuz"), Some("kernel"))?;
    stage(
        initramfs,
        &staging.join("boot/initramfs.gz"),
        Some("initramfs"),
    )?;
    let cfg = staging.join("isolinux/isolinux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "DEFAULT tether\nPROMPT 0\nTIMEOUT 0\nLABEL tether\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initramfs.gz {append}\n"
        ),
    )
    .map_err(IoError::at(&cfg))?;
    for p in [
        "isolinux/isolinux.bin",
        "isolinux/ldlinux.c32",
        "isolinux/isolinux.cfg",
        "boot/vmlinuz",
        "boot/initramfs.gz",
        "isolinux",
        "boot",
        "",
    ] {
        pin_mtime(&staging.join(p))?;
    }
    let _ = std::fs::remove_file(out);
    let output = Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", "0")
        .args(["-as", "mkisofs", "-quiet", "-o"])
        .arg(out)
        .args([
            "-V",
            "TETHER",
            "-R",
            "-b",
            "isolinux/isolinux.bin",
            "-c",
            "isolinux/boot.cat",
        ])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg(staging)
        .output()
        .map_err(Error::Spawn)?;
    if !output.status.success() {
        return Err(Error::Xorriso {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kernel_is_named_with_what_builds_it() {
        let d = std::env::temp_dir().join(format!("iso-missing-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let e = build(
            &d.join("bzImage"),
            &d.join("initramfs"),
            "",
            &d.join("o.iso"),
        )
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_dir_all(&d);
        // The bootloader is staged first; on a machine without it, that is what is named.
        assert!(
            (e.contains("bzImage") && e.contains("make kernel")) || e.contains("make deps"),
            "{e}"
        );
    }
}
