//! A tap device inside a network namespace, opened by the appliance and handed to QEMU as a
//! descriptor (`-netdev tap,fd=N`). QEMU itself stays in the host's namespace, where its
//! channel socket, its `-serial tcp:` to the appliance and its user-mode network (the default
//! network) are; only the tap lives in the user network's namespace. The tap is not persistent:
//! it goes away with the last descriptor, so a VM that ends takes its tap with it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::backend::BackendError;

/// `_IOW('T', 202, int)` from linux/if_tun.h (libc does not define it).
const TUNSETIFF: u64 = 0x4004_54ca;

/// Runs `f` on a fresh thread that has joined the network namespace at `ns_path`. Sockets and
/// devices it creates belong to that namespace; the thread ends with `f`, so nothing else
/// ever runs in it by accident (a pooled thread would keep the namespace).
pub fn in_namespace<T: Send + 'static>(
    ns_path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(ns_path)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
}

/// Opens tap `ifname` (made if missing) in the namespace at `ns_path`.
pub fn open_in(ns_path: &Path, ifname: &str) -> Result<OwnedFd, BackendError> {
    let name = ifname.to_string();
    in_namespace(ns_path, move || open_tap(&name)).map_err(|source| BackendError::Io {
        what: "opening a tap in",
        path: ns_path.to_path_buf(),
        source,
    })
}

/// A tap device (no packet-info header) named `ifname` in this thread's namespace.
fn open_tap(ifname: &str) -> io::Result<OwnedFd> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "interface name {ifname:?} must be 1..{} bytes",
                libc::IFNAMSIZ
            ),
        ));
    }
    // std opens with O_CLOEXEC: only the VM it is meant for inherits it (qemu_args).
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers and pointers
    // that TUNSETIFF never follows); all-zero is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is and which outlives the call;
    // the descriptor is the tun device just opened.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(tun))
}
