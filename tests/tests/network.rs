//! Containers on networks, with the stock docker CLI against `appliance serve` and real
//! containerVMs: the default network (QEMU's user-mode network) with a published port a host
//! `curl` reaches, `-P`, `--network none`; a user network (a bridge in a network namespace the
//! appliance made, dnsmasq for addresses and names) where containerVMs reach each other by name
//! and alias, a static `--ip`, and a published port through the appliance's proxy. The address
//! docker inspect shows is the one `ip addr` shows inside. Test traffic stays on 127.0.0.1 and
//! inside the namespaces the appliance makes; the appliance's guard removes them, also when a
//! test fails.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{busybox_image_archive, text, Appliance};

/// The server as a real process, with the busybox image loaded.
fn appliance_with_image(tag: &str) -> (Appliance, &'static str) {
    let app = Appliance::start_process(tag);
    let (archive, image) = busybox_image_archive();
    ok(&app, &["load", "-i", archive.to_str().unwrap()]);
    (app, image)
}

fn ok(app: &Appliance, args: &[&str]) -> String {
    app.docker_ok(args)
}

/// A page httpd serves from /www, and the script that serves it on port 80 in the foreground.
const PAGE: &str = "hello from a containerVM\n";
fn httpd_script(page: &str) -> String {
    format!(
        "mkdir -p /www && printf '{}' > /www/index.html && exec httpd -f -p 80 -h /www",
        page.replace('\n', "\\n")
    )
}

/// `curl URL`'s body once it answers (the VM's httpd takes a moment after `run -d`).
fn curl(url: &str, secs: u64) -> Vec<u8> {
    let start = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", url])
            .output()
            .unwrap();
        if out.status.success() {
            return out.stdout;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{url} never answered: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The IPv4 address with prefix on eth0 inside the container (`ip -4 -o addr`'s 4th field).
fn address_inside(app: &Appliance, name: &str) -> String {
    let line = app.exec_until(name, "ip -4 -o addr show dev eth0 | grep inet", 60);
    line.split_whitespace()
        .nth(3)
        .unwrap_or_default()
        .to_string()
}

fn inspect(app: &Appliance, name: &str, format: &str) -> String {
    ok(app, &["inspect", "-f", format, name]).trim().to_string()
}

#[test]
fn a_published_port_on_the_default_network_serves_the_host() {
    let (app, image) = appliance_with_image("net-default");
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-u",
            "0",
            "-p",
            "127.0.0.1:18080:80",
            image,
            &httpd_script(PAGE),
        ],
    );
    let body = curl("http://127.0.0.1:18080/index.html", 90);
    assert_eq!(body, PAGE.as_bytes(), "the file, byte for byte");
    assert_eq!(
        ok(&app, &["port", "web"]).trim(),
        "80/tcp -> 127.0.0.1:18080"
    );
    assert_eq!(
        inspect(&app, "web", "{{json .NetworkSettings.Ports}}"),
        r#"{"80/tcp":[{"HostIp":"127.0.0.1","HostPort":"18080"}]}"#
    );
    // The address docker shows is the one the guest has (QEMU's DHCP lease, reported by tether).
    let inside = address_inside(&app, "web");
    let shown = format!(
        "{}/{}",
        inspect(&app, "web", "{{.NetworkSettings.IPAddress}}"),
        inspect(&app, "web", "{{.NetworkSettings.IPPrefixLen}}")
    );
    assert_eq!(shown, inside);
    assert_eq!(
        inspect(
            &app,
            "web",
            "{{.NetworkSettings.Networks.bridge.IPAddress}}"
        ),
        shown.split('/').next().unwrap()
    );
    let mac_inside = app.exec_until("web", "cat /sys/class/net/eth0/address", 10);
    assert_eq!(
        inspect(&app, "web", "{{.NetworkSettings.MacAddress}}"),
        mac_inside.trim()
    );
    // The same host port again: docker's error at start, and the first keeps serving.
    let clash = app.docker(&[
        "run",
        "-d",
        "--name",
        "clash",
        "-p",
        "127.0.0.1:18080:80",
        image,
        "sleep 30",
    ]);
    assert_eq!(clash.status.code(), Some(125), "{}", text(&clash.stderr));
    assert!(
        text(&clash.stderr).contains("failed to bind host port 127.0.0.1:18080/tcp"),
        "{}",
        text(&clash.stderr)
    );
    assert_eq!(
        curl("http://127.0.0.1:18080/index.html", 10),
        PAGE.as_bytes()
    );
    // Stopped, the port is free again and inspect shows none.
    ok(&app, &["stop", "-t", "1", "web"]);
    assert_eq!(
        inspect(&app, "web", "{{json .NetworkSettings.Ports}}"),
        "{}"
    );
    std::net::TcpListener::bind("127.0.0.1:18080").expect("the host port is released");
}

#[test]
fn publish_all_picks_free_ports_and_none_has_only_lo() {
    let (app, image) = appliance_with_image("net-publish-all");
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "any",
            "-u",
            "0",
            "-P",
            "--expose",
            "80",
            image,
            &httpd_script(PAGE),
        ],
    );
    let port = ok(&app, &["port", "any", "80/tcp"]);
    let addr = port.lines().next().unwrap_or_default().trim().to_string();
    let host_port = addr.rsplit(':').next().unwrap().to_string();
    assert!(host_port.parse::<u16>().is_ok_and(|p| p > 0), "{port}");
    let body = curl(&format!("http://127.0.0.1:{host_port}/index.html"), 90);
    assert_eq!(body, PAGE.as_bytes());
    let none = app.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "ls /sys/class/net",
    ]);
    assert_eq!(text(&none.stdout), "lo\n", "{}", text(&none.stderr));
    assert_eq!(none.status.code(), Some(0));
}

