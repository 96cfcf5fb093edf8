//! The container's kernel filesystems and /dev, as tables, and `lo`'s bring-up: what a boot
//! does between PID 1's entry and the container's start, in the one place both tether's boot
//! and the benchmarks' same-work baseline (tether/src/bin/bench-init/, which includes this
//! file by path) read it, so the baseline does tether's work and no other. Only std and libc
//! here.

use std::io;

const MS_NOSUID: u64 = libc::MS_NOSUID;
const MS_NODEV: u64 = libc::MS_NODEV;
const MS_NOEXEC: u64 = libc::MS_NOEXEC;
const MS_RDONLY: u64 = libc::MS_RDONLY;

/// One filesystem to mount: source, target (under a root), type, flags, data.
pub type KernelMount = (&'static str, &'static str, &'static str, u64, &'static str);

/// What tether itself needs, where the kernel gives PID 1 nothing.
pub const BASE_MOUNTS: [KernelMount; 6] = [
    ("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    (
        "sysfs",
        "sys",
        "sysfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    ),
    ("devtmpfs", "dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "dev/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    ),
    ("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("run", "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
];

/// The container's kernel filesystems, before its /dev is populated: /sys read-only, and a
/// /dev of its own (a small tmpfs, not the host's devtmpfs).
pub const ROOT_MOUNTS: [KernelMount; 3] = [
    ("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    (
        "sysfs",
        "sys",
        "sysfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
        "",
    ),
    ("tmpfs", "dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k"),
];

/// The container's /dev/pts (its own instance) and /dev/shm, once /dev holds its nodes.
pub const DEV_MOUNTS: [KernelMount; 2] = [
    (
        "devpts",
        "dev/pts",
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,gid=5,mode=620,ptmxmode=666",
    ),
    (
        "shm",
        "dev/shm",
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
    ),
];

/// Standard device nodes of a container's /dev: (name, major, minor).
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The links of a container's /dev: (name, target).
pub const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Brings the loopback interface up (SIOCSIFFLAGS with IFF_UP | IFF_RUNNING).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket for the interface ioctls, an ifreq we own, closed after.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(sock);
        if rc == 0 {
            Ok(())
        } else {
            Err(err)
        }
    }
}
