//! A container's endpoints as tether sees them: guestinfo's `networks|NAME` (the NIC's PCI slot,
//! static or DHCP, gateway, DNS, trust level, published ports), and back, what tether reported
//! it assigned (`state.json`'s `network`) as docker's inspect shows it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use guestinfo::network::{ContainerNetwork, NetworkEndpoint, PortRange, Protocol};
use guestinfo::{Cidr, PciSlot, TrustLevel};

use crate::engine::{Engine, EngineError};
use crate::store::endpoints::{parse_port_key, Endpoint};
use crate::store::records::Record;

fn cidr(ip: Ipv4Addr, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(ip),
        prefix,
    }
}

/// What tether said of one endpoint: its address and prefix, gateway and MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    pub ip: String,
    pub prefix_len: u8,
    pub gateway: String,
    pub mac: String,
}

impl Engine {
    /// The `networks` map of the container's guestinfo: one endpoint per NIC, at the slot
    /// QEMU's command line puts it (`qemu_args`), named `eth0`, `eth1`... in order. The
    /// first network's gateway is the default route. On a user network the address is DHCP
    /// from its dnsmasq (reserved for the NIC's MAC) unless `--ip` made it static; on the
    /// default network it is QEMU's DHCP.
    pub(crate) fn guest_networks(
        &self,
        rec: &Record,
    ) -> Result<BTreeMap<String, NetworkEndpoint>, EngineError> {
        let mut out = BTreeMap::new();
        let ports: Vec<PortRange> = self
            .ports_to_publish_keys(rec)
            .into_iter()
            .filter_map(|(port, proto)| {
                Some(PortRange {
                    first: port,
                    last: port,
                    protocol: match proto.as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return None,
                    },
                })
            })
            .collect();
        for (index, ep) in rec.options.endpoints.iter().enumerate() {
            let net = self.network(&ep.network_id).map_err(|_| {
                EngineError::NotFound(format!("network {} not found", ep.network_name))
            })?;
            let subnet = net.subnet();
            let gateway: Option<Ipv4Addr> = ep.gateway.parse().ok();
            let user = net.is_user();
            let static_ipv4 = match (ep.requested_ip.parse::<Ipv4Addr>(), subnet) {
                (Ok(ip), Some(s)) => Some(cidr(ip, s.prefix)),
                _ => None,
            };
            let network = ContainerNetwork {
                name: net.name.clone(),
                id: net.id.clone(),
                kind: net.driver.clone(),
                gateway: match (gateway, subnet) {
                    (Some(g), Some(s)) if user => Some(cidr(g, s.prefix)),
                    _ => None,
                },
                gateway6: None,
                default: index == 0 && !net.internal,
                destinations: Vec::new(),
                // A user network's dnsmasq answers for its containers' names.
                nameservers: match gateway {
                    Some(g) if user => vec![IpAddr::V4(g)],
                    _ => Vec::new(),
                },
                pools: subnet.map(|s| cidr(s.base, s.prefix)).into_iter().collect(),
                aliases: ep.aliases.clone(),
                hosts: Vec::new(),
                // docker lets peers on a user network reach every port; from outside only the
                // published ports come in (through the network's gateway, which is a peer).
                trust: if user {
                    TrustLevel::Peers
                } else {
                    TrustLevel::Published
                },
            };
            out.insert(
                net.name.clone(),
                NetworkEndpoint {
                    interface: format!("eth{index}"),
                    slot: PciSlot(ep.slot),
                    static_ipv4,
                    static_ipv6: Vec::new(),
                    network,
                    ports: ports.clone(),
                    internal: net.internal,
                },
            );
        }
        Ok(out)
    }

    /// The ports the container publishes, as `(port, proto)`.
    fn ports_to_publish_keys(&self, rec: &Record) -> Vec<(u16, String)> {
        let mut keys: Vec<(u16, String)> = rec
            .options
            .port_bindings
            .iter()
            .map(|b| (b.port, b.proto.clone()))
            .collect();
        if rec.options.publish_all {
            keys.extend(
                rec.options
                    .exposed_ports
                    .iter()
                    .filter_map(|k| parse_port_key(k).ok()),
            );
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// What tether last reported of the endpoint on `ep`'s network, if anything.
    pub fn reported(&self, rec: &Record, ep: &Endpoint) -> Option<Reported> {
        let st = self.state(&rec.id);
        let status = st.network.iter().find(|s| s.network == ep.network_name)?;
        let (ip, prefix) = status
            .ipv4
            .first()
            .and_then(|a| a.split_once('/'))
            .map(|(ip, p)| (ip.to_string(), p.parse().unwrap_or(0)))
            .unwrap_or_default();
        Some(Reported {
            ip,
            prefix_len: prefix,
            gateway: status.gateway.clone().unwrap_or_default(),
            mac: status.mac.clone(),
        })
    }
}
