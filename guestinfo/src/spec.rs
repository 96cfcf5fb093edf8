//! The container spec tether runs, and its guestinfo keys (all read-only, under
//! `guestinfo.vice./`):
//!
//! | key | meaning |
//! |---|---|
//! | `common/id`, `common/name` | container id (required) and name |
//! | `diagnostics/debug` | log level 0 (errors) .. 3 (debug) |
//! | `hostname`, `domainname` | hostname (default: first 12 characters of the id) |
//! | `channel/secret` | base64 per-container secret for the channel handshake (required) |
//! | `channel/device` | channel device: a virtio port name or a /dev path (default: auto) |
//! | `storage/label`, `storage/wait` | image disk label (default containerfs), wait in ms (default 10000) |
//! | `stop/grace` | ms between the stop signal and SIGKILL at shutdown (default 10000) |
//! | `network/dns`, `network/search` | lists: nameservers and search domains for /etc/resolv.conf (none: the image's file is kept) |
//! | `network/hosts` | list of `NAME:ADDR` (docker's `--add-host`, split at the first `:` so IPv6 addresses need no brackets): `ADDR\tNAME` lines appended to /etc/hosts in order |
//! | `networks` | map of network endpoints, one per vNIC: keys in [`crate::network`] |
//! | `sessions`, `execs` | maps of sessions: the main session's key is the container id |
//! | `<map>\|ID/common/id`, `.../common/name` | session id and name |
//! | `.../cmd/Path`, `.../cmd/Args`, `.../cmd/Env`, `.../cmd/Dir` | program (required unless `builtin` is set), argv (argv\[0\] included), environment, working dir |
//! | `.../builtin` | empty: run `cmd`; `hold`: run no program; the session reports `Started` with pid 0 and stays up, without output and ignoring stdin, until any signal ends it: SIGTERM exits 0, another signal 128 + its number (for maintenance boots: `docker cp` on a stopped container) |
//! | `.../rows`, `.../cols` | the terminal's initial size with `tty` (u16; 0 or absent: 24x80), set on the pty before the program starts |
//! | `.../user`, `.../group` | user and group, names or numbers, from the image's passwd/group |
//! | `.../tty`, `.../attach`, `.../openstdin`, `.../restart` | booleans |
//! | `.../stopSignal` | signal for stopping, name or number (default SIGTERM) |
//! | `.../rlimits` | list of `NAME=SOFT:HARD` (docker's --ulimit form; `-1` is unlimited) |
//! | `.../capdrop` | list of capability names to drop (`ALL` for every one) |

use std::collections::BTreeMap;

use crate::keys::{KeyError, KeyPath, KeySource, KeyWriter};
use crate::network::{self, NetworkEndpoint};

pub use crate::contract::DEFAULT_DISK_LABEL;
pub const DEFAULT_DISK_WAIT_MS: u64 = 10_000;
pub const DEFAULT_STOP_GRACE_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub name: String,
    /// `None` is unlimited.
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

impl Rlimit {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, limits) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not NAME=SOFT[:HARD]"))?;
        let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
        let num = |s: &str| -> Result<Option<u64>, String> {
            match s.trim() {
                "-1" | "unlimited" => Ok(None),
                n => n
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{n:?} in {text:?} is not a number or -1")),
            }
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("{text:?} has no limit name"));
        }
        Ok(Self {
            name,
            soft: num(soft)?,
            hard: num(hard)?,
        })
    }

    pub fn render(&self) -> String {
        let n = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
        format!("{}={}:{}", self.name, n(self.soft), n(self.hard))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionSpec {
    pub id: String,
    pub name: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: String,
    pub user: String,
    pub group: String,
    pub tty: bool,
    pub attach: bool,
    pub open_stdin: bool,
    pub restart: bool,
    pub stop_signal: String,
    pub rlimits: Vec<Rlimit>,
    pub cap_drop: Vec<String>,
    /// The terminal's initial size (with `tty`); 0 is unset (24 rows, 80 columns).
    pub rows: u16,
    pub cols: u16,
    /// Empty: run `path`. [`BUILTIN_HOLD`]: run nothing and stay up until signalled.
    pub builtin: String,
}

/// The `builtin` value of a session that runs no program and stays up until it gets a signal.
pub const BUILTIN_HOLD: &str = "hold";

impl SessionSpec {
    /// The session runs no program: it holds until signalled.
    pub fn is_hold(&self) -> bool {
        self.builtin == BUILTIN_HOLD
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub id: String,
    pub name: String,
    pub debug: u8,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub secret: Vec<u8>,
    pub channel_device: Option<String>,
    pub disk_label: String,
    pub disk_wait_ms: u64,
    pub stop_grace_ms: u64,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    /// `NAME:ADDR` entries (docker's ExtraHosts), appended to /etc/hosts in order.
    pub extra_hosts: Vec<String>,
    /// The vNICs, keyed by network name (`crate::network`); none: only `lo`.
    pub networks: BTreeMap<String, NetworkEndpoint>,
    /// Sessions started at boot; the one keyed by the container id is the main session.
    pub sessions: BTreeMap<String, SessionSpec>,
    /// Sessions declared as execs (started on request).
    pub execs: BTreeMap<String, SessionSpec>,
}

/// The documented defaults, no sessions: fill in at least `id`, `secret` and the main session.
impl Default for ContainerSpec {
    fn default() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            debug: 1,
            hostname: None,
            domainname: None,
            secret: Vec::new(),
            channel_device: None,
            disk_label: DEFAULT_DISK_LABEL.to_string(),
            disk_wait_ms: DEFAULT_DISK_WAIT_MS,
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            dns: Vec::new(),
            dns_search: Vec::new(),
            extra_hosts: Vec::new(),
            networks: BTreeMap::new(),
            sessions: BTreeMap::new(),
            execs: BTreeMap::new(),
        }
    }
}

