//! A container's networks from start to exit (create's side is `endpoint_config`): at start,
//! each endpoint becomes a NIC (QEMU's user-mode network with `hostfwd` rules for the default
//! network, a tap in the network's namespace for a user network) and published ports are bound;
//! at exit, all of it is let go.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::net::netns::namespace_path;
use crate::backend::net::proxy::{self, Proxy};
use crate::backend::net::udp_proxy::{self, UdpLimits};
use crate::backend::{Nic, NicAttachment};
use crate::engine::networks::DEFAULT_GUEST_IP;
use crate::engine::{Engine, EngineError};
use crate::store::endpoints::{self, parse_port_key, Endpoint, PortBinding, Published};
use crate::store::networks::DEFAULT_NETWORK;
use crate::store::records::Record;

impl Engine {
    /// The container's address on each network as tether reports it, else as assigned.
    pub fn endpoint_address(&self, rec: &Record, ep: &Endpoint) -> String {
        if let Some(r) = self.reported(rec, ep).filter(|r| !r.ip.is_empty()) {
            return r.ip;
        }
        if !ep.ip.is_empty() {
            return ep.ip.clone();
        }
        // The default network: QEMU's DHCP gives every VM the same address.
        let running = self.is_active(&rec.id);
        if running && ep.network_name == DEFAULT_NETWORK {
            DEFAULT_GUEST_IP.into()
        } else {
            String::new()
        }
    }

    /// Makes the container's NICs and binds its published ports, before its VM is launched.
    /// Fails as dockerd does when a network is gone or a host port is taken; nothing stays
    /// bound then.
    pub(crate) async fn plug(&self, rec: &Record) -> Result<Plugged, EngineError> {
        let mut plugged = Plugged::default();
        let mut networks = Vec::new();
        for ep in &rec.options.endpoints {
            let net = self.network(&ep.network_id).map_err(|_| {
                EngineError::NotFound(format!(
                    "failed to set up container networking: network {} not found",
                    ep.network_name
                ))
            })?;
            networks.push((net, ep.clone()));
        }
        let wanted = self.ports_to_publish(rec);
        // Published through QEMU's hostfwd on the default network; else the userland proxy
        // into the first user network.
        let via_default = networks.iter().any(|(n, _)| !n.is_user());
        let mut taken: BTreeSet<(String, u16)> = BTreeSet::new();
        let first_ep = networks
            .first()
            .map(|(_, ep)| ep.clone())
            .unwrap_or_default();
        for b in &wanted {
            let host_port = pick_host_port(b, &taken).map_err(|e| {
                EngineError::Internal(format!(
                    "driver failed programming external connectivity on endpoint {} ({}): {e}",
                    rec.name, first_ep.endpoint_id
                ))
            })?;
            taken.insert((b.proto.clone(), host_port));
            plugged.published.push(Published {
                port: b.port,
                proto: b.proto.clone(),
                host_ip: b.host_ip.clone(),
                host_port,
            });
        }
        for (net, ep) in &networks {
            let attachment = if net.is_user() {
                let p = self.net.plumbing.clone().ok_or_else(|| {
                    EngineError::Internal(format!(
                        "network {} is a user-defined network, and this appliance's backend has no host plumbing for one (on vSphere: run the container on the default network, whose NICs are on the first --vsphere-network port group)",
                        net.name
                    ))
                })?;
                p.up(&crate::engine::networks::bridge_plan(net)?)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                self.refresh_hosts(net, Some(&rec.id))?;
                let tap = p
                    .open_tap(&net.id, &tap_name(&rec.id))
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                NicAttachment::Tap(Arc::new(tap))
            } else {
                let hostfwd = plugged
                    .published
                    .iter()
                    .map(|p| format!("{}:{}:{}-:{}", p.proto, p.host_ip, p.host_port, p.port))
                    .collect();
                NicAttachment::UserMode { hostfwd }
            };
            plugged.nics.push(Nic {
                slot: ep.slot,
                network: net.name.clone(),
                mac: ep.mac.clone(),
                attachment,
            });
        }
        if !via_default {
            if let Some((net, ep)) = networks.iter().find(|(n, _)| n.is_user()) {
                let ip: Ipv4Addr = ep.ip.parse().map_err(|_| {
                    EngineError::Internal(format!("endpoint on {} has no address", net.name))
                })?;
                let ns = self
                    .net
                    .plumbing
                    .as_ref()
                    .map(|p| namespace_path(&p.namespace(&net.id)))
                    .unwrap_or_default();
                for p in &plugged.published {
                    let proxy = publish(p, ns.clone(), ip).await.map_err(|e| {
                        EngineError::Internal(format!(
                            "driver failed programming external connectivity on endpoint {} ({}): failed to bind host port {}:{}/{}: {e}",
                            rec.name, ep.endpoint_id, p.host_ip, p.host_port, p.proto
                        ))
                    })?;
                    plugged.proxies.push(proxy);
                }
            }
        }
        Ok(plugged)
    }

