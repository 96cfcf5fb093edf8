//! docker's networks: the predefined `bridge` (QEMU's user-mode network, one per VM) and `none`,
//! and user networks (`docker network create`), each a bridge in a network namespace of its own
//! with dnsmasq for addresses and names (`backend::net`). What the engine decides here: names,
//! subnets, who is connected; the plumbing makes the host match.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::backend::net::proxy::Proxy;
use crate::backend::net::{BridgePlan, HostEntry, NetworkPlumbing};
use crate::engine::filters::Filters;
use crate::engine::json::string_map;
use crate::engine::{Engine, EngineError};
use crate::store::endpoints::Endpoint;
use crate::store::networks::{self, NetworkRecord, Subnet, DEFAULT_NETWORK, NONE_NETWORK};
use crate::store::records::Record;

/// QEMU's user-mode network: every VM's own 10.0.2.0/24, its DHCP server handing out
/// 10.0.2.15, the gateway (and outbound NAT) at 10.0.2.2, DNS at 10.0.2.3.
pub const DEFAULT_SUBNET: &str = "10.0.2.0/24";
pub const DEFAULT_GATEWAY: &str = "10.0.2.2";
pub const DEFAULT_GUEST_IP: &str = "10.0.2.15";

/// dnsmasq's lease time unless `-o tether.dhcp.lease=SECONDS` says otherwise.
pub const DEFAULT_LEASE_SECS: u32 = 3600;
/// The driver option that sets it.
pub const LEASE_OPTION: &str = "tether.dhcp.lease";

/// The filters `docker network ls` may give.
const NETWORK_FILTERS: &[&str] = &["name", "id", "driver", "label", "type", "dangling"];

/// The engine's network state: one lock over every network and endpoint change, the host's
/// plumbing (absent in an engine that runs no VMs: then networks are records only), and the
/// userland proxies of running containers' published ports.
pub struct NetState {
    pub(crate) lock: Mutex<()>,
    pub(crate) plumbing: Option<Arc<dyn NetworkPlumbing>>,
    pub(crate) proxies: Mutex<HashMap<String, Vec<Proxy>>>,
}

