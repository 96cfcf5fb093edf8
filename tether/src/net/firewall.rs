//! The firewall per trust level, as a list of rules in one `inet` table (`tether`), chain
//! `input` (hook input, policy accept, so `lo` and interfaces no endpoint names pass). For each
//! endpoint's interface, in order:
//!
//! * replies: `ct state established,related accept` (outbound connections work at every level);
//! * DHCP: `udp sport 67 udp dport 68 accept` when the endpoint uses DHCP (a rebinding's
//!   broadcast answer is not a tracked reply);
//! * IPv6 neighbour discovery, ICMPv6 types 133-137 (without it IPv6 stops working);
//! * the level's own rules: `open` accepts everything; `published` accepts ping (ICMP echo,
//!   ICMPv6 echo) and the published ports; `peers` also accepts everything from the network's
//!   pools (its own subnet if none); `outbound` and `closed` add nothing;
//! * the rest is refused: TCP with a reset, anything else with ICMP port unreachable.
//!
//! `closed` lets outbound connections and their replies through, as issue 15 asks; VIC's
//! `closed` also blocked outbound traffic.

use std::net::IpAddr;

use guestinfo::network::{PortRange, Protocol};
use guestinfo::{Cidr, TrustLevel};

pub const TABLE: &str = "tether";
pub const CHAIN: &str = "input";

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// One endpoint's part of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRules {
    pub interface: String,
    pub trust: TrustLevel,
    pub ports: Vec<PortRange>,
    /// The sources `peers` lets in.
    pub peers: Vec<Cidr>,
    pub dhcp: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub endpoints: Vec<EndpointRules>,
}

/// What one rule matches; all of a rule's matches must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// The packet came in on this interface.
    Interface(&'a str),
    /// Conntrack state established or related.
    Reply,
    /// The layer 4 protocol.
    Protocol(u8),
    /// The transport header's source and destination port (needs a Protocol match first).
    Ports {
        source: Option<u16>,
        destination: (u16, u16),
    },
    /// The ICMP or ICMPv6 type is in this range (needs a Protocol match first).
    IcmpType(u8, u8),
    /// The source address is in this network (IPv4 or IPv6).
    Source(Cidr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// TCP reset.
    RejectReset,
    /// ICMP (v4 or v6) port unreachable.
    RejectUnreachable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<'a> {
    pub matches: Vec<Match<'a>>,
    pub verdict: Verdict,
}

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

impl EndpointRules {
    pub fn rules(&self) -> Vec<Rule<'_>> {
        let on = Match::Interface(&self.interface);
        let rule = |mut matches: Vec<_>, verdict| {
            matches.insert(0, on);
            Rule { matches, verdict }
        };
        let accept = |m| rule(m, Verdict::Accept);
        let mut out = vec![accept(vec![Match::Reply])];
        if self.dhcp {
            out.push(accept(vec![
                Match::Protocol(IPPROTO_UDP),
                Match::Ports {
                    source: Some(67),
                    destination: (68, 68),
                },
            ]));
        }
        out.push(accept(vec![
            Match::Protocol(IPPROTO_ICMPV6),
            Match::IcmpType(133, 137),
        ]));
        let ping = |out: &mut Vec<_>| {
            out.push(rule(
                vec![
                    Match::Protocol(IPPROTO_ICMP),
                    Match::IcmpType(ICMP_ECHO_REQUEST, ICMP_ECHO_REQUEST),
                ],
                Verdict::Accept,
            ));
            out.push(rule(
                vec![
                    Match::Protocol(IPPROTO_ICMPV6),
                    Match::IcmpType(ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REQUEST),
                ],
                Verdict::Accept,
            ));
        };
        match self.trust {
            TrustLevel::Open => {
                out.push(accept(vec![]));
                return out;
            }
            TrustLevel::Published | TrustLevel::Peers => {
                ping(&mut out);
                for p in &self.ports {
                    let proto = match p.protocol {
                        Protocol::Tcp => IPPROTO_TCP,
                        Protocol::Udp => IPPROTO_UDP,
                    };
                    out.push(accept(vec![
                        Match::Protocol(proto),
                        Match::Ports {
                            source: None,
                            destination: (p.first, p.last),
                        },
                    ]));
                }
                if self.trust == TrustLevel::Peers {
                    for net in &self.peers {
                        out.push(accept(vec![Match::Source(net.network())]));
                    }
                }
            }
            TrustLevel::Outbound | TrustLevel::Closed => {}
        }
        out.push(rule(
            vec![Match::Protocol(IPPROTO_TCP)],
            Verdict::RejectReset,
        ));
        out.push(rule(vec![], Verdict::RejectUnreachable));
        out
    }
}

