//! Message types. Two layers share one frame format:
//!
//! * [`Message`]: the link layer, one per frame. Handshake, stream data, acks, rewinds, pings.
//!   Link messages are not retransmitted; a lost one is repaired by the stream machinery.
//! * [`Control`]: records carried *inside* the reliable control stream (session 0). Exec, Started,
//!   Signal, Exited, ... arrive exactly once and in order, across reconnects, like stdout bytes.
//!
//! The postcard encoding of an enum is its variant index followed by the fields, so **variant
//! order is the wire contract**: append new variants, never reorder or remove them.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Identifies a session (the main process or an exec) within one containerVM.
pub type SessionId = u32;

/// Session 0 is reserved for the control stream.
pub const CONTROL_SESSION: SessionId = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StreamKind {
    /// Reliable control records; only in session 0, one per direction.
    Control,
    /// Appliance -> tether.
    Stdin,
    /// Tether -> appliance.
    Stdout,
    /// Tether -> appliance.
    Stderr,
}

/// One direction of one byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    pub session: SessionId,
    pub kind: StreamKind,
}

impl StreamKey {
    pub const CONTROL: StreamKey = StreamKey {
        session: CONTROL_SESSION,
        kind: StreamKind::Control,
    };

    pub fn new(session: SessionId, kind: StreamKind) -> Self {
        Self { session, kind }
    }
}

/// A receiver's position in one stream: everything below `received` is held (persisted, or
/// delivered to the process) and the sender may transmit up to, not including, `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub key: StreamKey,
    pub received: u64,
    pub limit: u64,
}

pub type Nonce = [u8; 32];
pub type Mac = [u8; 32];
pub type BootId = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub container_id: String,
    /// Random per boot of the containerVM; a new boot id means fresh streams.
    pub boot_id: BootId,
    pub nonce: Nonce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub version: u16,
    pub nonce: Nonce,
    /// The server's proof that it knows the container's secret.
    pub mac: Mac,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The guest's proof that it knows the container's secret.
    pub mac: Mac,
    /// What the guest holds of every stream the server sends (stdin, control).
    pub received: Vec<Position>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// What the server holds of every stream the guest sends (stdout, stderr, control).
    pub received: Vec<Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    UnsupportedVersion,
    UnknownContainer,
    BadProof,
    /// The same container id is already connected and authenticated on another channel.
    AlreadyConnected,
    ProtocolViolation,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: RefuseReason,
    pub detail: String,
}

