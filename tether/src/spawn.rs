//! Starting a session's process: fork, then in the child only system calls (setsid, controlling
//! tty, stdio, chroot, chdir, rlimits, groups, gid, uid, capabilities) and an `execve` per PATH
//! candidate, searched *inside* the chroot as execvp would. A failure at any step is written
//! (step, errno) to a close-on-exec pipe; the parent reads it and reports it at once, mapped to the
//! shell's 126/127 convention. We do not use std or tokio process spawning: PID 1 reaps every
//! child with waitpid(-1), which would steal their exit statuses.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use thiserror::Error;

/// Steps the child reports failures for (the first byte of its error record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    Setsid = 1,
    ControllingTty = 2,
    Stdio = 3,
    Chroot = 4,
    Chdir = 5,
    Rlimit = 6,
    Groups = 7,
    Gid = 8,
    Uid = 9,
    Capabilities = 10,
    Exec = 11,
}

impl Step {
    fn from_u8(b: u8) -> Option<Self> {
        use Step::*;
        [
            Setsid,
            ControllingTty,
            Stdio,
            Chroot,
            Chdir,
            Rlimit,
            Groups,
            Gid,
            Uid,
            Capabilities,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::Setsid => "creating a new session (setsid)",
            Step::ControllingTty => "acquiring the controlling tty",
            Step::Stdio => "connecting stdin/stdout/stderr",
            Step::Chroot => "entering the container root (chroot)",
            Step::Chdir => "changing to the working directory",
            Step::Rlimit => "setting resource limits",
            Step::Groups => "setting supplementary groups",
            Step::Gid => "setting the group id",
            Step::Uid => "setting the user id",
            Step::Capabilities => "dropping capabilities",
            Step::Exec => "executing the program",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct SpawnError {
    /// 127 when the program was not found, 126 for every other failure to start.
    pub exit_code: i32,
    pub errno: i32,
    pub message: String,
}

/// How the child's stdio is connected. The fds are the child's ends.
pub enum ChildStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// The pty's secondary end; it becomes the controlling terminal.
    Pty { tty: OwnedFd },
}

pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the child needs, prepared before fork. (The child may still allocate, e.g. in the
/// caps crate: with no other thread in the process, no allocator lock can be held.)
pub struct SpawnRequest {
    /// Directory to chroot into; `None` runs in the current root (host-mode tests as non-root).
    pub root: Option<CString>,
    pub program: String,
    /// Absolute candidate paths (inside the root) to try in order, from PATH lookup.
    pub candidates: Vec<CString>,
    /// PATH the lookup used, for the error message.
    pub search_path: String,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub dir: CString,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub rlimits: Vec<Rlimit>,
    /// Capabilities to remove from every set, the bounding set included.
    pub cap_drop: Vec<caps::Capability>,
    pub stdio: ChildStdio,
}

/// Candidate paths for `program`, as execvp would try them with `path_var`.
pub fn candidates(program: &str, path_var: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path_var
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{}", dir.trim_end_matches('/'), program)
        })
        .collect()
}

/// The pointers of `strings` and a null after them: an argv or envp for execve.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Signals as a new process has them: an empty mask and every disposition at its default, but
/// SIGPIPE stays ignored with `ignore_sigpipe`. Only system calls on a local set, so a forked
/// child may call it.
pub fn reset_signals(ignore_sigpipe: bool) {
    // SAFETY: sigprocmask reads a sigset local to this frame and signal(2) takes integers. Tether
    // calls this only in a forked child of its single thread, where changing dispositions
    // affects that process alone.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                let action = if ignore_sigpipe && sig == libc::SIGPIPE {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, action);
            }
        }
    }
}

