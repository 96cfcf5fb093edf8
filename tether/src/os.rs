//! Every privileged operating-system call PID 1 makes, behind one narrow trait. The real
//! implementation runs in the QEMU tests; `Recording` lets boot logic be unit-tested without root.
//! Errors are the bare errno: the caller (boot.rs) says what it was doing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `power` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    Restart,
}

pub trait Os {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> io::Result<()>;
    /// Moves the mount at `source` onto `target` (MS_MOVE).
    fn move_mount(&self, source: &Path, target: &Path) -> io::Result<()>;
    fn remount_readonly(&self, target: &Path) -> io::Result<()>;
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// A character device node.
    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    fn symlink(&self, target: &str, link: &Path) -> io::Result<()>;
    /// Replaces whatever non-directory is at `path` (a symlink is removed, not followed) with a
    /// new file of `contents`, mode 0644 whatever the umask or the old file's mode.
    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset` (superblocks of block devices).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn loopback_up(&self) -> io::Result<()>;
    fn sync(&self);
    /// Does not return on success.
    fn power(&self, action: Power) -> io::Error;
    fn sleep(&self, d: Duration);

    // Volumes (boot/volumes.rs).
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Makes the mount at `target` read-only for what goes through it; the filesystem stays
    /// writable underneath (MS_REMOUNT | MS_BIND | MS_RDONLY).
    fn remount_bind_readonly(&self, target: &Path) -> io::Result<()>;
    /// `path` itself (a symlink is not followed).
    fn stat(&self, path: &Path) -> io::Result<FileStat>;
    /// Copies the directory `from` to the new `to`: see `boot::copy`.
    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_tree(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn rmdir(&self, path: &Path) -> io::Result<()>;
    /// Where the container path `path` is under `root`, each symlink on the way followed
    /// inside `root` (docker's FollowSymlinkInScope).
    fn resolve_in(&self, root: &Path, path: &Path) -> io::Result<PathBuf>;
    /// SIGKILLs every process but PID 1 and reaps them, waiting up to `wait` for them to end.
    fn end_all_processes(&self, wait: Duration);
}

/// What `Os::stat` tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub is_dir: bool,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
}

/// The real system calls.
pub struct Real;

fn cpath(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl Os for Real {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::from_bits_truncate(flags as _),
            (!data.is_empty()).then_some(data),
        )
        .map_err(io::Error::from)
    }

    fn move_mount(&self, source: &Path, target: &Path) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    fn remount_readonly(&self, target: &Path) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mknod_char(&self, path: &Path, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        let c = cpath(path)?;
        // SAFETY: mknod with a valid C string and integer arguments.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major as u32, minor as u32),
            )
        };
        if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST) {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn symlink(&self, target: &str, link: &Path) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // The image's own file may be a symlink: before switch_root an absolute one would
        // resolve in the initramfs, so it is replaced, as docker's bind mount hides it.
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(path)?,
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)?;
        f.write_all(contents)?;
        // The umask narrowed the mode the file was created with; fchmod does not consult it.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io::Error::from)
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path).map_err(io::Error::from)
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn loopback_up(&self) -> io::Result<()> {
        crate::boot::kernel_fs::loopback_up()
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn power(&self, action: Power) -> io::Error {
        use nix::sys::reboot::{reboot, RebootMode};
        let mode = match action {
            Power::Off => RebootMode::RB_POWER_OFF,
            Power::Restart => RebootMode::RB_AUTOBOOT,
        };
        match reboot(mode) {
            Err(e) => io::Error::from(e),
            Ok(never) => match never {},
        }
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount(target).map_err(io::Error::from)
    }

    fn remount_bind_readonly(&self, target: &Path) -> io::Result<()> {
        use nix::mount::{mount, MsFlags};
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(io::Error::from)
    }

    fn stat(&self, path: &Path) -> io::Result<FileStat> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(FileStat {
            is_dir: m.is_dir(),
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })
    }

    fn copy_tree(&self, from: &Path, to: &Path) -> io::Result<()> {
        crate::boot::copy::copy_tree(from, to)
    }

    fn remove_tree(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn resolve_in(&self, root: &Path, path: &Path) -> io::Result<PathBuf> {
        let scope = crate::builtin::scope::Scope::new(root);
        Ok(scope.host(&scope.resolve(path)?))
    }

    fn end_all_processes(&self, wait: Duration) {
        use nix::sys::wait::{waitpid, WaitPidFlag};
        // kill(-1) from PID 1 reaches every process but PID 1 itself.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-1), nix::sys::signal::SIGKILL);
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Err(_) => return, // ECHILD: none left
                Ok(nix::sys::wait::WaitStatus::StillAlive) if waited >= wait => return,
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    std::thread::sleep(step);
                    waited += step;
                }
                Ok(_) => {}
            }
        }
    }
}

/// A fake that records each call and serves files from a map. `sleep` advances a fake clock.
#[cfg(test)]
pub mod recording {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct Recording {
        pub calls: RefCell<Vec<String>>,
        pub files: RefCell<BTreeMap<String, Vec<u8>>>,
        /// Files that appear once the fake clock passes the given milliseconds.
        pub appear_at: RefCell<Vec<(u64, String, Vec<u8>)>>,
        pub clock_ms: RefCell<u64>,
        /// Calls (by prefix) that fail, with EIO.
        pub failing: RefCell<Vec<String>>,
        /// What `stat` answers, by path (others: not found).
        pub stats: RefCell<BTreeMap<String, FileStat>>,
    }

    impl Recording {
        pub fn file(&self, path: &str, contents: &[u8]) {
            self.files
                .borrow_mut()
                .insert(path.to_string(), contents.to_vec());
        }

        pub fn stat_as(&self, path: &str, stat: FileStat) {
            self.stats.borrow_mut().insert(path.to_string(), stat);
        }

        fn record(&self, call: String) -> io::Result<()> {
            let fail = self.failing.borrow().iter().any(|f| call.starts_with(f));
            self.calls.borrow_mut().push(call.clone());
            if fail {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Os for Recording {
        fn mount(&self, s: &str, t: &Path, fs: &str, _f: u64, d: &str) -> io::Result<()> {
            self.record(format!("mount {s} {} {fs} {d}", t.display()))
        }
        fn move_mount(&self, s: &Path, t: &Path) -> io::Result<()> {
            self.record(format!("move {} {}", s.display(), t.display()))
        }
        fn remount_readonly(&self, t: &Path) -> io::Result<()> {
            self.record(format!("remount-ro {}", t.display()))
        }
        fn mkdir_all(&self, p: &Path) -> io::Result<()> {
            self.record(format!("mkdir {}", p.display()))
        }
        fn mknod_char(&self, p: &Path, mode: u32, ma: u64, mi: u64) -> io::Result<()> {
            self.record(format!("mknod {} {mode:o} {ma}:{mi}", p.display()))
        }
        fn symlink(&self, t: &str, l: &Path) -> io::Result<()> {
            self.record(format!("symlink {} -> {t}", l.display()))
        }
        fn write_file(&self, p: &Path, c: &[u8]) -> io::Result<()> {
            self.file(&p.display().to_string(), c);
            self.record(format!("write {}", p.display()))
        }
        fn read_file(&self, p: &Path) -> io::Result<Vec<u8>> {
            self.files
                .borrow()
                .get(&p.display().to_string())
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn read_at(&self, p: &Path, off: u64, len: usize) -> io::Result<Vec<u8>> {
            let data = self.read_file(p)?;
            let start = off as usize;
            data.get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }
        fn list_dir(&self, p: &Path) -> io::Result<Vec<String>> {
            let prefix = format!("{}/", p.display());
            let files = self.files.borrow();
            let mut names: Vec<String> = files
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
                .collect();
            names.dedup();
            Ok(names)
        }
        fn chdir(&self, p: &Path) -> io::Result<()> {
            self.record(format!("chdir {}", p.display()))
        }
        fn chroot(&self, p: &Path) -> io::Result<()> {
            self.record(format!("chroot {}", p.display()))
        }
        fn sethostname(&self, n: &str) -> io::Result<()> {
            self.record(format!("sethostname {n}"))
        }
        fn loopback_up(&self) -> io::Result<()> {
            self.record("loopback up".into())
        }
        fn sync(&self) {
            let _ = self.record("sync".into());
        }
        fn power(&self, a: Power) -> io::Error {
            let _ = self.record(format!("power {a:?}"));
            io::Error::other("fake power")
        }
        fn sleep(&self, d: Duration) {
            let now = *self.clock_ms.borrow() + d.as_millis() as u64;
            *self.clock_ms.borrow_mut() = now;
            let due: Vec<(u64, String, Vec<u8>)> = self
                .appear_at
                .borrow()
                .iter()
                .filter(|(t, _, _)| *t <= now)
                .cloned()
                .collect();
            for (_, path, data) in due {
                self.file(&path, &data);
            }
        }
        fn unmount(&self, t: &Path) -> io::Result<()> {
            self.record(format!("umount {}", t.display()))
        }
        fn remount_bind_readonly(&self, t: &Path) -> io::Result<()> {
            self.record(format!("remount-bind-ro {}", t.display()))
        }
        fn stat(&self, p: &Path) -> io::Result<FileStat> {
            self.stats
                .borrow()
                .get(&p.display().to_string())
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn copy_tree(&self, f: &Path, t: &Path) -> io::Result<()> {
            self.record(format!("copy {} {}", f.display(), t.display()))
        }
        fn remove_tree(&self, p: &Path) -> io::Result<()> {
            self.record(format!("rm -r {}", p.display()))
        }
        fn rename(&self, f: &Path, t: &Path) -> io::Result<()> {
            self.record(format!("rename {} {}", f.display(), t.display()))
        }
        fn rmdir(&self, p: &Path) -> io::Result<()> {
            self.record(format!("rmdir {}", p.display()))
        }
        fn resolve_in(&self, root: &Path, p: &Path) -> io::Result<PathBuf> {
            Ok(root.join(p.strip_prefix("/").unwrap_or(p)))
        }
        fn end_all_processes(&self, _wait: Duration) {
            let _ = self.record("kill all".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDir;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn etc_files_replace_the_images_file_or_symlink_and_are_0644() {
        let dir = TestDir::new("etc-files");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        let hosts = etc.join("hosts");
        std::fs::write(&hosts, "old\n").unwrap();
        std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o600)).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "not the container's\n").unwrap();
        let hostname = etc.join("hostname");
        std::os::unix::fs::symlink(&outside, &hostname).unwrap();
        Real.write_file(&hosts, b"127.0.0.1\tlocalhost\n").unwrap();
        Real.write_file(&hostname, b"box\n").unwrap();
        Real.write_file(&etc.join("resolv.conf"), b"nameserver 10.0.0.1\n")
            .unwrap();
        for (p, want) in [
            (&hosts, &b"127.0.0.1\tlocalhost\n"[..]),
            (&hostname, b"box\n"),
            (&etc.join("resolv.conf"), b"nameserver 10.0.0.1\n"),
        ] {
            assert!(std::fs::symlink_metadata(p).unwrap().is_file());
            assert_eq!(mode(p), 0o644, "{}", p.display());
            assert_eq!(std::fs::read(p).unwrap(), want);
        }
        assert_eq!(
            std::fs::read(&outside).unwrap(),
            b"not the container's\n",
            "the symlink was not followed"
        );
        // A directory in the file's place is an error, not removed.
        std::fs::create_dir(etc.join("dir")).unwrap();
        assert!(Real.write_file(&etc.join("dir"), b"x").is_err());
        assert!(etc.join("dir").is_dir());
    }

    /// Run by the next test in a child process of its own, since the umask is per process.
    #[test]
    #[ignore = "run by etc_files_are_0644_under_any_umask"]
    fn write_under_umask_0777() {
        let Some(dir) = std::env::var_os("TETHER_UMASK_TEST_DIR") else {
            return;
        };
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o777));
        Real.write_file(&Path::new(&dir).join("hosts"), b"x\n")
            .unwrap();
    }

    #[test]
    fn etc_files_are_0644_under_any_umask() {
        let dir = TestDir::new("umask");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "os::tests::write_under_umask_0777", "--ignored"])
            .env("TETHER_UMASK_TEST_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let hosts = dir.path().join("hosts");
        assert_eq!(mode(&hosts), 0o644);
        assert_eq!(std::fs::read(&hosts).unwrap(), b"x\n");
    }
}
