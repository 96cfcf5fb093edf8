//! A QMP client (QEMU's JSON monitor protocol) for the few commands NIC hot-plug needs:
//! `getfd` (a tap's descriptor passed over the socket with SCM_RIGHTS), `netdev_add`,
//! `device_add`, `device_del` (finished when QEMU's `DEVICE_DELETED` event comes) and
//! `netdev_del`. One request at a time, blocking, each read under a deadline: the caller runs it
//! on a blocking thread. Replies are typed by what these commands return (`{}`), errors by
//! QMP's `{"class", "desc"}`.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

/// How long one reply may take.
const REPLY_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP: the monitor said something that is not QMP: {0}")]
    Protocol(String),
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error(
        "QMP: no {event} event for {device} within {secs} s (did the guest release the device?)"
    )]
    NoEvent {
        event: &'static str,
        device: String,
        secs: u64,
    },
}

/// One line from the monitor: a reply, an error, an event or the greeting.
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(rename = "return")]
    ret: Option<Value>,
    error: Option<CommandError>,
    event: Option<String>,
    data: Option<Value>,
    #[serde(rename = "QMP")]
    greeting: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct CommandError {
    class: String,
    desc: String,
}

pub struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events read while waiting for a reply, kept for [`Qmp::wait_device_deleted`].
    events: Vec<(String, Value)>,
}

impl Qmp {
    /// Connects to the monitor at `path` and leaves capabilities negotiation mode.
    pub fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = connect_unix(path).map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Self::over(stream)
    }

    /// The client over a connected stream (a socketpair in tests).
    pub fn over(stream: UnixStream) -> Result<Self, QmpError> {
        stream.set_read_timeout(Some(REPLY_WAIT))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut q = Self {
            stream,
            reader,
            events: Vec::new(),
        };
        let greeting = q.read_line()?;
        if greeting.greeting.is_none() {
            return Err(QmpError::Protocol("no greeting".into()));
        }
        q.execute("qmp_capabilities", json!({}), None)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<Line, QmpError> {
        let mut text = String::new();
        if self.reader.read_line(&mut text)? == 0 {
            return Err(QmpError::Protocol(
                "the monitor closed the connection".into(),
            ));
        }
        serde_json::from_str(&text).map_err(|e| QmpError::Protocol(format!("{e}: {text:?}")))
    }

    /// Sends one command (with `fd` as SCM_RIGHTS ancillary data) and reads to its reply.
    fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let mut text = json!({"execute": command, "arguments": arguments}).to_string();
        text.push('\n');
        match fd {
            None => self.stream.write_all(text.as_bytes())?,
            Some(fd) => {
                use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
                let fds = [fd.as_raw_fd()];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let iov = [IoSlice::new(text.as_bytes())];
                let sent = sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::empty(),
                    None,
                )
                .map_err(std::io::Error::from)?;
                // The descriptor went with the first byte; the rest is ordinary text.
                self.stream.write_all(&text.as_bytes()[sent..])?;
            }
        }
        loop {
            let line = self.read_line()?;
            if let Some(e) = line.error {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: e.class,
                    desc: e.desc,
                });
            }
            if let Some(ret) = line.ret {
                return Ok(ret);
            }
            if let Some(event) = line.event {
                self.events.push((event, line.data.unwrap_or(Value::Null)));
            }
        }
    }

    /// Hands QEMU a descriptor under `name` (for `netdev_add`'s `fd`).
    pub fn getfd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        self.execute("getfd", json!({"fdname": name}), Some(fd))
            .map(drop)
    }

    /// A tap netdev `id` on the descriptor given to [`Qmp::getfd`] as `fd_name`.
    pub fn netdev_add_tap(&mut self, id: &str, fd_name: &str) -> Result<(), QmpError> {
        self.execute(
            "netdev_add",
            json!({"type": "tap", "id": id, "fd": fd_name}),
            None,
        )
        .map(drop)
    }

    /// A virtio-net NIC `id` on netdev `netdev`, in the PCI(e) bus `bus` (a root port: its one
    /// slot).
    pub fn device_add_virtio_net(
        &mut self,
        id: &str,
        netdev: &str,
        mac: &str,
        bus: &str,
    ) -> Result<(), QmpError> {
        self.execute(
            "device_add",
            json!({"driver": "virtio-net-pci", "id": id, "netdev": netdev, "mac": mac, "bus": bus}),
            None,
        )
        .map(drop)
    }

    /// Asks for device `id`'s removal; the guest's release finishes it
    /// ([`Qmp::wait_device_deleted`]).
    pub fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("device_del", json!({"id": id}), None)
            .map(drop)
    }

    /// Waits up to `wait` for the `DEVICE_DELETED` event of device `id`.
    pub fn wait_device_deleted(&mut self, id: &str, wait: Duration) -> Result<(), QmpError> {
        let is_it = |(event, data): &(String, Value)| {
            event == "DEVICE_DELETED" && data["device"].as_str() == Some(id)
        };
        let deadline = Instant::now() + wait;
        loop {
            if self.events.iter().any(is_it) {
                self.events.retain(|e| !is_it(e));
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::NoEvent {
                    event: "DEVICE_DELETED",
                    device: id.into(),
                    secs: wait.as_secs(),
                });
            }
            self.stream.set_read_timeout(Some(left))?;
            let line = match self.read_line() {
                Ok(l) => l,
                Err(QmpError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            self.stream.set_read_timeout(Some(REPLY_WAIT))?;
            if let Some(event) = line.event {
                self.events.push((event, line.data.unwrap_or(Value::Null)));
            }
        }
    }

    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.execute("netdev_del", json!({"id": id}), None)
            .map(drop)
    }
}

