//! The benchmarks' baseline: the least a PID 1 can do. It mounts devtmpfs and sysfs, finds the
//! virtio port tether's channel is named by (else uses the COM port, in raw mode, as tether
//! does), writes one line to it, then does what its fw_cfg file (the slot tether's config uses,
//! `guestinfo::contract`) says, and powers off:
//!
//!   out N    copy N bytes of 100-byte text lines from a file to the port, as `cat` would
//!   in N     read N bytes from the port, then write `done`
//!   echo N   N times: read one byte from the port and write it back
//!
//! (A bare number means `out N`.) Nothing here is part of a containerVM.

use std::fs::File;
use std::io::{Read, Write};

use guestinfo::contract::{COM_DEVICE, FW_CFG_PATH, VIRTIO_PORT_NAME};

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
        if name.trim() == VIRTIO_PORT_NAME {
            return Some(std::path::Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

enum Task {
    Out(u64),
    In(u64),
    Echo(u64),
}

fn task() -> Task {
    let text = std::fs::read_to_string(FW_CFG_PATH).unwrap_or_default();
    let mut words = text.split_whitespace();
    let (verb, n) = match (words.next(), words.next()) {
        (Some(v), Some(n)) => (v, n),
        (Some(n), None) => ("out", n),
        _ => ("out", "0"),
    };
    let n = n.parse().unwrap_or(0);
    match verb {
        "in" => Task::In(n),
        "echo" => Task::Echo(n),
        _ => Task::Out(n),
    }
}

/// The same bytes the benchmark's container writes: lines of 99 '0's and a newline.
fn line_block() -> Vec<u8> {
    let mut line = vec![b'0'; 99];
    line.push(b'\n');
    line.repeat(655) // 65,500 bytes: whole lines
}

/// Makes the file `cat` will copy (in the initramfs's RAM, as the container's is in tmpfs).
fn make_file(path: &str, mut left: u64) -> std::io::Result<()> {
    let block = line_block();
    let mut f = File::create(path)?;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// What `cat FILE > PORT` does: read and write 64 KiB at a time.
fn cat(path: &str, port: &mut File) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return port.flush();
        }
        port.write_all(&buf[..n])?;
    }
}

fn serve(port: &mut File, task: Task) -> std::io::Result<()> {
    // The file is made before the line, so the host times only the copy.
    if let Task::Out(n @ 1..) = task {
        make_file("/bench.data", n)?;
    }
    port.write_all(b"bench-init: up\n")?;
    match task {
        Task::Out(0) => Ok(()),
        Task::Out(_) => cat("/bench.data", port),
        Task::In(mut left) => {
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = port.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                left -= n as u64;
            }
            port.write_all(b"done\n")
        }
        Task::Echo(n) => {
            let mut b = [0u8; 1];
            for _ in 0..n {
                port.read_exact(&mut b)?;
                port.write_all(&b)?;
            }
            Ok(())
        }
    }
}

/// No line discipline on the COM port (bytes pass as they are, both ways), at tether's speed.
fn raw_mode(port: &File) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(port);
    // SAFETY: termios is plain data; tcgetattr fills it, cfmakeraw and tcsetattr read it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            // As tether sets it.
            libc::cfsetspeed(&mut t, libc::B115200);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}

fn main() {
    mount("devtmpfs", "/dev", "devtmpfs");
    mount("sysfs", "/sys", "sysfs");
    mount("proc", "/proc", "proc");
    let (path, tty) = match channel() {
        Some(p) => (p, false),
        None => (std::path::PathBuf::from(COM_DEVICE), true),
    };
    if let Ok(mut port) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        if tty {
            raw_mode(&port);
        }
        let _ = serve(&mut port, task());
        if tty {
            // SAFETY: tcdrain on an open descriptor: wait until the UART has sent everything.
            unsafe { libc::tcdrain(std::os::fd::AsRawFd::as_raw_fd(&port)) };
        }
    }
    // SAFETY: sync and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}
