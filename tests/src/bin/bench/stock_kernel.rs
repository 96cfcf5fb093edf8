//! Debian's stock kernel, for a boot comparison with ours: fetched once with `apt-get download`
//! into ~/.cache/tether/stock-kernel/ (outside the repo). Its virtio, fw_cfg and ext4 drivers
//! are modules, which neither tether nor bench-init loads, so only bench-init's boot over the
//! built-in COM port can be compared.

use std::path::PathBuf;
use std::process::Command;

/// The stock kernel's bzImage and its version, or why there is none.
pub fn fetch() -> Result<(PathBuf, String), String> {
    let home = std::env::var("HOME").map_err(|_| "HOME is not set".to_string())?;
    let dir = PathBuf::from(home).join(".cache/tether/stock-kernel");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(found) = find_vmlinuz(&dir) {
        return Ok(found);
    }
    let deps = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .map_err(|e| format!("apt-cache: {e}"))?;
    let image = String::from_utf8_lossy(&deps.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::to_string)
        .ok_or("apt-cache names no image package for linux-image-amd64")?;
    let got = Command::new("apt-get")
        .args(["download", &image])
        .current_dir(&dir)
        .output()
        .map_err(|e| format!("apt-get download: {e}"))?;
    if !got.status.success() {
        return Err(format!(
            "apt-get download {image}: {}",
            String::from_utf8_lossy(&got.stderr).trim()
        ));
    }
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download left no .deb")?;
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("x"))
        .status()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if !x.success() {
        return Err(format!("dpkg-deb -x {} failed", deb.display()));
    }
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&dir).ok_or_else(|| format!("{} holds no boot/vmlinuz-*", deb.display()))
}

fn find_vmlinuz(dir: &std::path::Path) -> Option<(PathBuf, String)> {
    std::fs::read_dir(dir.join("x/boot"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.path(), version))
        })
}
