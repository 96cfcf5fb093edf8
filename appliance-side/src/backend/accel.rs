//! Which accelerator QEMU should use: KVM only when a short probe boot proves it works, TCG
//! otherwise. /dev/kvm can exist and still hang ordinary guests (nested PVM), so its presence
//! proves nothing.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::home::Home;

/// The probe boots our kernel with an init that does not exist: a working KVM reaches the panic
/// (and, with `-no-reboot`, exits) in well under a second; a /dev/kvm that hangs is cut off at
/// 5 s. The verdict is cached per kernel in `$TETHER_HOME/accel-<kernel digest>`.
pub fn accelerator(home: &Home, kernel: &Path) -> &'static str {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "tcg";
    }
    let digest = bootstrap::disk::sha256_file(kernel).unwrap_or_default();
    let cache = home
        .root()
        .join(format!("accel-{}", &digest[..16.min(digest.len())]));
    if let Ok(v) = std::fs::read_to_string(&cache) {
        return if v.trim() == "kvm" { "kvm" } else { "tcg" };
    }
    tracing::info!("probing whether KVM works here (once, up to 5 s)");
    let out = Command::new("timeout")
        .args([
            "5",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-machine",
            "q35",
        ])
        .args([
            "-m",
            "64",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 panic=-1 no_timer_check init=/tether-kvm-probe",
        ])
        .stdin(Stdio::null())
        .output();
    let works = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Kernel panic"));
    let verdict = if works { "kvm" } else { "tcg" };
    let _ = std::fs::write(&cache, verdict);
    verdict
}
