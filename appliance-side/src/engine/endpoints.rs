//! A container's networks, from create to exit: at create, docker's NetworkMode,
//! EndpointsConfig and port flags become endpoints in the record (a user network's address
//! assigned here, as docker's IPAM does); at start, each endpoint becomes a NIC (QEMU's
//! user-mode network with `hostfwd` rules for the default network, a tap in the network's
//! namespace for a user network) and published ports are bound; at exit, all of it is let go.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use serde_json::Value;

use crate::backend::net::netns::namespace_path;
use crate::backend::net::proxy::{self, Proxy};
use crate::backend::{Nic, NicAttachment};
use crate::engine::networks::{DEFAULT_GATEWAY, DEFAULT_GUEST_IP};
use crate::engine::{Engine, EngineError};
use crate::store::atomic::{hex, random};
use crate::store::endpoints::{
    self, parse_host_ports, parse_port_key, port_key, Endpoint, PortBinding, Published,
};
use crate::store::networks::{NetworkRecord, DEFAULT_NETWORK, NONE_NETWORK};
use crate::store::records::{ContainerOptions, Record};

/// The PCI slot of a container's first NIC on the VM's root bus; the next NICs take the next
/// slots. Clear of what q35 and QEMU place themselves (slots 1..=7 for automatically placed
/// devices, 0x1f for the ICH9 functions).
pub const FIRST_NIC_SLOT: u32 = 0x10;

/// The PCI slot of a container's `index`th NIC.
pub fn nic_slot(index: usize) -> u32 {
    FIRST_NIC_SLOT + index as u32
}

/// What create's request says about networks and ports, checked and resolved.
pub struct NetworkRequest {
    pub network_mode: String,
    pub endpoints: Vec<Endpoint>,
    pub port_bindings: Vec<PortBinding>,
    pub publish_all: bool,
    pub exposed_ports: Vec<String>,
}

impl NetworkRequest {
    pub fn apply(self, o: &mut ContainerOptions) {
        o.network_mode = self.network_mode;
        o.endpoints = self.endpoints;
        o.port_bindings = self.port_bindings;
        o.publish_all = self.publish_all;
        o.exposed_ports = self.exposed_ports;
    }
}

