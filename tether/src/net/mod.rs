//! Container networks: each `networks|NAME` endpoint of the config is a vNIC found by its PCI
//! slot, renamed to the endpoint's interface name, brought up, given its static addresses and
//! routes (or a DHCPv4 lease, net/dhcp.rs), and put behind the firewall of its trust level
//! (net/firewall.rs). What each endpoint got goes to the appliance as `Control::Network` after
//! every change, and into /etc/hosts and /etc/resolv.conf (written by boot.rs's code).
//!
//! Every privileged call goes through [`ops::NetOs`]; the real one is netlink (net/netlink.rs).

pub mod dhcp;
pub mod firewall;
pub mod netlink;
pub mod nft;
pub mod ops;
pub mod runtime;
pub mod slot;

use std::io;
use std::net::IpAddr;

use guestinfo::{Cidr, ContainerSpec, NetworkEndpoint};
use thiserror::Error;

use crate::net::firewall::{EndpointRules, Ruleset};
use crate::net::ops::{Link, NetOs, Route};

#[derive(Debug, Error)]
pub enum NetError {
    /// The endpoint's vNIC is not where its PCI slot says.
    #[error("network {network:?}: {problem}; the VM has no NIC at the configured slot")]
    NicMissing { network: String, problem: String },
    #[error("network {network:?} ({interface}): {what}: {source}")]
    Setup {
        network: String,
        interface: String,
        what: String,
        source: io::Error,
    },
    #[error("firewall: {0}")]
    Firewall(io::Error),
}

/// One endpoint as it is configured now.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub network: String,
    pub spec: NetworkEndpoint,
    pub link: Link,
    /// The IPv4 address in use (static, or the lease's) and the gateway routed through.
    pub ipv4: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    /// The lease's nameservers and times, while there is a lease.
    pub lease_dns: Vec<IpAddr>,
    pub lease: Option<wire::Lease>,
    /// Empty while configured as asked; else what is missing (no DHCP lease yet, ...).
    pub error: String,
}

impl Endpoint {
    fn setup_error(&self, what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
        let (network, interface, what) =
            (self.network.clone(), self.link.name.clone(), what.into());
        move |source| NetError::Setup {
            network,
            interface,
            what,
            source,
        }
    }

    /// The routes an IPv4 address with `gateway` needs beyond its subnet's (which the kernel
    /// adds): the default route when this network is the default and not internal, and the
    /// network's destinations.
    fn routes4(&self, gateway: Option<IpAddr>) -> Vec<Route> {
        let Some(gw) = gateway else { return vec![] };
        let net = &self.spec.network;
        let mut out = Vec::new();
        if net.default && !self.spec.internal {
            out.push(Route {
                index: self.link.index,
                destination: Cidr {
                    addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    prefix: 0,
                },
                gateway: Some(gw),
            });
        }
        for d in net.destinations.iter().filter(|d| d.is_ipv4()) {
            out.push(Route {
                index: self.link.index,
                destination: d.network(),
                gateway: Some(gw),
            });
        }
        out
    }

    fn routes6(&self) -> Vec<Route> {
        let net = &self.spec.network;
        let Some(gw) = net.gateway6 else {
            return vec![];
        };
        let mut out = Vec::new();
        if net.default && !self.spec.internal {
            out.push(Route {
                index: self.link.index,
                destination: Cidr {
                    addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    prefix: 0,
                },
                gateway: Some(gw),
            });
        }
        for d in net.destinations.iter().filter(|d| !d.is_ipv4()) {
            out.push(Route {
                index: self.link.index,
                destination: d.network(),
                gateway: Some(gw),
            });
        }
        out
    }
}

