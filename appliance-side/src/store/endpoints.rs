//! A container's place on networks: its endpoints (kept in its record: the network, the NIC's
//! MAC and PCI slot, the address the engine assigned, aliases) and its published ports (what
//! `-p` asked for, in the record; what is bound while it runs, in `containers/<id>/ports.json`).

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::atomic::write_atomic;

pub const PORTS_FILE: &str = "ports.json";

/// One NIC of a container on one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    pub network_id: String,
    /// The network's name when the container joined it (what guestinfo's `networks|NAME` and
    /// docker's `Networks` key by).
    pub network_name: String,
    /// docker's EndpointID (64 hex digits).
    pub endpoint_id: String,
    /// `--network-alias`: more names peers resolve to this container.
    pub aliases: Vec<String>,
    /// `--ip`: the address the user asked for (configured statically in the guest).
    pub requested_ip: String,
    /// The address: assigned by the engine on a user network (reserved in its dnsmasq); on the
    /// default network QEMU's DHCP gives the guest its address, and this stays empty.
    pub ip: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac: String,
    /// The NIC's PCI slot on the VM's bus, where tether looks for it.
    pub slot: u32,
}

/// A `-p` request: `[host_ip:][host_port[-end]]:port[/proto]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortBinding {
    /// The container's port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    /// Empty: every address (docker's 0.0.0.0).
    pub host_ip: String,
    /// The host ports it may take, `(0, 0)` for any free one.
    pub host_ports: (u16, u16),
}

/// A port bound on the host while the container runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub port: u16,
    pub proto: String,
    pub host_ip: String,
    pub host_port: u16,
}

/// docker's `80/tcp` key of a port.
pub fn port_key(port: u16, proto: &str) -> String {
    format!("{port}/{proto}")
}

/// Parses docker's `80/tcp` (or `80`: tcp) form.
pub fn parse_port_key(key: &str) -> Result<(u16, String), String> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return Err(format!(
            "invalid proto {proto:?} in port {key:?}: tcp and udp are supported"
        ));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {key:?}: a number 1..65535"))?;
    Ok((port, proto))
}

/// Parses a HostPort value: empty (any), `N`, or `N-M`.
pub fn parse_host_ports(text: &str) -> Result<(u16, u16), String> {
    let text = text.trim();
    if text.is_empty() || text == "0" {
        return Ok((0, 0));
    }
    let num = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid host port {text:?}: a number 1..65535 or a range N-M"))
    };
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (num(lo)?, num(hi)?),
        None => (num(text)?, num(text)?),
    };
    if lo > hi {
        return Err(format!("invalid host port range {text:?}"));
    }
    Ok((lo, hi))
}

/// The ports bound for a running container (none if it never published any).
pub fn load_published(dir: &Path) -> Vec<Published> {
    std::fs::read(dir.join(PORTS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save_published(dir: &Path, ports: &[Published]) -> io::Result<()> {
    write_atomic(
        &dir.join(PORTS_FILE),
        &serde_json::to_vec(ports).map_err(io::Error::from)?,
    )
}

pub fn clear_published(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PORTS_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_docker_writes_them() {
        assert_eq!(parse_port_key("80/tcp").unwrap(), (80, "tcp".into()));
        assert_eq!(parse_port_key("53/UDP").unwrap(), (53, "udp".into()));
        assert_eq!(parse_port_key("8080").unwrap(), (8080, "tcp".into()));
        assert!(parse_port_key("80/sctp").unwrap_err().contains("sctp"));
        assert!(parse_port_key("0/tcp").is_err());
        assert_eq!(parse_host_ports("").unwrap(), (0, 0));
        assert_eq!(parse_host_ports("18080").unwrap(), (18080, 18080));
        assert_eq!(parse_host_ports("8000-8010").unwrap(), (8000, 8010));
        assert!(parse_host_ports("9-1").is_err());
        assert!(parse_host_ports("http").is_err());
    }
}
