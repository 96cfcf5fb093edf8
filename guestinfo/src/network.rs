//! A container's network endpoints, in VIC's `networks` layout (VIC's `NetworkEndpoint` and
//! `ContainerNetwork`, lib/config/executor/network_interface.go). All read-only, under
//! `guestinfo.vice./networks|NAME/`, where NAME is the network's name (docker's `bridge`, or a
//! user network's):
//!
//! | key | meaning |
//! |---|---|
//! | `networks` | the map's keys: the network names, one endpoint each |
//! | `…/common/id` | the vNIC's PCI slot in VMware's `pciSlotNumber` encoding (decimal, required): bits 0-4 device, 5-9 bus (0: the root bus, n: behind the bridge at slot 0x11 + n - 1), 10-12 function (see [`PciSlot`]) |
//! | `…/common/name` | the interface name in the guest (≤ 15 bytes, no `/`, no white space); empty keeps the kernel's name |
//! | `…/static` | `true`: `ip` is a static address; `false` (or absent with no `ip`): DHCPv4 |
//! | `…/ip` | the static IPv4 address with its prefix, `172.16.0.5/16` (`<nil>` for DHCP) |
//! | `…/ip6` | list: static IPv6 addresses with their prefixes (extension over VIC; none: the kernel's link-local and SLAAC) |
//! | `…/ports` | list: ports the trust level `published` lets in, `80/tcp`, `53/udp`, `8000-8010/tcp` (a bare number is tcp) |
//! | `…/internal` | `true`: the network has no way out: no default route through it (docker's `--internal`) |
//! | `…/network/common/name`, `…/network/common/id` | the network's name and its underlay's id |
//! | `…/network/type` | the network's kind, free text (`bridge`, `external`, …) |
//! | `…/network/gateway` | the IPv4 gateway with the network's prefix, `172.16.0.1/16` (VIC's form); `<nil>`: none, or DHCP's router |
//! | `…/network/gateway6` | the IPv6 gateway address (extension) |
//! | `…/network/default` | `true`: the gateway is the default route |
//! | `…/network/destinations` | list: CIDRs routed through the gateway when it is not the default route |
//! | `…/network/dns` | list: this network's nameservers (put before DHCP's in /etc/resolv.conf) |
//! | `…/network/pools` | list: the network's address ranges as CIDRs (the sources trust level `peers` lets in; none: the endpoint's own subnet) |
//! | `…/network/aliases` | list: this container's names on this network (`--network-alias`): /etc/hosts lines for its address |
//! | `…/network/hosts` | list: peers as `NAME:ADDR` (split at the first `:`), /etc/hosts lines (extension) |
//! | `…/network/trust` | `open`, `closed`, `outbound`, `peers` or `published` (absent: `published`, VIC's default) |
//!
//! VIC kept the trust level as a number and had no IPv6, peer or `ip6` keys; the names above are
//! VIC's where VIC had the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::keys::{KeyError, KeyPath, KeySource, KeyWriter};

