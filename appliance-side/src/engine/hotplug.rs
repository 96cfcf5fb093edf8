//! `docker network connect/disconnect` of a running container: its NIC hot-plugged into (or
//! out of) the running VM by the backend, and tether told to configure (or drop) the endpoint
//! with `Control::NetworkAdd`/`NetworkRemove`. Tether's answer (`NetworkChanged`) is the
//! request's: applied, or a 500 with its reason, the NIC unplugged again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use wire::Control;

use crate::backend::{Nic, NicAttachment};
use crate::engine::endpoint_config::MAX_NICS;
use crate::engine::{Engine, EngineError};
use crate::server::container::Container;
use crate::server::events::Event;
use crate::store::endpoints::Endpoint;
use crate::store::networks::NONE_NETWORK;
use crate::store::records::{ContainerOptions, Record};

/// How long tether may take to answer: its own bounds (the NIC's appearance, a first DHCP
/// lease, a release) are 10 s each.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

impl Engine {
    /// docker network connect: hot-plugged when the container runs, else recorded for its
    /// next start.
    pub async fn connect(
        &self,
        reference: &str,
        container: &str,
        cfg: &Value,
    ) -> Result<(), EngineError> {
        let rec = self.resolve(container)?;
        if !self.is_active(&rec.id) {
            return self.network_connect(reference, container, cfg);
        }
        let net = self.network(reference)?;
        if net.name == NONE_NETWORK || rec.options.network_mode == NONE_NETWORK {
            return Err(EngineError::BadRequest(format!(
                "container {} cannot be connected to network {}: a container on none has only lo",
                rec.name, net.name
            )));
        }
        if !net.is_user() {
            return Err(EngineError::BadRequest(format!(
                "container {} is running: only a user network's NIC can be hot-plugged, not {}'s (stop it, connect it, start it)",
                rec.name, net.name
            )));
        }
        let c = self.running_soon(&rec).await?;
        let backend = self.backend()?;
        let plumbing = self.net.plumbing.clone().ok_or_else(|| {
            EngineError::Internal("this appliance has no network plumbing".into())
        })?;
        // The endpoint, in the record before the NIC exists: its address stays taken, and the
        // network's dnsmasq gets its reservation and name.
        let (rec, ep) = {
            let _net = self.net.lock.lock().expect("network lock");
            let mut rec = self.resolve(container)?;
            if rec.options.endpoints.iter().any(|e| e.network_id == net.id) {
                return Err(EngineError::Forbidden(format!(
                    "endpoint with name {} already exists in network {}",
                    rec.name, net.name
                )));
            }
            let slot =
                free_slot(&rec.options.endpoints, |i| self.nic_slot(i)).ok_or_else(|| {
                    EngineError::BadRequest(format!(
                        "a containerVM can be on at most {MAX_NICS} networks"
                    ))
                })?;
            let ep = self.new_endpoint(&net, cfg, slot, &[])?;
            rec.options.endpoints.push(ep.clone());
            crate::store::records::save(self.home(), &rec)?;
            (rec, ep)
        };
        let undo = |why: EngineError| {
            self.forget_endpoint(container, &ep);
            why
        };
        let plugged = (|| {
            plumbing
                .up(&crate::engine::networks::bridge_plan(&net)?)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            self.refresh_hosts(&net, None)?;
            let tap = plumbing
                .open_tap(&net.id, &crate::engine::endpoints::tap_name(&rec.id))
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let nic = Nic {
                slot: ep.slot,
                network: net.name.clone(),
                mac: ep.mac.clone(),
                attachment: NicAttachment::Tap(Arc::new(tap)),
            };
            backend
                .hot_add_nic(&self.home().container(&rec.id), &nic)
                .map_err(|e| EngineError::Internal(e.to_string()))
        })();
        plugged.map_err(undo)?;
        let guest = self.guest_endpoint(&rec, &ep, &c).map_err(undo)?;
        let answer = ask(&c, |request| Control::NetworkAdd {
            request,
            network: net.name.clone(),
            config: guest,
        })
        .await;
        if let Err(e) = answer {
            // The guest could not use it: the NIC goes again, so a retry starts clean.
            if let Err(u) = backend.hot_remove_nic(&self.home().container(&rec.id), ep.slot) {
                tracing::warn!(container = %rec.id, "unplugging the NIC tether refused: {u}");
            }
            return Err(undo(e));
        }
        Ok(())
    }

