//! The published-port proxies of user-network containers against a real network namespace this
//! test makes: a UDP responder inside it (on the namespace's own loopback, which the host cannot
//! reach), clients on the host's 127.0.0.1 talking to it through the proxy. Needs root and
//! iproute2 (`make deps`); the namespace and the responder go when a test ends, also when it
//! fails.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket as StdUdp};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use appliance::backend::net::netns;
use appliance::backend::net::tap::in_namespace;
use appliance::backend::net::udp_proxy::{self, UdpLimits};
use tokio::net::UdpSocket;

fn ip(args: &[&str]) {
    netns::ip(args).unwrap();
}

/// A namespace with its loopback up and a UDP responder on 127.0.0.1 in it that answers each
/// datagram with `SOURCE PAYLOAD` (the address it came from, as the responder saw it), twice
/// for the payload `twice`.
struct Responder {
    ns: String,
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start(tag: &str) -> Self {
        let ns = format!("tether-udp{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let mut me = Self {
            ns,
            port: 0,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        ip(&["-n", &me.ns, "link", "set", "lo", "up"]);
        let socket = in_namespace(&me.path(), || StdUdp::bind("127.0.0.1:0")).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        me.port = socket.local_addr().unwrap().port();
        let stop = me.stop.clone();
        me.thread = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let payload = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = format!("{from} {payload}");
                let times = if payload == "twice" { 2 } else { 1 };
                for _ in 0..times {
                    socket.send_to(answer.as_bytes(), from).unwrap();
                }
            }
        }));
        me
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.ns)
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), self.port)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The next datagram `c` receives within `wait`, as text (None if none came).
async fn answer(c: &UdpSocket, wait: Duration) -> Option<String> {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(wait, c.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `payload` to `to` and returns the answer's source part (the inside socket the
/// responder saw), checking the answer echoes the payload.
async fn ask(c: &UdpSocket, to: SocketAddr, payload: &str) -> String {
    c.send_to(payload.as_bytes(), to).await.unwrap();
    let got = answer(c, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no answer to {payload:?}"));
    let (source, echoed) = got.split_once(' ').unwrap();
    assert_eq!(echoed, payload);
    source.to_string()
}

/// Sends `payload` every 200 ms until an answer comes (a client slot frees up), at most 20 s.
async fn ask_until_served(c: &UdpSocket, to: SocketAddr, payload: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.send_to(payload.as_bytes(), to).await.unwrap();
        if let Some(got) = answer(c, Duration::from_millis(200)).await {
            let (source, echoed) = got.split_once(' ').unwrap();
            assert_eq!(echoed, payload);
            return source.to_string();
        }
        assert!(Instant::now() < deadline, "{payload:?} was never served");
    }
}

#[tokio::test]
async fn udp_datagrams_go_both_ways_through_one_inside_socket_per_client() {
    let r = Responder::start("a");
    let proxy = udp_proxy::publish(
        "127.0.0.1:0".parse().unwrap(),
        r.path(),
        r.target(),
        UdpLimits::default(),
    )
    .await
    .unwrap();
    let host = proxy.host;
    assert_ne!(host.port(), 0);
    let (a, b) = (client().await, client().await);
    let a_inside = ask(&a, host, "one").await;
    // The responder saw a socket of the namespace (its loopback), not the host client.
    assert!(a_inside.starts_with("127.0.0.1:"), "{a_inside}");
    // The same client keeps its inside socket; another gets its own.
    assert_eq!(ask(&a, host, "two").await, a_inside);
    let b_inside = ask(&b, host, "three").await;
    assert_ne!(b_inside, a_inside);
    // Every answer comes back, to the client it is for.
    a.send_to(b"twice", host).await.unwrap();
    let wait = Duration::from_secs(5);
    let first = answer(&a, wait).await.expect("first answer");
    let second = answer(&a, wait).await.expect("second answer");
    assert_eq!(first, format!("{a_inside} twice"));
    assert_eq!(second, first);
    assert_eq!(answer(&b, Duration::from_millis(300)).await, None);
    // A 60000-byte datagram crosses whole (the responder's answer is cut to its 2 KiB buffer).
    let big = "x".repeat(60_000);
    a.send_to(big.as_bytes(), host).await.unwrap();
    let got = answer(&a, wait)
        .await
        .expect("an answer to the big datagram");
    assert!(got.starts_with(&format!("{a_inside} xxx")), "{got}");
    // Dropped, the proxy lets its host port go.
    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while StdUdp::bind(host).is_err() {
        assert!(Instant::now() < deadline, "the host port stays bound");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn udp_clients_are_bounded_and_an_idle_one_is_forgotten() {
    let r = Responder::start("b");
    let limits = UdpLimits {
        idle: Duration::from_secs(2),
        max_clients: 2,
    };
    let proxy = udp_proxy::publish("127.0.0.1:0".parse().unwrap(), r.path(), r.target(), limits)
        .await
        .unwrap();
    let host = proxy.host;
    let (a, b, c) = (client().await, client().await, client().await);
    let a_inside = ask(&a, host, "a").await;
    ask(&b, host, "b").await;
    // A third client while two are served: its datagram is dropped.
    c.send_to(b"c", host).await.unwrap();
    assert_eq!(answer(&c, Duration::from_millis(500)).await, None);
    // Once the two have been idle for 2 s they are forgotten and c is served; a, back again,
    // gets a new inside socket.
    ask_until_served(&c, host, "c again").await;
    let a_again = ask_until_served(&a, host, "a again").await;
    assert_ne!(a_again, a_inside);
}