/// Finds, renames and brings up every endpoint's NIC, with its static addresses and routes;
/// DHCP endpoints come up without an IPv4 address (net/dhcp.rs gets one). Then the firewall.
/// A NIC missing at its slot fails the boot.
pub fn bring_up(os: &dyn NetOs, spec: &ContainerSpec) -> Result<Vec<Endpoint>, NetError> {
    let mut out = Vec::new();
    for (network, e) in &spec.networks {
        out.push(bring_up_one(os, network, e)?);
    }
    if !out.is_empty() {
        os.set_firewall(&ruleset(&out))
            .map_err(NetError::Firewall)?;
    }
    Ok(out)
}

/// One endpoint's NIC found at its slot, renamed, brought up, with its static addresses and
/// routes: at boot, and for a NIC hot-added later (net/runtime.rs).
pub fn bring_up_one(
    os: &dyn NetOs,
    network: &str,
    e: &NetworkEndpoint,
) -> Result<Endpoint, NetError> {
    let found = slot::interface_at(os, e.slot).map_err(|problem| NetError::NicMissing {
        network: network.to_string(),
        problem,
    })?;
    let mut ep = Endpoint {
        network: network.to_string(),
        spec: e.clone(),
        link: Link {
            index: 0,
            name: found.clone(),
            mac: [0; 6],
        },
        ipv4: None,
        gateway: None,
        lease_dns: vec![],
        lease: None,
        error: String::new(),
    };
    ep.link = os
        .link(&found)
        .map_err(ep.setup_error("reading the link"))?;
    if !e.interface.is_empty() && e.interface != found {
        os.rename(ep.link.index, &e.interface)
            .map_err(ep.setup_error(format!("renaming {found} to {}", e.interface)))?;
        ep.link.name = e.interface.clone();
    }
    os.set_up(ep.link.index)
        .map_err(ep.setup_error("bringing the link up"))?;
    for &a in &e.static_ipv6 {
        os.add_address(ep.link.index, a)
            .map_err(ep.setup_error(format!("adding {a}")))?;
    }
    for r in ep.routes6() {
        add_route(os, &ep, &r)?;
    }
    match e.static_ipv4 {
        Some(a) => {
            let gateway = e.network.gateway.map(|g| g.addr);
            set_ipv4(os, &mut ep, Some((a, gateway)))?;
        }
        None => ep.error = "DHCP: no lease yet".into(),
    }
    Ok(ep)
}

fn add_route(os: &dyn NetOs, ep: &Endpoint, r: &Route) -> Result<(), NetError> {
    os.add_route(r)
        .map_err(ep.setup_error(format!("adding the route to {}", r.destination)))
}

/// Moves the endpoint to IPv4 address `new` (address, gateway), or to none: the old address
/// and its routes go when they change, the new ones come, and a new address is announced with
/// a gratuitous ARP. The same address again is refreshed in place.
pub fn set_ipv4(
    os: &dyn NetOs,
    ep: &mut Endpoint,
    new: Option<(Cidr, Option<IpAddr>)>,
) -> Result<(), NetError> {
    let old = ep.ipv4.map(|a| (a, ep.gateway));
    if old != new {
        if let Some((a, gw)) = old {
            for r in ep.routes4(gw) {
                // Gone with the address already, or never added: nothing to undo.
                let _ = os.del_route(&r);
            }
            if new.map(|(n, _)| n) != Some(a) {
                os.del_address(ep.link.index, a)
                    .map_err(ep.setup_error(format!("removing {a}")))?;
            }
        }
    }
    ep.ipv4 = None;
    ep.gateway = None;
    let Some((a, gw)) = new else { return Ok(()) };
    os.add_address(ep.link.index, a)
        .map_err(ep.setup_error(format!("adding {a}")))?;
    ep.ipv4 = Some(a);
    ep.gateway = gw;
    for r in ep.routes4(gw) {
        add_route(os, ep, &r)?;
    }
    if old.map(|(o, _)| o) != Some(a) {
        if let IpAddr::V4(v4) = a.addr {
            if let Err(e) = os.announce(&ep.link, v4) {
                crate::log::warn(&format!("gratuitous ARP for {v4} on {}: {e}", ep.link.name));
            }
        }
    }
    Ok(())
}