#[test]
fn containers_on_a_user_network_reach_each_other_by_name_and_alias() {
    let (app, image) = appliance_with_image("net-user");
    ok(
        &app,
        &["network", "create", "--subnet", "172.30.0.0/24", "appnet"],
    );
    let page_b = "served by b\n";
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "back",
            "-u",
            "0",
            "--network",
            "appnet",
            "--network-alias",
            "web",
            "--ip",
            "172.30.0.50",
            "-p",
            "127.0.0.1:18081:80",
            image,
            &httpd_script(page_b),
        ],
    );
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "front",
            "-u",
            "0",
            "--network",
            "appnet",
            image,
            "sleep 300",
        ],
    );
    // By name and by alias, from a peer: the page, and ping.
    let got = app.exec_until("front", "wget -qO- http://back/", 90);
    assert_eq!(got, page_b);
    assert_eq!(app.exec_until("front", "wget -qO- http://web/", 30), page_b);
    app.exec_until("front", "ping -c1 -W2 back", 30);
    // The static address is b's, as docker inspect and `ip addr` inside both show.
    assert_eq!(address_inside(&app, "back"), "172.30.0.50/24");
    assert_eq!(
        inspect(
            &app,
            "back",
            "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}"
        ),
        "172.30.0.50"
    );
    // a's address came from the network's dnsmasq (a DHCP lease reserved for its MAC).
    let a_inside = address_inside(&app, "front");
    let a_shown = inspect(
        &app,
        "front",
        "{{(index .NetworkSettings.Networks \"appnet\").IPAddress}}",
    );
    assert_eq!(a_inside, format!("{a_shown}/24"));
    // b's published port, through the appliance's proxy into the namespace.
    assert_eq!(
        curl("http://127.0.0.1:18081/index.html", 30),
        page_b.as_bytes()
    );
    // Both are members; the network cannot go while they run.
    let members = inspect_network_containers(&app, "appnet");
    assert_eq!(members, ["back", "front"]);
    let busy = app.docker(&["network", "rm", "appnet"]);
    assert!(
        text(&busy.stderr).contains("has active endpoints"),
        "{}",
        text(&busy.stderr)
    );
    ok(&app, &["rm", "-f", "front", "back"]);
    ok(&app, &["network", "rm", "appnet"]);
}

fn inspect_network_containers(app: &Appliance, net: &str) -> Vec<String> {
    let mut names: Vec<String> = ok(
        app,
        &[
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}} {{end}}",
            net,
        ],
    )
    .split_whitespace()
    .map(String::from)
    .collect();
    names.sort();
    names
}

/// Sends `payload` from `client` to `to` every 500 ms until the answer comes (the containerVM
/// takes a while to boot, and a datagram before its responder listens is lost); the answer.
fn udp_ask(client: &std::net::UdpSocket, to: &str, payload: &str, secs: u64) -> String {
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        client.send_to(payload.as_bytes(), to).unwrap();
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no answer from {to}/udp"
        );
    }
}

#[test]
fn published_udp_ports_answer_the_host_on_a_user_network_and_the_default_one() {
    let (app, image) = appliance_with_image("net-udp");
    let echo = e2e::guest_program("udp_echo");
    ok(
        &app,
        &["network", "create", "--subnet", "172.31.0.0/24", "udpnet"],
    );
    // One responder on the user network (through the appliance's UDP proxy), one on the default
    // network (QEMU's hostfwd): each container waits for the program, copied in once it runs
    // (the appliance copies only into a container started once), and for /ready after it.
    for (name, network, publish) in [
        ("udp-user", "udpnet", "127.0.0.1:18082:5353/udp"),
        ("udp-default", "bridge", "127.0.0.1:18083:5353/udp"),
    ] {
        ok(
            &app,
            &[
                "run",
                "-d",
                "--name",
                name,
                "-u",
                "0",
                "--network",
                network,
                "-p",
                publish,
                image,
                "while [ ! -e /ready ]; do sleep 0.2; done; exec /udp_echo 5353",
            ],
        );
        ok(
            &app,
            &["cp", echo.to_str().unwrap(), &format!("{name}:/udp_echo")],
        );
        ok(&app, &["exec", name, "touch", "/ready"]);
    }
    assert_eq!(
        ok(&app, &["port", "udp-user"]).trim(),
        "5353/udp -> 127.0.0.1:18082"
    );
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(udp_ask(&a, "127.0.0.1:18082", "from a", 90), "echo:from a");
    // A second client gets its own answers, and the first keeps its way in.
    assert_eq!(udp_ask(&b, "127.0.0.1:18082", "from b", 10), "echo:from b");
    assert_eq!(udp_ask(&a, "127.0.0.1:18082", "again", 10), "echo:again");
    assert_eq!(
        udp_ask(&a, "127.0.0.1:18083", "default", 90),
        "echo:default"
    );
    // Stopped, the proxy lets its host port go.
    ok(&app, &["stop", "-t", "1", "udp-user"]);
    std::net::UdpSocket::bind("127.0.0.1:18082").expect("the host port is released");
    ok(&app, &["rm", "-f", "udp-user", "udp-default"]);
    ok(&app, &["network", "rm", "udpnet"]);
}
