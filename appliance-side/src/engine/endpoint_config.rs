//! A container's networks at create: docker's NetworkMode, EndpointsConfig (more networks,
//! `--ip`, `--network-alias`, a MAC) and port flags (`-p`, `-P`, `--expose`, the image's EXPOSE)
//! become endpoints in its record, a user network's address assigned here as docker's IPAM does;
//! and `docker network connect/disconnect` of a container that is not running.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::engine::json::string_list;
use crate::engine::networks::DEFAULT_GATEWAY;
use crate::engine::{Engine, EngineError};
use crate::store::atomic::{hex, random};
use crate::store::endpoints::{parse_host_ports, parse_port_key, port_key, Endpoint, PortBinding};
use crate::store::networks::{NetworkRecord, DEFAULT_NETWORK, NONE_NETWORK};
use crate::store::records::{ContainerOptions, Record};

/// NICs a containerVM can have (on QEMU, root-bus slots 0x08 to 0x10).
pub const MAX_NICS: usize = 9;

impl Engine {
    /// The PCI slot (VMware's `pciSlotNumber` encoding) of a container's `index`th NIC: where
    /// the backend puts it, so the guestinfo and the VM agree.
    pub fn nic_slot(&self, index: usize) -> u32 {
        match &self.backend {
            Some(b) => b.nic_slot(index),
            None => crate::backend::ROOT_BUS_FIRST_NIC_SLOT + index as u32,
        }
    }

    /// The container's endpoints with each at the slot of its place: a boot's NICs are the
    /// endpoints in order, whatever slots an earlier disconnect or another backend left.
    pub(crate) fn slots_by_place(&self, rec: &mut Record) {
        for (index, ep) in rec.options.endpoints.iter_mut().enumerate() {
            ep.slot = self.nic_slot(index);
        }
    }
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

/// An endpoint on a network that did not exist at create: bound at start.
fn pending_endpoint(name: &str, cfg: &Value, slot: u32) -> Endpoint {
    Endpoint {
        network_name: name.to_string(),
        aliases: string_list(&cfg["Aliases"]),
        requested_ip: cfg["IPAMConfig"]["IPv4Address"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        mac: cfg["MacAddress"].as_str().unwrap_or_default().to_string(),
        slot,
        ..Default::default()
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
        // The CLI keys the default network's endpoint config `default`, as its NetworkMode.
        let configs: serde_json::Map<String, Value> = body["NetworkingConfig"]["EndpointsConfig"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let k = if k == "default" { DEFAULT_NETWORK } else { k };
                (k.to_string(), v.clone())
            })
            .collect();
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
        if names.len() > MAX_NICS {
            return Err(bad(format!(
                "a containerVM can be on at most {MAX_NICS} networks ({} given)",
                names.len()
            )));
        }
        let _net = self.net.lock.lock().expect("network lock");
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let cfg = configs.get(name).cloned().unwrap_or(Value::Null);
            // As dockerd: a network that does not exist (yet) is no error at create; the
            // start that needs it fails (`bind_endpoints`).
            let net = match self.network(name) {
                Ok(net) => net,
                Err(EngineError::NotFound(_)) => {
                    endpoints.push(pending_endpoint(name, &cfg, self.nic_slot(index)));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if net.name == NONE_NETWORK {
                return Err(bad(
                    "container cannot be connected to none and to other networks".into(),
                ));
            }
            if endpoints.iter().any(|e| e.network_id == net.id) {
                continue;
            }
            let ep = self.new_endpoint(&net, &cfg, self.nic_slot(index), &endpoints)?;
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
    pub(crate) fn new_endpoint(
        &self,
        net: &NetworkRecord,
        cfg: &Value,
        slot: u32,
        siblings: &[Endpoint],
    ) -> Result<Endpoint, EngineError> {
        let bad = EngineError::BadRequest;
        let aliases = string_list(&cfg["Aliases"]);
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

    /// Before a start: every endpoint on a network that exists, with its address. One made for
    /// a network missing at create, or whose network was removed and made again, is bound to
    /// the network of that name now; a network that does not exist fails the start with
    /// dockerd's words. The record is saved when anything changed.
    pub(crate) fn bind_endpoints(&self, rec: &Record) -> Result<Record, EngineError> {
        let unbound =
            |e: &Endpoint| e.network_id.is_empty() || self.network(&e.network_id).is_err();
        if !rec.options.endpoints.iter().any(unbound) {
            return Ok(rec.clone());
        }
        let _net = self.net.lock.lock().expect("network lock");
        let mut rec = rec.clone();
        let mut bound: Vec<Endpoint> = Vec::new();
        for ep in &rec.options.endpoints {
            if !unbound(ep) {
                bound.push(ep.clone());
                continue;
            }
            let net = self.network(&ep.network_name).map_err(|_| {
                EngineError::NotFound(format!(
                    "failed to set up container networking: network {} not found",
                    ep.network_name
                ))
            })?;
            let cfg = json!({
                "Aliases": ep.aliases,
                "IPAMConfig": {"IPv4Address": ep.requested_ip},
                "MacAddress": if ep.network_id.is_empty() { ep.mac.clone() } else { String::new() },
            });
            let mut fresh = self.new_endpoint(&net, &cfg, ep.slot, &bound)?;
            fresh.slot = ep.slot;
            bound.push(fresh);
        }
        rec.options.endpoints = bound;
        crate::store::records::save(self.home(), &rec)?;
        Ok(rec)
    }

    /// docker network connect, for a container whose VM is not running (`Engine::connect`
    /// hot-plugs a running one's NIC and comes here for the rest).
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
                "container {} started while it was being connected to a network: run docker network connect again",
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
        let index = rec.options.endpoints.len();
        if index >= MAX_NICS {
            return Err(EngineError::BadRequest(format!(
                "a containerVM can be on at most {MAX_NICS} networks"
            )));
        }
        let cfg = if cfg.is_null() {
            Value::Null
        } else {
            cfg.clone()
        };
        let ep = self.new_endpoint(&net, &cfg, self.nic_slot(index), &[])?;
        rec.options.endpoints.push(ep);
        crate::store::records::save(self.home(), &rec)?;
        Ok(())
    }

    /// docker network disconnect, for a container whose VM is not running (`Engine::disconnect`
    /// hot-unplugs a running one's NIC).
    pub fn network_disconnect(&self, reference: &str, container: &str) -> Result<(), EngineError> {
        let net = self.network(reference)?;
        let mut rec = self.resolve(container)?;
        if self.is_active(&rec.id) {
            return Err(EngineError::Conflict(format!(
                "container {} started while it was being disconnected from a network: run docker network disconnect again",
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
        // The NICs after it move up a place (tether names them by place, eth0, eth1, ...).
        self.slots_by_place(&mut rec);
        crate::store::records::save(self.home(), &rec)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn macs_are_dockers_for_the_address() {
        assert_eq!(mac_for(Ipv4Addr::new(172, 18, 0, 2)), "02:42:ac:12:00:02");
        assert!(random_mac().starts_with("02:42:"));
    }

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
}