/// The firewall for these endpoints.
pub fn ruleset(endpoints: &[Endpoint]) -> Ruleset {
    Ruleset {
        endpoints: endpoints
            .iter()
            .map(|ep| {
                let net = &ep.spec.network;
                let mut peers = net.pools.clone();
                if peers.is_empty() {
                    peers.extend(ep.ipv4);
                    peers.extend(ep.spec.static_ipv6.iter().copied());
                }
                EndpointRules {
                    interface: ep.link.name.clone(),
                    trust: net.trust,
                    ports: ep.spec.ports.clone(),
                    peers,
                    dhcp: ep.spec.is_dhcp(),
                }
            })
            .collect(),
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What each endpoint has now, for the appliance.
pub fn status(os: &dyn NetOs, endpoints: &[Endpoint]) -> Vec<wire::EndpointStatus> {
    endpoints
        .iter()
        .map(|ep| {
            let addresses = os.addresses(ep.link.index).unwrap_or_default();
            let text = |v4: bool| {
                addresses
                    .iter()
                    .filter(|a| a.is_ipv4() == v4)
                    .map(Cidr::to_string)
                    .collect()
            };
            wire::EndpointStatus {
                network: ep.network.clone(),
                interface: ep.link.name.clone(),
                mac: mac_text(ep.link.mac),
                ipv4: text(true),
                ipv6: text(false),
                gateway: ep.gateway.map(|g| g.to_string()),
                gateway6: ep.spec.network.gateway6.map(|g| g.to_string()),
                nameservers: endpoint_nameservers(ep),
                lease: ep.lease.clone(),
                error: ep.error.clone(),
            }
        })
        .collect()
}

/// An endpoint's own nameservers: the network's static ones, then the lease's.
fn endpoint_nameservers(ep: &Endpoint) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in ep.spec.network.nameservers.iter().chain(&ep.lease_dns) {
        let ns = ns.to_string();
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
    out
}

/// /etc/resolv.conf's nameservers: the container's own (`--dns`) and each network's static
/// ones first, then what DHCP gave; with none of those, the default route's gateway. At most
/// three (the resolver reads no more).
pub fn nameservers(spec: &ContainerSpec, endpoints: &[Endpoint]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |ns: String| {
        if !out.contains(&ns) {
            out.push(ns);
        }
    };
    spec.dns.iter().cloned().for_each(&mut push);
    for ep in endpoints {
        ep.spec
            .network
            .nameservers
            .iter()
            .for_each(|n| push(n.to_string()));
    }
    for ep in endpoints {
        ep.lease_dns.iter().for_each(|n| push(n.to_string()));
    }
    if out.is_empty() {
        let gateway = endpoints
            .iter()
            .filter(|ep| ep.spec.network.default)
            .chain(endpoints)
            .find_map(|ep| ep.gateway);
        out.extend(gateway.map(|g| g.to_string()));
    }
    out.truncate(3);
    out
}

/// /etc/hosts lines the networks add: each endpoint's address with the container's names and
/// its aliases on that network, then the network's peers.
pub fn hosts_lines(hostname: &str, endpoints: &[Endpoint]) -> Vec<(String, String)> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let mut names = vec![hostname.to_string()];
    if short != hostname {
        names.push(short.to_string());
    }
    let mut out = Vec::new();
    for ep in endpoints {
        let own = ep
            .ipv4
            .iter()
            .chain(&ep.spec.static_ipv6)
            .map(|a| a.addr.to_string());
        for addr in own {
            let mut all = names.clone();
            all.extend(ep.spec.network.aliases.iter().cloned());
            out.push((addr, all.join(" ")));
        }
    }
    for ep in endpoints {
        for peer in &ep.spec.network.hosts {
            if let Some((name, addr)) = peer.split_once(':') {
                out.push((addr.to_string(), name.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