    /// docker network disconnect: hot-unplugged when the container runs (tether drops the
    /// endpoint first), else recorded for its next start.
    pub async fn disconnect(&self, reference: &str, container: &str) -> Result<(), EngineError> {
        let rec = self.resolve(container)?;
        if !self.is_active(&rec.id) {
            return self.network_disconnect(reference, container);
        }
        let net = self.network(reference)?;
        let Some(ep) = rec
            .options
            .endpoints
            .iter()
            .find(|e| e.network_id == net.id)
            .cloned()
        else {
            return Err(EngineError::Forbidden(format!(
                "container {} is not connected to network {}",
                rec.id, net.name
            )));
        };
        let c = self.running_soon(&rec).await?;
        let backend = self.backend()?;
        let dir = self.home().container(&rec.id);
        backend
            .hot_removable(&dir, ep.slot)
            .map_err(|e| EngineError::Conflict(format!("container {}: {e}", rec.name)))?;
        ask(&c, |request| Control::NetworkRemove {
            request,
            network: net.name.clone(),
        })
        .await?;
        backend
            .hot_remove_nic(&dir, ep.slot)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.forget_endpoint(container, &ep);
        Ok(())
    }

    /// The endpoint out of the container's record, and its names out of its network.
    fn forget_endpoint(&self, container: &str, ep: &Endpoint) {
        let _net = self.net.lock.lock().expect("network lock");
        let Ok(mut rec) = self.resolve(container) else {
            return;
        };
        rec.options
            .endpoints
            .retain(|e| e.endpoint_id != ep.endpoint_id);
        if let Err(e) = crate::store::records::save(self.home(), &rec) {
            tracing::warn!(container = %rec.id, "saving its endpoints: {e}");
        }
        if let Ok(net) = self.network(&ep.network_id) {
            if let Err(e) = self.refresh_hosts(&net, None) {
                tracing::warn!(container = %rec.id, network = %net.name, "{e}");
            }
        }
    }

    /// The guestinfo keys of `ep` as tether will configure it: as a boot config would say,
    /// named with the first `ethN` the running guest does not use.
    fn guest_endpoint(
        &self,
        rec: &Record,
        ep: &Endpoint,
        c: &Container,
    ) -> Result<String, EngineError> {
        let all = self.guest_networks(rec)?;
        let mut endpoint = all.get(&ep.network_name).cloned().ok_or_else(|| {
            EngineError::Internal(format!("endpoint on {} not in the config", ep.network_name))
        })?;
        let taken: Vec<String> = c
            .state()
            .network
            .iter()
            .map(|s| s.interface.clone())
            .collect();
        endpoint.interface = (0..)
            .map(|n| format!("eth{n}"))
            .find(|name| !taken.contains(name))
            .unwrap_or_default();
        // The guest's resolver asks its first network's dnsmasq first, which answers "no such
        // name" for a peer on this one: the peers running now go in /etc/hosts (as VIC's
        // `hosts`), so they are reached by name at once.
        endpoint.network.hosts = self.peers_on(&ep.network_id, &rec.id);
        Ok(guestinfo::endpoint_to_vmx(&ep.network_name, &endpoint))
    }

