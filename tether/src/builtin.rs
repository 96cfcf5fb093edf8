//! Built-ins: `docker top` and `docker cp`'s stat, get and put, run by tether itself as
//! sessions, so that the image needs no `ps` or `tar`.
//!
//! Each runs in a forked child of tether, like an exec session but without the exec: the child
//! gets pipes for stdio (the session's streams, with their backpressure), and its exit is reaped
//! and reported as any session's. A child rather than `spawn_blocking`: tether must stay
//! single-threaded (spawn.rs forks, and the child may allocate, which is safe only with no other
//! thread), and a child can chroot into the container's root (a whole-process property), drop
//! capabilities, be signalled or killed when the appliance cancels, and cannot take PID 1 down
//! with it if a bug makes it fail. It does blocking I/O freely: tether's thread never waits on it.

mod archive_get;
mod archive_put;
mod error;
mod fmt;
pub(crate) mod layer;
mod procs;
pub(crate) mod scope;
mod stat;

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use wire::BuiltinOp;

use crate::session::{ParentStdio, Started};
use crate::spawn::{self, SpawnError};
use error::BuiltinError;
use scope::Scope;

/// The buffer between a built-in and its stdio pipes.
const BUFFER: usize = 64 * 1024;

/// Exit code of a built-in that panicked (a bug): EX_SOFTWARE.
const PANICKED: i32 = 70;

/// A built-in to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub op: BuiltinOp,
    /// Tether's pid: a process listing shows its descendants.
    pub tether: u32,
    /// Tether's other built-ins running now, which a process listing leaves out.
    pub hide: Vec<u32>,
}

/// Whether the built-in reads its stdin (the others get end of file at once).
pub fn reads_stdin(op: &BuiltinOp) -> bool {
    matches!(
        op,
        BuiltinOp::ArchivePut { .. } | BuiltinOp::ApplyLayer { .. }
    )
}

/// A short name of the op, for logs.
pub fn op_name(op: &BuiltinOp) -> &'static str {
    match op {
        BuiltinOp::Processes { .. } => "processes",
        BuiltinOp::Stat { .. } => "stat",
        BuiltinOp::ArchiveGet { .. } => "archive-get",
        BuiltinOp::ArchivePut { .. } => "archive-put",
        BuiltinOp::ApplyLayer { .. } => "apply-layer",
    }
}

fn setup_error(what: &str, e: nix::errno::Errno) -> SpawnError {
    SpawnError {
        exit_code: 126,
        errno: e as i32,
        message: format!("starting the built-in: {what}: {e}"),
    }
}

/// Forks the child that runs `req` in the container's `root`; returns its pid and the parent's
/// ends of its stdio. The child reports its own failures on its stderr.
pub fn start(req: &Request, root: &Path) -> Result<Started, SpawnError> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| setup_error("cannot create a pipe", e))
    };
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: tether's runtime is single-threaded, so the child is a copy of the only thread and
    // no lock (the allocator's included) can be held by a thread that no longer exists. The
    // child runs `child`, which never returns: it ends in _exit, so nothing of tether's own (its
    // runtime, the owners of its descriptors) runs or is dropped in the child.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(setup_error("fork failed", nix::errno::Errno::last()));
    }
    if pid == 0 {
        drop((in_w, out_r, err_r));
        child(req, root, [in_r, out_w, err_w]);
    }
    // The child's ends are the child's now; dropping ours lets end of file reach us.
    drop((in_r, out_w, err_w));
    Ok(Started {
        pid: pid as u32,
        stdio: ParentStdio::Pipes {
            stdin: reads_stdin(&req.op).then_some(in_w),
            stdout: out_r,
            stderr: err_r,
        },
    })
}

/// Writes all of `bytes` to `fd`, as far as it can; for the child's last words.
fn write_fd(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) reads `bytes.len()` bytes from a live slice; a bad or closed `fd` is an
        // error return, not undefined behaviour.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => bytes = &bytes[n.min(bytes.len())..],
            _ if nix::errno::Errno::last() == nix::errno::Errno::EINTR => continue,
            _ => return,
        }
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends the process at once, running no destructor or atexit handler: those
    // belong to tether, whose copy this is.
    unsafe { libc::_exit(code) }
}

/// The child: stdio, then the built-in; never returns.
fn child(req: &Request, root: &Path, stdio: [OwnedFd; 3]) -> ! {
    // tether's hook (PID 1 powers the VM off on a panic) is not for a child: report and exit.
    std::panic::set_hook(Box::new(|info| {
        write_fd(
            2,
            format!("tether built-in: internal error: {info}\n").as_bytes(),
        );
        exit(PANICKED)
    }));
    if let Err(e) = child_setup(stdio) {
        write_fd(2, format!("tether built-in: {e}\n").as_bytes());
        exit(1);
    }
    match run(req, root) {
        Ok(()) => exit(0),
        Err(e) => {
            write_fd(2, format!("{e}\n").as_bytes());
            exit(1)
        }
    }
}

