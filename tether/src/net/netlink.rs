//! The real [`NetOs`]: rtnetlink for links, addresses and routes; nfnetlink for the nf_tables
//! ruleset (net/nft.rs builds its messages); an AF_PACKET socket for the gratuitous ARP. Blocking
//! sockets, one request at a time: each call is a few messages on a local socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use guestinfo::Cidr;
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::net::firewall::Ruleset;
use crate::net::ops::{Link, NetOs, Route};

pub struct Real;

/// One netlink socket of `protocol`, bound to a kernel-chosen port.
struct Socket(OwnedFd);

impl Socket {
    fn open(protocol: i32) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is valid (port 0: the kernel picks one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr lives across the call and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: bytes is a valid buffer of its length for the call.
        let n = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable buffer of its length for the call.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Sends `messages` in one write (a batch, for nfnetlink) and collects the replies: every
/// message flagged NLM_F_ACK must be acknowledged, a dump ends with DONE; the first error
/// reply is the result.
fn transact<T>(protocol: i32, messages: Vec<NetlinkMessage<T>>) -> io::Result<Vec<T>>
where
    T: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
{
    let sock = Socket::open(protocol)?;
    let mut out = Vec::new();
    let (mut acks, mut dump) = (0usize, false);
    for (seq, mut m) in (1u32..).zip(messages) {
        m.header.sequence_number = seq;
        m.finalize();
        if m.header.flags & NLM_F_ACK != 0 {
            acks += 1;
        }
        dump |= m.header.flags & NLM_F_DUMP == NLM_F_DUMP;
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
    }
    sock.send(&out)?;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while acks > 0 || dump {
        let n = sock.recv(&mut buf)?;
        let mut at = 0;
        while at + 16 <= n {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            if len < 16 || at + len > n {
                break;
            }
            let msg = NetlinkMessage::<T>::deserialize(&buf[at..at + len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            at += (len + 3) & !3;
            match msg.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Error(_) => acks = acks.saturating_sub(1),
                NetlinkPayload::Done(_) => dump = false,
                NetlinkPayload::InnerMessage(m) => replies.push(m),
                _ => {}
            }
        }
    }
    Ok(replies)
}

fn route_request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    transact(libc::NETLINK_ROUTE, vec![m])
}

fn link_message(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn address_message(index: u32, a: Cidr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = a.prefix;
    m.header.family = match a.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.attributes.push(AddressAttribute::Local(a.addr));
    m.attributes.push(AddressAttribute::Address(a.addr));
    if let IpAddr::V4(v4) = a.addr {
        if a.prefix < 31 {
            let broadcast = u32::from(v4) | (u32::MAX >> a.prefix);
            m.attributes
                .push(AddressAttribute::Broadcast(broadcast.into()));
        }
    }
    m
}

fn route_message(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.header.destination_prefix_length = r.destination.prefix;
    let addr = |a: IpAddr| match a {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    };
    m.header.address_family = match r.destination.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    if r.destination.prefix > 0 {
        m.attributes
            .push(RouteAttribute::Destination(addr(r.destination.addr)));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(addr(g)));
    }
    m.attributes.push(RouteAttribute::Oif(r.index));
    m
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    mac
}

impl NetOs for Real {
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut out: Vec<String> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    fn link(&self, name: &str) -> io::Result<Link> {
        let dir = Path::new("/sys/class/net").join(name);
        let index = read_trimmed(&dir.join("ifindex"))?
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mac = parse_mac(&read_trimmed(&dir.join("address"))?);
        Ok(Link {
            index,
            name: name.to_string(),
            mac,
        })
    }

    fn rename(&self, index: u32, name: &str) -> io::Result<()> {
        let mut m = link_message(index);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(drop)
    }

    fn set_up(&self, index: u32) -> io::Result<()> {
        let mut m = link_message(index);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        route_request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(drop)
    }

    fn add_address(&self, index: u32, address: Cidr) -> io::Result<()> {
        route_request(
            RouteNetlinkMessage::NewAddress(address_message(index, address)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    fn del_address(&self, index: u32, address: Cidr) -> io::Result<()> {
        route_request(
            RouteNetlinkMessage::DelAddress(address_message(index, address)),
            NLM_F_ACK,
        )
        .map(drop)
    }

    fn addresses(&self, index: u32) -> io::Result<Vec<Cidr>> {
        let replies = route_request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let addr = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(addr) = addr {
                out.push(Cidr {
                    addr,
                    prefix: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    fn add_route(&self, route: &Route) -> io::Result<()> {
        match route_request(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map(drop),
        }
    }

    fn del_route(&self, route: &Route) -> io::Result<()> {
        route_request(
            RouteNetlinkMessage::DelRoute(route_message(route)),
            NLM_F_ACK,
        )
        .map(drop)
    }

    fn announce(&self, link: &Link, ip: Ipv4Addr) -> io::Result<()> {
        gratuitous_arp(link, ip)
    }

    fn set_firewall(&self, ruleset: &Ruleset) -> io::Result<()> {
        transact(libc::NETLINK_NETFILTER, crate::net::nft::batch(ruleset)).map(drop)
    }
}

const ETH_P_ARP: u16 = 0x0806;

/// An ARP request for `ip` from `ip` (RFC 5227's announcement), to the broadcast address.
pub fn arp_announcement(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f
}

fn gratuitous_arp(link: &Link, ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields that matter are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = link.index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = arp_announcement(link.mac, ip);
    // SAFETY: frame and `to` live across the call; their sizes are passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_an_arp_request_for_our_own_address() {
        let f = arp_announcement([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[10, 0, 0, 5], "sender address");
        assert_eq!(&f[38..42], &[10, 0, 0, 5], "target address");
    }

    #[test]
    fn route_and_address_messages_carry_what_ip_would_send() {
        let r = route_message(&Route {
            index: 3,
            destination: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.0.2.2".parse().unwrap()),
        });
        assert_eq!(r.header.destination_prefix_length, 0);
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert!(r.attributes.contains(&RouteAttribute::Oif(3)));
        let a = address_message(3, "10.0.2.15/24".parse().unwrap());
        assert!(a
            .attributes
            .contains(&AddressAttribute::Broadcast("10.0.2.255".parse().unwrap())));
    }
}
