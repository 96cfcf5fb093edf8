//! Opening the control channel: a virtio-serial port found by name, a serial tty in raw mode (the
//! vSphere network serial port), or, for host-mode tests, a Unix socket to connect to.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fdio::FdStream;

pub trait Duplex: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Duplex for T {}

/// Where the channel is.
#[derive(Debug, Clone)]
pub enum ChannelSpec {
    /// A Unix socket to connect to (host mode); reconnecting means connecting again.
    Socket(PathBuf),
    /// A character device held open for the life of tether; "reconnecting" reuses it.
    Device(PathBuf),
}

impl ChannelSpec {
    /// Chooses by what `path` is: a socket is connected to, anything else opened as a device.
    pub fn for_path(path: &Path) -> Self {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_socket() => Self::Socket(path.to_path_buf()),
            _ => Self::Device(path.to_path_buf()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Socket(p) => format!("unix socket {}", p.display()),
            Self::Device(p) => format!("device {}", p.display()),
        }
    }
}

/// No virtio-serial port has the name looked for; `seen` lists each port as `dev="name"`.
#[derive(Debug, Error)]
#[error("no virtio-serial port named {name:?} (ports seen: {})", list(seen))]
pub struct NoVirtioPort {
    pub name: String,
    pub seen: Vec<String>,
}

fn list(seen: &[String]) -> String {
    if seen.is_empty() {
        "none".to_string()
    } else {
        seen.join(", ")
    }
}

/// Finds `/dev/vportNpM` whose virtio port name is `name`, listing what it saw on failure.
pub fn find_virtio_port(sys: &Path, name: &str) -> Result<PathBuf, NoVirtioPort> {
    let dir = sys.join("class/virtio-ports");
    let mut seen = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let port_name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
            let port_name = port_name.trim();
            let dev = e.file_name().to_string_lossy().to_string();
            if port_name == name {
                return Ok(PathBuf::from("/dev").join(dev));
            }
            seen.push(format!("{dev}={port_name:?}"));
        }
    }
    Err(NoVirtioPort {
        name: name.to_string(),
        seen,
    })
}

/// Opens a device exclusively: a virtio port allows one opener by itself; a tty is put in raw
/// mode and marked exclusive (TIOCEXCL) so no process without CAP_SYS_ADMIN can open it too.
pub fn open_device(path: &Path) -> io::Result<OwnedFd> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let fd = open(
        path,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", path.display()),
        )
    })?;
    if nix::unistd::isatty(&fd).unwrap_or(false) {
        use nix::sys::termios::{cfmakeraw, cfsetspeed, tcgetattr, tcsetattr, BaudRate, SetArg};
        let mut t = tcgetattr(&fd)?;
        cfmakeraw(&mut t);
        // The speed matters only for a physical line; vSphere's network serial ignores it.
        cfsetspeed(&mut t, BaudRate::B115200)?;
        tcsetattr(&fd, SetArg::TCSANOW, &t)?;
        // SAFETY: TIOCEXCL takes no argument and only sets a flag on the tty we own.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::TIOCEXCL as _) };
    }
    Ok(fd)
}

/// One connection attempt's byte stream.
pub async fn connect(spec: &ChannelSpec, device: Option<&OwnedFd>) -> io::Result<Box<dyn Duplex>> {
    match spec {
        ChannelSpec::Socket(p) => Ok(Box::new(tokio::net::UnixStream::connect(p).await?)),
        ChannelSpec::Device(_) => {
            let fd = device
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "channel device not open"))?
                .try_clone()?;
            Ok(Box::new(FdStream::new(fd)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_found_by_name_else_the_error_lists_what_was_seen() {
        let sys = std::env::temp_dir().join(format!("tether-vports-{}", std::process::id()));
        let ports = sys.join("class/virtio-ports");
        for (dev, name) in [
            ("vport0p1", "org.qemu.guest_agent.0"),
            ("vport0p2", "other"),
        ] {
            std::fs::create_dir_all(ports.join(dev)).unwrap();
            std::fs::write(ports.join(dev).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find_virtio_port(&sys, "other").unwrap(),
            PathBuf::from("/dev/vport0p2")
        );
        let e = find_virtio_port(&sys, guestinfo::contract::VIRTIO_PORT_NAME).unwrap_err();
        let mut seen = e.seen.clone();
        seen.sort();
        assert_eq!(
            seen,
            ["vport0p1=\"org.qemu.guest_agent.0\"", "vport0p2=\"other\""]
        );
        assert!(e.to_string().starts_with(
            "no virtio-serial port named \"org.tether.channel\" (ports seen: vport0p"
        ));
        let empty = find_virtio_port(&sys.join("nothing"), "x").unwrap_err();
        assert_eq!(
            empty.to_string(),
            "no virtio-serial port named \"x\" (ports seen: none)"
        );
        let _ = std::fs::remove_dir_all(&sys);
    }
}