impl Ruleset {
    pub fn rules(&self) -> Vec<Rule<'_>> {
        self.endpoints
            .iter()
            .flat_map(EndpointRules::rules)
            .collect()
    }
}

/// `nft`-like text of a rule, for logs and tests.
pub fn describe(rule: &Rule<'_>) -> String {
    let mut parts: Vec<String> = rule
        .matches
        .iter()
        .map(|m| match m {
            Match::Interface(n) => format!("iifname {n:?}"),
            Match::Reply => "ct state established,related".into(),
            Match::Protocol(p) => format!("meta l4proto {p}"),
            Match::Ports {
                source,
                destination: (a, b),
            } => {
                let s = source.map(|s| format!("th sport {s} ")).unwrap_or_default();
                if a == b {
                    format!("{s}th dport {a}")
                } else {
                    format!("{s}th dport {a}-{b}")
                }
            }
            Match::IcmpType(a, b) if a == b => format!("icmp type {a}"),
            Match::IcmpType(a, b) => format!("icmp type {a}-{b}"),
            Match::Source(c) => match c.addr {
                IpAddr::V4(_) => format!("ip saddr {c}"),
                IpAddr::V6(_) => format!("ip6 saddr {c}"),
            },
        })
        .collect();
    parts.push(
        match rule.verdict {
            Verdict::Accept => "accept",
            Verdict::RejectReset => "reject with tcp reset",
            Verdict::RejectUnreachable => "reject",
        }
        .into(),
    );
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(trust: TrustLevel) -> EndpointRules {
        EndpointRules {
            interface: "web".into(),
            trust,
            ports: vec!["80/tcp".parse().unwrap(), "5000-5001/udp".parse().unwrap()],
            peers: vec!["10.1.2.3/24".parse().unwrap()],
            dhcp: true,
        }
    }

    fn text(trust: TrustLevel) -> Vec<String> {
        endpoint(trust).rules().iter().map(describe).collect()
    }

    const HEAD: [&str; 3] = [
        "iifname \"web\" ct state established,related accept",
        "iifname \"web\" meta l4proto 17 th sport 67 th dport 68 accept",
        "iifname \"web\" meta l4proto 58 icmp type 133-137 accept",
    ];
    const TAIL: [&str; 2] = [
        "iifname \"web\" meta l4proto 6 reject with tcp reset",
        "iifname \"web\" reject",
    ];

    #[test]
    fn published_lets_in_replies_dhcp_ping_and_its_ports_only() {
        let mut want: Vec<String> = HEAD.iter().map(|s| s.to_string()).collect();
        want.extend(
            [
                "iifname \"web\" meta l4proto 1 icmp type 8 accept",
                "iifname \"web\" meta l4proto 58 icmp type 128 accept",
                "iifname \"web\" meta l4proto 6 th dport 80 accept",
                "iifname \"web\" meta l4proto 17 th dport 5000-5001 accept",
            ]
            .map(String::from),
        );
        want.extend(TAIL.map(String::from));
        assert_eq!(text(TrustLevel::Published), want);
    }

    #[test]
    fn each_level_adds_its_own_rules() {
        let open = text(TrustLevel::Open);
        assert_eq!(open.last().unwrap(), "iifname \"web\" accept");
        assert!(!open.iter().any(|r| r.contains("reject")));
        let closed = text(TrustLevel::Closed);
        let mut want: Vec<String> = HEAD.iter().map(|s| s.to_string()).collect();
        want.extend(TAIL.map(String::from));
        assert_eq!(closed, want);
        assert_eq!(text(TrustLevel::Outbound), want);
        let peers = text(TrustLevel::Peers);
        assert!(peers.contains(&"iifname \"web\" ip saddr 10.1.2.0/24 accept".to_string()));
        assert!(peers.contains(&"iifname \"web\" meta l4proto 6 th dport 80 accept".to_string()));
        let mut static_ep = endpoint(TrustLevel::Closed);
        static_ep.dhcp = false;
        assert!(!static_ep
            .rules()
            .iter()
            .any(|r| describe(r).contains("sport 67")));
    }
}