impl NetState {
    pub fn new(plumbing: Option<Arc<dyn NetworkPlumbing>>) -> Self {
        Self {
            lock: Mutex::new(()),
            plumbing,
            proxies: Mutex::new(HashMap::new()),
        }
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn internal(e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(e.to_string())
}

impl From<networks::LookupError> for EngineError {
    fn from(e: networks::LookupError) -> Self {
        match e {
            networks::LookupError::NotFound(_) => Self::NotFound(e.to_string()),
            networks::LookupError::Ambiguous(..) => Self::BadRequest(e.to_string()),
        }
    }
}

/// The subnets docker's default address pools hand out to user networks, in order.
fn default_pools() -> impl Iterator<Item = Subnet> {
    let b = (18u8..=31).map(|n| Subnet {
        base: Ipv4Addr::new(172, n, 0, 0),
        prefix: 16,
    });
    let c = (0u8..16).map(|n| Subnet {
        base: Ipv4Addr::new(192, 168, n * 16, 0),
        prefix: 20,
    });
    b.chain(c)
}

/// The plan of a user network's namespace.
pub(crate) fn bridge_plan(net: &NetworkRecord) -> Result<BridgePlan, EngineError> {
    let subnet = net
        .subnet()
        .ok_or_else(|| internal(format!("network {} has no subnet", net.name)))?;
    let gateway = net
        .gateway_ip()
        .ok_or_else(|| internal(format!("network {} has no gateway", net.name)))?;
    Ok(BridgePlan {
        id: net.id.clone(),
        subnet,
        gateway,
        lease_secs: lease_secs(&net.options)?,
    })
}

fn lease_secs(options: &BTreeMap<String, String>) -> Result<u32, EngineError> {
    match options.get(LEASE_OPTION) {
        None => Ok(DEFAULT_LEASE_SECS),
        Some(v) => v.parse::<u32>().ok().filter(|s| *s >= 120).ok_or_else(|| {
            EngineError::BadRequest(format!(
                "-o {LEASE_OPTION}={v}: a lease time in seconds, at least 120 (dnsmasq's minimum)"
            ))
        }),
    }
}

impl Engine {
    /// `bridge` and `none` exist in every home (made once; their ids stay).
    pub(crate) fn ensure_predefined_networks(&self) {
        let have: Vec<String> = networks::list(self.home())
            .into_iter()
            .filter(|n| n.predefined)
            .map(|n| n.name)
            .collect();
        for (name, driver, subnet, gateway) in [
            (DEFAULT_NETWORK, "bridge", DEFAULT_SUBNET, DEFAULT_GATEWAY),
            (NONE_NETWORK, "null", "", ""),
        ] {
            if have.iter().any(|h| h == name) {
                continue;
            }
            let net = NetworkRecord {
                id: networks::new_id(),
                name: name.into(),
                driver: driver.into(),
                created: now(),
                subnet: subnet.into(),
                gateway: gateway.into(),
                ip_range: String::new(),
                internal: false,
                attachable: false,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                predefined: true,
            };
            if let Err(e) = networks::save(self.home(), &net) {
                tracing::warn!("cannot record the {name} network: {e}");
            }
        }
    }

    /// Every network, predefined first.
    pub fn networks(&self) -> Vec<NetworkRecord> {
        networks::list(self.home())
    }

    /// A network by id, name or unique id prefix.
    pub fn network(&self, reference: &str) -> Result<NetworkRecord, EngineError> {
        Ok(networks::resolve(self.home(), reference)?)
    }

    /// docker network create.
    pub fn network_create(&self, body: &Value) -> Result<NetworkRecord, EngineError> {
        let bad = EngineError::BadRequest;
        let name = body["Name"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(bad("a network needs a Name".into()));
        }
        if !valid_network_name(&name) {
            return Err(bad(format!(
                "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        match body["Driver"].as_str().unwrap_or("") {
            "" | "bridge" => {}
            other => {
                return Err(bad(format!(
                    "network driver {other:?} is not supported here: user networks are bridges (--driver bridge)"
                )))
            }
        }
        if body["EnableIPv6"].as_bool() == Some(true) {
            return Err(bad(
                "IPv6 networks are not supported yet: create the network without --ipv6".into(),
            ));
        }
        let options: BTreeMap<String, String> = string_map(&body["Options"]);
        lease_secs(&options)?;
        let _net = self.net.lock.lock().expect("network lock");
        let existing = self.networks();
        if existing.iter().any(|n| n.name == name) || name == "host" {
            return Err(EngineError::Conflict(format!(
                "network with name {name} already exists"
            )));
        }
        let configs = body["IPAM"]["Config"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if configs.len() > 1 {
            return Err(bad(
                "one IPAM config (one IPv4 subnet) per network is supported".into(),
            ));
        }
        let cfg = configs.first().cloned().unwrap_or(Value::Null);
        let taken: Vec<Subnet> = existing
            .iter()
            .filter(|n| n.is_user())
            .filter_map(NetworkRecord::subnet)
            .collect();
        let subnet = match cfg["Subnet"].as_str().filter(|s| !s.is_empty()) {
            Some(s) => {
                let s = Subnet::parse(s).map_err(bad)?;
                if let Some(t) = taken.iter().find(|t| t.overlaps(s)) {
                    return Err(EngineError::Forbidden(format!(
                        "Pool overlaps with other one on this address space ({s} and {t})"
                    )));
                }
                s
            }
            None => default_pools()
                .find(|p| !taken.iter().any(|t| t.overlaps(*p)))
                .ok_or_else(|| {
                    bad("all predefined address pools have been fully subnetted".into())
                })?,
        };
        let gateway = match cfg["Gateway"].as_str().filter(|s| !s.is_empty()) {
            Some(g) => {
                let ip: Ipv4Addr = g
                    .parse()
                    .map_err(|_| bad(format!("invalid gateway {g}: not an IPv4 address")))?;
                if !subnet.contains(ip) || ip == subnet.base || ip == subnet.broadcast() {
                    return Err(bad(format!(
                        "invalid gateway {g}: parent subnet {subnet} doesn't contain this address"
                    )));
                }
                ip
            }
            None => subnet.host(1),
        };
        let ip_range = match cfg["IPRange"].as_str().filter(|s| !s.is_empty()) {
            Some(r) => {
                let range = Subnet::parse(r).map_err(bad)?;
                if !subnet.contains(range.base) || range.prefix < subnet.prefix {
                    return Err(bad(format!(
                        "invalid ip-range {r}: parent subnet {subnet} doesn't contain ip-range"
                    )));
                }
                range.to_string()
            }
            None => String::new(),
        };
        let net = NetworkRecord {
            id: networks::new_id(),
            name,
            driver: "bridge".into(),
            created: now(),
            subnet: subnet.to_string(),
            gateway: gateway.to_string(),
            ip_range,
            internal: body["Internal"].as_bool().unwrap_or(false),
            attachable: body["Attachable"].as_bool().unwrap_or(false),
            labels: string_map(&body["Labels"]),
            options,
            predefined: false,
        };
        networks::save(self.home(), &net).map_err(internal)?;
        if let Some(p) = &self.net.plumbing {
            // Nothing half made stays: a network whose namespace cannot be made is removed.
            if let Err(e) = p.up(&bridge_plan(&net)?) {
                p.down(&net.id);
                let _ = networks::remove(self.home(), &net.id);
                return Err(internal(format!("creating network {}: {e}", net.name)));
            }
        }
        Ok(net)
    }

    /// The running containers with an endpoint on `net`, and those endpoints.
    pub fn network_members(&self, net: &NetworkRecord) -> Vec<(Record, Endpoint)> {
        self.containers()
            .into_iter()
            .filter(|r| self.is_active(&r.id))
            .filter_map(|r| {
                let ep = r
                    .options
                    .endpoints
                    .iter()
                    .find(|e| e.network_id == net.id)?
                    .clone();
                Some((r, ep))
            })
            .collect()
    }

    /// docker network rm.
    pub fn network_remove(&self, reference: &str) -> Result<(), EngineError> {
        let net = self.network(reference)?;
        if net.predefined {
            return Err(EngineError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                net.name
            )));
        }
        let _net = self.net.lock.lock().expect("network lock");
        let members = self.network_members(&net);
        if !members.is_empty() {
            let names: Vec<String> = members.iter().map(|(r, _)| r.name.clone()).collect();
            return Err(EngineError::Forbidden(format!(
                "error while removing network: network {} has active endpoints ({})",
                net.name,
                names.join(", ")
            )));
        }
        if let Some(p) = &self.net.plumbing {
            p.down(&net.id);
        }
        networks::remove(self.home(), &net.id).map_err(internal)
    }

    /// docker network prune: every user network without active endpoints; the names removed.
    pub fn network_prune(&self, filters: &str) -> Result<Vec<String>, EngineError> {
        let filters = Filters::parse_keys(filters, &["label", "until"])?;
        let mut removed = Vec::new();
        for net in self.networks().into_iter().filter(NetworkRecord::is_user) {
            if !filters
                .values("label")
                .iter()
                .all(|l| label_matches(&net, l))
            {
                continue;
            }
            match self.network_remove(&net.id) {
                Ok(()) => removed.push(net.name),
                Err(EngineError::Forbidden(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// docker network ls with its filters.
    pub fn network_list(&self, filters: &str) -> Result<Vec<NetworkRecord>, EngineError> {
        let f = Filters::parse_keys(filters, NETWORK_FILTERS)?;
        Ok(self
            .networks()
            .into_iter()
            .filter(|n| {
                let any = |key: &str, pred: &dyn Fn(&str) -> bool| {
                    let v = f.values(key);
                    v.is_empty() || v.iter().any(|x| pred(x))
                };
                any("name", &|v| n.name.contains(v))
                    && any("id", &|v| n.id.starts_with(v))
                    && any("driver", &|v| n.driver == v)
                    && any("label", &|v| label_matches(n, v))
                    && any("type", &|v| match v {
                        "builtin" => n.predefined,
                        "custom" => !n.predefined,
                        _ => false,
                    })
                    && any("dangling", &|v| {
                        let dangling = !n.predefined && self.network_members(n).is_empty();
                        matches!(v, "true" | "1") == dangling
                    })
            })
            .collect())
    }

    /// After an appliance restart: every user network's namespace, bridge and dnsmasq up
    /// again (kept as they were when they survived), its names as its running members give.
    pub(crate) fn restore_networks(&self) {
        let Some(p) = self.net.plumbing.clone() else {
            return;
        };
        for net in self.networks().into_iter().filter(NetworkRecord::is_user) {
            let up = bridge_plan(&net).and_then(|plan| p.up(&plan).map_err(internal));
            if let Err(e) = up.and_then(|()| self.refresh_hosts(&net, None)) {
                tracing::warn!(network = %net.name, "bringing the network back: {e}");
            }
        }
    }

    /// At `appliance serve`'s end: a user network none of whose containers runs is taken down
    /// (its namespace and dnsmasq); one with running containerVMs stays for them, and the next
    /// `serve` keeps it. Records stay: the next `serve` brings every network back.
    pub fn shutdown_networks(&self) {
        let Some(p) = self.net.plumbing.clone() else {
            return;
        };
        self.net.proxies.lock().expect("proxies lock").clear();
        for net in self.networks().into_iter().filter(NetworkRecord::is_user) {
            if self.network_members(&net).is_empty() {
                p.down(&net.id);
            }
        }
    }

    /// Rewrites what `net`'s dnsmasq reserves (every container's endpoint on it) and answers
    /// (the names of the active ones, and `joining`'s, which is starting).
    pub(crate) fn refresh_hosts(
        &self,
        net: &NetworkRecord,
        joining: Option<&str>,
    ) -> Result<(), EngineError> {
        let Some(p) = &self.net.plumbing else {
            return Ok(());
        };
        let mut hosts = Vec::new();
        for rec in self.containers() {
            let active = joining == Some(rec.id.as_str()) || self.is_active(&rec.id);
            for ep in rec
                .options
                .endpoints
                .iter()
                .filter(|e| e.network_id == net.id)
            {
                let Ok(ip) = ep.ip.parse() else { continue };
                let mut names = Vec::new();
                if active {
                    names.push(rec.name.clone());
                    names.extend(ep.aliases.iter().cloned());
                    names.push(rec.id[..12].to_string());
                }
                hosts.push(HostEntry {
                    ip,
                    mac: ep.mac.clone(),
                    names,
                });
            }
        }
        p.set_hosts(&net.id, &hosts).map_err(internal)
    }

    /// Whether the container's VM runs (or, for a VM this engine did not start, its state
    /// says running).
    pub(crate) fn is_active(&self, id: &str) -> bool {
        self.vms.pid(id).is_some()
            || self.state(id).status == crate::store::state::ContainerStatus::Running
    }
}

fn label_matches(n: &NetworkRecord, filter: &str) -> bool {
    match filter.split_once('=') {
        Some((k, want)) => n.labels.get(k).is_some_and(|x| x == want),
        None => n.labels.contains_key(filter),
    }
}

/// docker's rule for network names, as for container names.
fn valid_network_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}