impl ContainerSpec {
    pub fn main_session(&self) -> Option<&SessionSpec> {
        self.sessions.get(&self.id)
    }

    /// The hostname to set: `hostname[.domainname]`, else the first 12 characters of the id.
    pub fn effective_hostname(&self) -> String {
        let base = match &self.hostname {
            Some(h) if !h.is_empty() => h.clone(),
            _ => self.id.chars().take(12).collect(),
        };
        match &self.domainname {
            Some(d) if !d.is_empty() => format!("{base}.{d}"),
            _ => base,
        }
    }
}

fn root() -> KeyPath {
    KeyPath::read_only()
}

/// Decodes and validates a spec. Every error names the offending key and what to do.
pub fn decode(keys: &impl KeySource) -> Result<ContainerSpec, KeyError> {
    let r = root();
    let id = keys.required(r.field("common").field("id").as_str())?;
    let debug = keys
        .number::<u8>(r.field("diagnostics").field("debug").as_str())?
        .unwrap_or(1);
    let secret_key = r.field("channel").field("secret");
    let secret = keys
        .bytes(secret_key.as_str())?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| KeyError {
            key: secret_key.to_string(),
            problem: "required: the channel secret (base64) the appliance knows for this container"
                .into(),
        })?;
    let sessions = decode_sessions(keys, &r.field("sessions"))?;
    let execs = decode_sessions(keys, &r.field("execs"))?;
    let spec = ContainerSpec {
        name: keys
            .string(r.field("common").field("name").as_str())
            .unwrap_or_default(),
        debug: debug.min(3),
        hostname: keys.string(r.field("hostname").as_str()),
        domainname: keys.string(r.field("domainname").as_str()),
        secret,
        channel_device: keys.string(r.field("channel").field("device").as_str()),
        disk_label: keys
            .string(r.field("storage").field("label").as_str())
            .unwrap_or_else(|| DEFAULT_DISK_LABEL.to_string()),
        disk_wait_ms: keys
            .number(r.field("storage").field("wait").as_str())?
            .unwrap_or(DEFAULT_DISK_WAIT_MS),
        stop_grace_ms: keys
            .number(r.field("stop").field("grace").as_str())?
            .unwrap_or(DEFAULT_STOP_GRACE_MS),
        dns: keys.list(r.field("network").field("dns").as_str())?,
        dns_search: keys.list(r.field("network").field("search").as_str())?,
        extra_hosts: keys.list(r.field("network").field("hosts").as_str())?,
        networks: network::decode(keys, &r)?,
        sessions,
        execs,
        id,
    };
    if spec.main_session().is_none() {
        return Err(KeyError {
            key: r.field("sessions").to_string(),
            problem: format!(
                "no main session: the sessions map must have an entry keyed by the container id {:?}",
                spec.id
            ),
        });
    }
    Ok(spec)
}

