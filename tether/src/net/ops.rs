//! Every privileged call the network setup makes, behind one narrow trait: the real one speaks
//! netlink (net/netlink.rs), `Recording` serves the unit tests. Errors are the bare errno; the
//! callers say what they were doing.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use guestinfo::Cidr;

use crate::net::firewall::Ruleset;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
}

/// A route through an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub index: u32,
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
}

pub trait NetOs {
    /// Entries of a directory (sysfs, to find a NIC by its PCI address).
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn link(&self, name: &str) -> io::Result<Link>;
    /// Renames a link; the link must be down.
    fn rename(&self, index: u32, name: &str) -> io::Result<()>;
    fn set_up(&self, index: u32) -> io::Result<()>;
    /// Adds an address (an existing one is replaced, so a renewal refreshes it).
    fn add_address(&self, index: u32, address: Cidr) -> io::Result<()>;
    fn del_address(&self, index: u32, address: Cidr) -> io::Result<()>;
    /// The link's addresses, IPv4 and IPv6 (link-local included).
    fn addresses(&self, index: u32) -> io::Result<Vec<Cidr>>;
    /// Adds a route; one that exists already is fine.
    fn add_route(&self, route: &Route) -> io::Result<()>;
    fn del_route(&self, route: &Route) -> io::Result<()>;
    /// Sends a gratuitous ARP for `ip` from the link: neighbours drop a stale entry for the
    /// address at once instead of after their cache times out.
    fn announce(&self, link: &Link, ip: Ipv4Addr) -> io::Result<()>;
    /// Replaces tether's firewall table with `ruleset`, in one transaction.
    fn set_firewall(&self, ruleset: &Ruleset) -> io::Result<()>;
}

#[cfg(test)]
pub mod recording {
    //! A fake kernel: links and sysfs entries set up by the test; every call recorded as text.
    use std::cell::RefCell;
    use std::io;
    use std::net::Ipv4Addr;
    use std::path::Path;

    use guestinfo::Cidr;

    use crate::net::firewall::Ruleset;
    use crate::net::ops::{Link, NetOs, Route};
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct Recording {
        pub dirs: BTreeMap<String, Vec<String>>,
        pub links: RefCell<Vec<Link>>,
        pub addresses: RefCell<BTreeMap<u32, Vec<Cidr>>>,
        pub calls: RefCell<Vec<String>>,
        pub firewall: RefCell<Option<Ruleset>>,
        /// Calls (by their recorded text's first word) that fail with this errno.
        pub fail: BTreeMap<&'static str, i32>,
    }

    impl Recording {
        /// A NIC `name` at PCI path `steps` (`0000:00:03.0`, or a bridge then `0000:01:03.0`).
        pub fn nic(mut self, steps: &[&str], name: &str, index: u32) -> Self {
            let mut at = "/sys/bus/pci/devices".to_string();
            for step in steps {
                self.dirs
                    .entry(at.clone())
                    .or_default()
                    .push(step.to_string());
                at = format!("{at}/{step}");
            }
            self.dirs
                .insert(format!("{at}/net"), vec![name.to_string()]);
            self.links.borrow_mut().push(Link {
                index,
                name: name.to_string(),
                mac: [0x52, 0x54, 0, 0x12, 0x34, index as u8],
            });
            self
        }

        fn record(&self, what: String) -> io::Result<()> {
            let word = what.split(' ').next().unwrap_or("").to_string();
            self.calls.borrow_mut().push(what);
            match self.fail.get(word.as_str()) {
                Some(&errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl NetOs for Recording {
        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            self.dirs
                .get(path.to_str().unwrap_or(""))
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
        }
        fn link(&self, name: &str) -> io::Result<Link> {
            self.links
                .borrow()
                .iter()
                .find(|l| l.name == name)
                .cloned()
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
        }
        fn rename(&self, index: u32, name: &str) -> io::Result<()> {
            self.record(format!("rename {index} {name}"))?;
            for l in self.links.borrow_mut().iter_mut() {
                if l.index == index {
                    l.name = name.to_string();
                }
            }
            Ok(())
        }
        fn set_up(&self, index: u32) -> io::Result<()> {
            self.record(format!("up {index}"))
        }
        fn add_address(&self, index: u32, address: Cidr) -> io::Result<()> {
            self.record(format!("addr-add {index} {address}"))?;
            let mut all = self.addresses.borrow_mut();
            let list = all.entry(index).or_default();
            if !list.contains(&address) {
                list.push(address);
            }
            Ok(())
        }
        fn del_address(&self, index: u32, address: Cidr) -> io::Result<()> {
            self.record(format!("addr-del {index} {address}"))?;
            if let Some(list) = self.addresses.borrow_mut().get_mut(&index) {
                list.retain(|a| *a != address);
            }
            Ok(())
        }
        fn addresses(&self, index: u32) -> io::Result<Vec<Cidr>> {
            Ok(self
                .addresses
                .borrow()
                .get(&index)
                .cloned()
                .unwrap_or_default())
        }
        fn add_route(&self, r: &Route) -> io::Result<()> {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            self.record(format!("route-add {}{via} dev {}", r.destination, r.index))
        }
        fn del_route(&self, r: &Route) -> io::Result<()> {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            self.record(format!("route-del {}{via} dev {}", r.destination, r.index))
        }
        fn announce(&self, link: &Link, ip: Ipv4Addr) -> io::Result<()> {
            self.record(format!("arp {} {ip}", link.name))
        }
        fn set_firewall(&self, ruleset: &Ruleset) -> io::Result<()> {
            self.record(format!("firewall {}", ruleset.endpoints.len()))?;
            *self.firewall.borrow_mut() = Some(ruleset.clone());
            Ok(())
        }
    }
}