    /// `-p` as given, and with `-P` every exposed port not bound otherwise (on any free port).
    fn ports_to_publish(&self, rec: &Record) -> Vec<PortBinding> {
        if rec.options.endpoints.is_empty() {
            return Vec::new();
        }
        let mut wanted = rec.options.port_bindings.clone();
        if rec.options.publish_all {
            for key in &rec.options.exposed_ports {
                let Ok((port, proto)) = parse_port_key(key) else {
                    continue;
                };
                if !wanted.iter().any(|b| b.port == port && b.proto == proto) {
                    wanted.push(PortBinding {
                        port,
                        proto,
                        host_ip: String::new(),
                        host_ports: (0, 0),
                    });
                }
            }
        }
        wanted
    }

    /// Once the VM runs: its proxies kept, its bound ports recorded for inspect and port.
    pub(crate) fn plugged(&self, rec: &Record, proxies: Vec<Proxy>, published: Vec<Published>) {
        let dir = self.home().container(&rec.id);
        if let Err(e) = endpoints::save_published(&dir, &published) {
            tracing::warn!(container = %rec.id, "recording its published ports: {e}");
        }
        if !proxies.is_empty() {
            self.net
                .proxies
                .lock()
                .expect("proxies lock")
                .insert(rec.id.clone(), proxies);
        }
    }

    /// After the VM ended: proxies stopped, ports released, its names gone from its networks.
    pub(crate) fn unplug(&self, rec: &Record) {
        self.net
            .proxies
            .lock()
            .expect("proxies lock")
            .remove(&rec.id);
        endpoints::clear_published(&self.home().container(&rec.id));
        self.refresh_networks_of(rec);
    }

    /// The names on each of the container's user networks, as its members stand now (called
    /// when its channel connects or its main process ends, too: a tether started by other
    /// means than `start` joins and leaves them so).
    pub(crate) fn refresh_networks_of(&self, rec: &Record) {
        for ep in &rec.options.endpoints {
            if let Ok(net) = self.network(&ep.network_id) {
                if net.is_user() {
                    if let Err(e) = self.refresh_hosts(&net, None) {
                        tracing::warn!(container = %rec.id, network = %net.name, "{e}");
                    }
                }
            }
        }
    }

    /// The ports bound now, while the container runs.
    pub fn published(&self, rec: &Record) -> Vec<Published> {
        if !self.is_active(&rec.id) {
            return Vec::new();
        }
        endpoints::load_published(&self.home().container(&rec.id))
    }

