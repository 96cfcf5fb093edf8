//! `docker network connect` and `disconnect` of a running container, with the stock docker CLI
//! against `appliance serve` and real containerVMs: the NIC is hot-plugged into the running VM
//! (QEMU's monitor, a PCIe root port at the endpoint's slot), tether finds it at its slot,
//! configures it and reports its address, so the container reaches a peer on the new network by
//! name and `docker inspect` shows both networks with the address the guest has; disconnect
//! takes the NIC out again and the peer is unreachable. Traffic stays inside the namespaces the
//! appliance makes; its guard removes them, also when the test fails.

use e2e::{busybox_image_archive, text, Appliance};

fn ok(app: &Appliance, args: &[&str]) -> String {
    app.docker_ok(args)
}

fn inspect(app: &Appliance, name: &str, format: &str) -> String {
    ok(app, &["inspect", "-f", format, name]).trim().to_string()
}

#[test]
fn a_running_container_is_connected_to_a_network_and_disconnected_again() {
    let app = Appliance::start_process("net-hotplug");
    let (archive, image) = busybox_image_archive();
    ok(&app, &["load", "-i", archive.to_str().unwrap()]);
    ok(
        &app,
        &["network", "create", "--subnet", "172.31.1.0/24", "net1"],
    );
    ok(
        &app,
        &["network", "create", "--subnet", "172.31.2.0/24", "net2"],
    );
    let page = "served by b on net2\n";
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "beta",
            "-u",
            "0",
            "--network",
            "net2",
            image,
            &format!(
                "mkdir -p /www && printf '{}' > /www/index.html && exec httpd -f -p 80 -h /www",
                page.replace('\n', "\\n")
            ),
        ],
    );
    ok(
        &app,
        &[
            "run",
            "-d",
            "--name",
            "alpha",
            "-u",
            "0",
            "--network",
            "net1",
            image,
            "sleep 600",
        ],
    );
    // Before: a has only its net1 NIC, and b's address is out of its reach.
    app.exec_until("alpha", "ip -4 -o addr show dev eth0 | grep -q inet", 90);
    app.exec_until("beta", "ip -4 -o addr show dev eth0 | grep -q inet", 90);
    let b_ip = inspect(
        &app,
        "beta",
        "{{(index .NetworkSettings.Networks \"net2\").IPAddress}}",
    );
    assert!(b_ip.starts_with("172.31.2."), "{b_ip}");
    assert_eq!(
        app.exec_until("alpha", "ls /sys/class/net", 10),
        "eth0\nlo\n"
    );

    // Connect: the NIC appears inside, configured, and b answers by name.
    let connect = app.docker(&["network", "connect", "net2", "alpha"]);
    assert!(
        connect.status.success(),
        "connect: {}\nconsole:\n{}",
        text(&connect.stderr),
        app.console_of("alpha")
    );
    assert_eq!(
        app.exec_until("alpha", "ls /sys/class/net", 10),
        "eth0\neth1\nlo\n"
    );
    assert_eq!(app.exec_until("alpha", "wget -qO- http://beta/", 60), page);
    app.exec_until("alpha", "ping -c1 -W2 beta", 30);
    // docker inspect shows both networks, the new one with the address the guest has.
    let networks = inspect(
        &app,
        "alpha",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
    );
    assert_eq!(networks, "net1 net2");
    let inside = app.exec_until("alpha", "ip -4 -o addr show dev eth1", 10);
    let inside = inside.split_whitespace().nth(3).unwrap_or_default();
    let shown = inspect(
        &app,
        "alpha",
        "{{(index .NetworkSettings.Networks \"net2\").IPAddress}}",
    );
    assert!(shown.starts_with("172.31.2."), "{shown}");
    assert_eq!(inside, format!("{shown}/24"));
    // Connected twice: dockerd's refusal, and nothing changes.
    let again = app.docker(&["network", "connect", "net2", "alpha"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists in network net2"),
        "{}",
        text(&again.stderr)
    );
    let unknown = app.docker(&["network", "connect", "nosuchnet", "alpha"]);
    assert!(
        text(&unknown.stderr).contains("not found"),
        "{}",
        text(&unknown.stderr)
    );

    // Disconnect: the NIC is gone inside and b is out of reach again.
    let disconnect = app.docker(&["network", "disconnect", "net2", "alpha"]);
    assert!(
        disconnect.status.success(),
        "disconnect: {}\nconsole:\n{}",
        text(&disconnect.stderr),
        app.console_of("alpha")
    );
    assert_eq!(
        app.exec_until("alpha", "ls /sys/class/net", 10),
        "eth0\nlo\n"
    );
    let unreachable = app.docker(&[
        "exec",
        "alpha",
        "sh",
        "-c",
        &format!("wget -T 3 -qO- http://{b_ip}/"),
    ]);
    assert!(
        !unreachable.status.success(),
        "b still answers after the disconnect: {}",
        text(&unreachable.stdout)
    );
    assert_eq!(
        inspect(
            &app,
            "alpha",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"
        ),
        "net1"
    );
    // a still works on net1, and b still serves on net2.
    assert_eq!(
        app.exec_until("beta", "wget -qO- http://127.0.0.1/", 10),
        page
    );
    ok(&app, &["rm", "-f", "alpha", "beta"]);
}
