//! One endpoint's DHCPv4 client: mozim runs the RFC 2131 life cycle (DISCOVER/OFFER/REQUEST/ACK,
//! RENEWING at T1 by unicast, REBINDING at T2 by broadcast, back to INIT when the lease expires);
//! tether applies each lease it reports and releases the last one at shutdown. The client id is
//! stable across boots of the container (its id and the network's name); the hostname option
//! carries the container's hostname.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::Duration;

use guestinfo::Cidr;
use mozim::{DhcpV4Client, DhcpV4Config, DhcpV4Lease, DhcpV4State};

use crate::net::runtime::{LeaseInfo, Network};

/// RFC 2132 client identifier type 0: not a hardware address.
const CLIENT_ID_OPAQUE: u8 = 0;
/// Before retrying after a client error (a socket that could not be opened, ...).
const RETRY: Duration = Duration::from_secs(2);

/// The client id: the same container on the same network asks for the same address.
pub fn client_id(container_id: &str, network: &str) -> Vec<u8> {
    format!("tether:{container_id}:{network}").into_bytes()
}

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u32::from(mask).leading_ones() as u8
}

/// What tether applies from a lease.
pub fn lease_info(lease: &DhcpV4Lease, now_unix: u64) -> LeaseInfo {
    LeaseInfo {
        address: Cidr {
            addr: IpAddr::V4(lease.yiaddr),
            prefix: prefix_of(lease.subnet_mask),
        },
        router: lease
            .gateways
            .as_ref()
            .and_then(|g| g.first())
            .map(|g| IpAddr::V4(*g)),
        nameservers: lease
            .dns_srvs
            .iter()
            .flatten()
            .map(|d| IpAddr::V4(*d))
            .collect(),
        times: wire::Lease {
            server: lease.srv_id.to_string(),
            obtained_unix: now_unix,
            lease_secs: lease.lease_time_sec,
            renew_secs: lease.t1_sec,
            rebind_secs: lease.t2_sec,
        },
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts a DHCP client per DHCP endpoint and waits (up to `wait`) for their first leases.
/// Must be called inside a `LocalSet`.
pub async fn start(net: &Rc<Network>, wait: Duration) {
    net.refresh();
    let dhcp: Vec<String> = net
        .endpoints
        .borrow()
        .iter()
        .filter(|ep| ep.spec.is_dhcp())
        .map(|ep| ep.network.clone())
        .collect();
    for network in dhcp {
        start_client(net, &network);
    }
    let deadline = tokio::time::Instant::now() + wait;
    while !net.all_leased() {
        tokio::select! {
            _ = net.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                crate::log::warn("DHCP: no lease yet on every network; starting anyway");
                return;
            }
        }
    }
}

enum Step {
    State(Result<DhcpV4State, mozim::DhcpError>),
    Stop,
}

/// After a hot-added DHCP endpoint's NIC is up: its client started, and a moment
/// ([`HOTPLUG_WAIT`](crate::net::runtime::HOTPLUG_WAIT)) given for its first lease.
pub async fn hot_added(net: &Rc<Network>, network: &str) -> Result<(), String> {
    start_client(net, network);
    let leased = || {
        net.endpoints
            .borrow()
            .iter()
            .any(|ep| ep.network == network && ep.ipv4.is_some())
    };
    let wait = crate::net::runtime::HOTPLUG_WAIT;
    let deadline = tokio::time::Instant::now() + wait;
    while !leased() {
        tokio::select! {
            _ = net.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                // The client keeps trying; the report shows the endpoint's error meanwhile.
                return Err(format!(
                    "network {network:?}: no DHCP lease within {} s (the client keeps asking)",
                    wait.as_secs()
                ));
            }
        }
    }
    Ok(())
}

/// Starts the DHCP client of the endpoint on `network`. Must be called inside a `LocalSet`.
pub fn start_client(net: &Rc<Network>, network: &str) {
    net.clients.borrow_mut().insert(network.to_string());
    tokio::task::spawn_local(run(net.clone(), network.to_string()));
}

/// Runs the client of the endpoint on `network` until shutdown or the endpoint's removal.
/// Must be spawned on a `LocalSet` (by [`start_client`]).
pub async fn run(net: Rc<Network>, network: String) {
    run_client(&net, &network).await;
    net.client_ended(&network);
}

