//! The process seam: everything the controller does to a session's process, behind one narrow
//! trait. `Real` starts processes with `session::start` (fork and exec, spawn.rs) and signals
//! and resizes them with system calls; `Recording` stands in for them in the controller's unit
//! tests, as `os::recording::Recording` does for boot.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use crate::builtin;
use crate::session::{self, Plan, Started};
use crate::spawn::SpawnError;

pub trait Processes {
    /// Starts a session's process from its plan: its pid and the parent's ends of its stdio
    /// once it has exec'd, or why it could not (exit code 126 or 127).
    fn start(&mut self, plan: &Plan) -> Result<Started, SpawnError>;
    /// Starts a built-in (builtin.rs) as a session's process: a forked child of tether that
    /// runs tether's own code, its stdio pipes as an exec's.
    fn start_builtin(&mut self, req: &builtin::Request) -> Result<Started, SpawnError>;
    /// Sends `signal` to the process, or with `group` to its process group: each session leads
    /// its own (the child calls setsid), so the group is `-pid`.
    fn signal(&mut self, pid: u32, signal: i32, group: bool) -> io::Result<()>;
    /// Sets the size of a session's terminal (its pty master); the kernel then sends SIGWINCH to
    /// the terminal's foreground process group.
    fn resize(&mut self, tty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()>;
}

/// Real processes, chrooted into `root` (no chroot when it is `/`).
pub struct Real {
    pub root: PathBuf,
}

impl Processes for Real {
    fn start(&mut self, plan: &Plan) -> Result<Started, SpawnError> {
        session::start(plan, &self.root)
    }

    fn start_builtin(&mut self, req: &builtin::Request) -> Result<Started, SpawnError> {
        builtin::start(req, &self.root)
    }

