//! A user network's namespace and bridge, made with iproute2's `ip` (the host has it; the
//! namespace is the host kernel's, so nothing of this runs in a guest).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::backend::net::{
    dnsmasq, namespace_name, tap, BridgePlan, HostEntry, NetworkPlumbing, BRIDGE,
};
use crate::backend::BackendError;
use crate::home::Home;
use crate::store::networks;

/// Network namespaces on this host, made and removed with `ip netns`.
pub struct NetnsPlumbing {
    home: Home,
}

impl NetnsPlumbing {
    pub fn new(home: Home) -> Self {
        Self { home }
    }
}

/// Runs `ip ARGS`; its stderr in the error.
pub fn ip(args: &[&str]) -> Result<(), BackendError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BackendError::Tool {
            program: "ip",
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BackendError::Failed(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Whether `ip ARGS` succeeds (a probe: its output is not wanted).
fn ip_ok(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where `ip netns` keeps a namespace's handle.
pub fn namespace_path(ns: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(ns)
}

impl NetworkPlumbing for NetnsPlumbing {
    fn up(&self, plan: &BridgePlan) -> Result<(), BackendError> {
        let ns = namespace_name(&plan.id);
        if !namespace_path(&ns).exists() {
            ip(&["netns", "add", &ns])?;
        }
        if !ip_ok(&["-n", &ns, "link", "show", BRIDGE]) {
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "link", "add", BRIDGE, "type", "bridge"])?;
            let addr = format!("{}/{}", plan.gateway, plan.subnet.prefix);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", BRIDGE])?;
            ip(&["-n", &ns, "link", "set", BRIDGE, "up"])?;
        }
        let dir = networks::dir(&self.home, &plan.id);
        dnsmasq::ensure_running(&dir, &ns, plan)
    }

    fn down(&self, net_id: &str) {
        dnsmasq::stop(&networks::dir(&self.home, net_id));
        let ns = namespace_name(net_id);
        if namespace_path(&ns).exists() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                tracing::warn!(network = %net_id, "removing its namespace: {e}");
            }
        }
    }

    fn set_hosts(&self, net_id: &str, hosts: &[HostEntry]) -> Result<(), BackendError> {
        dnsmasq::set_hosts(&networks::dir(&self.home, net_id), hosts)
    }

    fn open_tap(&self, net_id: &str, ifname: &str) -> Result<OwnedFd, BackendError> {
        let ns = namespace_name(net_id);
        let fd = tap::open_in(&namespace_path(&ns), ifname)?;
        ip(&["-n", &ns, "link", "set", ifname, "master", BRIDGE, "up"])?;
        Ok(fd)
    }

    fn namespace(&self, net_id: &str) -> String {
        namespace_name(net_id)
    }
}

/// Removes every network namespace and dnsmasq of `home`'s networks: what a test's guard calls
/// once its appliance and VMs are gone (and what nothing else needs: `network rm` removes one).
pub fn teardown_all(home: &Home) {
    let plumbing = NetnsPlumbing::new(home.clone());
    for net in networks::list(home) {
        if net.is_user() {
            plumbing.down(&net.id);
        }
    }
}