/// Link-layer message: exactly one per frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Challenge(Challenge),
    Proof(Proof),
    Welcome(Welcome),
    Refused(Refused),
    /// Stream bytes starting at offset `seq`. With `fin`, the stream ends after these bytes.
    Data {
        key: StreamKey,
        seq: u64,
        fin: bool,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Cumulative ack plus credit: the receiver holds everything below `upto` (the end-of-stream
    /// mark counts as one offset) and grants sending up to `limit`.
    Ack {
        key: StreamKey,
        upto: u64,
        limit: u64,
    },
    /// The receiver saw a gap: resend from `from`.
    Rewind {
        key: StreamKey,
        from: u64,
    },
    Ping {
        token: u64,
    },
    Pong {
        token: u64,
    },
    /// Orderly close of this connection (not of the container).
    Goodbye {
        reason: String,
    },
    /// Server -> guest: the server's wall clock now, nanoseconds since the Unix epoch. A
    /// sample of a clock, so a link message: a lost one is replaced by the next, never resent
    /// late (a [`Control::SetTime`] in the reliable stream could arrive stale after a break).
    Time {
        unix_nanos: u64,
    },
}

/// What a session runs. Paths and args are byte-exact UTF-8 strings; nothing is split or joined.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: String,
    pub user: String,
    pub group: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Reliable control records, carried in the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Server -> tether: start a new session.
    Exec {
        session: SessionId,
        name: String,
        spec: ExecSpec,
    },
    /// Tether -> server: a session's process is running.
    Started {
        session: SessionId,
        name: String,
        pid: u32,
    },
    /// Tether -> server: a session could not start. `exit_code` is 126 (found but not
    /// executable, or permission denied) or 127 (not found), as a shell reports them.
    StartFailed {
        session: SessionId,
        exit_code: i32,
        errno: i32,
        message: String,
    },
    Resize {
        session: SessionId,
        rows: u16,
        cols: u16,
    },
    /// Deliver `signal` to the session's process, or its whole process group with `group`.
    Signal {
        session: SessionId,
        signal: i32,
        group: bool,
    },
    CloseStdin {
        session: SessionId,
    },
    /// `exit_code` is the code, or 128 + signal when `signal` killed the process.
    Exited {
        session: SessionId,
        exit_code: i32,
        signal: Option<i32>,
    },
    /// Tether's own state as free text, from guests before [`Control::State`]; still decoded
    /// (see [`GuestState::from_legacy`]), no longer sent.
    Status {
        state: String,
        detail: String,
    },
    /// Server -> tether: wall clock, nanoseconds since the Unix epoch.
    SetTime {
        unix_nanos: u64,
    },
    /// Tether's own diagnostics.
    Log {
        level: LogLevel,
        message: String,
    },
    /// Tether -> server: tether's boot stages, nanoseconds on the guest's monotonic clock.
    Timing {
        stage: String,
        monotonic_nanos: u64,
    },
    /// Server -> tether: a session configured to wait for its first attach may start now.
    Release {
        session: SessionId,
    },
    /// Tether -> server: tether's own state, typed (supersedes [`Control::Status`]).
    State {
        state: GuestState,
        detail: String,
    },
    /// Server -> tether: start a session that runs one of tether's built-ins in the container's
    /// root, so that no program is needed in the image. It is answered as an [`Control::Exec`]
    /// is: `Started` (pid 0) or `StartFailed`, output on the session's Stdout (errors as text on
    /// Stderr), input from its Stdin, then `Exited` (0, or 1 with the reason on Stderr).
    Builtin {
        session: SessionId,
        name: String,
        op: BuiltinOp,
    },
    /// Tether -> server: every network endpoint as configured now, sent after each
    /// (re)configuration (boot, a DHCP renewal that changed something, a lease lost). The whole
    /// set each time: it replaces what the server held.
    Network {
        endpoints: Vec<crate::network::EndpointStatus>,
    },
    /// Server -> tether: a NIC was hot-plugged into the running VM; configure it as endpoint
    /// `network`. `config` is that endpoint's guestinfo keys as VMX text (the `networks|NAME`
    /// keys a boot config carries, alone: `guestinfo::endpoint_to_vmx`), so a hot-added NIC is
    /// decoded and configured by the code that configures one at boot. Answered by
    /// [`Control::NetworkChanged`] with the same `request`, after a [`Control::Network`] report.
    NetworkAdd {
        request: u32,
        network: String,
        config: String,
    },
    /// Server -> tether: drop endpoint `network` (its DHCP lease released, its address, names
    /// and firewall rules gone) before its NIC is unplugged. Answered by `NetworkChanged`.
    NetworkRemove {
        request: u32,
        network: String,
    },
    /// Tether -> server: how a `NetworkAdd` or `NetworkRemove` ended: `error` empty when it was
    /// applied, else why not (a NIC that did not appear at its slot names the slot).
    NetworkChanged {
        request: u32,
        error: String,
    },
}

/// What a [`Control::Builtin`] session does. Paths are absolute in the container (a relative
/// one is taken from `/`); `..` and symlinks never leave the container's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuiltinOp {
    /// `docker top`: the container's processes as docker's JSON on Stdout, `{"Titles":[...],
    /// "Processes":[[...],...]}` in `ps -ef`'s columns. `ps_args` is empty or `-ef`; any other
    /// value exits 1.
    Processes { ps_args: String },
    /// `HEAD /containers/{id}/archive`: the path's lstat as docker's `ContainerPathStat` JSON on
    /// Stdout, `{"name","size","mode" (Go os.FileMode bits),"mtime" (RFC 3339),"linkTarget"}`.
    Stat { path: String },
    /// `GET /containers/{id}/archive`: a tar of the path on Stdout, its top entry named after
    /// the path's last element, a directory recursively; symlinks are archived, not followed.
    ArchiveGet { path: String },
    /// `PUT /containers/{id}/archive`: a tar read from Stdin, extracted into the directory
    /// `path`. With `no_overwrite_dir_non_dir`, replacing a directory with a non-directory (or
    /// the reverse) is an error, as in docker.
    ArchivePut {
        path: String,
        no_overwrite_dir_non_dir: bool,
    },
    /// Image builds: an OCI image layer (an uncompressed tar) read from Stdin, applied over the
    /// directory `path` as a layer is applied to the layers below it. As [`BuiltinOp::ArchivePut`],
    /// plus: `.wh.NAME` deletes NAME of a lower layer, `.wh..wh..opq` empties its directory of
    /// lower layers' content (entries of this layer stay, whatever their order in the tar),
    /// other `.wh..wh.` names are ignored, an existing entry is always replaced (a directory by a
    /// file and the reverse), and PAX `SCHILY.xattr.*` records become extended attributes
    /// (`security.capability` included), set last so no chown or write clears them.
    ApplyLayer { path: String },
}

