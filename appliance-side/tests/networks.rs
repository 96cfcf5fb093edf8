//! docker's networks against `appliance serve`, with the stock docker CLI and no VMs: create, ls,
//! inspect, rm, prune, connect with docker's status codes and texts; each user network a real
//! network namespace with a bridge and a dnsmasq, removed with it, brought back by a restarted
//! server; endpoints, `--ip`, aliases and `-p` in container inspect. Needs root, iproute2 and
//! dnsmasq (`make deps`).

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
// Only its image archive is used here.
#[allow(dead_code)]
mod image_support;

use appliance::home::Home;
use common::detached::{text, Detached};

/// Removes every namespace and dnsmasq of the home's networks when the test ends, also when it
/// fails (before the server's own guard stops it).
struct NetGuard(Home);

impl Drop for NetGuard {
    fn drop(&mut self) {
        appliance::backend::net::netns::teardown_all(&self.0);
    }
}

fn env(tag: &str) -> (Detached, NetGuard) {
    let d = Detached::started(&format!("networks-{tag}"));
    let guard = NetGuard(Home::at(&d.home));
    (d, guard)
}

fn namespaces() -> String {
    text(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
}

fn namespace_of(id: &str) -> String {
    format!("tether-{}", &id[..12])
}

/// Whether a dnsmasq serves the network whose directory is under `home` with id `id`.
fn dnsmasq_runs(d: &Detached, id: &str) -> bool {
    let pid = std::fs::read_to_string(d.home.join("networks").join(id).join("dnsmasq.pid"))
        .unwrap_or_default();
    let pid = pid.trim();
    !pid.is_empty()
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("dnsmasq"))
            .unwrap_or(false)
}

fn inspect_network(d: &Detached, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", name])).unwrap();
    v[0].clone()
}

#[test]
fn network_create_ls_inspect_rm_with_dockers_errors() {
    let (d, _guard) = env("crud");
    let names = |d: &Detached| {
        let mut v: Vec<String> = d
            .ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"])
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&d), ["bridge bridge", "none null"]);
    let id = d.ok(&["network", "create", "backend"]).trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    assert_eq!(names(&d), ["backend bridge", "bridge bridge", "none null"]);
    let net = inspect_network(&d, "backend");
    assert_eq!(net["Id"], id);
    assert_eq!(net["IPAM"]["Config"][0]["Subnet"], "172.18.0.0/16");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "172.18.0.1");
    // By id prefix too.
    assert_eq!(inspect_network(&d, &id[..6])["Name"], "backend");
    // The namespace exists, its bridge has the gateway, its dnsmasq runs.
    let ns = namespace_of(&id);
    assert!(namespaces().contains(&ns), "{}", namespaces());
    let addr = Command::new("ip")
        .args(["-n", &ns, "-4", "-o", "addr", "show", "br0"])
        .output()
        .unwrap();
    assert!(
        text(&addr.stdout).contains("172.18.0.1/16"),
        "{}",
        text(&addr.stdout)
    );
    assert!(dnsmasq_runs(&d, &id));

    // A second network takes the next pool; --subnet/--gateway/--ip-range as given.
    let second = d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.77.0.0/24",
        "--gateway",
        "10.77.0.254",
        "--ip-range",
        "10.77.0.128/25",
        "--label",
        "tier=db",
        "second",
    ]);
    let net = inspect_network(&d, "second");
    assert_eq!(net["IPAM"]["Config"][0]["Gateway"], "10.77.0.254");
    assert_eq!(net["IPAM"]["Config"][0]["IPRange"], "10.77.0.128/25");
    assert_eq!(net["Labels"]["tier"], "db");
    let third = d.ok(&["network", "create", "third"]);
    assert_eq!(
        inspect_network(&d, "third")["IPAM"]["Config"][0]["Subnet"],
        "172.19.0.0/16"
    );
    let filtered = d.ok(&[
        "network",
        "ls",
        "--filter",
        "label=tier=db",
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(filtered, "second\n");
    let custom = d.ok(&["network", "ls", "-q", "--filter", "type=custom"]);
    assert_eq!(custom.lines().count(), 3, "{custom}");

    // docker's errors, word for word.
    let dup = d.fails(&["network", "create", "backend"]);
    assert!(
        dup.contains("network with name backend already exists"),
        "{dup}"
    );
    let missing = d.fails(&["network", "inspect", "nope"]);
    assert!(missing.contains("network nope not found"), "{missing}");
    let predefined = d.fails(&["network", "rm", "bridge"]);
    assert!(
        predefined.contains("bridge is a pre-defined network and cannot be removed"),
        "{predefined}"
    );
    let bad = d.fails(&["network", "create", "--subnet", "10.1.2.3/16", "bad"]);
    assert!(
        bad.contains("invalid subnet 10.1.2.3/16: it should be 10.1.0.0/16"),
        "{bad}"
    );
    let overlap = d.fails(&["network", "create", "--subnet", "172.18.5.0/24", "overlap"]);
    assert!(overlap.contains("Pool overlaps"), "{overlap}");
    let driver = d.fails(&["network", "create", "-d", "overlay", "ov"]);
    assert!(driver.contains("overlay"), "{driver}");
    let lease = d.fails(&["network", "create", "-o", "tether.dhcp.lease=10", "short"]);
    assert!(lease.contains("at least 120"), "{lease}");
    assert!(!d
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .contains("bad"));
    // Status codes, through the API itself.
    let status = |method: &str, path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "--unix-socket",
            ])
            .arg(d.home.join("docker.sock"))
            .arg(format!("http://docker/v1.45{path}"))
            .output()
            .unwrap();
        text(&out.stdout)
    };
    assert_eq!(status("GET", "/networks/nope"), "404");
    assert_eq!(status("DELETE", "/networks/bridge"), "403");
    assert_eq!(status("DELETE", "/networks/nope"), "404");

    // rm removes the namespace and dnsmasq with the record.
    d.ok(&["network", "rm", "backend"]);
    assert!(!namespaces().contains(&ns), "{}", namespaces());
    assert!(!d.home.join("networks").join(&id).exists());
    let gone = d.fails(&["network", "rm", "backend"]);
    assert!(gone.contains("network backend not found"), "{gone}");
    // prune removes every unused user network.
    let pruned = d.ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("second") && pruned.contains("third"),
        "{pruned}"
    );
    for id in [second.trim(), third.trim()] {
        assert!(!namespaces().contains(&namespace_of(id)));
    }
    assert_eq!(names(&d), ["bridge bridge", "none null"]);
}

