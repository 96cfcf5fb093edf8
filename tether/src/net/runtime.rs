//! The network after boot: DHCP leases come, change and go (net/dhcp.rs), and each change is
//! applied to the interface, the firewall, /etc/hosts and /etc/resolv.conf, then reported to the
//! appliance (`Control::Network`, and guestinfo on vSphere). Single-threaded, like the rest of
//! tether: the state is behind a `RefCell`, never borrowed across an await.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use guestinfo::{Cidr, ContainerSpec, NetworkEndpoint};
use tokio::sync::Notify;

use crate::net::ops::NetOs;
use crate::net::{self, Endpoint};

/// How long boot waits for the first DHCP leases before the sessions start anyway (they keep
/// being sought; the appliance sees the endpoint's error meanwhile).
pub const FIRST_LEASE_WAIT: Duration = Duration::from_secs(30);
/// How long a DHCP release may take at shutdown.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How long a hot-plugged NIC may take to appear at its slot (the kernel's PCI hot-plug
/// handling and the driver's probe), and then a DHCP endpoint to get its first lease.
pub const HOTPLUG_WAIT: Duration = Duration::from_secs(10);
/// How often the slot is looked at while a hot-plugged NIC is awaited.
const HOTPLUG_POLL: Duration = Duration::from_millis(100);

/// What a lease gives the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub address: Cidr,
    pub router: Option<IpAddr>,
    pub nameservers: Vec<IpAddr>,
    pub times: wire::Lease,
}

/// Where changes go: the files, the appliance.
pub trait Sink {
    /// Replaces `/etc/NAME` in the container.
    fn write_etc(&self, name: &str, contents: &[u8]);
    fn report(&self, endpoints: Vec<wire::EndpointStatus>);
}

pub struct Network {
    pub spec: Rc<ContainerSpec>,
    pub os: Rc<dyn NetOs>,
    pub sink: Rc<dyn Sink>,
    pub endpoints: RefCell<Vec<Endpoint>>,
    /// A lease was applied (boot waits for the first ones).
    pub changed: Notify,
    /// Shutdown: DHCP clients release their leases and end.
    pub stop: Notify,
    pub stopping: Cell<bool>,
    /// The networks whose DHCP client runs now.
    pub clients: RefCell<BTreeSet<String>>,
    /// A client ended (after its release).
    pub ended_changed: Notify,
    /// Per network: its endpoint is being removed, so its DHCP client releases and ends.
    pub leaving: RefCell<BTreeMap<String, Rc<Notify>>>,
}

impl Network {
    pub fn new(
        spec: Rc<ContainerSpec>,
        os: Rc<dyn NetOs>,
        sink: Rc<dyn Sink>,
        endpoints: Vec<Endpoint>,
    ) -> Rc<Self> {
        Rc::new(Self {
            spec,
            os,
            sink,
            endpoints: RefCell::new(endpoints),
            changed: Notify::new(),
            stop: Notify::new(),
            stopping: Cell::new(false),
            clients: RefCell::new(BTreeSet::new()),
            ended_changed: Notify::new(),
            leaving: RefCell::new(BTreeMap::new()),
        })
    }

    /// Applies a new lease (or its loss) to the endpoint on `network`, then everything that
    /// depends on it. An endpoint removed meanwhile takes nothing.
    pub fn apply_lease(&self, network: &str, lease: Option<LeaseInfo>) {
        {
            let mut eps = self.endpoints.borrow_mut();
            let Some(ep) = eps.iter_mut().find(|ep| ep.network == network) else {
                return;
            };
            let new = lease.as_ref().map(|l| (l.address, l.router));
            if let Err(e) = net::set_ipv4(&*self.os, ep, new) {
                crate::log::error(&format!("DHCP: {e}"));
                ep.error = e.to_string();
            } else {
                ep.error = match &lease {
                    Some(_) => String::new(),
                    None => "DHCP: no lease (expired or not yet given)".into(),
                };
            }
            ep.lease_dns = lease
                .as_ref()
                .map(|l| l.nameservers.clone())
                .unwrap_or_default();
            ep.lease = lease.map(|l| l.times);
        }
        self.refresh();
        self.changed.notify_waiters();
    }

    /// Re-applies the firewall and the files, and reports: after any change.
    pub fn refresh(&self) {
        let eps = self.endpoints.borrow();
        let rules = net::ruleset(&eps);
        match self.os.set_firewall(&rules) {
            Ok(()) => {
                for r in rules.rules() {
                    crate::log::debug(&format!("firewall: {}", crate::net::firewall::describe(&r)));
                }
            }
            Err(e) => crate::log::error(&format!("firewall not updated: {e}")),
        }
        let hostname = self.spec.effective_hostname();
        match crate::boot::hosts_file(
            &hostname,
            &self.spec.extra_hosts,
            &net::hosts_lines(&hostname, &eps),
        ) {
            Ok(hosts) => self.sink.write_etc("hosts", hosts.as_bytes()),
            Err(e) => crate::log::error(&format!("/etc/hosts not updated: {e}")),
        }
        let nameservers = net::nameservers(&self.spec, &eps);
        if let Some(resolv) = crate::boot::resolv_conf(&nameservers, &self.spec.dns_search) {
            self.sink.write_etc("resolv.conf", resolv.as_bytes());
        }
        self.sink.report(net::status(&*self.os, &eps));
    }