/// What tether itself is doing, as opposed to any one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestState {
    /// Booted far enough to talk; sessions not yet launched.
    Booting,
    /// Sessions launched.
    Running,
    /// The main session ended; the rest are being stopped and output drained.
    Stopping,
    /// The container could not run (bad config, missing disk, ...); `detail` says why.
    Failed,
}

impl GuestState {
    /// The state an older guest's [`Control::Status`] text names, if any.
    pub fn from_legacy(text: &str) -> Option<Self> {
        match text {
            "booting" => Some(Self::Booting),
            "running" => Some(Self::Running),
            "stopping" => Some(Self::Stopping),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message does not decode: {0}")]
    Malformed(String),
    #[error("message has {0} trailing bytes after its end")]
    TrailingBytes(usize),
}

/// Encodes any wire value with postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising into a Vec cannot fail for these types: no maps with non-string keys,
    // no unsized sequences. The expect documents an invariant, not a runtime condition.
    postcard::to_allocvec(value).expect("postcard encoding of wire types is infallible")
}

/// Decodes exactly one value from `bytes`; trailing bytes are an error, not ignored.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Linux x86 signal names, as docker prints them.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| NAMES.get(i).copied())
}

/// Parses `KILL`, `SIGKILL`, `sigkill` or `9` into a signal number.
pub fn parse_signal(text: &str) -> Option<i32> {
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let wanted = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    (1..=31).find(|&n| signal_name(n) == Some(wanted.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let m = Message::Data {
            key: StreamKey::new(7, StreamKind::Stderr),
            seq: 1 << 40,
            fin: true,
            bytes: b"\0| \"quoted\" \xe2\x9c\x93".to_vec(),
        };
        assert_eq!(decode::<Message>(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&Message::Ping { token: 5 });
        bytes.push(0);
        assert_eq!(
            decode::<Message>(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn unknown_variant_is_malformed_not_a_panic() {
        assert!(matches!(
            decode::<Message>(&[200, 1, 2]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Control>(&[]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn signal_names_and_parsing() {
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(32), None);
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigusr1"), Some(10));
        assert_eq!(parse_signal("28"), Some(28));
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(parse_signal("0"), None);
    }

    /// The variant index is the wire contract; this pins it so a reorder fails loudly.
    #[test]
    fn variant_tags_are_stable() {
        let tag = |m: &Message| encode(m)[0];
        assert_eq!(tag(&Message::Ping { token: 0 }), 8);
        assert_eq!(
            tag(&Message::Goodbye {
                reason: String::new()
            }),
            10
        );
        assert_eq!(tag(&Message::Time { unix_nanos: 0 }), 11);
        assert_eq!(encode(&Control::CloseStdin { session: 1 })[0], 5);
        assert_eq!(encode(&Control::Release { session: 1 })[0], 11);
        let state = Control::State {
            state: GuestState::Failed,
            detail: String::new(),
        };
        assert_eq!(encode(&state)[..2], [12, 3]);
        let builtin = |op| {
            encode(&Control::Builtin {
                session: 4096,
                name: String::new(),
                op,
            })
        };
        // Tag 13, session 4096 as a two-byte varint, an empty name, then the op's tag.
        let ops = [
            BuiltinOp::Processes {
                ps_args: String::new(),
            },
            BuiltinOp::Stat {
                path: String::new(),
            },
            BuiltinOp::ArchiveGet {
                path: String::new(),
            },
            BuiltinOp::ArchivePut {
                path: String::new(),
                no_overwrite_dir_non_dir: true,
            },
            BuiltinOp::ApplyLayer {
                path: String::new(),
            },
        ];
        for (tag, op) in (0u8..).zip(ops) {
            assert_eq!(builtin(op)[..5], [13, 0x80, 0x20, 0, tag]);
        }
        assert_eq!(encode(&Control::Network { endpoints: vec![] }), [14, 0]);
        let add = Control::NetworkAdd {
            request: 1,
            network: "n".into(),
            config: "k".into(),
        };
        assert_eq!(encode(&add), [15, 1, 1, b'n', 1, b'k']);
        let remove = Control::NetworkRemove {
            request: 2,
            network: "n".into(),
        };
        assert_eq!(encode(&remove), [16, 2, 1, b'n']);
        let changed = Control::NetworkChanged {
            request: 3,
            error: String::new(),
        };
        assert_eq!(encode(&changed), [17, 3, 0]);
    }

    #[test]
    fn hot_plug_records_round_trip() {
        let records = [
            Control::NetworkAdd {
                request: u32::MAX,
                network: "net2".into(),
                config: "guestinfo.vice./networks = \"net2\"\n".into(),
            },
            Control::NetworkRemove {
                request: 7,
                network: "net2".into(),
            },
            Control::NetworkChanged {
                request: 7,
                error: "no PCI device at PCI slot 9 (0000:00:09.0)".into(),
            },
        ];
        let mut framed = Vec::new();
        for r in &records {
            framed.extend(crate::encode_control(r).unwrap());
        }
        assert_eq!(crate::ControlDecoder::new().push(&framed).unwrap(), records);
    }

    #[test]
    fn network_records_round_trip() {
        use crate::network::{EndpointStatus, Lease};
        let record = Control::Network {
            endpoints: vec![
                EndpointStatus {
                    network: "bridge".into(),
                    interface: "bridge".into(),
                    mac: "52:54:00:12:34:56".into(),
                    ipv4: vec!["10.0.2.15/24".into()],
                    ipv6: vec!["fe80::5054:ff:fe12:3456/64".into()],
                    gateway: Some("10.0.2.2".into()),
                    gateway6: None,
                    nameservers: vec!["10.0.2.3".into()],
                    lease: Some(Lease {
                        server: "10.0.2.2".into(),
                        obtained_unix: 1_700_000_000,
                        lease_secs: 86_400,
                        renew_secs: 43_200,
                        rebind_secs: 75_600,
                    }),
                    error: String::new(),
                },
                EndpointStatus {
                    network: "none yet".into(),
                    error: "DHCP: no offer".into(),
                    ..Default::default()
                },
            ],
        };
        let framed = crate::encode_control(&record).unwrap();
        assert_eq!(
            crate::ControlDecoder::new().push(&framed).unwrap(),
            [record]
        );
    }

    #[test]
    fn builtin_records_round_trip() {
        let ops = [
            BuiltinOp::Processes {
                ps_args: "-ef".into(),
            },
            BuiltinOp::Stat {
                path: "/etc/hosts".into(),
            },
            BuiltinOp::ArchiveGet {
                path: "/srv/ünï côdé/".into(),
            },
            BuiltinOp::ArchivePut {
                path: "/tmp".into(),
                no_overwrite_dir_non_dir: true,
            },
            BuiltinOp::ArchivePut {
                path: String::new(),
                no_overwrite_dir_non_dir: false,
            },
            BuiltinOp::ApplyLayer { path: "/".into() },
        ];
        for op in ops {
            let record = Control::Builtin {
                session: u32::MAX,
                name: "cp-1".into(),
                op,
            };
            assert_eq!(decode::<Control>(&encode(&record)), Ok(record.clone()));
            let framed = crate::encode_control(&record).unwrap();
            assert_eq!(
                crate::ControlDecoder::new().push(&framed).unwrap(),
                [record]
            );
        }
        // The exact bytes of one record, as another implementation must produce them.
        let record = Control::Builtin {
            session: 5,
            name: "s".into(),
            op: BuiltinOp::ArchivePut {
                path: "/d".into(),
                no_overwrite_dir_non_dir: true,
            },
        };
        assert_eq!(encode(&record), [13, 5, 1, b's', 3, 2, b'/', b'd', 1]);
        // An op tag past the last is malformed, not a panic.
        assert!(matches!(
            decode::<Control>(&[13, 5, 1, b's', 5, 0]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