/// Signals as a new process has them, its own session, stdio on 0-2 and no other descriptor
/// of tether's (the channel's among them).
fn child_setup(stdio: [OwnedFd; 3]) -> Result<(), nix::errno::Errno> {
    // SIGPIPE stays ignored, so a write to a closed pipe is an EPIPE error the built-in reports.
    spawn::reset_signals(true);
    nix::unistd::setsid()?;
    // If tether goes (host mode), so does the built-in.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Raw from here: the descriptors are moved onto 0-2 and the originals closed below.
    let fds = stdio.map(IntoRawFd::into_raw_fd);
    // Each is first copied above 2, so that moving one onto its slot cannot close another's
    // before it has been moved (PID 1 may have started without 0-2 open).
    let mut high = [0; 3];
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl takes integers only; a bad descriptor is an error return.
        *h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if *h < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    for (target, fd) in (0..).zip(high) {
        // SAFETY: dup2 takes integers only; what it may close in `target` is tether's copy of
        // a descriptor, which nothing in this child uses.
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    // SAFETY: close_range takes integers only. Every descriptor above 2 belongs to tether's
    // copy, which never runs again here; the objects that own them are never dropped (`exit`).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        for fd in 3..65_536 {
            // SAFETY: as above, one descriptor at a time (kernels before 5.9).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// The child's stdio as files. The child owns 0-2 after `child_setup` and nothing else does.
fn stdio_file(fd: RawFd) -> File {
    // SAFETY: `fd` (0, 1 or 2) is open, and this is the only object that will own it.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Capabilities a built-in keeps: to read and write any file and give it its owner, mode and
/// device numbers. No other (no mount, reboot, ptrace, ...): tether's bugs stay small.
const KEEP: [caps::Capability; 6] = [
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_DAC_READ_SEARCH,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_MKNOD,
];

/// A layer's files may carry file capabilities (`security.capability`), which only
/// CAP_SETFCAP may set.
const KEEP_LAYER: [caps::Capability; 1] = [caps::Capability::CAP_SETFCAP];

fn keep_only_needed_capabilities(layer: bool) -> Result<(), BuiltinError> {
    let dropping = |e: caps::errors::CapsError| BuiltinError::Io {
        what: "dropping capabilities".into(),
        source: std::io::Error::other(e.to_string()),
    };
    // Of those, the ones tether has (a host-mode tether in a container may lack some).
    let have = caps::read(None, caps::CapSet::Permitted).map_err(dropping)?;
    let extra = if layer { &KEEP_LAYER[..] } else { &[] };
    let keep: caps::CapsHashSet = KEEP
        .iter()
        .chain(extra)
        .copied()
        .filter(|c| have.contains(c))
        .collect();
    // Inheritable first, permitted last: effective must stay within permitted throughout. The
    // bounding set matters only across an exec, which a built-in never does.
    for (set, caps) in [
        (caps::CapSet::Inheritable, caps::CapsHashSet::new()),
        (caps::CapSet::Effective, keep.clone()),
        (caps::CapSet::Permitted, keep),
    ] {
        caps::set(None, set, &caps).map_err(dropping)?;
    }
    Ok(())
}

/// Enters the container's root when it is not `/` and we may (root); a scope for resolving.
fn enter_root(root: &Path, as_root: bool) -> Result<Scope, BuiltinError> {
    if root == Path::new("/") || !as_root {
        return Ok(Scope::new(root));
    }
    let entering = |e: nix::errno::Errno| BuiltinError::Io {
        what: format!("entering the container root {}", root.display()),
        source: e.into(),
    };
    nix::unistd::chroot(root).map_err(entering)?;
    nix::unistd::chdir("/").map_err(entering)?;
    Ok(Scope::new("/"))
}

fn print(text: &str) -> Result<(), BuiltinError> {
    let mut out = stdio_file(1);
    out.write_all(text.as_bytes())
        .map_err(BuiltinError::io("writing the output"))
}

fn run(req: &Request, root: &Path) -> Result<(), BuiltinError> {
    let as_root = nix::unistd::geteuid().is_root();
    // The process list reads /proc as tether sees it: in host mode the root has none.
    let scope = match &req.op {
        BuiltinOp::Processes { .. } => Scope::new(root),
        _ => enter_root(root, as_root)?,
    };
    if as_root {
        keep_only_needed_capabilities(matches!(req.op, BuiltinOp::ApplyLayer { .. }))?;
    }
    match &req.op {
        BuiltinOp::Processes { ps_args } => {
            procs::check_ps_args(ps_args)?;
            let passwd = scope
                .resolve(Path::new("/etc/passwd"))
                .ok()
                .and_then(|p| std::fs::read_to_string(scope.host(&p)).ok())
                .unwrap_or_default();
            let users = crate::users::user_names(&passwd);
            let mut hide = req.hide.clone();
            hide.push(std::process::id());
            let clk_tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(100);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let rows = procs::list(&procs::Listing {
                proc_dir: Path::new("/proc"),
                users: &users,
                tether: req.tether,
                hide: &hide,
                clk_tck,
                now,
            })?;
            print(&procs::to_json(&rows))
        }
        BuiltinOp::Stat { path } => print(&stat::stat(&scope, path)?),
        BuiltinOp::ArchiveGet { path } => {
            let out = BufWriter::with_capacity(BUFFER, stdio_file(1));
            archive_get::archive(&scope, path, out)
        }
        BuiltinOp::ArchivePut {
            path,
            no_overwrite_dir_non_dir,
        } => archive_put::Extract {
            scope: &scope,
            path,
            no_overwrite_dir_non_dir: *no_overwrite_dir_non_dir,
            owners: as_root,
            layer: false,
        }
        .run(BufReader::with_capacity(BUFFER, stdio_file(0))),
        BuiltinOp::ApplyLayer { path } => archive_put::Extract {
            scope: &scope,
            path,
            no_overwrite_dir_non_dir: false,
            owners: as_root,
            layer: true,
        }
        .run(BufReader::with_capacity(BUFFER, stdio_file(0))),
    }
}

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod tests;
