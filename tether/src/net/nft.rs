//! The firewall's rules (net/firewall.rs) as one nf_tables transaction: batch begin; table
//! `inet tether` created, deleted and created again (so the old ruleset goes and the new one
//! comes at once, never a moment with half of it); the `input` chain; every rule; batch end.
//! Expressions are those `nft` itself emits for the same rules: meta, cmp, payload, bitwise,
//! ct, immediate and reject.

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, Immediate,
    InetHookNumber, ListAttribute, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict as NftVerdict,
    VerdictAttribute,
};
use netlink_packet_netfilter::nftables::{ChainMessage, TableFlags};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use crate::net::firewall::{Match, Rule, Ruleset, Verdict, CHAIN, TABLE};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NF_ACCEPT: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_TCP_RST: u32 = 1;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// The kernel's register numbers as NLA values (big-endian u32).
const NFT_REG_1: u32 = 1;
const IFNAMSIZ: usize = 16;

fn message(
    family: NetfilterProtoFamily,
    inner: NfTablesMessage,
    flags: u16,
) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            inner,
        )),
    )
}

fn control(inner: ControlMessage) -> NetlinkMessage<NetfilterMessage> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            inner,
        )),
    )
}

/// The whole transaction that replaces tether's table with `ruleset`.
pub fn batch(ruleset: &Ruleset) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let inet = NetfilterProtoFamily::Inet;
    let table = || TableMessage {
        attributes: vec![
            TableAttribute::Name(TABLE.into()),
            TableAttribute::Flags(TableFlags::default()),
        ],
    };
    let mut out = vec![
        control(ControlMessage::BatchBegin),
        message(inet, NfTablesMessage::NewTable(table()), NLM_F_CREATE),
        message(
            inet,
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(TABLE.into())],
            }),
            0,
        ),
        message(inet, NfTablesMessage::NewTable(table()), NLM_F_CREATE),
        message(
            inet,
            NfTablesMessage::NewChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(TABLE.into()),
                    ChainAttribute::Name(CHAIN.into()),
                    ChainAttribute::Hook(vec![
                        Hook::Number(InetHookNumber::LocalIn.into()),
                        Hook::Priority(0),
                    ]),
                    ChainAttribute::Policy(NF_ACCEPT),
                    ChainAttribute::Type("filter".into()),
                ],
            }),
            NLM_F_CREATE,
        ),
    ];
    for rule in ruleset.rules() {
        out.push(message(
            inet,
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(TABLE.into()),
                    RuleAttribute::Chain(CHAIN.into()),
                    RuleAttribute::Expressions(expressions(&rule)),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
        ));
    }
    out.push(control(ControlMessage::BatchEnd));
    out
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn other(name: &str, attributes: Vec<DefaultNla>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Other {
        expression_type: name.into(),
        attributes,
    }
    .into()
}

fn meta(key: MetaKey) -> ListAttribute<ExpressionAttribute> {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
    .into()
}

fn cmp(op: Operator, data: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

fn payload(base: u32, offset: u32, len: u32) -> ListAttribute<ExpressionAttribute> {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

fn mask(mask: Vec<u8>) -> ListAttribute<ExpressionAttribute> {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Xor(DataAttribute::Value(vec![0; mask.len()])),
        Bitwise::Mask(DataAttribute::Value(mask)),
    ])
    .into()
}

/// A value and its inclusive upper end, loaded from the transport header.
fn range(offset: u32, first: &[u8], last: &[u8]) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut out = vec![payload(
        NFT_PAYLOAD_TRANSPORT_HEADER,
        offset,
        first.len() as u32,
    )];
    if first == last {
        out.push(cmp(Operator::Equal, first.to_vec()));
    } else {
        out.push(cmp(Operator::GreatherThanEqual, first.to_vec()));
        out.push(cmp(Operator::LessThanEqual, last.to_vec()));
    }
    out
}

fn prefix_mask(bytes: usize, prefix: u8) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let bits = (i32::from(prefix) - 8 * i as i32).clamp(0, 8);
            (0xffu16 << (8 - bits)) as u8
        })
        .collect()
}