/// Forks and execs. Returns the child's pid once it has successfully exec'd.
pub fn spawn(req: &SpawnRequest) -> Result<u32, SpawnError> {
    let (err_read, err_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| SpawnError {
            exit_code: 126,
            errno: e as i32,
            message: format!("cannot create the exec status pipe: {e}"),
        })?;
    let argv = null_terminated(&req.argv);
    let envp = null_terminated(&req.env);

    // SAFETY: tether's runtime is single-threaded, so the child is a copy of the only thread and
    // no lock can be held by a thread that no longer exists. The child runs `child_main`, which
    // makes system calls on data prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let errno = nix::errno::Errno::last();
        return Err(SpawnError {
            exit_code: 126,
            errno: errno as i32,
            message: format!("fork failed: {errno}"),
        });
    }
    if pid == 0 {
        drop(err_read);
        child_main(req, &argv, &envp, err_write.as_raw_fd());
    }
    drop(err_write);
    // The child's stdio ends belong to the child now.
    let mut record = [0u8; 5];
    let n = read_full(&err_read, &mut record);
    if n == 0 {
        return Ok(pid as u32);
    }
    // The child failed before exec and is exiting; the reaper collects it.
    let step = Step::from_u8(record[0]).unwrap_or(Step::Exec);
    let errno = i32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    Err(describe_failure(req, step, errno))
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

fn describe_failure(req: &SpawnRequest, step: Step, errno: i32) -> SpawnError {
    let e = nix::errno::Errno::from_raw(errno);
    if step == Step::Exec {
        let not_found = matches!(e, nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR);
        let message = if not_found && !req.program.contains('/') {
            format!(
                "exec {:?}: executable file not found in PATH ({})",
                req.program, req.search_path
            )
        } else if not_found {
            format!("exec {:?}: no such file or directory", req.program)
        } else {
            format!("exec {:?}: {}", req.program, e.desc())
        };
        return SpawnError {
            exit_code: if not_found { 127 } else { 126 },
            errno,
            message,
        };
    }
    SpawnError {
        exit_code: 126,
        errno,
        message: format!(
            "starting {:?} failed while {}: {}",
            req.program,
            step.describe(),
            e.desc()
        ),
    }
}

/// Reports (step, errno) to the parent and exits. Async-signal-safe.
fn fail(fd: RawFd, step: Step) -> ! {
    let errno = nix::errno::Errno::last_raw();
    let mut rec = [0u8; 5];
    rec[0] = step as u8;
    rec[1..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: writing a stack buffer to a pipe fd we own, then exiting without running any
    // destructors or atexit handlers (which belong to the parent's state).
    unsafe {
        libc::write(fd, rec.as_ptr().cast(), rec.len());
        libc::_exit(127)
    }
}

fn check(rc: libc::c_int, fd: RawFd, step: Step) {
    if rc < 0 {
        fail(fd, step);
    }
}

fn child_main(
    req: &SpawnRequest,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    err: RawFd,
) -> ! {
    // SAFETY: we are the forked child of a single-threaded process, so no lock (allocator, stdio)
    // was held by another thread at the fork. Every call below is a system call on memory the
    // parent prepared before the fork and still owns in our copy (`req`, `argv`, `envp`, whose
    // pointers point into `req`'s CStrings and end in a null), or on stack locals; and the
    // function never returns: it ends in execve or, through `fail`, in _exit.
    unsafe {
        // Default signal dispositions and an empty mask: the parent's handlers are not ours.
        reset_signals(false);
        check(libc::setsid(), err, Step::Setsid);
        match &req.stdio {
            ChildStdio::Pty { tty } => {
                let fd = tty.as_raw_fd();
                check(
                    libc::ioctl(fd, libc::TIOCSCTTY as _, 0),
                    err,
                    Step::ControllingTty,
                );
                for target in 0..3 {
                    dup_onto(fd, target, err);
                }
            }
            ChildStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                dup_onto(stdin.as_raw_fd(), 0, err);
                dup_onto(stdout.as_raw_fd(), 1, err);
                dup_onto(stderr.as_raw_fd(), 2, err);
            }
        }
        if let Some(root) = &req.root {
            check(libc::chroot(root.as_ptr()), err, Step::Chroot);
            check(libc::chdir(c"/".as_ptr()), err, Step::Chroot);
        }
        check(libc::chdir(req.dir.as_ptr()), err, Step::Chdir);
        for r in &req.rlimits {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            check(libc::setrlimit(r.resource as _, &lim), err, Step::Rlimit);
        }
        let is_root = libc::geteuid() == 0;
        if is_root {
            check(
                libc::setgroups(req.groups.len(), req.groups.as_ptr()),
                err,
                Step::Groups,
            );
        }
        if is_root || req.gid != libc::getegid() {
            check(libc::setgid(req.gid), err, Step::Gid);
        }
        if is_root {
            drop_capabilities(&req.cap_drop, err);
        }
        if is_root || req.uid != libc::geteuid() {
            check(libc::setuid(req.uid), err, Step::Uid);
        }
        let mut last_errno = libc::ENOENT;
        let mut saw_eacces = false;
        for path in &req.candidates {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            last_errno = nix::errno::Errno::last_raw();
            match last_errno {
                libc::ENOENT | libc::ENOTDIR => continue,
                libc::EACCES => {
                    saw_eacces = true;
                    continue;
                }
                _ => break,
            }
        }
        if saw_eacces && (last_errno == libc::ENOENT || last_errno == libc::ENOTDIR) {
            last_errno = libc::EACCES;
        }
        nix::errno::Errno::set_raw(last_errno);
        fail(err, Step::Exec)
    }
}