/// docker's locally administered MAC for an address: 02:42 and the address's four bytes.
fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn random_mac() -> String {
    let r = random::<4>();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", r[0], r[1], r[2], r[3])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// `-p` and `--expose` from the request, EXPOSE from the image.
fn ports_from(
    body: &Value,
    image_exposed: &[String],
) -> Result<(Vec<PortBinding>, Vec<String>), EngineError> {
    let bad = EngineError::BadRequest;
    let mut exposed: BTreeSet<String> = BTreeSet::new();
    for key in image_exposed.iter().cloned().chain(
        body["ExposedPorts"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone()),
    ) {
        let (port, proto) = parse_port_key(&key).map_err(bad)?;
        exposed.insert(port_key(port, &proto));
    }
    let mut bindings = Vec::new();
    for (key, list) in body["HostConfig"]["PortBindings"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let (port, proto) = parse_port_key(key).map_err(bad)?;
        exposed.insert(port_key(port, &proto));
        let list = list.as_array().cloned().unwrap_or_default();
        for b in if list.is_empty() {
            vec![Value::Null]
        } else {
            list
        } {
            let host_ip = b["HostIp"].as_str().unwrap_or_default().to_string();
            if !host_ip.is_empty() && host_ip.parse::<Ipv4Addr>().is_err() {
                return Err(bad(format!(
                    "invalid host IP {host_ip:?} for port {key}: an IPv4 address (IPv6 is not supported yet)"
                )));
            }
            bindings.push(PortBinding {
                port,
                proto: proto.clone(),
                host_ip: if host_ip == "0.0.0.0" {
                    String::new()
                } else {
                    host_ip
                },
                host_ports: parse_host_ports(b["HostPort"].as_str().unwrap_or_default())
                    .map_err(bad)?,
            });
        }
    }
    Ok((bindings, exposed.into_iter().collect()))
}

impl Engine {
    /// The networks and ports of a create request: NetworkMode (`default`, `bridge`, `none`
    /// or a network), EndpointsConfig (more networks, `--ip`, `--network-alias`, a MAC), `-p`,
    /// `-P` and EXPOSE. Addresses on user networks are assigned here.
    pub fn network_request(
        &self,
        body: &Value,
        image_exposed: &[String],
    ) -> Result<NetworkRequest, EngineError> {
        let bad = EngineError::BadRequest;
        let h = &body["HostConfig"];
        let mode = h["NetworkMode"].as_str().unwrap_or_default().to_string();
        let configs = body["NetworkingConfig"]["EndpointsConfig"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let (port_bindings, exposed_ports) = ports_from(body, image_exposed)?;
        let publish_all = h["PublishAllPorts"].as_bool().unwrap_or(false);
        match mode.as_str() {
            "host" => {
                return Err(bad(
                    "--network host is not supported: a containerVM has a kernel of its own; publish ports with -p".into(),
                ))
            }
            m if m.starts_with("container:") => {
                return Err(bad(format!(
                    "--network {m} is not supported: containerVMs share no network stack"
                )))
            }
            _ => {}
        }
        // The networks in order: NetworkMode's first, then the others EndpointsConfig names.
        let first = match mode.as_str() {
            "" | "default" => DEFAULT_NETWORK.to_string(),
            m => m.to_string(),
        };
        let mut names = vec![first.clone()];
        names.extend(configs.keys().filter(|k| **k != first).cloned());
        if first == NONE_NETWORK {
            if names.len() > 1 {
                return Err(bad(
                    "container cannot be connected to other networks with --network none".into(),
                ));
            }
            return Ok(NetworkRequest {
                network_mode: mode,
                endpoints: Vec::new(),
                port_bindings,
                publish_all,
                exposed_ports,
            });
        }
        let _net = self.net.lock.lock().expect("network lock");
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let net = self.network(name)?;
            if net.name == NONE_NETWORK {
                return Err(bad(
                    "container cannot be connected to none and to other networks".into(),
                ));
            }
            if endpoints.iter().any(|e| e.network_id == net.id) {
                continue;
            }
            let cfg = configs.get(name).cloned().unwrap_or(Value::Null);
            let ep = self.new_endpoint(&net, &cfg, nic_slot(index), &endpoints)?;
            endpoints.push(ep);
        }
        Ok(NetworkRequest {
            network_mode: mode,
            endpoints,
            port_bindings,
            publish_all,
            exposed_ports,
        })
    }

    /// An endpoint on `net` for the NIC at `slot`; `siblings` are the container's endpoints so
    /// far. Called under the network lock (the addresses it assigns must stay unique).
    fn new_endpoint(
        &self,
        net: &NetworkRecord,
        cfg: &Value,
        slot: u32,
        siblings: &[Endpoint],
    ) -> Result<Endpoint, EngineError> {
        let bad = EngineError::BadRequest;
        let aliases = strings(&cfg["Aliases"]);
        let requested = cfg["IPAMConfig"]["IPv4Address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mac = cfg["MacAddress"].as_str().unwrap_or_default().to_string();
        let mut ep = Endpoint {
            network_id: net.id.clone(),
            network_name: net.name.clone(),
            endpoint_id: hex(&random::<32>()),
            aliases,
            requested_ip: requested.clone(),
            slot,
            ..Default::default()
        };
        if !net.is_user() {
            if !ep.aliases.is_empty() {
                return Err(bad(
                    "network-scoped alias is supported only for containers in user defined networks".into(),
                ));
            }
            if !requested.is_empty() {
                return Err(bad(
                    "user specified IP address is supported on user defined networks only".into(),
                ));
            }
            ep.gateway = DEFAULT_GATEWAY.into();
            ep.prefix_len = 24;
            ep.mac = if mac.is_empty() { random_mac() } else { mac };
            return Ok(ep);
        }
        let subnet = net
            .subnet()
            .ok_or_else(|| EngineError::Internal(format!("network {} has no subnet", net.name)))?;
        let gateway = net.gateway_ip().unwrap_or(subnet.host(1));
        let taken = self.addresses_on(net, siblings);
        let ip = if requested.is_empty() {
            let pool = net.pool().unwrap_or(subnet);
            (1..=pool.hosts())
                .map(|n| pool.host(n))
                .find(|ip| subnet.contains(*ip) && *ip != gateway && !taken.contains(ip))
                .ok_or_else(|| {
                    EngineError::Forbidden(format!(
                        "no available IPv4 addresses on network {}",
                        net.name
                    ))
                })?
        } else {
            let ip: Ipv4Addr = requested
                .parse()
                .map_err(|_| bad(format!("invalid IPv4 address: {requested}")))?;
            if !subnet.contains(ip) || ip == subnet.base || ip == subnet.broadcast() {
                return Err(bad(format!(
                    "invalid endpoint settings: user specified IP address {ip} is not in network {}'s subnet {subnet}",
                    net.name
                )));
            }
            if ip == gateway || taken.contains(&ip) {
                return Err(EngineError::Forbidden(format!(
                    "Address already in use: {ip} on network {}",
                    net.name
                )));
            }
            ip
        };
        ep.ip = ip.to_string();
        ep.prefix_len = subnet.prefix;
        ep.gateway = gateway.to_string();
        ep.mac = if mac.is_empty() { mac_for(ip) } else { mac };
        Ok(ep)
    }

    /// Every address given out on `net`: its containers' endpoints and `more`.
    fn addresses_on(&self, net: &NetworkRecord, more: &[Endpoint]) -> BTreeSet<Ipv4Addr> {
        self.containers()
            .iter()
            .flat_map(|r| r.options.endpoints.clone())
            .chain(more.iter().cloned())
            .filter(|e| e.network_id == net.id)
            .filter_map(|e| e.ip.parse().ok())
            .collect()
    }

    /// docker network connect, for a container whose VM is not running (a running VM would
    /// need its NIC hot-plugged, which is not done yet).
    pub fn network_connect(
        &self,
        reference: &str,
        container: &str,
        cfg: &Value,
    ) -> Result<(), EngineError> {
        let net = self.network(reference)?;
        let mut rec = self.resolve(container)?;
        if net.name == NONE_NETWORK || rec.options.network_mode == NONE_NETWORK {
            return Err(EngineError::BadRequest(format!(
                "container {} cannot be connected to network {}: a container on none has only lo",
                rec.name, net.name
            )));
        }
        if self.is_active(&rec.id) {
            return Err(EngineError::Conflict(format!(
                "container {} is running: connecting a running containerVM to a network is not supported yet (stop it, connect it, start it)",
                rec.name
            )));
        }
        let _net = self.net.lock.lock().expect("network lock");
        if rec.options.endpoints.iter().any(|e| e.network_id == net.id) {
            return Err(EngineError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, net.name
            )));
        }
        let slot = rec
            .options
            .endpoints
            .iter()
            .map(|e| e.slot + 1)
            .max()
            .unwrap_or(FIRST_NIC_SLOT);
        let cfg = if cfg.is_null() {
            Value::Null
        } else {
            cfg.clone()
        };
        let ep = self.new_endpoint(&net, &cfg, slot, &[])?;
        rec.options.endpoints.push(ep);
        crate::store::records::save(self.home(), &rec)?;
        Ok(())
    }

    /// docker network disconnect, for a container whose VM is not running.
    pub fn network_disconnect(&self, reference: &str, container: &str) -> Result<(), EngineError> {
        let net = self.network(reference)?;
        let mut rec = self.resolve(container)?;
        if self.is_active(&rec.id) {
            return Err(EngineError::Conflict(format!(
                "container {} is running: disconnecting a running containerVM is not supported yet (stop it first)",
                rec.name
            )));
        }
        let _net = self.net.lock.lock().expect("network lock");
        let before = rec.options.endpoints.len();
        rec.options.endpoints.retain(|e| e.network_id != net.id);
        if rec.options.endpoints.len() == before {
            return Err(EngineError::Forbidden(format!(
                "container {} is not connected to network {}",
                rec.id, net.name
            )));
        }
        crate::store::records::save(self.home(), &rec)?;
        Ok(())
    }

    /// The container's address on each network as tether reports it, else as assigned.
    pub fn endpoint_address(&self, rec: &Record, ep: &Endpoint) -> String {
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
                EngineError::NotFound(format!("network {} not found", ep.network_name))
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
                    EngineError::Internal("this appliance has no network plumbing".into())
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
                    if p.proto != "tcp" {
                        return Err(EngineError::BadRequest(format!(
                            "publishing {}/{} of a container on a user network is not supported (tcp only)",
                            p.port, p.proto
                        )));
                    }
                    let host_ip: IpAddr = p
                        .host_ip
                        .parse()
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                    let proxy = proxy::publish(
                        SocketAddr::new(host_ip, p.host_port),
                        ns.clone(),
                        SocketAddrV4::new(ip, p.port),
                    )
                    .await
                    .map_err(|e| {
                        EngineError::Internal(format!(
                            "driver failed programming external connectivity on endpoint {} ({}): failed to bind host port {}:{}/tcp: {e}",
                            rec.name, ep.endpoint_id, p.host_ip, p.host_port
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
            for pb in published.iter().filter(|p| p.proto == "tcp") {
                let host_ip: IpAddr = pb
                    .host_ip
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                match proxy::publish(
                    SocketAddr::new(host_ip, pb.host_port),
                    ns.clone(),
                    SocketAddrV4::new(ip, pb.port),
                )
                .await
                {
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

/// What [`Engine::plug`] made for one start.
#[derive(Default)]
pub(crate) struct Plugged {
    pub nics: Vec<Nic>,
    pub proxies: Vec<Proxy>,
    pub published: Vec<Published>,
}

/// The tap of a container in a user network's namespace: `tap` and 12 hex digits of its id
/// (15 bytes, the most an interface name holds).
fn tap_name(id: &str) -> String {
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
    use serde_json::json;

    #[test]
    fn published_ports_come_from_p_expose_and_the_image() {
        let body = json!({
            "ExposedPorts": {"9000/tcp": {}},
            "HostConfig": {"PortBindings": {
                "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}],
                "53/udp": [{"HostIp": "", "HostPort": ""}],
            }},
        });
        let (bindings, exposed) = ports_from(&body, &["443/tcp".into()]).unwrap();
        assert_eq!(exposed, ["443/tcp", "53/udp", "80/tcp", "9000/tcp"]);
        assert_eq!(
            bindings,
            [
                PortBinding {
                    port: 53,
                    proto: "udp".into(),
                    host_ip: "".into(),
                    host_ports: (0, 0)
                },
                PortBinding {
                    port: 80,
                    proto: "tcp".into(),
                    host_ip: "127.0.0.1".into(),
                    host_ports: (18080, 18080)
                },
            ]
        );
        let v6 = json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "::1", "HostPort": "1"}]}}});
        assert!(ports_from(&v6, &[]).is_err());
    }

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
        assert_eq!(mac_for(Ipv4Addr::new(172, 18, 0, 2)), "02:42:ac:12:00:02");
    }
}
