//! The same-work baseline for tether's share of a boot: what tether does between PID 1's entry
//! and the main process's spawn, written as plainly as it can be (no config decoding, no error
//! reports, no runtime, no channel protocol): the same base mounts, the image disk found by its
//! ext4 label and mounted the same way, the container's /proc, /sys, /dev with its nodes, links,
//! devpts and shm, the hostname and /etc/hosts, `lo` up, the switch into the image, then a fork
//! and exec of the image's `/bin/true`. Its marks are on tether's clock (CLOCK_BOOTTIME, ns).

use std::io;

use guestinfo::contract::DEFAULT_DISK_LABEL;
use nix::mount::{mount, MsFlags};

const ROOT: &str = "/mnt/containerfs";

/// Nanoseconds on CLOCK_BOOTTIME, as tether's `timing::now_nanos`.
pub fn now_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The marks: entry (taken by main), root ready (after the switch), spawn (before the fork,
/// where tether marks `main_spawn`), and the child's exit status.
pub struct Marks {
    pub root_ready: u64,
    pub spawn: u64,
    pub status: i32,
}

fn fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    match mount(Some(source), target, Some(fstype), flags, Some(data)) {
        Err(nix::errno::Errno::EBUSY) | Ok(()) => Ok(()),
        Err(e) => Err(io::Error::other(format!("mount {fstype} on {target}: {e}"))),
    }
}

/// tether's BASE_MOUNTS that main has not mounted yet (it mounts proc, sysfs and devtmpfs).
fn base_mounts() -> io::Result<()> {
    let (nosuid, nodev, noexec) = (MsFlags::MS_NOSUID, MsFlags::MS_NODEV, MsFlags::MS_NOEXEC);
    fs(
        "devpts",
        "/dev/pts",
        "devpts",
        nosuid | noexec,
        "gid=5,mode=620,ptmxmode=666",
    )?;
    fs("shm", "/dev/shm", "tmpfs", nosuid | nodev, "mode=1777")?;
    fs("run", "/run", "tmpfs", nosuid | nodev, "mode=0755")
}

/// The block device whose ext4 label is the image's, as tether's `find_disk` (one pass: the
/// disk is there by the time PID 1 runs on QEMU).
fn find_disk() -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    for entry in std::fs::read_dir("/sys/class/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = format!("/dev/{name}");
        let mut sb = [0u8; 256];
        let Ok(file) = std::fs::File::open(&dev) else {
            continue;
        };
        if file.read_exact_at(&mut sb, 1024).is_err() || sb[0x38..0x3a] != [0x53, 0xEF] {
            continue;
        }
        let label = &sb[0x78..0x88];
        let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
        if &label[..end] == DEFAULT_DISK_LABEL.as_bytes() {
            return Ok(dev);
        }
    }
    Err(io::Error::other("no disk with the image's label"))
}

/// The container's view in the image: its kernel filesystems, /dev nodes and links, devpts and
/// shm, hostname and the two /etc files tether writes.
fn prepare_root(disk: &str) -> io::Result<()> {
    let (nosuid, nodev, noexec) = (MsFlags::MS_NOSUID, MsFlags::MS_NODEV, MsFlags::MS_NOEXEC);
    fs(disk, ROOT, "ext4", MsFlags::empty(), "noinit_itable")?;
    let at = |p: &str| format!("{ROOT}/{p}");
    fs("proc", &at("proc"), "proc", nosuid | nodev | noexec, "")?;
    let ro = MsFlags::MS_RDONLY;
    fs(
        "sysfs",
        &at("sys"),
        "sysfs",
        nosuid | nodev | noexec | ro,
        "",
    )?;
    fs("tmpfs", &at("dev"), "tmpfs", nosuid, "mode=755,size=65536k")?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let kind = nix::sys::stat::SFlag::S_IFCHR;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        let dev = nix::sys::stat::makedev(major, minor);
        nix::sys::stat::mknod(at(&format!("dev/{name}")).as_str(), kind, mode, dev)?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(target, at(&format!("dev/{link}")))?;
    }
    let pts_data = "newinstance,gid=5,mode=620,ptmxmode=666";
    fs(
        "devpts",
        &at("dev/pts"),
        "devpts",
        nosuid | noexec,
        pts_data,
    )?;
    fs(
        "shm",
        &at("dev/shm"),
        "tmpfs",
        nosuid | nodev | noexec,
        "mode=1777,size=65536k",
    )?;
    nix::unistd::sethostname("bench")?;
    std::fs::create_dir_all(at("etc"))?;
    let hosts =
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbench bench\n";
    std::fs::write(at("etc/hosts"), hosts)?;
    std::fs::write(at("etc/hostname"), "bench\n")?;
    loopback_up()
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket for the interface ioctls and an ifreq we own; closed after.
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
        libc::close(sock);
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The switch: the image becomes `/` (move mount, chroot), as tether's `switch_root`.
fn switch_root() -> io::Result<()> {
    std::env::set_current_dir(ROOT)?;
    mount(
        Some(ROOT),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )?;
    nix::unistd::chroot(".")?;
    std::env::set_current_dir("/")
}

/// Does the work, then forks and execs the image's `/bin/true` and waits for it.
pub fn run() -> io::Result<Marks> {
    base_mounts()?;
    let disk = find_disk()?;
    prepare_root(&disk)?;
    switch_root()?;
    let root_ready = now_nanos();
    let spawn = now_nanos();
    let program = c"/bin/true";
    // SAFETY: this process is single-threaded; the child only execs or exits.
    let pid = match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {
            let argv = [program.as_ptr(), std::ptr::null()];
            // SAFETY: a NUL-terminated path and a NULL-terminated argv of C strings.
            unsafe {
                libc::execv(program.as_ptr(), argv.as_ptr());
                libc::_exit(127)
            }
        }
        pid => pid,
    };
    let mut status = 0;
    // SAFETY: waitpid writes the status into our variable.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(Marks {
        root_ready,
        spawn,
        status,
    })
}