/// The longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// An address with its prefix length: `10.0.0.5/24`, `fd00::5/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Self { addr, prefix })
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network address: the host bits cleared.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Self {
            addr,
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && Cidr {
                addr: ip,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} in {text:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} in {text:?} is not a prefix length"))?;
        Self::new(addr, prefix).map_err(|e| format!("{text:?}: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A vNIC's place on the PCI bus, in VMware's `pciSlotNumber` encoding (KB 2047927), which VIC's
/// `slotToPCIPath` reads: device in bits 0-4, bus in bits 5-9, function in bits 10-12. Bus 0 is
/// the root bus; bus n sits behind the PCI bridge at root slot 0x11 + n - 1, whose own function
/// is the slot's function (so bus 5 function 1 is behind 00:15.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciSlot(pub u32);

/// The first root-bus slot VMware puts a PCI bridge at (`pciBridge0.pciSlotNumber = 17`).
pub const FIRST_BRIDGE_SLOT: u32 = 0x11;

impl PciSlot {
    pub fn device(self) -> u32 {
        self.0 & 0x1f
    }

    pub fn bus(self) -> u32 {
        (self.0 >> 5) & 0x1f
    }

    pub fn function(self) -> u32 {
        (self.0 >> 10) & 0x7
    }

    /// The slot for device `device` on bus `bus` (0: the root bus), function `function`.
    pub fn from_parts(bus: u32, device: u32, function: u32) -> Self {
        Self((device & 0x1f) | ((bus & 0x1f) << 5) | ((function & 0x7) << 10))
    }

    /// The sysfs path of the device, from the root bus down, as VIC's `slotToPCIPath` builds
    /// it: each step is `DOMAIN:BUS:DEV.FN`; behind a bridge the bus number is whatever the
    /// kernel enumerated, so that step is a glob (`0000:*:DD.0`) for the caller to match.
    pub fn sysfs_steps(self) -> Vec<String> {
        if self.bus() == 0 {
            return vec![format!("0000:00:{:02x}.{}", self.device(), self.function())];
        }
        let bridge = FIRST_BRIDGE_SLOT + self.bus() - 1;
        vec![
            format!("0000:00:{bridge:02x}.{}", self.function()),
            format!("0000:*:{:02x}.0", self.device()),
        ]
    }
}

impl fmt::Display for PciSlot {
    /// `slot 192 (bridge 00:16.0, device 00)`: the number as configured and where it points.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PCI slot {} ({})", self.0, self.sysfs_steps().join("/"))
    }
}

/// What the endpoint's firewall lets through (VIC's `TrustLevel`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrustLevel {
    /// Outbound and replies, ping, and the published ports (VIC's default).
    #[default]
    Published,
    /// Everything, both ways.
    Open,
    /// Nothing but DHCP.
    Closed,
    /// Outbound and replies only.
    Outbound,
    /// Outbound, and everything from the network's pools.
    Peers,
}

impl TrustLevel {
    pub const ALL: [TrustLevel; 5] = [
        Self::Published,
        Self::Open,
        Self::Closed,
        Self::Outbound,
        Self::Peers,
    ];

    pub fn word(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Outbound => "outbound",
            Self::Peers => "peers",
        }
    }
}