async fn run_client(net: &Network, network: &str) {
    let Some(link) = net
        .endpoints
        .borrow()
        .iter()
        .find(|ep| ep.network == network)
        .map(|ep| ep.link.clone())
    else {
        return;
    };
    let leave = net.leave_signal(network);
    let mut config = DhcpV4Config::new(&link.name);
    config.set_iface_index(link.index);
    if let Err(e) = config.set_iface_mac_raw(&link.mac) {
        crate::log::error(&format!("DHCP on {}: {e}", link.name));
        return;
    }
    let hostname = net.spec.effective_hostname();
    config.set_host_name(hostname.split('.').next().unwrap_or(&hostname));
    config.set_client_id(CLIENT_ID_OPAQUE, &client_id(&net.spec.id, network));
    let mut leased: Option<DhcpV4Lease> = None;
    while !net.stopping.get() {
        let mut client = match DhcpV4Client::init(config.clone(), None).await {
            Ok(c) => c,
            Err(e) => {
                crate::log::error(&format!("DHCP on {}: {e}", link.name));
                if wait_or_stop(net, &leave, RETRY).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let step = tokio::select! {
                s = client.run() => Step::State(s),
                _ = net.stop.notified() => Step::Stop,
                _ = leave.notified() => Step::Stop,
            };
            match step {
                Step::Stop => {
                    if let Some(lease) = leased.take() {
                        crate::log::info(&format!(
                            "DHCP on {}: releasing {}",
                            link.name, lease.yiaddr
                        ));
                        if let Err(e) = client.release(&lease).await {
                            crate::log::warn(&format!("DHCP release on {}: {e}", link.name));
                        }
                    }
                    return;
                }
                Step::State(Ok(DhcpV4State::Done(lease))) => {
                    crate::log::info(&format!(
                        "DHCP on {}: {} for {} s from {}",
                        link.name, lease.yiaddr, lease.lease_time_sec, lease.srv_id
                    ));
                    net.apply_lease(network, Some(lease_info(&lease, now_unix())));
                    leased = Some(*lease);
                }
                Step::State(Ok(DhcpV4State::InitReboot)) if leased.is_some() => {
                    crate::log::warn(&format!("DHCP on {}: the lease expired", link.name));
                    leased = None;
                    net.apply_lease(network, None);
                }
                Step::State(Ok(state)) => {
                    crate::log::debug(&format!("DHCP on {}: {state}", link.name));
                }
                Step::State(Err(e)) => {
                    crate::log::warn(&format!("DHCP on {}: {e}; starting over", link.name));
                    break;
                }
            }
        }
        // The client is rebuilt after an error; a lease still held stays applied until its
        // new client's first answer (or expiry) says otherwise.
        if wait_or_stop(net, &leave, RETRY).await {
            return;
        }
    }
}

/// Sleeps `d`; true when shutdown (or the endpoint's removal) came first.
async fn wait_or_stop(net: &Network, leave: &tokio::sync::Notify, d: Duration) -> bool {
    if net.stopping.get() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => net.stopping.get(),
        _ = net.stop.notified() => true,
        _ = leave.notified() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_fields_become_what_tether_applies() {
        let mut lease = DhcpV4Lease::default();
        lease.yiaddr = Ipv4Addr::new(10, 0, 2, 15);
        lease.subnet_mask = Ipv4Addr::new(255, 255, 255, 0);
        lease.srv_id = Ipv4Addr::new(10, 0, 2, 2);
        lease.gateways = Some(vec![Ipv4Addr::new(10, 0, 2, 2)]);
        lease.dns_srvs = Some(vec![Ipv4Addr::new(10, 0, 2, 3)]);
        lease.lease_time_sec = 86400;
        lease.t1_sec = 43200;
        lease.t2_sec = 75600;
        let info = lease_info(&lease, 7);
        assert_eq!(info.address.to_string(), "10.0.2.15/24");
        assert_eq!(info.router, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(info.nameservers, ["10.0.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.times.renew_secs, 43200);
        assert_eq!(info.times.obtained_unix, 7);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 240, 0)), 20);
        assert_eq!(client_id("c0ffee", "bridge"), b"tether:c0ffee:bridge");
    }
}