    fn signal(&mut self, pid: u32, signal: i32, group: bool) -> io::Result<()> {
        let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        let target = if group { -pid } else { pid };
        // SAFETY: kill(2) takes two integers and reads or writes no memory of this process, so
        // it is sound whatever it reaches; a target that is gone is an ESRCH return. (Which pid
        // is meant is the controller's concern: it signals a process only before reaping it, so
        // the pid cannot have been reused.)
        if unsafe { libc::kill(target, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn resize(&mut self, tty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to `size`, a
        // live local of exactly that type; `tty` is an open descriptor for the duration (it is
        // borrowed), and any other kind of file makes the ioctl fail with ENOTTY.
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ as _, &size) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A fake that records each call and gives every started "process" real pipes, whose other
/// ends the test holds: it writes the process's output and closes it (end of file) at will.
#[cfg(test)]
pub mod recording {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::os::fd::OwnedFd;
    use std::rc::Rc;

    use crate::session::ParentStdio;

    /// The first pid the fake hands out; each start takes the next.
    pub const FIRST_PID: u32 = 100;

    /// The process's own ends of its stdio.
    #[derive(Default)]
    struct Child {
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
        stdin: Option<OwnedFd>,
    }

    #[derive(Default)]
    struct Inner {
        calls: Vec<String>,
        started: u32,
        /// The pid the next start gets instead of a fresh one (the kernel reusing a pid).
        reused: Option<u32>,
        /// Plans (by path, or `builtin OP` for a built-in) whose start fails, and how.
        failing: BTreeMap<String, SpawnError>,
        children: BTreeMap<u32, Child>,
        /// Every plan started, in order.
        plans: Vec<Plan>,
    }

    /// Clones share one record, so the test keeps one while the controller owns another.
    #[derive(Clone, Default)]
    pub struct Recording(Rc<RefCell<Inner>>);

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for the fake")
    }

    impl Recording {
        pub fn calls(&self) -> Vec<String> {
            self.0.borrow().calls.clone()
        }

        /// The plans started so far, in order.
        pub fn plans(&self) -> Vec<Plan> {
            self.0.borrow().plans.clone()
        }

        /// Starting a plan whose program is `path` fails with `e`.
        pub fn fail_start(&self, path: &str, e: SpawnError) {
            self.0.borrow_mut().failing.insert(path.to_string(), e);
        }

        /// The next process started gets `pid`, as the kernel gives a free pid out again.
        pub fn reuse_pid(&self, pid: u32) {
            self.0.borrow_mut().reused = Some(pid);
        }

        /// The process writes `bytes` to its stdout (a tty's output included).
        pub fn print(&self, pid: u32, bytes: &[u8]) {
            let inner = self.0.borrow();
            let fd = inner.children[&pid].stdout.as_ref().expect("stdout open");
            assert_eq!(nix::unistd::write(fd, bytes), Ok(bytes.len()));
        }

        /// The process (and every child of it) closes its output: the pumps reach end of file.
        pub fn close_output(&self, pid: u32) {
            if let Some(c) = self.0.borrow_mut().children.get_mut(&pid) {
                c.stdout = None;
                c.stderr = None;
            }
        }

        /// What the process has been given on its stdin so far (reads what is there).
        pub fn stdin(&self, pid: u32) -> Vec<u8> {
            let inner = self.0.borrow();
            let Some(fd) = inner.children[&pid].stdin.as_ref() else {
                return Vec::new();
            };
            crate::fdio::set_nonblocking(fd).expect("non-blocking");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = nix::unistd::read(fd, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            got
        }
    }

    impl Inner {
        /// A "process" with real pipes (or one pipe as its pty), the next pid.
        fn child(&mut self, tty: bool, open_stdin: bool) -> Started {
            let pid = match self.reused.take() {
                Some(pid) => pid,
                None => FIRST_PID + self.started,
            };
            self.started += 1;
            let (out_r, out_w) = pipe();
            let (stdio, child) = if tty {
                // One pipe stands in for the pty: the process's output comes out of the master.
                let stdio = ParentStdio::Pty { master: out_r };
                (
                    stdio,
                    Child {
                        stdout: Some(out_w),
                        ..Default::default()
                    },
                )
            } else {
                let (err_r, err_w) = pipe();
                let (in_r, in_w) = pipe();
                let stdio = ParentStdio::Pipes {
                    stdin: open_stdin.then_some(in_w),
                    stdout: out_r,
                    stderr: err_r,
                };
                (
                    stdio,
                    Child {
                        stdout: Some(out_w),
                        stderr: Some(err_w),
                        stdin: Some(in_r),
                    },
                )
            };
            self.children.insert(pid, child);
            Started { pid, stdio }
        }
    }

    impl Processes for Recording {
        fn start(&mut self, plan: &Plan) -> Result<Started, SpawnError> {
            let mut inner = self.0.borrow_mut();
            inner
                .calls
                .push(format!("start {} {}", plan.name, plan.process.path));
            inner.plans.push(plan.clone());
            if let Some(e) = inner.failing.get(&plan.process.path) {
                return Err(e.clone());
            }
            Ok(inner.child(plan.process.tty, plan.process.open_stdin))
        }

        fn start_builtin(&mut self, req: &builtin::Request) -> Result<Started, SpawnError> {
            let mut inner = self.0.borrow_mut();
            let op = builtin::op_name(&req.op);
            inner
                .calls
                .push(format!("builtin {} {op} hide {:?}", req.name, req.hide));
            if let Some(e) = inner.failing.get(&format!("builtin {op}")) {
                return Err(e.clone());
            }
            Ok(inner.child(false, builtin::reads_stdin(&req.op)))
        }

        fn signal(&mut self, pid: u32, signal: i32, group: bool) -> io::Result<()> {
            let name = wire::message::signal_name(signal).unwrap_or("?");
            let to = if group { "group" } else { "process" };
            self.0
                .borrow_mut()
                .calls
                .push(format!("signal {to} {pid} {name}"));
            Ok(())
        }

        fn resize(&mut self, _tty: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
            self.0
                .borrow_mut()
                .calls
                .push(format!("resize {rows}x{cols}"));
            Ok(())
        }
    }
}