/// Connects to a Unix socket whose path may be longer than `sun_path` holds (a deep
/// TETHER_HOME): through `/proc/self/fd/N/` of its directory.
fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let held = std::fs::File::open(dir)?;
    UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", held.as_raw_fd())).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A monitor that answers like QEMU: the greeting, then one scripted reply per command,
    /// recording each command (and whether a descriptor came with it).
    fn fake_qemu(
        server: UnixStream,
        replies: Vec<&'static str>,
    ) -> std::thread::JoinHandle<Vec<(Value, bool)>> {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut out = server.try_clone().unwrap();
            out.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut replies = replies.into_iter();
            let mut pending = Vec::new();
            loop {
                let mut buf = [0u8; 4096];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg = nix::sys::socket::recvmsg::<()>(
                    server.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::empty(),
                )
                .unwrap();
                let got_fd = msg.cmsgs().unwrap().any(|c| {
                    matches!(c, nix::sys::socket::ControlMessageOwned::ScmRights(ref f) if f.len() == 1)
                });
                let n = msg.bytes;
                if n == 0 {
                    return seen;
                }
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    seen.push((serde_json::from_slice(&line).unwrap(), got_fd));
                    let reply = replies.next().unwrap_or("{\"return\": {}}");
                    out.write_all(reply.as_bytes()).unwrap();
                    out.write_all(b"\n").unwrap();
                }
            }
        })
    }

    #[test]
    fn hot_plug_commands_go_out_typed_with_the_tap_descriptor() {
        let (client, server) = UnixStream::pair().unwrap();
        let qemu = fake_qemu(
            server,
            vec![
                "{\"return\": {}}",
                "{\"return\": {}}",
                "{\"return\": {}}",
                "{\"event\": \"NIC_RX_FILTER_CHANGED\", \"data\": {}}\n{\"return\": {}}",
                "{\"return\": {}}\n{\"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"nic9\"}}",
                "{\"return\": {}}",
            ],
        );
        let mut q = Qmp::over(client).unwrap();
        let (tap, _other) = UnixStream::pair().unwrap();
        q.getfd("tap9", tap.as_fd()).unwrap();
        q.netdev_add_tap("net9", "tap9").unwrap();
        q.device_add_virtio_net("nic9", "net9", "02:42:ac:12:00:03", "hp9")
            .unwrap();
        q.device_del("nic9").unwrap();
        q.wait_device_deleted("nic9", Duration::from_secs(5))
            .unwrap();
        q.netdev_del("net9").unwrap();
        drop(q);
        let seen = qemu.join().unwrap();
        let commands: Vec<&str> = seen
            .iter()
            .map(|(v, _)| v["execute"].as_str().unwrap())
            .collect();
        assert_eq!(
            commands,
            [
                "qmp_capabilities",
                "getfd",
                "netdev_add",
                "device_add",
                "device_del",
                "netdev_del"
            ]
        );
        assert!(seen[1].1, "getfd carries the tap's descriptor");
        assert!(!seen[2].1);
        assert_eq!(
            seen[2].0["arguments"],
            json!({"type": "tap", "id": "net9", "fd": "tap9"})
        );
        assert_eq!(seen[3].0["arguments"]["bus"], "hp9");
        assert_eq!(seen[3].0["arguments"]["mac"], "02:42:ac:12:00:03");
    }

    #[test]
    fn a_refused_command_is_qemus_words_and_a_missing_event_times_out() {
        let (client, server) = UnixStream::pair().unwrap();
        let qemu = fake_qemu(
            server,
            vec![
                "{\"return\": {}}",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"Bus 'pcie.0' does not support hotplugging\"}}",
            ],
        );
        let mut q = Qmp::over(client).unwrap();
        let e = q
            .device_add_virtio_net("nic8", "net8", "02:42:00:00:00:01", "pcie.0")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "QMP device_add: GenericError: Bus 'pcie.0' does not support hotplugging"
        );
        let e = q
            .wait_device_deleted("nic8", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, QmpError::NoEvent { .. }), "{e}");
        drop(q);
        qemu.join().unwrap();
    }
}