    /// After an appliance restart: the userland proxies of running containers again (QEMU's
    /// hostfwd rules live in QEMU and need nothing).
    pub(crate) async fn republish(&self) {
        for rec in self.containers() {
            if !self.is_active(&rec.id) {
                continue;
            }
            let published = endpoints::load_published(&self.home().container(&rec.id));
            let Some(ep) = rec
                .options
                .endpoints
                .first()
                .filter(|_| !published.is_empty())
            else {
                continue;
            };
            let Ok(net) = self.network(&ep.network_id) else {
                continue;
            };
            let (Some(p), Ok(ip)) = (self.net.plumbing.clone(), ep.ip.parse::<Ipv4Addr>()) else {
                continue;
            };
            if !net.is_user() {
                continue;
            }
            let ns = namespace_path(&p.namespace(&net.id));
            let mut proxies = Vec::new();
            for pb in &published {
                match publish(pb, ns.clone(), ip).await {
                    Ok(proxy) => proxies.push(proxy),
                    Err(e) => {
                        tracing::warn!(container = %rec.id, port = pb.host_port, "publishing again: {e}")
                    }
                }
            }
            self.net
                .proxies
                .lock()
                .expect("proxies lock")
                .insert(rec.id.clone(), proxies);
        }
    }
}

/// Serves published port `p` of a container at `ip` in the namespace at `ns`: through the TCP
/// or the UDP proxy, on its host address (all of them when none was given).
async fn publish(p: &Published, ns: PathBuf, ip: Ipv4Addr) -> std::io::Result<Proxy> {
    let host_ip: IpAddr = p
        .host_ip
        .parse()
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let host = SocketAddr::new(host_ip, p.host_port);
    let target = SocketAddrV4::new(ip, p.port);
    if p.proto == "udp" {
        udp_proxy::publish(host, ns, target, UdpLimits::default()).await
    } else {
        proxy::publish(host, ns, target).await
    }
}

/// What [`Engine::plug`] made for one start.
#[derive(Default)]
pub(crate) struct Plugged {
    pub nics: Vec<Nic>,
    pub proxies: Vec<Proxy>,
    pub published: Vec<Published>,
}

/// The tap of a container in a user network's namespace: `tap` and 12 hex digits of its id
/// (15 bytes, the most an interface name holds).
pub(crate) fn tap_name(id: &str) -> String {
    format!("tap{}", &id[..12])
}

/// A free host port for `b`: its own, or one of its range, or any (bound here to see that it
/// is free, then released for QEMU or the proxy to take).
fn pick_host_port(b: &PortBinding, taken: &BTreeSet<(String, u16)>) -> Result<u16, String> {
    let ip: Ipv4Addr = b.host_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let try_bind = |port: u16| -> std::io::Result<u16> {
        let addr = SocketAddrV4::new(ip, port);
        if b.proto == "udp" {
            std::net::UdpSocket::bind(addr)?
                .local_addr()
                .map(|a| a.port())
        } else {
            std::net::TcpListener::bind(addr)?
                .local_addr()
                .map(|a| a.port())
        }
    };
    let shown = if b.host_ip.is_empty() {
        "0.0.0.0"
    } else {
        b.host_ip.as_str()
    };
    match b.host_ports {
        (0, 0) => loop {
            let port = try_bind(0).map_err(|e| format!("failed to bind a host port: {e}"))?;
            if !taken.contains(&(b.proto.clone(), port)) {
                return Ok(port);
            }
        },
        (lo, hi) => {
            let mut last = None;
            for port in lo..=hi {
                if taken.contains(&(b.proto.clone(), port)) {
                    continue;
                }
                match try_bind(port) {
                    Ok(p) => return Ok(p),
                    Err(e) => last = Some(e),
                }
            }
            let why = last.map_or("port is already allocated".to_string(), |e| e.to_string());
            let ports = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            Err(format!(
                "failed to bind host port {shown}:{ports}/{}: {why}",
                b.proto
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_host_port_is_dockers_error_and_any_port_is_free() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let b = PortBinding {
            port: 80,
            proto: "tcp".into(),
            host_ip: "127.0.0.1".into(),
            host_ports: (port, port),
        };
        let e = pick_host_port(&b, &BTreeSet::new()).unwrap_err();
        assert!(
            e.starts_with(&format!("failed to bind host port 127.0.0.1:{port}/tcp: ")),
            "{e}"
        );
        let any = PortBinding {
            host_ports: (0, 0),
            ..b
        };
        let got = pick_host_port(&any, &BTreeSet::new()).unwrap();
        assert_ne!(got, port);
    }
}