#[test]
fn networks_come_back_after_a_server_restart_and_idle_ones_go_at_its_stop() {
    let (d, _guard) = env("restart");
    let id = d.ok(&["network", "create", "kept"]).trim().to_string();
    let ns = namespace_of(&id);
    let bridge_id = inspect_network(&d, "bridge")["Id"].clone();
    d.stop();
    // Stopped: nothing of an unused network stays on the host.
    assert!(!namespaces().contains(&ns), "{}", namespaces());
    assert!(!dnsmasq_runs(&d, &id));
    d.serve_ok();
    let net = inspect_network(&d, "kept");
    assert_eq!(net["Id"], id, "the same network, by id");
    assert_eq!(inspect_network(&d, "bridge")["Id"], bridge_id);
    assert!(namespaces().contains(&ns), "{}", namespaces());
    assert!(dnsmasq_runs(&d, &id));
}

#[test]
fn containers_endpoints_addresses_aliases_and_ports_in_inspect() {
    let (mut d, _guard) = env("endpoints");
    d.ok(&["network", "create", "--subnet", "10.88.0.0/24", "app"]);
    // A container made by the appliance's CLI, connected while it is not running.
    let out = d.cli(
        &["create", "--name", "web", "--", "/bin/sh", "-c", "sleep 60"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    d.ok(&[
        "network",
        "connect",
        "--alias",
        "www",
        "--ip",
        "10.88.0.50",
        "app",
        "web",
    ]);
    let inspect = |d: &Detached, f: &str| d.ok(&["inspect", "-f", f, "web"]).trim().to_string();
    assert_eq!(
        inspect(
            &d,
            "{{(index .NetworkSettings.Networks \"app\").IPAMConfig.IPv4Address}}"
        ),
        "10.88.0.50"
    );
    assert_eq!(
        inspect(&d, "{{(index .NetworkSettings.Networks \"app\").Aliases}}"),
        "[www]"
    );
    assert_eq!(
        inspect(
            &d,
            "{{(index .NetworkSettings.Networks \"app\").MacAddress}}"
        ),
        "02:42:0a:58:00:32"
    );
    // The same address again is docker's "in use"; an address outside the subnet is refused.
    let again = d.cli(&["create", "--name", "other", "--", "/bin/true"], None);
    assert!(again.status.success());
    let taken = d.fails(&["network", "connect", "--ip", "10.88.0.50", "app", "other"]);
    assert!(taken.contains("Address already in use"), "{taken}");
    let outside = d.fails(&["network", "connect", "--ip", "10.99.0.5", "app", "other"]);
    assert!(outside.contains("10.99.0.5"), "{outside}");
    // Dynamic addresses skip the gateway and the taken ones.
    d.ok(&["network", "connect", "app", "other"]);
    let dynamic = d.ok(&[
        "inspect",
        "-f",
        "{{(index .NetworkSettings.Networks \"app\").IPAMConfig}}",
        "other",
    ]);
    assert_eq!(dynamic.trim(), "<nil>", "no --ip: no IPAMConfig");
    let dup = d.fails(&["network", "connect", "app", "other"]);
    assert!(dup.contains("already exists in network app"), "{dup}");

    // Running (a host-mode tether on its channel), it is an active endpoint: rm is refused.
    let id = text(&d.docker(&["inspect", "-f", "{{.Id}}", "web"]).stdout)
        .trim()
        .to_string();
    d.attach_tether(&id);
    d.wait_state("web", "running");
    let members = inspect_network(&d, "app");
    assert_eq!(members["Containers"][&id]["Name"], "web", "{members}");
    assert_eq!(members["Containers"][&id]["IPv4Address"], "10.88.0.50/24");
    let busy = d.fails(&["network", "rm", "app"]);
    assert!(
        busy.contains("error while removing network: network app has active endpoints (web)"),
        "{busy}"
    );
    // The name resolves in the network's dnsmasq, from inside its namespace.
    let netid = members["Id"].as_str().unwrap().to_string();
    let hosts =
        std::fs::read_to_string(d.home.join("networks").join(&netid).join("hosts")).unwrap();
    assert!(hosts.contains("10.88.0.50 web www"), "{hosts}");
    let lookup = lookup_in(&namespace_of(&netid), "10.88.0.1", "www");
    assert!(lookup.contains("10.88.0.50"), "{lookup}");
}

/// `nslookup NAME SERVER` run inside namespace `ns` (busybox's, which needs no resolv.conf).
fn lookup_in(ns: &str, server: &str, name: &str) -> String {
    for _ in 0..50 {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "busybox", "nslookup", name, server])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let t = text(&out.stdout);
        if out.status.success() {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    "never resolved".into()
}

#[test]
fn create_with_networks_and_ports_as_docker_answers() {
    let (d, _guard) = env("create");
    d.ok(&["network", "create", "app"]);
    let archive = &image_support::fixtures().docker;
    d.ok(&["load", "-i", archive.to_str().unwrap()]);
    let image = image_support::TAG;
    // As dockerd: an unknown network is no error at create, the start names it (and a network
    // made meanwhile is taken).
    d.ok(&["create", "--name", "later", "--network", "nope", image]);
    let start = d.fails(&["start", "later"]);
    assert!(
        start.contains("failed to set up container networking: network nope not found"),
        "{start}"
    );
    let host = d.fails(&["create", "--network", "host", image]);
    assert!(host.contains("--network host is not supported"), "{host}");
    // The CLI refuses an alias on the default network itself; the API answers it as dockerd.
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"])
        .arg("--unix-socket")
        .arg(d.home.join("docker.sock"))
        .arg("-d")
        .arg(format!(
            r#"{{"Image":"{image}","NetworkingConfig":{{"EndpointsConfig":{{"bridge":{{"Aliases":["x"]}}}}}}}}"#
        ))
        .arg("http://docker/v1.45/containers/create")
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    assert!(answer.ends_with("\n400"), "{answer}");
    assert!(
        answer.contains(
            "network-scoped alias is supported only for containers in user defined networks"
        ),
        "{answer}"
    );
    d.ok(&[
        "create",
        "--name",
        "pub",
        "-p",
        "127.0.0.1:18080:80",
        "-p",
        "53/udp",
        "--expose",
        "9000",
        image,
    ]);
    let f = |name: &str, format: &str| d.ok(&["inspect", "-f", format, name]).trim().to_string();
    assert_eq!(f("pub", "{{.HostConfig.NetworkMode}}"), "default");
    assert_eq!(
        f("pub", "{{json .HostConfig.PortBindings}}"),
        r#"{"53/udp":[{"HostIp":"","HostPort":""}],"80/tcp":[{"HostIp":"127.0.0.1","HostPort":"18080"}]}"#
    );
    assert_eq!(
        f("pub", "{{json .Config.ExposedPorts}}"),
        r#"{"53/udp":{},"80/tcp":{},"8080/tcp":{},"9000/tcp":{}}"#
    );
    assert_eq!(
        f(
            "pub",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}"
        ),
        "bridge"
    );
    d.ok(&["create", "--name", "off", "--network", "none", image]);
    assert_eq!(
        f(
            "off",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}"
        ),
        "none"
    );
    d.ok(&[
        "create",
        "--name",
        "usr",
        "--network",
        "app",
        "--network-alias",
        "api",
        image,
    ]);
    assert_eq!(
        f(
            "usr",
            "{{(index .NetworkSettings.Networks \"app\").Aliases}}"
        ),
        "[api]"
    );
    assert_eq!(f("usr", "{{.HostConfig.NetworkMode}}"), "app");
    // A network removed under a stopped container: the container's start names it.
    d.ok(&["network", "rm", "app"]);
    let start = d.fails(&["start", "usr"]);
    assert!(
        start.contains("failed to set up container networking: network app not found"),
        "{start}"
    );
}
