//! The docker API on TCP with mutual TLS (`serve --api-tcp --tls-*`): the stock docker CLI with
//! a client certificate from our CA gets in (version, ps, exec's hijack over TLS); clients with
//! no certificate, one from another CA, or plain HTTP do not; bad TLS files stop `serve` before
//! it listens. Certificates are made here with rcgen; containers are real host-mode tethers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

mod common;

use appliance::testing::process::failed;
use common::detached::{output_with_stdin, text, Detached};

/// A CA, the server's certificate (SAN 127.0.0.1 and localhost) and a client certificate, as
/// PEM files in `dir`; `rogue/` holds a client certificate from a CA the server does not trust.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn server_cert(&self) -> PathBuf {
        self.dir.join("server-cert.pem")
    }
    fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    /// docker's layout: ca.pem, cert.pem, key.pem for the client.
    fn client_cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn client_key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    fn rogue(&self) -> PathBuf {
        self.dir.join("rogue")
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write_private(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Signs a leaf for `sans` with `usage` and writes `cert`/`key`.
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    cert: &Path,
    key: &Path,
) {
    let k = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(
        DnType::CommonName,
        sans.first().copied().unwrap_or("client"),
    );
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    std::fs::write(cert, p.signed_by(&k, issuer).unwrap().pem()).unwrap();
    write_private(key, &k.serialize_pem());
}

fn make_pki(dir: &Path) -> Pki {
    let pki = Pki {
        dir: dir.to_path_buf(),
    };
    std::fs::create_dir_all(pki.rogue()).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let params = ca_params("tether test CA");
    std::fs::write(pki.ca(), params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let ca = Issuer::new(params, ca_key);
    leaf(
        &ca,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
        &pki.server_cert(),
        &pki.server_key(),
    );
    leaf(
        &ca,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &pki.client_cert(),
        &pki.client_key(),
    );
    // Another CA's client: docker's file names in rogue/, with our CA to check the server by.
    // The CA has our CA's name, so the client does send its certificate (Go's TLS client sends
    // one only if its issuer is among the names the server asks for), and the server's
    // signature check is what refuses it.
    let rogue_key = KeyPair::generate().unwrap();
    let rogue_params = ca_params("tether test CA");
    let rogue = Issuer::new(rogue_params, rogue_key);
    leaf(
        &rogue,
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
        &pki.rogue().join("cert.pem"),
        &pki.rogue().join("key.pem"),
    );
    std::fs::copy(pki.ca(), pki.rogue().join("ca.pem")).unwrap();
    pki
}

/// A temporary TETHER_HOME with its certificates; stops the server it started and the tethers
/// it booted when dropped, also when the test fails.
struct Env {
    app: Detached,
    pki: Pki,
}

impl Env {
    fn new(tag: &str) -> Self {
        let app = Detached::new(&format!("tls-{tag}"));
        std::fs::create_dir_all(app.home.join("docker-config")).unwrap();
        let pki = make_pki(&app.home.join("pki"));
        Self { app, pki }
    }

    fn tls_args(&self) -> Vec<String> {
        let p = |p: PathBuf| p.display().to_string();
        vec![
            "--tls-cert".into(),
            p(self.pki.server_cert()),
            "--tls-key".into(),
            p(self.pki.server_key()),
            "--tls-ca".into(),
            p(self.pki.ca()),
        ]
    }

    fn serve(&self, args: &[String]) -> Output {
        self.app.serve(args)
    }

    /// Starts a server with the API on a TLS port; returns that port's address.
    fn start_tls(&self) -> String {
        let mut args = vec!["--api-tcp".to_string(), "127.0.0.1:0".into()];
        args.extend(self.tls_args());
        let out = self.serve(&args);
        assert!(out.status.success(), "serve: {}", text(&out.stderr));
        self.api_addr()
    }

    fn api_addr(&self) -> String {
        std::fs::read_to_string(self.app.home.join("api.tcp"))
            .expect("the server writes api.tcp")
            .trim()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.app.home.join("appliance.log")).unwrap_or_default()
    }

    /// The stock docker CLI against `tcp://addr` with `tls` flags, isolated from the user's
    /// docker configuration and environment.
    fn docker(&self, addr: &str, tls: &[&str], args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.app.home.join("docker-config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_CONTEXT")
            .args(tls)
            .arg("-H")
            .arg(format!("tcp://{addr}"))
            .args(args);
        output_with_stdin(cmd, stdin)
    }

    /// docker's client flags for a certificate directory (ca.pem, cert.pem, key.pem).
    fn verified(dir: &Path) -> Vec<String> {
        let f = |n: &str| dir.join(n).display().to_string();
        vec![
            "--tlsverify".into(),
            "--tlscacert".into(),
            f("ca.pem"),
            "--tlscert".into(),
            f("cert.pem"),
            "--tlskey".into(),
            f("key.pem"),
        ]
    }

    fn docker_tls(&self, addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let tls = Self::verified(&self.pki.dir);
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        self.docker(addr, &tls, args, stdin)
    }
}

#[test]
fn the_docker_cli_with_a_client_certificate_gets_in_over_tls() {
    let mut env = Env::new("cli");
    let addr = env.start_tls();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert!(
        env.log()
            .contains(&format!("docker API (tls):  tcp://{addr}")),
        "the banner names the TLS port:\n{}",
        env.log()
    );

    let version = env.docker_tls(&addr, &["version"], None);
    assert_eq!(version.status.code(), Some(0), "{}", text(&version.stderr));
    let server = env.docker_tls(&addr, &["version", "--format", "{{.Server.Version}}"], None);
    assert_eq!(text(&server.stdout).trim(), env!("CARGO_PKG_VERSION"));

    env.app.run(&[
        "--name",
        "web",
        "--",
        "/bin/sh",
        "-c",
        "echo hello; while :; do sleep 0.05; done",
    ]);
    let mut up = false;
    for _ in 0..200 {
        let ps = env.docker_tls(
            &addr,
            &["ps", "-a", "--format", "{{.Names}} {{.Status}}"],
            None,
        );
        assert_eq!(ps.status.code(), Some(0), "{}", text(&ps.stderr));
        if text(&ps.stdout).trim().starts_with("web Up ") {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "ps -a over TLS never showed the running container");

    // exec is a hijack (101, Upgrade: tcp) on the TLS connection: output, stderr, exit code,
    // and stdin through to its end (the CLI's half-close is a TLS close_notify).
    let exec = env.docker_tls(
        &addr,
        &[
            "exec",
            "web",
            "sh",
            "-c",
            "echo from-exec; echo to-err >&2; exit 3",
        ],
        None,
    );
    assert_eq!(
        (exec.status.code(), text(&exec.stdout), text(&exec.stderr)),
        (Some(3), "from-exec\n".into(), "to-err\n".into())
    );
    let piped = env.docker_tls(&addr, &["exec", "-i", "web", "cat"], Some(b"through TLS\n"));
    assert_eq!(
        (piped.status.code(), text(&piped.stdout)),
        (Some(0), "through TLS\n".into()),
        "{}",
        text(&piped.stderr)
    );
    let logs = env.docker_tls(&addr, &["logs", "web"], None);
    assert_eq!(text(&logs.stdout), "hello\n");
    assert!(env
        .docker_tls(&addr, &["kill", "web"], None)
        .status
        .success());
}

/// The server refused the docker client `out`: it failed saying `client_says`, and the server
/// logged `server_logs`.
fn assert_refused(env: &Env, out: &Output, client_says: &str, server_logs: &str) {
    assert_ne!(out.status.code(), Some(0), "refused");
    let err = text(&out.stderr);
    assert!(err.contains(client_says), "the server refused: {err}");
    let log = env.log();
    assert!(log.contains(server_logs), "the server's log:\n{log}");
}

#[test]
fn clients_without_a_certificate_from_our_ca_are_refused() {
    let env = Env::new("refuse");
    let addr = env.start_tls();
    // Held open, silent, for the whole test: a stalled handshake holds up no one else.
    let stalled = TcpStream::connect(&addr).unwrap();

    let ca = env.pki.ca().display().to_string();
    let anonymous = env.docker(&addr, &["--tls", "--tlscacert", &ca], &["version"], None);
    assert_refused(
        &env,
        &anonymous,
        "certificate required",
        "peer sent no certificates",
    );
    assert!(
        !text(&anonymous.stdout).contains("Server:"),
        "{}",
        text(&anonymous.stdout)
    );

    let rogue = Env::verified(&env.pki.rogue());
    let rogue: Vec<&str> = rogue.iter().map(String::as_str).collect();
    let other_ca = env.docker(&addr, &rogue, &["ps", "-a"], None);
    // The client's certificate was checked and refused.
    assert_refused(
        &env,
        &other_ca,
        "remote error: tls",
        "invalid peer certificate",
    );

    // Plain HTTP on the TLS port: dockerd's 400, and the CLI without --tls fails.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: tether\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = plain.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.0 400 "), "{reply:?}");
    assert!(reply.contains("Client sent an HTTP request to an HTTPS server"));
    failed(
        &env.docker(&addr, &[], &["version"], None),
        None,
        "Client sent an HTTP request to an HTTPS server",
    );

    // Every refusal is logged with the peer's address; the server serves on.
    let log = env.log();
    let refusals = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && l.contains("127.0.0.1:"))
        .count();
    assert!(refusals >= 3, "three refusals logged:\n{log}");
    let ok = env.docker_tls(&addr, &["version"], None);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    drop(stalled);
}

/// A rustls client (ring) pinned to one protocol version, with the test client certificate.
fn ping(env: &Env, addr: &str, version: &'static rustls::SupportedProtocolVersion) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(env.pki.ca()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_file(env.pki.client_cert()).unwrap()],
        PrivateKeyDer::from_pem_file(env.pki.client_key()).unwrap(),
    )
    .unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply);
    assert_eq!(tls.conn.protocol_version(), Some(version.version));
    text(&reply)
}

