//! Network records (`$TETHER_HOME/networks/<id>/network.json`): what `docker network create`
//! made, kept so an appliance restart brings every network back. The directory also holds what
//! the network's plumbing writes (dnsmasq's files); this module only reads and writes the record.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::store::atomic::{hex, random, write_atomic};

pub const NETWORK_FILE: &str = "network.json";

/// docker's name of the network every `docker run` joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "bridge";
/// docker's name of the network without interfaces (only `lo`).
pub const NONE_NETWORK: &str = "none";

/// An IPv4 subnet, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/len`; the base must have no host bits (docker's "it should be ...").
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {text}: not a CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("invalid subnet {text}: only IPv4 subnets are supported"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("invalid subnet {text}: the prefix must be 0..=30"))?;
        let s = Self { base: addr, prefix };
        if s.masked() != s {
            return Err(format!(
                "invalid subnet {text}: it should be {}",
                s.masked()
            ));
        }
        Ok(s)
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn masked(self) -> Self {
        Self {
            base: Ipv4Addr::from(u32::from(self.base) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// The `n`th address of the subnet (`n` = 1 is the first host).
    pub fn host(self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }

    /// How many host addresses it has (network and broadcast excluded).
    pub fn hosts(self) -> u32 {
        (1u32 << (32 - self.prefix)).saturating_sub(2)
    }

    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !self.mask())
    }

    pub fn overlaps(self, other: Subnet) -> bool {
        self.contains(other.base) || other.contains(self.base)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// A network as docker's `network inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    /// `bridge` (the default network and user networks) or `null` (`none`).
    pub driver: String,
    /// RFC 3339.
    pub created: String,
    /// `a.b.c.d/len`; empty for `none`.
    pub subnet: String,
    pub gateway: String,
    /// Where dynamic addresses come from (docker's `--ip-range`); empty is the whole subnet.
    #[serde(default)]
    pub ip_range: String,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options (`-o`), as given.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// `bridge` and `none`: made by the appliance, never removed.
    #[serde(default)]
    pub predefined: bool,
}

impl NetworkRecord {
    pub fn subnet(&self) -> Option<Subnet> {
        Subnet::parse(&self.subnet).ok()
    }

    pub fn gateway_ip(&self) -> Option<Ipv4Addr> {
        self.gateway.parse().ok()
    }

    /// The range dynamic addresses are taken from.
    pub fn pool(&self) -> Option<Subnet> {
        Subnet::parse(&self.ip_range).ok().or_else(|| self.subnet())
    }

    /// A user network: a bridge in a network namespace of its own (not `bridge` or `none`).
    pub fn is_user(&self) -> bool {
        !self.predefined
    }
}

/// The directory of every network.
pub fn root(home: &Home) -> PathBuf {
    home.root().join("networks")
}

/// One network's directory: its record and its plumbing's files.
pub fn dir(home: &Home, id: &str) -> PathBuf {
    root(home).join(id)
}

/// A fresh network id: 64 hex digits, as docker's.
pub fn new_id() -> String {
    hex(&random::<32>())
}

/// Writes the record (creating its directory, 0700).
pub fn save(home: &Home, net: &NetworkRecord) -> io::Result<()> {
    let d = dir(home, &net.id);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)?;
    write_atomic(
        &d.join(NETWORK_FILE),
        &serde_json::to_vec_pretty(net).map_err(io::Error::from)?,
    )
}

pub fn load(home: &Home, id: &str) -> Option<NetworkRecord> {
    let bytes = std::fs::read(dir(home, id).join(NETWORK_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every network, oldest first (the predefined ones first of all).
pub fn list(home: &Home) -> Vec<NetworkRecord> {
    let mut out: Vec<NetworkRecord> = std::fs::read_dir(root(home))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| load(home, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| (!a.predefined, &a.created, &a.id).cmp(&(!b.predefined, &b.created, &b.id)));
    out
}

/// Why a reference names no one network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network {0} is ambiguous ({1} matches found based on ID prefix)")]
    Ambiguous(String, usize),
}

/// A network by full id, name, or unique id prefix: dockerd's order.
pub fn resolve(home: &Home, reference: &str) -> Result<NetworkRecord, LookupError> {
    let all = list(home);
    if let Some(n) = all.iter().find(|n| n.id == reference) {
        return Ok(n.clone());
    }
    if let Some(n) = all.iter().find(|n| n.name == reference) {
        return Ok(n.clone());
    }
    let prefixed: Vec<&NetworkRecord> =
        all.iter().filter(|n| n.id.starts_with(reference)).collect();
    match prefixed.as_slice() {
        [one] if !reference.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(LookupError::NotFound(reference.to_string())),
        many => Err(LookupError::Ambiguous(reference.to_string(), many.len())),
    }
}

/// Removes the record and everything in its directory (renamed away first, so a half-finished
/// removal never looks like a network).
pub fn remove(home: &Home, id: &str) -> io::Result<()> {
    let d = dir(home, id);
    let doomed = root(home).join(format!(".removing-{id}"));
    match std::fs::rename(&d, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::remove_dir_all(&doomed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn net(name: &str, predefined: bool) -> NetworkRecord {
        NetworkRecord {
            id: new_id(),
            name: name.into(),
            driver: "bridge".into(),
            created: "2024-01-01T00:00:00Z".into(),
            subnet: "172.18.0.0/16".into(),
            gateway: "172.18.0.1".into(),
            ip_range: String::new(),
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            predefined,
        }
    }

    #[test]
    fn subnets_parse_and_count_as_docker_checks_them() {
        let s = Subnet::parse("172.18.0.0/16").unwrap();
        assert_eq!(s.host(1), Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(172, 18, 255, 255));
        assert_eq!(s.hosts(), 65534);
        assert!(s.contains(Ipv4Addr::new(172, 18, 9, 9)));
        assert!(!s.contains(Ipv4Addr::new(172, 19, 0, 1)));
        let e = Subnet::parse("172.18.0.1/16").unwrap_err();
        assert!(e.contains("it should be 172.18.0.0/16"), "{e}");
        assert!(Subnet::parse("fd00::/64").is_err());
        assert!(Subnet::parse("10.0.0.0/31").is_err());
        assert!(s.overlaps(Subnet::parse("172.18.3.0/24").unwrap()));
        assert!(!s.overlaps(Subnet::parse("172.19.0.0/16").unwrap()));
    }

    #[test]
    fn records_persist_and_resolve_by_id_name_and_prefix() {
        let dir = TestDir::new("networks-store");
        let home = dir.home();
        let bridge = net(DEFAULT_NETWORK, true);
        let mine = net("mine", false);
        save(&home, &mine).unwrap();
        save(&home, &bridge).unwrap();
        let names: Vec<String> = list(&home).into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["bridge", "mine"], "predefined first");
        assert_eq!(resolve(&home, &mine.id).unwrap(), mine);
        assert_eq!(resolve(&home, "mine").unwrap(), mine);
        assert_eq!(resolve(&home, &mine.id[..12]).unwrap(), mine);
        assert_eq!(
            resolve(&home, "nope").unwrap_err().to_string(),
            "network nope not found"
        );
        assert!(resolve(&home, "").is_err());
        remove(&home, &mine.id).unwrap();
        assert!(resolve(&home, "mine").is_err());
        assert_eq!(list(&home).len(), 1);
    }
}