    /// Whether every DHCP endpoint has a lease.
    pub fn all_leased(&self) -> bool {
        self.endpoints
            .borrow()
            .iter()
            .all(|ep| !ep.spec.is_dhcp() || ep.ipv4.is_some())
    }

    /// Releases the leases (shutdown), waiting a moment for the clients to send it.
    pub async fn stop(&self) {
        if self.clients.borrow().is_empty() {
            return;
        }
        self.stopping.set(true);
        self.stop.notify_waiters();
        self.wait_for_clients(|c| c.is_empty()).await;
    }

    /// Waits (up to [`RELEASE_WAIT`]) until `done` holds for the running clients.
    async fn wait_for_clients(&self, done: impl Fn(&BTreeSet<String>) -> bool) {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while !done(&self.clients.borrow()) {
            tokio::select! {
                _ = self.ended_changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// A NIC hot-plugged into the running VM, as endpoint `network`: awaited at its slot (up to
    /// [`HOTPLUG_WAIT`]) and configured as boot configures one; then the files, the firewall
    /// and the report. Must be called inside a
    /// `LocalSet`. The error says what failed (a NIC that never appeared names its slot).
    pub async fn add(self: &Rc<Self>, network: &str, spec: NetworkEndpoint) -> Result<(), String> {
        if self
            .endpoints
            .borrow()
            .iter()
            .any(|ep| ep.network == network)
        {
            return Err(format!("network {network:?} is configured already"));
        }
        let deadline = tokio::time::Instant::now() + HOTPLUG_WAIT;
        let ep = loop {
            match net::bring_up_one(&*self.os, network, &spec) {
                Ok(ep) => break ep,
                Err(net::NetError::NicMissing { problem, .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    crate::log::debug(&format!("hot-plugged NIC not there yet: {problem}"));
                    tokio::time::sleep(HOTPLUG_POLL).await;
                }
                Err(net::NetError::NicMissing { problem, .. }) => {
                    return Err(format!(
                        "network {network:?}: the hot-plugged NIC did not appear within {} s: {problem}",
                        HOTPLUG_WAIT.as_secs()
                    ))
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        crate::log::info(&format!(
            "network {network:?}: hot-added NIC {} at {}",
            ep.link.name, spec.slot
        ));
        // A DHCP endpoint's client is started by the caller (`dhcp::hot_added`).
        self.endpoints.borrow_mut().push(ep);
        self.refresh();
        Ok(())
    }

    /// Endpoint `network` dropped before its NIC is unplugged: its DHCP client releases the
    /// lease and ends, its addresses and routes go, then the files, the firewall and the report.
    pub async fn remove(&self, network: &str) -> Result<(), String> {
        if !self
            .endpoints
            .borrow()
            .iter()
            .any(|ep| ep.network == network)
        {
            return Err(format!("network {network:?} is not configured"));
        }
        if self.clients.borrow().contains(network) {
            let leave = self
                .leaving
                .borrow_mut()
                .entry(network.to_string())
                .or_default()
                .clone();
            leave.notify_one();
            self.wait_for_clients(|c| !c.contains(network)).await;
        }
        self.leaving.borrow_mut().remove(network);
        let removed = {
            let mut eps = self.endpoints.borrow_mut();
            let i = eps.iter().position(|ep| ep.network == network);
            i.map(|i| eps.remove(i))
        };
        if let Some(mut ep) = removed {
            if let Err(e) = net::set_ipv4(&*self.os, &mut ep, None) {
                crate::log::warn(&format!("network {network:?}: {e}"));
            }
            for &a in &ep.spec.static_ipv6 {
                let _ = self.os.del_address(ep.link.index, a);
            }
            crate::log::info(&format!("network {network:?}: {} removed", ep.link.name));
        }
        self.refresh();
        Ok(())
    }

    /// The signal that the endpoint on `network` is leaving (its client waits on it).
    pub fn leave_signal(&self, network: &str) -> Rc<Notify> {
        self.leaving
            .borrow_mut()
            .entry(network.to_string())
            .or_default()
            .clone()
    }

    /// A client ended.
    pub fn client_ended(&self, network: &str) {
        self.clients.borrow_mut().remove(network);
        self.ended_changed.notify_waiters();
    }
}
