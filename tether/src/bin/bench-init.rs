//! The boot benchmark's baseline: the least a PID 1 can do. It mounts devtmpfs and sysfs, finds
//! the virtio port named `org.tether.channel`, writes one line to it, then writes as many bytes of
//! 100-byte text lines as its fw_cfg file (`opt/org.tether/config`, the slot tether's config uses)
//! says (the raw-throughput baseline), and powers off. Nothing here is part of a containerVM.

use std::io::Write;

fn mount(source: &str, target: &str, fstype: &str) {
    let _ = std::fs::create_dir_all(target);
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in a literal");
    let (src, tgt, fs) = (c(source), c(target), c(fstype));
    // SAFETY: mount(2) with valid NUL-terminated strings and no data.
    unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
}

fn channel() -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == "org.tether.channel" {
            return Some(std::path::Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

fn bytes_to_send() -> u64 {
    std::fs::read_to_string("/sys/firmware/qemu_fw_cfg/by_name/opt/org.tether/config/raw")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The same bytes the benchmark's container writes: lines of 99 '0's and a newline.
fn line_block() -> Vec<u8> {
    let mut line = vec![b'0'; 99];
    line.push(b'\n');
    line.repeat(655) // 65,500 bytes: whole lines
}

fn main() {
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("sysfs", "/sys", "sysfs");
    mount("proc", "/proc", "proc");
    if let Some(path) = channel() {
        if let Ok(mut port) = std::fs::OpenOptions::new().write(true).open(path) {
            let _ = port.write_all(b"bench-init: up\n");
            let block = line_block();
            let mut left = bytes_to_send();
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                if port.write_all(&block[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
            let _ = port.flush();
        }
    }
    // SAFETY: sync and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
