//! The benchmarks' baseline: the least a PID 1 can do. It mounts devtmpfs and sysfs, finds the
//! virtio port tether's channel is named by (else uses the COM port, in raw mode, as tether
//! does), writes one line to it, then does what its fw_cfg file (the slot tether's config uses,
//! `guestinfo::contract`) says, and powers off:
//!
//!   out N    copy N bytes of 100-byte text lines from a file to the port, as `cat` would
//!   in N     read N bytes from the port, then write `done`
//!   echo N   N times: read one byte from the port and write it back
//!   relay-out N  a child `cat`s N bytes into a pipe; this process reads the pipe in 64 KiB
//!                chunks and writes the port (the least any agent carrying stdout does)
//!   relay-in N   reads the port and writes a pipe, a child reads it to its end; `done` after
//!                the child has read all N bytes and exited
//!   pty-echo N   N times: one byte from the port to a pty master, its echo by the terminal
//!                (canonical mode, as a shell's `cat` has it) read back and written to the port
//!   same-work    tether's boot work without tether (same_work.rs), then one line:
//!                `same-work ENTRY READY STATUS` (CLOCK_BOOTTIME ns at PID 1's entry and
//!                when the image is `/`, which is also the spawn; the child's exit status)
//!
//! (A bare number means `out N`.) Nothing here is part of a containerVM.

use std::fs::File;
use std::io::{Read, Write};

use guestinfo::contract::{COM_DEVICE, FW_CFG_PATH, VIRTIO_PORT_NAME};

// tether's tables of mounts, /dev nodes and links, and its `lo` bring-up: the same-work
// baseline does exactly that work.
#[path = "../../boot/kernel_fs.rs"]
mod kernel_fs;
mod same_work;

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
    RelayOut(u64),
    RelayIn(u64),
    PtyEcho(u64),
    /// The same-work boot baseline; holds PID 1's entry mark.
    SameWork(u64),
}

fn task(entry: u64) -> Task {
    let text = std::fs::read_to_string(FW_CFG_PATH).unwrap_or_default();
    let mut words = text.split_whitespace();
    let (verb, n) = match (words.next(), words.next()) {
        (Some(v), Some(n)) => (v, n),
        (Some("same-work"), None) => ("same-work", "0"),
        (Some(n), None) => ("out", n),
        _ => ("out", "0"),
    };
    let n = n.parse().unwrap_or(0);
    match verb {
        "in" => Task::In(n),
        "echo" => Task::Echo(n),
        "relay-out" => Task::RelayOut(n),
        "relay-in" => Task::RelayIn(n),
        "pty-echo" => Task::PtyEcho(n),
        "same-work" => Task::SameWork(entry),
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

/// A pipe: (read end, write end).
fn pipe() -> std::io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    })
}

/// Runs `child` in a forked process (which then exits); returns its pid.
fn fork(child: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<libc::pid_t> {
    // SAFETY: this process is single-threaded, so the child may run ordinary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            let code = i32::from(child().is_err());
            // SAFETY: _exit ends the child without running the parent's cleanup.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid),
    }
}

fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our variable.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Copies `from` to `to` in 64 KiB reads until `from` ends, or `limit` bytes.
fn copy(from: &mut File, to: &mut File, mut limit: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    while limit > 0 {
        let want = limit.min(buf.len() as u64) as usize;
        let n = from.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n])?;
        limit -= n as u64;
    }
    Ok(())
}

/// The pty echo relay: port -> master, the terminal's echo master -> port, one byte each way.
fn pty_echo(port: &mut File, n: u64) -> std::io::Result<()> {
    // openpty opens /dev/ptmx, which needs a devpts at /dev/pts (tether mounts one too).
    mount("devpts", "/dev/pts", "devpts");
    let (mut master, mut secondary) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name, termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut secondary,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else. The secondary end stays
    // open (a reader would hold it); its default termios is canonical with echo.
    let (mut master, _secondary): (File, File) = unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(master),
            std::os::fd::FromRawFd::from_raw_fd(secondary),
        )
    };
    let mut b = [0u8; 1];
    for _ in 0..n {
        port.read_exact(&mut b)?;
        master.write_all(&b)?;
        master.read_exact(&mut b)?;
        port.write_all(&b)?;
    }
    Ok(())
}

fn serve(port: &mut File, task: Task) -> std::io::Result<()> {
    // The file is made before the line, so the host times only the copy.
    if let Task::Out(n @ 1..) | Task::RelayOut(n @ 1..) = task {
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
        Task::RelayOut(n) => {
            let (mut rd, mut wr) = pipe()?;
            // The closure takes the write end: the parent's copy closes when it drops, so the
            // read below sees the end when the child is done.
            let child = fork(move || cat("/bench.data", &mut wr))?;
            copy(&mut rd, port, n)?;
            wait(child);
            port.flush()
        }
        Task::RelayIn(n) => {
            let (mut rd, mut wr) = pipe()?;
            let wr_fd = std::os::fd::AsRawFd::as_raw_fd(&wr);
            // The closure takes the read end (the parent's copy closes when it drops).
            let child = fork(move || {
                // SAFETY: the child's copy of the write end, closed so the reader sees the end.
                unsafe { libc::close(wr_fd) };
                let mut sink = vec![0u8; 64 * 1024];
                while rd.read(&mut sink)? > 0 {}
                Ok(())
            })?;
            copy(port, &mut wr, n)?;
            drop(wr);
            wait(child);
            port.write_all(b"done\n")
        }
        Task::PtyEcho(n) => pty_echo(port, n),
        Task::SameWork(entry) => {
            let line = match same_work::run() {
                Ok(m) => format!(
                    "same-work {entry} {} {}
",
                    m.root_ready, m.status
                ),
                Err(e) => format!("same-work failed: {e}\n"),
            };
            port.write_all(line.as_bytes())
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
    let entry = same_work::now_nanos();
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
        let _ = serve(&mut port, task(entry));
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
