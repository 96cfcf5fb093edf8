//! What tether reports about the container's network endpoints ([`crate::Control::Network`]).
//!
//! Addresses travel as text (`10.0.2.15/24`, `fe80::1/64`, `52:54:00:12:34:56`): the record is
//! small and rare, text is what `docker inspect` shows, and another implementation needs no
//! address codec to read it.

use serde::{Deserialize, Serialize};

/// One endpoint (one vNIC), as tether configured it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// The network's name: the key of the endpoint in the config's `networks` map.
    pub network: String,
    /// The interface's name in the guest (after the rename).
    pub interface: String,
    /// The interface's MAC address, lower-case hex with colons.
    pub mac: String,
    /// IPv4 addresses with their prefixes, `10.0.2.15/24`.
    pub ipv4: Vec<String>,
    /// IPv6 addresses with their prefixes (global and link-local).
    pub ipv6: Vec<String>,
    /// The IPv4 gateway in use through this interface, if any.
    pub gateway: Option<String>,
    pub gateway6: Option<String>,
    /// The nameservers this endpoint contributed to /etc/resolv.conf, in order.
    pub nameservers: Vec<String>,
    /// The DHCPv4 lease, when the IPv4 address came from DHCP.
    pub lease: Option<Lease>,
    /// Empty when configured; else what is missing or failed (e.g. no DHCP offer yet).
    pub error: String,
}

/// A DHCPv4 lease's times. `obtained_unix` is the guest's wall clock (set by the appliance's
/// `SetTime`) when the server acknowledged it; the rest are seconds after that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The DHCP server's address (its server identifier).
    pub server: String,
    pub obtained_unix: u64,
    /// Lease time: the address is valid for this long.
    pub lease_secs: u32,
    /// T1: when the client renews with its server.
    pub renew_secs: u32,
    /// T2: when the client rebinds with any server.
    pub rebind_secs: u32,
}