/// dup2 that also clears close-on-exec when the fd is already in place.
fn dup_onto(fd: RawFd, target: RawFd, err: RawFd) {
    // SAFETY: fcntl and dup2 take integer descriptors and flags only: no memory is handed to the
    // kernel, and a bad descriptor is an error return, which `check` reports.
    unsafe {
        if fd == target {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            check(
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC),
                err,
                Step::Stdio,
            );
        } else {
            check(libc::dup2(fd, target), err, Step::Stdio);
        }
    }
}

fn drop_capabilities(drop: &[caps::Capability], err: RawFd) {
    use caps::CapSet;
    for cap in drop {
        // Bounding first: it stops the capability coming back through a setuid/file-caps exec.
        if caps::drop(None, CapSet::Bounding, *cap).is_err() {
            fail(err, Step::Capabilities);
        }
        for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
            if caps::drop(None, set, *cap).is_err() {
                fail(err, Step::Capabilities);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(program: &str) -> SpawnRequest {
        let null = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        SpawnRequest {
            root: None,
            program: program.into(),
            candidates: vec![],
            search_path: "/usr/bin:/bin".into(),
            argv: vec![],
            env: vec![],
            dir: c"/".into(),
            uid: 0,
            gid: 0,
            groups: vec![],
            rlimits: vec![],
            cap_drop: vec![],
            stdio: ChildStdio::Pipes {
                stdin: null(),
                stdout: null(),
                stderr: null(),
            },
        }
    }

    #[test]
    fn a_failure_is_127_when_not_found_and_126_otherwise() {
        let e = describe_failure(&request("nope"), Step::Exec, libc::ENOENT);
        assert_eq!((e.exit_code, e.errno), (127, libc::ENOENT));
        assert_eq!(
            e.message,
            "exec \"nope\": executable file not found in PATH (/usr/bin:/bin)"
        );
        let e = describe_failure(&request("/no/such"), Step::Exec, libc::ENOTDIR);
        assert_eq!(e.exit_code, 127);
        assert_eq!(e.message, "exec \"/no/such\": no such file or directory");
        let e = describe_failure(&request("/etc/passwd"), Step::Exec, libc::EACCES);
        assert_eq!((e.exit_code, e.errno), (126, libc::EACCES));
        assert_eq!(e.message, "exec \"/etc/passwd\": Permission denied");
        let e = describe_failure(&request("sh"), Step::Chdir, libc::ENOENT);
        assert_eq!(e.exit_code, 126, "only a missing program is 127");
        assert_eq!(
            e.message,
            "starting \"sh\" failed while changing to the working directory: No such file or directory"
        );
    }

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(candidates("/bin/sh", "/x"), ["/bin/sh"]);
        assert_eq!(candidates("./run", "/x"), ["./run"]);
        assert_eq!(
            candidates("ls", "/usr/bin:/bin/::/opt"),
            ["/usr/bin/ls", "/bin/ls", "./ls", "/opt/ls"]
        );
    }
}
