//! The network after boot: DHCP leases come, change and go (net/dhcp.rs), and each change is
//! applied to the interface, the firewall, /etc/hosts and /etc/resolv.conf, then reported to the
//! appliance (`Control::Network`, and guestinfo on vSphere). Single-threaded, like the rest of
//! tether: the state is behind a `RefCell`, never borrowed across an await.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use guestinfo::{Cidr, ContainerSpec};
use tokio::sync::Notify;

use crate::net::ops::NetOs;
use crate::net::{self, Endpoint};

/// How long boot waits for the first DHCP leases before the sessions start anyway (they keep
/// being sought; the appliance sees the endpoint's error meanwhile).
pub const FIRST_LEASE_WAIT: Duration = Duration::from_secs(30);
/// How long a DHCP release may take at shutdown.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

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
    /// DHCP clients that have ended (after their release).
    pub ended: Cell<usize>,
    pub ended_changed: Notify,
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
            ended: Cell::new(0),
            ended_changed: Notify::new(),
        })
    }

    /// Applies a new lease (or its loss) to endpoint `i`, then everything that depends on it.
    pub fn apply_lease(&self, i: usize, lease: Option<LeaseInfo>) {
        {
            let mut eps = self.endpoints.borrow_mut();
            let Some(ep) = eps.get_mut(i) else { return };
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
        let clients = self
            .endpoints
            .borrow()
            .iter()
            .filter(|ep| ep.spec.is_dhcp())
            .count();
        if clients == 0 {
            return;
        }
        self.stopping.set(true);
        self.stop.notify_waiters();
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while self.ended.get() < clients {
            tokio::select! {
                _ = self.ended_changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}