#[test]
fn tls_1_2_and_1_3_both_serve_the_api_and_localhost_matches_the_certificate() {
    let env = Env::new("versions");
    let addr = env.start_tls();
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let reply = ping(&env, &addr, v);
        assert!(reply.starts_with("HTTP/1.1 200"), "{v:?}: {reply:?}");
        assert!(reply.ends_with("OK"), "{v:?}: {reply:?}");
    }
}

#[test]
fn bad_tls_files_stop_serve_before_it_listens() {
    let env = Env::new("files");
    let refused = |args: Vec<String>, wants: &[&str]| {
        let out = env.serve(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        for w in wants {
            assert!(err.contains(w), "{args:?}: {err:?} should say {w:?}");
        }
        assert!(
            !env.app.home.join("docker.sock").exists(),
            "nothing listens"
        );
        assert!(!env.app.home.join("appliance.pid").exists());
    };
    let with = |replace: &str, file: &Path| {
        let mut args = vec!["--api-tcp".to_string(), "127.0.0.1:0".into()];
        let mut tls = env.tls_args();
        let i = tls.iter().position(|a| a == replace).unwrap();
        tls[i + 1] = file.display().to_string();
        args.extend(tls);
        args
    };

    // A world-readable key: refused, with the reason and the fix.
    let key = env.pki.server_key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key_name = key.display().to_string();
    refused(
        with("--tls-key", &key),
        &[&key_name, "0644", "group or others", "chmod 600"],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    refused(with("--tls-key", &key), &[&key_name, "chmod 600"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let missing = env.app.home.join("no-such.pem");
    let missing_name = missing.display().to_string();
    refused(
        with("--tls-cert", &missing),
        &["--tls-cert", &missing_name, "cannot read it"],
    );
    let garbage = env.app.home.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let garbage_name = garbage.display().to_string();
    refused(
        with("--tls-ca", &garbage),
        &["--tls-ca", &garbage_name, "no certificate"],
    );
    refused(
        with("--tls-cert", &garbage),
        &["--tls-cert", &garbage_name, "no certificate"],
    );
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(
        with("--tls-key", &garbage),
        &["--tls-key", &garbage_name, "no private key"],
    );
    // The client's key with the server's certificate.
    let client_key = env.pki.client_key().display().to_string();
    refused(
        with("--tls-key", &env.pki.client_key()),
        &[&client_key, "--tls-cert"],
    );

    // A port already taken: the child cannot bind it, and --detach says so.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut args = vec![
        "--api-tcp".to_string(),
        taken.local_addr().unwrap().to_string(),
    ];
    args.extend(env.tls_args());
    failed(&env.serve(&args), Some(125), "the server exited");
    assert!(env.log().contains("docker API port"), "{}", env.log());
    assert!(!env.app.home.join("appliance.pid").exists());
    assert!(!env.app.home.join("api.tcp").exists());

    // TCP without TLS: refused, unless asked for explicitly on loopback.
    refused(
        vec!["--api-tcp".into(), "127.0.0.1:0".into()],
        &["without TLS", "root"],
    );
    refused(
        vec![
            "--api-tcp".into(),
            "0.0.0.0:0".into(),
            "--api-insecure-tcp".into(),
        ],
        &["not a loopback address"],
    );
}

#[test]
fn insecure_tcp_serves_plain_http_on_loopback() {
    let env = Env::new("insecure");
    let out = env.serve(&[
        "--api-tcp".into(),
        "127.0.0.1:0".into(),
        "--api-insecure-tcp".into(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let addr = env.api_addr();
    let version = env.docker(
        &addr,
        &[],
        &["version", "--format", "{{.Server.Version}}"],
        None,
    );
    assert_eq!(
        (
            version.status.code(),
            text(&version.stdout).trim().to_string()
        ),
        (Some(0), env!("CARGO_PKG_VERSION").to_string()),
        "{}",
        text(&version.stderr)
    );
    assert!(env.log().contains("no TLS: loopback only"), "{}", env.log());
}

#[test]
fn a_stalled_handshake_is_dropped_after_10_s_and_logged_with_the_peer() {
    let env = Env::new("stall");
    let addr = env.start_tls();
    let mut stalled = TcpStream::connect(&addr).unwrap();
    let peer = stalled.local_addr().unwrap().to_string();
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = stalled.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the server closed it: {read:?}"
    );
    assert!(
        waited >= Duration::from_millis(9500) && waited < Duration::from_secs(20),
        "closed after {waited:?} ({read:?}); server log:\n{}",
        env.log()
    );
    let mut logged = false;
    for _ in 0..100 {
        logged = env
            .log()
            .lines()
            .any(|l| l.contains("timed out after 10 s") && l.contains(&peer));
        if logged {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(logged, "the timeout names {peer}:\n{}", env.log());
}
