//! The plumbing of user networks on this host: each network is a Linux network namespace the
//! appliance creates (`tether-<first 12 hex of its id>`), holding a bridge `br0` with the
//! network's gateway address and a dnsmasq that answers DHCP (by reservation only) and DNS (the
//! containers' names and aliases). A containerVM joins with a tap opened inside the namespace
//! and handed to QEMU as a file descriptor ([`tap`]); published ports of such a container are
//! proxied from the host into the namespace ([`proxy`]). The engine decides what exists; this
//! module only makes the host match.

pub mod dnsmasq;
pub mod netns;
pub mod proxy;
pub mod tap;
pub mod udp_proxy;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::backend::BackendError;
use crate::store::networks::Subnet;

/// The bridge every user network's namespace holds.
pub const BRIDGE: &str = "br0";

/// What a user network's namespace must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePlan {
    pub id: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// dnsmasq's lease time in seconds (at least 120: dnsmasq's minimum).
    pub lease_secs: u32,
}

/// One address dnsmasq knows: reserved for `mac` (DHCP) and answered for `names` (DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Names the address resolves from; empty for a reservation without a name (a container
    /// that is not running).
    pub names: Vec<String>,
}

/// What the engine needs of a host's network plumbing (a fake in unit tests).
pub trait NetworkPlumbing: Send + Sync {
    /// Makes the network's namespace, bridge and dnsmasq exist (idempotent: an appliance
    /// restart finds them up and keeps them).
    fn up(&self, plan: &BridgePlan) -> Result<(), BackendError>;
    /// Stops the network's dnsmasq and deletes its namespace (idempotent).
    fn down(&self, net_id: &str);
    /// Replaces what dnsmasq reserves and answers, and tells it to reload.
    fn set_hosts(&self, net_id: &str, hosts: &[HostEntry]) -> Result<(), BackendError>;
    /// A tap named `ifname` on the network's bridge; the descriptor is QEMU's NIC backend.
    fn open_tap(&self, net_id: &str, ifname: &str) -> Result<OwnedFd, BackendError>;
    /// The namespace's name, for a socket made inside it ([`proxy`]).
    fn namespace(&self, net_id: &str) -> String;
}

/// The namespace of network `id`: `tether-` and 12 hex digits (ids are random, so homes side
/// by side never share one).
pub fn namespace_name(net_id: &str) -> String {
    format!("tether-{}", &net_id[..net_id.len().min(12)])
}
