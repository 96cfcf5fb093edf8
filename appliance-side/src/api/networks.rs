//! `/networks/...` (create, ls, inspect, rm, prune, connect, disconnect) and the network parts
//! of a container's inspect and ps: NetworkSettings, the port maps `docker port` reads.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use crate::api::http::{json_response, no_content, ApiError};
use crate::api::{Api, ApiResponse};
use crate::store::endpoints::{parse_port_key, port_key, Endpoint};
use crate::store::networks::{NetworkRecord, DEFAULT_NETWORK};
use crate::store::records::Record;

fn respond(r: Result<Value, crate::engine::EngineError>, status: StatusCode) -> ApiResponse {
    match r {
        Ok(v) => json_response(status, &v),
        Err(e) => ApiError::from(e).into_response(),
    }
}

impl Api {
    /// A network as docker's `network inspect` (with its running containers) and `network ls`
    /// (without) show it.
    fn network_json(&self, net: &NetworkRecord, with_containers: bool) -> Value {
        let mut containers = Map::new();
        if with_containers {
            for (rec, ep) in self.engine.network_members(net) {
                let ip = self.engine.endpoint_address(&rec, &ep);
                containers.insert(
                    rec.id.clone(),
                    json!({
                        "Name": rec.name,
                        "EndpointID": ep.endpoint_id,
                        "MacAddress": ep.mac,
                        "IPv4Address": if ip.is_empty() { String::new() } else { format!("{ip}/{}", ep.prefix_len) },
                        "IPv6Address": "",
                    }),
                );
            }
        }
        let mut config = Map::new();
        if !net.subnet.is_empty() {
            config.insert("Subnet".into(), json!(net.subnet));
            config.insert("Gateway".into(), json!(net.gateway));
            if !net.ip_range.is_empty() {
                config.insert("IPRange".into(), json!(net.ip_range));
            }
        }
        json!({
            "Name": net.name,
            "Id": net.id,
            "Created": net.created,
            "Scope": "local",
            "Driver": net.driver,
            "EnableIPv4": !net.subnet.is_empty(),
            "EnableIPv6": false,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": if config.is_empty() { vec![] } else { vec![Value::Object(config)] },
            },
            "Internal": net.internal,
            "Attachable": net.attachable,
            "Ingress": false,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": false,
            "Containers": containers,
            "Options": net.options,
            "Labels": net.labels,
        })
    }

    pub(crate) fn network_list(&self, q: &HashMap<String, String>) -> ApiResponse {
        let filters = q.get("filters").map_or("", String::as_str);
        respond(
            self.engine.network_list(filters).map(|nets| {
                Value::Array(nets.iter().map(|n| self.network_json(n, false)).collect())
            }),
            StatusCode::OK,
        )
    }

    pub(crate) fn network_inspect(&self, reference: &str) -> ApiResponse {
        respond(
            self.engine
                .network(reference)
                .map(|n| self.network_json(&n, true)),
            StatusCode::OK,
        )
    }

    pub(crate) fn network_create(&self, body: &Value) -> ApiResponse {
        respond(
            self.engine
                .network_create(body)
                .map(|n| json!({"Id": n.id, "Warning": ""})),
            StatusCode::CREATED,
        )
    }

    pub(crate) fn network_remove(&self, reference: &str) -> ApiResponse {
        match self.engine.network_remove(reference) {
            Ok(()) => no_content(),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    pub(crate) fn network_prune(&self, q: &HashMap<String, String>) -> ApiResponse {
        let filters = q.get("filters").map_or("", String::as_str);
        respond(
            self.engine
                .network_prune(filters)
                .map(|names| json!({"NetworksDeleted": names})),
            StatusCode::OK,
        )
    }

    pub(crate) async fn network_connect(&self, reference: &str, body: &Value) -> ApiResponse {
        let container = body["Container"].as_str().unwrap_or_default();
        match self
            .engine
            .connect(reference, container, &body["EndpointConfig"])
            .await
        {
            Ok(()) => json_response(StatusCode::OK, &Value::Null),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    pub(crate) async fn network_disconnect(&self, reference: &str, body: &Value) -> ApiResponse {
        let container = body["Container"].as_str().unwrap_or_default();
        match self.engine.disconnect(reference, container).await {
            Ok(()) => json_response(StatusCode::OK, &Value::Null),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    /// docker's `NetworkSettings.Networks[NAME]` of one endpoint.
    fn endpoint_json(&self, rec: &Record, ep: &Endpoint, active: bool) -> Value {
        let ip = if active {
            self.engine.endpoint_address(rec, ep)
        } else {
            String::new()
        };
        let live = |s: &str| if active { s.to_string() } else { String::new() };
        let reported = self.engine.reported(rec, ep).filter(|_| active);
        let mac = reported
            .as_ref()
            .map(|r| r.mac.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| ep.mac.clone());
        let gateway = reported
            .as_ref()
            .map(|r| r.gateway.clone())
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| ep.gateway.clone());
        let prefix = reported
            .as_ref()
            .map(|r| r.prefix_len)
            .filter(|p| *p > 0)
            .unwrap_or(ep.prefix_len);
        let mut dns_names = Vec::new();
        if ep.network_name != DEFAULT_NETWORK {
            dns_names.push(rec.name.clone());
            dns_names.extend(ep.aliases.iter().cloned());
            dns_names.push(rec.id[..12].to_string());
        }
        json!({
            "IPAMConfig": if ep.requested_ip.is_empty() { Value::Null } else { json!({"IPv4Address": ep.requested_ip}) },
            "Links": null,
            "Aliases": if ep.aliases.is_empty() { Value::Null } else { json!(ep.aliases) },
            "MacAddress": mac,
            "DriverOpts": null,
            "NetworkID": ep.network_id,
            "EndpointID": live(&ep.endpoint_id),
            "Gateway": if ip.is_empty() { String::new() } else { gateway },
            "IPAddress": ip,
            "IPPrefixLen": if active { prefix } else { 0 },
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": if dns_names.is_empty() { Value::Null } else { json!(dns_names) },
        })
    }

    /// `docker inspect`'s NetworkSettings: one entry per network, the ports (every exposed
    /// port, with its host bindings while running), and the top-level address fields, which
    /// docker fills for the default network only.
    pub(crate) fn network_settings(&self, rec: &Record) -> Value {
        let active = self.engine.is_active(&rec.id);
        let mut networks = Map::new();
        for ep in &rec.options.endpoints {
            networks.insert(ep.network_name.clone(), self.endpoint_json(rec, ep, active));
        }
        if rec.options.endpoints.is_empty() && rec.options.network_mode == "none" {
            networks.insert(
                "none".into(),
                json!({"NetworkID": self.engine.network("none").map(|n| n.id).unwrap_or_default(),
                       "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0,
                       "MacAddress": "", "Aliases": null, "IPAMConfig": null, "Links": null}),
            );
        }
        let mut settings = json!({
            "Bridge": "",
            "SandboxID": "",
            "SandboxKey": "",
            "HairpinMode": false,
            "Ports": if active { self.port_map(rec) } else { json!({}) },
            "EndpointID": "",
            "Gateway": "",
            "IPAddress": "",
            "IPPrefixLen": 0,
            "MacAddress": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPv6Gateway": "",
            "Networks": networks,
        });
        if let Some(Value::Object(bridge)) = settings["Networks"].get(DEFAULT_NETWORK).cloned() {
            for k in [
                "EndpointID",
                "Gateway",
                "IPAddress",
                "IPPrefixLen",
                "MacAddress",
            ] {
                if let Some(v) = bridge.get(k) {
                    settings[k] = v.clone();
                }
            }
        }
        settings
    }

    /// `{"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}], "443/tcp": null}`.
    fn port_map(&self, rec: &Record) -> Value {
        let mut ports = Map::new();
        for key in &rec.options.exposed_ports {
            ports.insert(key.clone(), Value::Null);
        }
        for p in self.engine.published(rec) {
            let entry = ports
                .entry(port_key(p.port, &p.proto))
                .or_insert_with(|| json!([]));
            if entry.is_null() {
                *entry = json!([]);
            }
            if let Value::Array(list) = entry {
                let ip = if p.host_ip.is_empty() {
                    "0.0.0.0"
                } else {
                    p.host_ip.as_str()
                };
                list.push(json!({"HostIp": ip, "HostPort": p.host_port.to_string()}));
            }
        }
        Value::Object(ports)
    }

    /// `docker ps`'s Ports and NetworkSettings of a container.
    pub(crate) fn ps_network(&self, rec: &Record) -> Value {
        let active = self.engine.is_active(&rec.id);
        let mut ports: Vec<Value> = Vec::new();
        for p in self.engine.published(rec) {
            let ip = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                p.host_ip.as_str()
            };
            ports.push(json!({"IP": ip, "PrivatePort": p.port, "PublicPort": p.host_port, "Type": p.proto}));
        }
        if active {
            for key in &rec.options.exposed_ports {
                let Ok((port, proto)) = parse_port_key(key) else {
                    continue;
                };
                if !ports
                    .iter()
                    .any(|p| p["PrivatePort"] == port && p["Type"] == proto)
                {
                    ports.push(json!({"PrivatePort": port, "Type": proto}));
                }
            }
        }
        let mut networks = Map::new();
        for ep in &rec.options.endpoints {
            networks.insert(ep.network_name.clone(), self.endpoint_json(rec, ep, active));
        }
        json!({
            "Ports": ports,
            "HostConfig": {"NetworkMode": network_mode(rec)},
            "NetworkSettings": {"Networks": networks},
        })
    }
}

/// docker's HostConfig.NetworkMode of a container.
pub(crate) fn network_mode(rec: &Record) -> String {
    match rec.options.network_mode.as_str() {
        "" => "default".into(),
        m => m.to_string(),
    }
}

/// docker's HostConfig.PortBindings of a container: what `-p` asked for.
pub(crate) fn port_bindings_json(rec: &Record) -> Value {
    let mut map = Map::new();
    for b in &rec.options.port_bindings {
        let entry = map
            .entry(port_key(b.port, &b.proto))
            .or_insert_with(|| json!([]));
        if let Value::Array(list) = entry {
            let port = match b.host_ports {
                (0, 0) => String::new(),
                (lo, hi) if lo == hi => lo.to_string(),
                (lo, hi) => format!("{lo}-{hi}"),
            };
            list.push(json!({"HostIp": b.host_ip, "HostPort": port}));
        }
    }
    Value::Object(map)
}