impl FromStr for TrustLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.word().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "unknown trust level {text:?}: use open, closed, outbound, peers or published"
                )
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn word(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A published port or range: `80/tcp`, `8000-8010/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub protocol: Protocol,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(format!("{other:?} in {text:?} is not tcp or udp")),
        };
        let (first, last) = ports.split_once('-').unwrap_or((ports, ports));
        let num = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{s:?} in {text:?} is not a port (1-65535)"))
        };
        let (first, last) = (num(first)?, num(last)?);
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(Self {
            first,
            last,
            protocol,
        })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.protocol.word())
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.protocol.word())
        }
    }
}

/// The network an endpoint is on (VIC's `ContainerNetwork`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerNetwork {
    pub name: String,
    /// The underlay's id (a port group, a bridge).
    pub id: String,
    pub kind: String,
    /// The IPv4 gateway with the network's prefix. `None`: none, or the DHCP lease's router.
    pub gateway: Option<Cidr>,
    pub gateway6: Option<IpAddr>,
    /// The gateway is the default route.
    pub default: bool,
    /// Routed through the gateway when it is not the default route.
    pub destinations: Vec<Cidr>,
    pub nameservers: Vec<IpAddr>,
    pub pools: Vec<Cidr>,
    /// This container's own names on the network.
    pub aliases: Vec<String>,
    /// Peers as `NAME:ADDR`.
    pub hosts: Vec<String>,
    pub trust: TrustLevel,
}

/// One vNIC and how to configure it (VIC's `NetworkEndpoint`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkEndpoint {
    /// The interface name in the guest; empty keeps the kernel's.
    pub interface: String,
    pub slot: PciSlot,
    /// `Some`: this static IPv4 address; `None`: DHCPv4.
    pub static_ipv4: Option<Cidr>,
    pub static_ipv6: Vec<Cidr>,
    pub network: ContainerNetwork,
    pub ports: Vec<PortRange>,
    pub internal: bool,
}

impl NetworkEndpoint {
    pub fn is_dhcp(&self) -> bool {
        self.static_ipv4.is_none()
    }
}

fn problem(key: &KeyPath, problem: impl Into<String>) -> KeyError {
    KeyError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

fn parsed<T: FromStr<Err = String>>(
    keys: &impl KeySource,
    key: &KeyPath,
) -> Result<Option<T>, KeyError> {
    keys.string(key.as_str())
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|e| problem(key, e)))
        .transpose()
}

fn parsed_list<T: FromStr>(keys: &impl KeySource, key: &KeyPath) -> Result<Vec<T>, KeyError>
where
    T::Err: fmt::Display,
{
    keys.list(key.as_str())?
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|e: T::Err| problem(key, format!("{v:?}: {e}")))
        })
        .collect()
}

fn text_list<T: fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(T::to_string).collect()
}

/// Decodes the `networks` map under `root`.
pub fn decode(
    keys: &impl KeySource,
    root: &KeyPath,
) -> Result<BTreeMap<String, NetworkEndpoint>, KeyError> {
    let map = root.field("networks");
    let mut out = BTreeMap::new();
    let mut slots = BTreeMap::new();
    for name in keys.map_keys(map.as_str()) {
        let p = map.entry(&name);
        let endpoint = decode_endpoint(keys, &p)?;
        if let Some(other) = slots.insert(endpoint.slot, name.clone()) {
            return Err(problem(
                &p.field("common").field("id"),
                format!(
                    "{} is also network {other:?}'s: each endpoint needs its own vNIC",
                    endpoint.slot
                ),
            ));
        }
        out.insert(name, endpoint);
    }
    Ok(out)
}

fn decode_endpoint(keys: &impl KeySource, p: &KeyPath) -> Result<NetworkEndpoint, KeyError> {
    let slot_key = p.field("common").field("id");
    let slot = keys.number::<u32>(slot_key.as_str())?.ok_or_else(|| {
        problem(
            &slot_key,
            "required: the vNIC's PCI slot number (pciSlotNumber)",
        )
    })?;
    if slot >= 1 << 13 {
        return Err(problem(
            &slot_key,
            format!("PCI slot {slot} has bits above the function's (12): not a pciSlotNumber"),
        ));
    }
    let name_key = p.field("common").field("name");
    let interface = keys.string(name_key.as_str()).unwrap_or_default();
    if interface.len() > MAX_INTERFACE_NAME
        || interface.contains('/')
        || interface.chars().any(char::is_whitespace)
        || interface == "."
        || interface == ".."
    {
        return Err(problem(
            &name_key,
            format!(
                "{interface:?} is not an interface name: at most {MAX_INTERFACE_NAME} bytes, no `/` or white space"
            ),
        ));
    }
    let ip_key = p.field("ip");
    let static_ipv4: Option<Cidr> = parsed(keys, &ip_key)?;
    if static_ipv4.is_some_and(|c| !c.is_ipv4()) {
        return Err(problem(
            &ip_key,
            "an IPv4 address is expected here; IPv6 goes in ip6",
        ));
    }
    let is_static = keys.bool(p.field("static").as_str())?.unwrap_or(false);
    if is_static && static_ipv4.is_none() {
        return Err(problem(&ip_key, "static is true but no address is given"));
    }
    let static_ipv6: Vec<Cidr> = parsed_list(keys, &p.field("ip6"))?;
    if let Some(bad) = static_ipv6.iter().find(|c| c.is_ipv4()) {
        return Err(problem(&p.field("ip6"), format!("{bad} is not IPv6")));
    }
    let n = p.field("network");
    let gateway_key = n.field("gateway");
    let gateway: Option<Cidr> = parsed(keys, &gateway_key)?;
    if gateway.is_some_and(|c| !c.is_ipv4()) {
        return Err(problem(
            &gateway_key,
            "an IPv4 gateway is expected here; IPv6 goes in gateway6",
        ));
    }
    let gateway6_key = n.field("gateway6");
    let gateway6: Option<IpAddr> = keys
        .string(gateway6_key.as_str())
        .filter(|v| !v.is_empty())
        .map(|v| match v.parse::<IpAddr>() {
            Ok(a @ IpAddr::V6(_)) => Ok(a),
            _ => Err(problem(
                &gateway6_key,
                format!("{v:?} is not an IPv6 address"),
            )),
        })
        .transpose()?;
    let hosts_key = n.field("hosts");
    let hosts = keys.list(hosts_key.as_str())?;
    if let Some(bad) = hosts.iter().find(|h| !h.contains(':')) {
        return Err(problem(&hosts_key, format!("{bad:?} is not NAME:ADDR")));
    }
    Ok(NetworkEndpoint {
        interface,
        slot: PciSlot(slot),
        static_ipv4,
        static_ipv6,
        network: ContainerNetwork {
            name: keys
                .string(n.field("common").field("name").as_str())
                .unwrap_or_default(),
            id: keys
                .string(n.field("common").field("id").as_str())
                .unwrap_or_default(),
            kind: keys.string(n.field("type").as_str()).unwrap_or_default(),
            gateway,
            gateway6,
            default: keys.bool(n.field("default").as_str())?.unwrap_or(false),
            destinations: parsed_list(keys, &n.field("destinations"))?,
            nameservers: parsed_list(keys, &n.field("dns"))?,
            pools: parsed_list(keys, &n.field("pools"))?,
            aliases: keys.list(n.field("aliases").as_str())?,
            hosts,
            trust: parsed(keys, &n.field("trust"))?.unwrap_or_default(),
        },
        ports: parsed_list(keys, &p.field("ports"))?,
        internal: keys.bool(p.field("internal").as_str())?.unwrap_or(false),
    })
}

/// Encodes the `networks` map under `root`.
pub fn encode(w: &mut KeyWriter, root: &KeyPath, networks: &BTreeMap<String, NetworkEndpoint>) {
    let map = root.field("networks");
    if networks.is_empty() {
        return;
    }
    let names: Vec<&String> = networks.keys().collect();
    w.map_keys(&map, &names);
    for (name, e) in networks {
        let p = map.entry(name);
        w.number(&p.field("common").field("id"), e.slot.0);
        w.string(&p.field("common").field("name"), &e.interface);
        w.bool(&p.field("static"), e.static_ipv4.is_some());
        w.optional(
            &p.field("ip"),
            e.static_ipv4.map(|c| c.to_string()).as_deref(),
        );
        w.list(&p.field("ip6"), &text_list(&e.static_ipv6));
        w.list(&p.field("ports"), &text_list(&e.ports));
        w.bool(&p.field("internal"), e.internal);
        let n = p.field("network");
        let net = &e.network;
        w.string(&n.field("common").field("name"), &net.name);
        w.string(&n.field("common").field("id"), &net.id);
        w.string(&n.field("type"), &net.kind);
        w.optional(
            &n.field("gateway"),
            net.gateway.map(|c| c.to_string()).as_deref(),
        );
        w.optional(
            &n.field("gateway6"),
            net.gateway6.map(|a| a.to_string()).as_deref(),
        );
        w.bool(&n.field("default"), net.default);
        w.list(&n.field("destinations"), &text_list(&net.destinations));
        w.list(&n.field("dns"), &text_list(&net.nameservers));
        w.list(&n.field("pools"), &text_list(&net.pools));
        w.list(&n.field("aliases"), &net.aliases);
        w.list(&n.field("hosts"), &net.hosts);
        w.string(&n.field("trust"), net.trust.word());
    }
}

/// What tether got for one endpoint, for the read-write keys it writes back on vSphere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// The IPv4 address with its prefix.
    pub address: Option<String>,
    /// IPv6 addresses with their prefixes.
    pub addresses6: Vec<String>,
    pub gateway: Option<String>,
    pub nameservers: Vec<String>,
}

/// The read-write keys (VIC's `assigned` fields) for endpoint `network`, under
/// `guestinfo.vice..networks|NAME.`: `assigned` (the IPv4 address and prefix, `<nil>` while none),
/// `assigned6` (list, extension), `network.assigned.gateway` and `network.assigned.dns` (list).
pub fn encode_assigned(w: &mut KeyWriter, network: &str, assigned: &Assigned) {
    let p = KeyPath::read_write().field("networks").entry(network);
    w.optional(&p.field("assigned"), assigned.address.as_deref());
    w.list(&p.field("assigned6"), &assigned.addresses6);
    let n = p.field("network").field("assigned");
    w.optional(&n.field("gateway"), assigned.gateway.as_deref());
    w.list(&n.field("dns"), &assigned.nameservers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_vic_pci_paths() {
        // VIC's own table (lib/tether/ops_linux_test.go, TestSlotToPciPath).
        let cases: [(u32, &[&str]); 8] = [
            (0, &["0000:00:00.0"]),
            (32, &["0000:00:11.0", "0000:*:00.0"]),
            (33, &["0000:00:11.0", "0000:*:01.0"]),
            (192, &["0000:00:16.0", "0000:*:00.0"]),
            (1184, &["0000:00:15.1", "0000:*:00.0"]),
            (1216, &["0000:00:16.1", "0000:*:00.0"]),
            (1248, &["0000:00:17.1", "0000:*:00.0"]),
            (1280, &["0000:00:18.1", "0000:*:00.0"]),
        ];
        for (slot, want) in cases {
            assert_eq!(PciSlot(slot).sysfs_steps(), want, "slot {slot}");
        }
        assert_eq!(PciSlot::from_parts(5, 0, 1), PciSlot(1184));
        assert_eq!(PciSlot::from_parts(0, 3, 0).sysfs_steps(), ["0000:00:03.0"]);
        assert_eq!(
            PciSlot(192).to_string(),
            "PCI slot 192 (0000:00:16.0/0000:*:00.0)"
        );
    }

    #[test]
    fn cidr_parsing_and_networks() {
        let c: Cidr = "10.1.2.3/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "10.1.2.0/24");
        assert!(c.contains("10.1.2.200".parse().unwrap()));
        assert!(!c.contains("10.1.3.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let z: Cidr = "1.2.3.4/0".parse().unwrap();
        assert_eq!(z.network().to_string(), "0.0.0.0/0");
        let v6: Cidr = "fd00::1:5/112".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::1:0/112");
        assert!("10.0.0.1/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("32 bits"));
        assert!("10.0.0.1".parse::<Cidr>().is_err());
        assert!("x/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn ports_and_trust_levels_parse() {
        assert_eq!("80".parse::<PortRange>().unwrap().to_string(), "80/tcp");
        assert_eq!(
            "8000-8010/UDP".parse::<PortRange>().unwrap().to_string(),
            "8000-8010/udp"
        );
        assert!("0/tcp".parse::<PortRange>().is_err());
        assert!("90-80/tcp".parse::<PortRange>().is_err());
        assert!("80/sctp".parse::<PortRange>().is_err());
        assert_eq!("Closed".parse::<TrustLevel>(), Ok(TrustLevel::Closed));
        assert!("trusted"
            .parse::<TrustLevel>()
            .unwrap_err()
            .contains("published"));
    }

    #[test]
    fn assigned_keys_are_vics_read_write_fields() {
        let mut w = KeyWriter::new();
        let assigned = Assigned {
            address: Some("10.0.2.15/24".into()),
            addresses6: vec![],
            gateway: Some("10.0.2.2".into()),
            nameservers: vec!["10.0.2.3".into()],
        };
        encode_assigned(&mut w, "bridge", &assigned);
        let pairs = w.into_pairs();
        assert_eq!(
            pairs["guestinfo.vice..networks|bridge.assigned"],
            "10.0.2.15/24"
        );
        assert_eq!(pairs["guestinfo.vice..networks|bridge.assigned6"], "-1");
        assert_eq!(
            pairs["guestinfo.vice..networks|bridge.network.assigned.gateway"],
            "10.0.2.2"
        );
        assert_eq!(
            pairs["guestinfo.vice..networks|bridge.network.assigned.dns~"],
            "10.0.2.3"
        );
    }
}