fn decode_sessions(
    keys: &impl KeySource,
    map: &KeyPath,
) -> Result<BTreeMap<String, SessionSpec>, KeyError> {
    let mut out = BTreeMap::new();
    for id in keys.map_keys(map.as_str()) {
        let p = map.entry(&id);
        let cmd = p.field("cmd");
        let builtin_key = p.field("builtin");
        let builtin = keys.string(builtin_key.as_str()).unwrap_or_default();
        if !builtin.is_empty() && builtin != BUILTIN_HOLD {
            return Err(KeyError {
                key: builtin_key.to_string(),
                problem: format!(
                    "unknown built-in {builtin:?}: the only one is {BUILTIN_HOLD:?} (empty runs cmd/Path)"
                ),
            });
        }
        let path = if builtin.is_empty() {
            keys.required(cmd.field("Path").as_str())?
        } else {
            keys.string(cmd.field("Path").as_str()).unwrap_or_default()
        };
        let rlimits_key = p.field("rlimits");
        let rlimits = keys
            .list(rlimits_key.as_str())?
            .iter()
            .map(|t| Rlimit::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|problem| KeyError {
                key: format!("{rlimits_key}~"),
                problem,
            })?;
        let mut args = keys.list(cmd.field("Args").as_str())?;
        if args.is_empty() && !path.is_empty() {
            args.push(path.clone());
        }
        let session = SessionSpec {
            id: keys
                .string(p.field("common").field("id").as_str())
                .unwrap_or_else(|| id.clone()),
            name: keys
                .string(p.field("common").field("name").as_str())
                .unwrap_or_default(),
            path,
            args,
            env: keys.list(cmd.field("Env").as_str())?,
            dir: keys
                .string(cmd.field("Dir").as_str())
                .unwrap_or_else(|| "/".to_string()),
            user: keys.string(p.field("user").as_str()).unwrap_or_default(),
            group: keys.string(p.field("group").as_str()).unwrap_or_default(),
            tty: keys.bool(p.field("tty").as_str())?.unwrap_or(false),
            attach: keys.bool(p.field("attach").as_str())?.unwrap_or(false),
            open_stdin: keys.bool(p.field("openstdin").as_str())?.unwrap_or(false),
            restart: keys.bool(p.field("restart").as_str())?.unwrap_or(false),
            stop_signal: keys
                .string(p.field("stopSignal").as_str())
                .unwrap_or_else(|| "SIGTERM".to_string()),
            rlimits,
            cap_drop: keys.list(p.field("capdrop").as_str())?,
            rows: keys.number(p.field("rows").as_str())?.unwrap_or(0),
            cols: keys.number(p.field("cols").as_str())?.unwrap_or(0),
            builtin,
        };
        if session.id != id {
            return Err(KeyError {
                key: p.field("common").field("id").to_string(),
                problem: format!(
                    "session id {:?} differs from its map key {id:?}",
                    session.id
                ),
            });
        }
        out.insert(id, session);
    }
    Ok(out)
}

/// Encodes a spec as guestinfo key/value pairs (sorted by key).
pub fn encode(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let r = root();
    let mut w = KeyWriter::new();
    w.string(&r.field("common").field("id"), &spec.id);
    w.string(&r.field("common").field("name"), &spec.name);
    w.number(&r.field("diagnostics").field("debug"), spec.debug);
    w.optional(&r.field("hostname"), spec.hostname.as_deref());
    w.optional(&r.field("domainname"), spec.domainname.as_deref());
    w.bytes(&r.field("channel").field("secret"), &spec.secret);
    w.optional(
        &r.field("channel").field("device"),
        spec.channel_device.as_deref(),
    );
    w.string(&r.field("storage").field("label"), &spec.disk_label);
    w.number(&r.field("storage").field("wait"), spec.disk_wait_ms);
    w.number(&r.field("stop").field("grace"), spec.stop_grace_ms);
    w.list(&r.field("network").field("dns"), &spec.dns);
    w.list(&r.field("network").field("search"), &spec.dns_search);
    w.list(&r.field("network").field("hosts"), &spec.extra_hosts);
    network::encode(&mut w, &r, &spec.networks);
    encode_sessions(&mut w, &r.field("sessions"), &spec.sessions);
    encode_sessions(&mut w, &r.field("execs"), &spec.execs);
    w.into_pairs()
}

fn encode_sessions(w: &mut KeyWriter, map: &KeyPath, sessions: &BTreeMap<String, SessionSpec>) {
    let ids: Vec<&String> = sessions.keys().collect();
    w.map_keys(map, &ids);
    for (id, s) in sessions {
        let p = map.entry(id);
        let cmd = p.field("cmd");
        w.string(&p.field("common").field("id"), &s.id);
        w.string(&p.field("common").field("name"), &s.name);
        w.string(&cmd.field("Path"), &s.path);
        w.list(&cmd.field("Args"), &s.args);
        w.list(&cmd.field("Env"), &s.env);
        w.string(&cmd.field("Dir"), &s.dir);
        w.string(&p.field("user"), &s.user);
        w.string(&p.field("group"), &s.group);
        w.bool(&p.field("tty"), s.tty);
        w.bool(&p.field("attach"), s.attach);
        w.bool(&p.field("openstdin"), s.open_stdin);
        w.bool(&p.field("restart"), s.restart);
        w.string(&p.field("stopSignal"), &s.stop_signal);
        let rl: Vec<String> = s.rlimits.iter().map(Rlimit::render).collect();
        w.list(&p.field("rlimits"), &rl);
        w.list(&p.field("capdrop"), &s.cap_drop);
        w.number(&p.field("rows"), s.rows);
        w.number(&p.field("cols"), s.cols);
        w.string(&p.field("builtin"), &s.builtin);
    }
}
