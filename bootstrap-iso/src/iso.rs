//! The bootstrap ISO: ISO 9660 with an El Torito boot record, booted by isolinux (Debian's
//! `isolinux` and `syslinux-common` packages), holding the kernel and the initramfs. Built with
//! xorriso. Reproducible: every staged file's mtime is pinned and `SOURCE_DATE_EPOCH=0` fixes the
//! volume dates.

use std::io;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The kernel command line a containerVM boots with.
pub const DEFAULT_APPEND: &str = "console=ttyS0 panic=-1 quiet";

fn pin_mtime(path: &Path) -> io::Result<()> {
    let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(0);
    std::fs::File::open(path)?.set_modified(epoch)
}

fn stage(src: &Path, dst: &Path) -> io::Result<()> {
    std::fs::copy(src, dst).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (run `make deps` for isolinux and syslinux-common)",
                src.display()
            ),
        )
    })?;
    Ok(())
}

/// Builds the ISO at `out` from a kernel and an initramfs.
pub fn build(kernel: &Path, initramfs: &Path, append: &str, out: &Path) -> io::Result<()> {
    let staging = out.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.join("isolinux"))?;
    std::fs::create_dir_all(staging.join("boot"))?;
    stage(
        Path::new(ISOLINUX_BIN),
        &staging.join("isolinux/isolinux.bin"),
    )?;
    stage(
        Path::new(LDLINUX_C32),
        &staging.join("isolinux/ldlinux.c32"),
    )?;
    stage(kernel, &staging.join("boot/vmlinuz"))?;
    stage(initramfs, &staging.join("boot/initramfs.gz"))?;
    std::fs::write(
        staging.join("isolinux/isolinux.cfg"),
        format!(
            "DEFAULT tether\nPROMPT 0\nTIMEOUT 0\nLABEL tether\n  KERNEL /boot/vmlinuz\n  APPEND initrd=/boot/initramfs.gz {append}\n"
        ),
    )?;
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
        .arg(&staging)
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run xorriso: {e} (run `make deps`)"),
            )
        })?;
    let _ = std::fs::remove_dir_all(&staging);
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "xorriso failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}