pub fn expressions(rule: &Rule<'_>) -> Vec<ListAttribute<ExpressionAttribute>> {
    let mut out = Vec::new();
    for m in &rule.matches {
        match *m {
            Match::Interface(name) => {
                let mut padded = name.as_bytes().to_vec();
                padded.resize(IFNAMSIZ, 0);
                out.push(meta(MetaKey::Iifname));
                out.push(cmp(Operator::Equal, padded));
            }
            Match::Reply => {
                out.push(other(
                    "ct",
                    vec![
                        DefaultNla::new(NFTA_CT_DREG, be32(NFT_REG_1)),
                        DefaultNla::new(NFTA_CT_KEY, be32(NFT_CT_STATE)),
                    ],
                ));
                // The ct state is a host-order bit mask.
                out.push(mask(CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec()));
                out.push(cmp(Operator::NotEqual, vec![0; 4]));
            }
            Match::Protocol(p) => {
                out.push(meta(MetaKey::L4Proto));
                out.push(cmp(Operator::Equal, vec![p]));
            }
            Match::Ports {
                source,
                destination: (first, last),
            } => {
                if let Some(s) = source {
                    out.extend(range(0, &s.to_be_bytes(), &s.to_be_bytes()));
                }
                out.extend(range(2, &first.to_be_bytes(), &last.to_be_bytes()));
            }
            Match::IcmpType(first, last) => out.extend(range(0, &[first], &[last])),
            Match::Source(net) => {
                let (proto, offset, addr) = match net.addr {
                    IpAddr::V4(a) => (NFPROTO_IPV4, 12, a.octets().to_vec()),
                    IpAddr::V6(a) => (NFPROTO_IPV6, 8, a.octets().to_vec()),
                };
                out.push(meta(MetaKey::Nfproto));
                out.push(cmp(Operator::Equal, vec![proto]));
                out.push(payload(
                    NFT_PAYLOAD_NETWORK_HEADER,
                    offset,
                    addr.len() as u32,
                ));
                out.push(mask(prefix_mask(addr.len(), net.prefix)));
                let masked: Vec<u8> = addr
                    .iter()
                    .zip(prefix_mask(addr.len(), net.prefix))
                    .map(|(a, m)| a & m)
                    .collect();
                out.push(cmp(Operator::Equal, masked));
            }
        }
    }
    out.push(match rule.verdict {
        Verdict::Accept => Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
                NftVerdict::Other(NF_ACCEPT),
            )])),
        ])
        .into(),
        Verdict::RejectReset => other(
            "reject",
            vec![DefaultNla::new(NFTA_REJECT_TYPE, be32(NFT_REJECT_TCP_RST))],
        ),
        Verdict::RejectUnreachable => other(
            "reject",
            vec![
                DefaultNla::new(NFTA_REJECT_TYPE, be32(NFT_REJECT_ICMPX_UNREACH)),
                DefaultNla::new(NFTA_REJECT_ICMP_CODE, vec![NFT_REJECT_ICMPX_PORT_UNREACH]),
            ],
        ),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::firewall::EndpointRules;
    use guestinfo::TrustLevel;
    use netlink_packet_core::NetlinkBuffer;

    fn ruleset() -> Ruleset {
        Ruleset {
            endpoints: vec![EndpointRules {
                interface: "web".into(),
                trust: TrustLevel::Peers,
                ports: vec!["80/tcp".parse().unwrap(), "8000-8010/udp".parse().unwrap()],
                peers: vec!["10.1.2.3/20".parse().unwrap(), "fd00::/64".parse().unwrap()],
                dhcp: true,
            }],
        }
    }

    #[test]
    fn the_batch_replaces_the_table_and_appends_every_rule() {
        let rs = ruleset();
        let msgs = batch(&rs);
        assert_eq!(msgs.len(), 5 + rs.rules().len() + 1);
        for mut m in msgs {
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            // What the kernel gets parses back to the same message.
            let back = NetlinkMessage::<NetfilterMessage>::deserialize(&buf).unwrap();
            assert_eq!(back.header.length as usize, buf.len());
            assert!(NetlinkBuffer::new_checked(&buf).is_ok());
        }
    }

    #[test]
    fn masks_and_ranges_are_in_network_order() {
        assert_eq!(prefix_mask(4, 20), [255, 255, 240, 0]);
        assert_eq!(prefix_mask(4, 0), [0, 0, 0, 0]);
        assert_eq!(prefix_mask(16, 64)[7..9], [255, 0]);
        let r = range(2, &8000u16.to_be_bytes(), &8010u16.to_be_bytes());
        assert_eq!(r.len(), 3);
        assert_eq!(r[1], cmp(Operator::GreatherThanEqual, vec![0x1f, 0x40]));
        // A source network is compared after masking: 10.1.2.3/20 is 10.1.0.0.
        let rule = Rule {
            matches: vec![Match::Source("10.1.2.3/20".parse().unwrap())],
            verdict: Verdict::Accept,
        };
        let e = expressions(&rule);
        assert_eq!(e[4], cmp(Operator::Equal, vec![10, 1, 0, 0]));
    }
}
