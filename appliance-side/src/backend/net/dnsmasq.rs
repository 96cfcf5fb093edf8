//! One dnsmasq per user network, inside its namespace, on its bridge: DHCP for reserved
//! addresses only (the engine assigns every endpoint's address, as docker's IPAM does, and
//! reserves it for the NIC's MAC), DNS for the containers' names and aliases. Its files live in
//! the network's directory: `dhcp-hosts` (`MAC,IP`), `hosts` (`IP NAME...`), `leases`,
//! `dnsmasq.log`, `dnsmasq.pid`. It runs in a process group of its own and outlives an appliance
//! restart, like the containerVMs it serves.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::backend::net::{BridgePlan, HostEntry, BRIDGE};
use crate::backend::{spawn_detached, BackendError};
use crate::store::atomic::write_atomic;

const PID_FILE: &str = "dnsmasq.pid";
const LOG_FILE: &str = "dnsmasq.log";
const STDERR_FILE: &str = "dnsmasq.stderr";
const DHCP_HOSTS: &str = "dhcp-hosts";
const HOSTS: &str = "hosts";

/// The pid of the network's dnsmasq, if the one its pid file names still runs (checked by its
/// command line, which names this directory: a recycled pid is not taken for it).
pub fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    (cmdline.contains("dnsmasq") && cmdline.contains(&*dir.to_string_lossy())).then_some(pid)
}

fn io_err(what: &'static str, path: &Path, source: io::Error) -> BackendError {
    BackendError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Starts the network's dnsmasq unless it runs.
pub fn ensure_running(dir: &Path, ns: &str, plan: &BridgePlan) -> Result<(), BackendError> {
    if running_pid(dir).is_some() {
        return Ok(());
    }
    for f in [DHCP_HOSTS, HOSTS] {
        let path = dir.join(f);
        if !path.exists() {
            write_atomic(&path, b"").map_err(|e| io_err("writing", &path, e))?;
        }
    }
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let args = [
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        // Its files are under the appliance's home (0700): it keeps root's rights to read them
        // again on SIGHUP, inside the network's namespace only.
        "--user=root".into(),
        "--group=root".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--domain-needed".into(),
        "--bind-interfaces".into(),
        format!("--interface={BRIDGE}"),
        format!("--listen-address={}", plan.gateway),
        format!(
            "--dhcp-range={},static,{},{}",
            plan.subnet.base,
            mask(plan.subnet.prefix),
            plan.lease_secs
        ),
        "--dhcp-authoritative".into(),
        format!("--dhcp-hostsfile={}", path(DHCP_HOSTS)),
        format!("--addn-hosts={}", path(HOSTS)),
        format!("--dhcp-leasefile={}", path("leases")),
        // Its own pid file, not /var/run/dnsmasq.pid, which every network's dnsmasq (and the
        // host's) would share: a second one failed at start when that file was there.
        format!("--pid-file={}", path("dnsmasq-own.pid")),
        format!("--log-facility={}", path(LOG_FILE)),
        "--log-dhcp".into(),
    ];
    // Its stderr goes to a file: a pipe nobody reads any more would kill it with SIGPIPE.
    let stderr_path = dir.join(STDERR_FILE);
    let stderr =
        std::fs::File::create(&stderr_path).map_err(|e| io_err("creating", &stderr_path, e))?;
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, "dnsmasq"]).args(&args);
    let mut child = spawn_detached(&mut command, Stdio::from(stderr), "dnsmasq")?;
    // `ip netns exec` execs dnsmasq in place: the child's pid is dnsmasq's.
    let pid_file = dir.join(PID_FILE);
    write_atomic(&pid_file, format!("{}\n", child.id()).as_bytes())
        .map_err(|e| io_err("writing", &pid_file, e))?;
    // It fails at once on a bad option or a port it cannot bind; else it is serving.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let _ = std::fs::remove_file(&pid_file);
            return Err(BackendError::Failed(format!(
                "dnsmasq for the network exited ({status}): {} (is dnsmasq installed? `make deps`)",
                err.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reaped when it ends while this appliance runs; after a restart it is nobody's child.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}

fn mask(prefix: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    })
}

/// Stops the network's dnsmasq (SIGTERM, then SIGKILL after a second).
pub fn stop(dir: &Path) {
    let Some(pid) = running_pid(dir) else {
        return;
    };
    let signal = |sig| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    let _ = signal(nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    while running_pid(dir).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if running_pid(dir).is_some() {
        let _ = signal(nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// dnsmasq's two files for `hosts`.
pub fn render(hosts: &[HostEntry]) -> (String, String) {
    let mut dhcp = String::new();
    let mut dns = String::new();
    for h in hosts {
        dhcp.push_str(&format!("{},{}\n", h.mac, h.ip));
        if !h.names.is_empty() {
            dns.push_str(&format!("{} {}\n", h.ip, h.names.join(" ")));
        }
    }
    (dhcp, dns)
}

/// Rewrites the reservations and names, then SIGHUP: dnsmasq reads both files again.
pub fn set_hosts(dir: &Path, hosts: &[HostEntry]) -> Result<(), BackendError> {
    let (dhcp, dns) = render(hosts);
    for (file, text) in [(DHCP_HOSTS, dhcp), (HOSTS, dns)] {
        let path = dir.join(file);
        write_atomic(&path, text.as_bytes()).map_err(|e| io_err("writing", &path, e))?;
    }
    if let Some(pid) = running_pid(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_for_every_host_and_names_for_the_named() {
        let hosts = [
            HostEntry {
                ip: "172.18.0.2".parse().unwrap(),
                mac: "02:42:ac:12:00:02".into(),
                names: vec!["web".into(), "www".into(), "0123456789ab".into()],
            },
            HostEntry {
                ip: "172.18.0.3".parse().unwrap(),
                mac: "02:42:ac:12:00:03".into(),
                names: vec![],
            },
        ];
        let (dhcp, dns) = render(&hosts);
        assert_eq!(
            dhcp,
            "02:42:ac:12:00:02,172.18.0.2\n02:42:ac:12:00:03,172.18.0.3\n"
        );
        assert_eq!(dns, "172.18.0.2 web www 0123456789ab\n");
        assert_eq!(mask(16).to_string(), "255.255.0.0");
    }
}
