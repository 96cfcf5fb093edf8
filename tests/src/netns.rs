//! Network namespaces a test creates for its containerVMs' traffic, with a bridge and taps for
//! QEMU and, when asked, dnsmasq. Each one is removed by its Drop guard, also when the test
//! fails, with whatever still runs in it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct NetNs {
    pub name: String,
    /// The bridge's address (the containers' gateway), `10.N.0.1`.
    pub gateway: String,
    /// `10.N.0`: the subnet's first three octets.
    pub prefix: String,
    children: Vec<Child>,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("ip(8) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetNs {
    /// A namespace `tether-TAG` with bridge `br0` at 10.`octet`.0.1/24 and tap `tap0` on it.
    pub fn new(tag: &str, octet: u8) -> Self {
        let name = format!("tether-{tag}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            gateway: format!("10.{octet}.0.1"),
            prefix: format!("10.{octet}.0"),
            children: Vec::new(),
        };
        let n = name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", ns.gateway),
            "dev",
            "br0",
        ]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        ip(&["-n", n, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", n, "link", "set", "tap0", "master", "br0", "up"]);
        ns
    }

    /// What QEMU runs under to be in this namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Starts `program` in the namespace for the namespace's life.
    pub fn spawn(&mut self, program: &str, args: &[&str]) {
        let child = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        self.children.push(child);
    }

    /// dnsmasq as the bridge's DHCP server (no DNS), handing out `.50`-`.60` for `lease` with
    /// T1 and T2 as given; its log is `dir/dnsmasq.log`.
    pub fn dnsmasq(&mut self, dir: &Path, lease: &str, t1: u32, t2: u32) -> PathBuf {
        let log = dir.join("dnsmasq.log");
        let leases = dir.join("dnsmasq.leases");
        let p = &self.prefix;
        let args = [
            "--no-daemon".to_string(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),
            "--interface=br0".into(),
            "--bind-interfaces".into(),
            "--dhcp-authoritative".into(),
            format!("--dhcp-range={p}.50,{p}.60,255.255.255.0,{lease}"),
            format!("--dhcp-option=option:T1,{t1}"),
            format!("--dhcp-option=option:T2,{t2}"),
            format!("--dhcp-option=option:router,{}", self.gateway),
            format!("--dhcp-leasefile={}", leases.display()),
            "--log-dhcp".into(),
            format!("--log-facility={}", log.display()),
            "--pid-file=".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn("dnsmasq", &args);
        log
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything else still in it (a QEMU the test did not stop).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