    /// `NAME:ADDR` of every name of the running containers on network `net_id` but `except`.
    fn peers_on(&self, net_id: &str, except: &str) -> Vec<String> {
        let mut out = Vec::new();
        for peer in self.containers() {
            if peer.id == except || !self.is_active(&peer.id) {
                continue;
            }
            for ep in peer
                .options
                .endpoints
                .iter()
                .filter(|e| e.network_id == net_id)
            {
                let ip = self.endpoint_address(&peer, ep);
                if ip.is_empty() {
                    continue;
                }
                let names = std::iter::once(peer.name.clone())
                    .chain(ep.aliases.iter().cloned())
                    .chain(std::iter::once(peer.id[..12].to_string()));
                out.extend(names.map(|n| format!("{n}:{ip}")));
            }
        }
        out
    }

    fn backend(&self) -> Result<&dyn crate::backend::Backend, EngineError> {
        self.backend
            .as_deref()
            .ok_or_else(|| EngineError::Internal("this appliance runs no containerVMs".into()))
    }
}

/// The first NIC slot (`slot_of` a NIC's index) none of `endpoints` has (each has a root port
/// when the VM runs).
fn free_slot(endpoints: &[Endpoint], slot_of: impl Fn(usize) -> u32) -> Option<u32> {
    (0..MAX_NICS)
        .map(slot_of)
        .find(|s| !endpoints.iter().any(|e| e.slot == *s))
}

/// Sends the record `make` builds for a fresh request id and waits for tether's
/// `NetworkChanged` to it: an error is tether's reason, as a 500.
async fn ask(c: &Arc<Container>, make: impl FnOnce(u32) -> Control) -> Result<(), EngineError> {
    let request = u32::from_le_bytes(crate::store::atomic::random::<4>());
    // Subscribed before sending, so the answer cannot be missed.
    let mut events = c.events.subscribe();
    c.send_control(make(request))
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    let wait = async {
        loop {
            match events.recv().await {
                Ok(Event::NetworkChanged { request: r, error }) if r == request => {
                    return if error.is_empty() {
                        Ok(())
                    } else {
                        Err(EngineError::Internal(error))
                    };
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return Err(EngineError::Internal(
                        "the containerVM's channel closed before tether answered".into(),
                    ))
                }
            }
        }
    };
    tokio::time::timeout(ANSWER_WAIT, wait)
        .await
        .unwrap_or_else(|_| {
            Err(EngineError::Internal(format!(
                "tether did not answer within {} s",
                ANSWER_WAIT.as_secs()
            )))
        })
}

/// Where NICs may be hot-plugged into the container's VM: every NIC slot its endpoints do not
/// take; none on `--network none` (it cannot be connected).
pub fn hotplug_slots(o: &ContainerOptions, slot_of: impl Fn(usize) -> u32) -> Vec<u32> {
    if o.network_mode == NONE_NETWORK || o.endpoints.is_empty() {
        return Vec::new();
    }
    (0..MAX_NICS)
        .map(slot_of)
        .filter(|s| !o.endpoints.iter().any(|e| e.slot == *s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_plug_takes_the_first_free_slot_and_none_gets_no_ports() {
        let ep = |slot| Endpoint {
            slot,
            ..Default::default()
        };
        let nic_slot = |i: usize| crate::backend::ROOT_BUS_FIRST_NIC_SLOT + i as u32;
        assert_eq!(free_slot(&[ep(8), ep(10)], nic_slot), Some(9));
        let full: Vec<Endpoint> = (0..MAX_NICS).map(|i| ep(nic_slot(i))).collect();
        assert_eq!(free_slot(&full, nic_slot), None);
        let mut o = ContainerOptions {
            endpoints: vec![ep(8)],
            ..Default::default()
        };
        assert_eq!(
            hotplug_slots(&o, nic_slot),
            (9..=0x10).collect::<Vec<u32>>()
        );
        o.endpoints.clear();
        o.network_mode = NONE_NETWORK.into();
        assert!(hotplug_slots(&o, nic_slot).is_empty());
    }
}
