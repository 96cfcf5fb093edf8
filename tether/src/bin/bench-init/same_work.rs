//! The same-work baseline for tether's share of a boot: what tether does between PID 1's entry
//! and the main process's spawn, written as plainly as it can be (no config decoding, no error
//! reports, no runtime, no channel protocol): the same base mounts, the image disk found by its
//! ext4 label and mounted the same way, the container's /proc, /sys, /dev with its nodes, links,
//! devpts and shm, the hostname and /etc/hosts, `lo` up, the switch into the image, then a fork
//! and exec of the image's `/bin/true`. Its marks are on tether's clock (CLOCK_BOOTTIME, ns).

use std::io;

use guestinfo::contract::DEFAULT_DISK_LABEL;
use nix::mount::{mount, MsFlags};

use crate::kernel_fs::{
    loopback_up, KernelMount, BASE_MOUNTS, DEVICES, DEV_LINKS, DEV_MOUNTS, ROOT_MOUNTS,
};

const ROOT: &str = "/mnt/containerfs";

/// What main mounted before it read its task: the first of tether's base mounts.
const MOUNTED_BY_MAIN: [&str; 3] = ["proc", "sys", "dev"];

/// Nanoseconds on CLOCK_BOOTTIME, as tether's `timing::now_nanos`.
pub fn now_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// The mark after the switch, which is also the spawn's (tether marks `main_spawn` before it
/// spawns; here nothing lies between), and the child's exit status.
pub struct Marks {
    pub root_ready: u64,
    pub status: i32,
}

fn fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    match mount(Some(source), target, Some(fstype), flags, Some(data)) {
        Err(nix::errno::Errno::EBUSY) | Ok(()) => Ok(()),
        Err(e) => Err(io::Error::other(format!("mount {fstype} on {target}: {e}"))),
    }
}

/// Mounts a table of tether's (`kernel_fs`) under `root`.
fn mount_table(root: &str, table: &[KernelMount]) -> io::Result<()> {
    for &(source, target, fstype, flags, data) in table {
        let flags = MsFlags::from_bits_truncate(flags);
        fs(source, &format!("{root}/{target}"), fstype, flags, data)?;
    }
    Ok(())
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
/// shm, hostname and the two /etc files tether writes, `lo` up.
fn prepare_root(disk: &str) -> io::Result<()> {
    fs(disk, ROOT, "ext4", MsFlags::empty(), "noinit_itable")?;
    mount_table(ROOT, &ROOT_MOUNTS)?;
    for (name, major, minor) in DEVICES {
        let kind = nix::sys::stat::SFlag::S_IFCHR;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        let dev = nix::sys::stat::makedev(major, minor);
        nix::sys::stat::mknod(format!("{ROOT}/dev/{name}").as_str(), kind, mode, dev)?;
    }
    for (link, target) in DEV_LINKS {
        std::os::unix::fs::symlink(target, format!("{ROOT}/dev/{link}"))?;
    }
    mount_table(ROOT, &DEV_MOUNTS)?;
    nix::unistd::sethostname("bench")?;
    std::fs::create_dir_all(format!("{ROOT}/etc"))?;
    let hosts =
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tbench bench\n";
    std::fs::write(format!("{ROOT}/etc/hosts"), hosts)?;
    std::fs::write(format!("{ROOT}/etc/hostname"), "bench\n")?;
    loopback_up()
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
    // The rest of tether's base mounts; a table that no longer starts with main's is an error,
    // not a baseline doing other work.
    let (early, rest) = BASE_MOUNTS.split_at(MOUNTED_BY_MAIN.len());
    if early.iter().map(|m| m.1).ne(MOUNTED_BY_MAIN) {
        return Err(io::Error::other(
            "tether's base mounts no longer begin with proc, sys, dev",
        ));
    }
    mount_table("", rest)?;
    let disk = find_disk()?;
    prepare_root(&disk)?;
    switch_root()?;
    let root_ready = now_nanos();
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
    Ok(Marks { root_ready, status })
}
