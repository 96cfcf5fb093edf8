//! The docker API on TCP (`serve --api-tcp`), as VMware VIC served it on 2376: mutual TLS by
//! default, with a client certificate signed by `--tls-ca` required of every client, because
//! whoever reaches the docker API is root on the host. Plain TCP only with an explicit
//! `--api-insecure-tcp`, and then only on loopback addresses.
//!
//! Everything that can be wrong with the flags or the files is found by [`TcpApi::prepare`],
//! before anything listens. The connections get the same [`Api`] and the same HTTP/1 service
//! with upgrades as the Unix socket ([`super::serve_connection`]), so attach and exec hijacks
//! work over TLS too. A failed or stalled handshake (10 s) is logged with the peer's address and
//! drops that connection alone.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{serve_connection, Api};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What Go's net/http (and so dockerd) answers a plain HTTP request on a TLS port.
const PLAIN_HTTP_REPLY: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\
    Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// `serve`'s TCP flags as given, before any check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpApiFlags {
    /// `--api-tcp ADDR`
    pub addr: Option<String>,
    /// `--tls-cert FILE`: the server's certificate chain, PEM.
    pub cert: Option<PathBuf>,
    /// `--tls-key FILE`: the server's private key, PEM, readable by its owner alone.
    pub key: Option<PathBuf>,
    /// `--tls-ca FILE`: the CA certificate(s), PEM, that client certificates must chain to.
    pub ca: Option<PathBuf>,
    /// `--api-insecure-tcp`: plain TCP, loopback addresses only.
    pub insecure: bool,
}

impl TcpApiFlags {
    /// The same flags for `serve` re-executed (`--detach`), with absolute file names.
    pub fn serve_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(addr) = &self.addr {
            args.push("--api-tcp".into());
            args.push(addr.into());
        }
        for (flag, file) in [
            ("--tls-cert", &self.cert),
            ("--tls-key", &self.key),
            ("--tls-ca", &self.ca),
        ] {
            if let Some(file) = file {
                args.push(flag.into());
                args.push(
                    std::path::absolute(file)
                        .unwrap_or_else(|_| file.clone())
                        .into(),
                );
            }
        }
        if self.insecure {
            args.push("--api-insecure-tcp".into());
        }
        args
    }
}

/// What is wrong with `--api-tcp` and its flags, or with binding it.
#[derive(Debug, thiserror::Error)]
pub enum TcpApiError {
    #[error(
        "--api-tcp {addr}: refusing to serve the docker API on TCP without TLS: whoever reaches \
         the port is root on this host. Give --tls-cert, --tls-key and --tls-ca (clients must \
         then present a certificate signed by that CA), or --api-insecure-tcp with a loopback \
         address"
    )]
    NoTls { addr: String },
    #[error("--api-tcp {addr} needs all of --tls-cert, --tls-key and --tls-ca; missing {missing}")]
    IncompleteTls { addr: String, missing: String },
    #[error("{flags} given without --api-tcp")]
    NoAddress { flags: String },
    #[error("--api-insecure-tcp cannot be combined with --tls-cert, --tls-key or --tls-ca")]
    InsecureWithTls,
    #[error(
        "--api-insecure-tcp: {addr} is not a loopback address ({ip}); without TLS the API is \
         served only on 127.0.0.0/8 or ::1"
    )]
    NotLoopback { addr: String, ip: IpAddr },
    #[error("--api-tcp {addr}: {source}")]
    Resolve { addr: String, source: io::Error },
    #[error("--api-tcp {addr}: the name resolves to no address")]
    Unresolved { addr: String },
    #[error("docker API port {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What is wrong with the `--tls-*` files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "--tls-key {}: the private key is readable by group or others (mode {mode:04o}); it \
         must be readable by its owner alone, as ssh requires of its keys: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{flag} {}: not valid PEM: {source}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error(
        "{flag} {}: no certificate in it (expected a PEM \"-----BEGIN CERTIFICATE-----\" block)",
        path.display()
    )]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error(
        "--tls-key {}: no private key in it (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE \
         KEY\" or \"EC PRIVATE KEY\" block; an encrypted key must be decrypted first)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("--tls-ca {}: certificate {index} in it is not usable as a CA: {source}", path.display())]
    BadCa {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
    #[error("--tls-ca {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        source: VerifierBuilderError,
    },
    #[error(
        "--tls-cert {} and --tls-key {}: {source}",
        cert.display(),
        key.display()
    )]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The TCP API, checked and with its TLS configuration loaded, not yet listening.
pub struct TcpApi {
    addr: String,
    addrs: Vec<SocketAddr>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for TcpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpApi")
            .field("addr", &self.addr)
            .field("addrs", &self.addrs)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl TcpApi {
    /// Checks the flags, resolves the address and loads the TLS files; `None` without
    /// `--api-tcp`.
    pub fn prepare(flags: &TcpApiFlags) -> Result<Option<Self>, TcpApiError> {
        let tls_flags = [
            ("--tls-cert", &flags.cert),
            ("--tls-key", &flags.key),
            ("--tls-ca", &flags.ca),
        ];
        let given: Vec<&str> = tls_flags
            .iter()
            .filter(|(_, f)| f.is_some())
            .map(|(n, _)| *n)
            .collect();
        let Some(addr) = flags.addr.clone() else {
            let mut named = given.clone();
            if flags.insecure {
                named.push("--api-insecure-tcp");
            }
            return match named.is_empty() {
                true => Ok(None),
                false => Err(TcpApiError::NoAddress {
                    flags: named.join(", "),
                }),
            };
        };
        if flags.insecure && !given.is_empty() {
            return Err(TcpApiError::InsecureWithTls);
        }
        if !flags.insecure && given.is_empty() {
            return Err(TcpApiError::NoTls { addr });
        }
        let tls = match (&flags.cert, &flags.key, &flags.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(TlsAcceptor::from(server_config(cert, key, ca)?))
            }
            _ if flags.insecure => None,
            _ => {
                let missing: Vec<&str> = tls_flags
                    .iter()
                    .filter(|(_, f)| f.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                return Err(TcpApiError::IncompleteTls {
                    addr,
                    missing: missing.join(" and "),
                });
            }
        };
        let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(source) => return Err(TcpApiError::Resolve { addr, source }),
        };
        if addrs.is_empty() {
            return Err(TcpApiError::Unresolved { addr });
        }
        if tls.is_none() {
            if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(TcpApiError::NotLoopback { ip: a.ip(), addr });
            }
        }
        Ok(Some(Self { addr, addrs, tls }))
    }

    /// Whether clients must speak TLS (and present a certificate).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Binds the port (the first of the resolved addresses that binds).
    pub async fn bind(self) -> Result<TcpApiListener, TcpApiError> {
        let bound = TcpListener::bind(&self.addrs[..])
            .await
            .and_then(|l| Ok((l.local_addr()?, l)));
        match bound {
            Ok((local, listener)) => Ok(TcpApiListener {
                listener,
                local,
                tls: self.tls,
            }),
            Err(source) => Err(TcpApiError::Bind {
                addr: self.addr,
                source,
            }),
        }
    }
}

/// The bound TCP API port; [`TcpApiListener::spawn`] serves it.
pub struct TcpApiListener {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
}

impl TcpApiListener {
    /// The address it listens on (the real port for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Accepts connections until the process ends, each in a task of its own.
    pub fn spawn(self, api: Arc<Api>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match self.listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        // Out of descriptors and the like: let the others finish, then retry.
                        tracing::warn!(%error, "docker API (tcp): accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let api = api.clone();
                match &self.tls {
                    None => {
                        tokio::spawn(serve_connection(api, sock));
                    }
                    Some(acceptor) => {
                        tokio::spawn(serve_tls(api, acceptor.clone(), sock, peer));
                    }
                }
            }
        })
    }
}

enum Handshake {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    PlainHttp(TcpStream),
}

async fn handshake(acceptor: TlsAcceptor, sock: TcpStream) -> io::Result<Handshake> {
    let mut first = [0u8; 1];
    let n = sock.peek(&mut first).await?;
    if n == 1 && first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase() {
        return Ok(Handshake::PlainHttp(sock));
    }
    Ok(Handshake::Tls(Box::new(acceptor.accept(sock).await?)))
}

/// One TLS connection: the handshake (bounded in time), then the API.
async fn serve_tls(api: Arc<Api>, acceptor: TlsAcceptor, sock: TcpStream, peer: SocketAddr) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, sock)).await {
        Ok(Ok(Handshake::Tls(stream))) => {
            tracing::debug!(%peer, "docker API (tls): client authenticated");
            serve_connection(api, stream).await;
        }
        Ok(Ok(Handshake::PlainHttp(sock))) => {
            tracing::warn!(%peer, "docker API (tls): TLS handshake failed: plain HTTP on the TLS port");
            refuse_plain_http(sock).await;
        }
        Ok(Err(error)) => {
            tracing::warn!(%peer, %error, "docker API (tls): TLS handshake failed");
        }
        Err(_) => {
            tracing::warn!(
                %peer,
                "docker API (tls): TLS handshake failed: timed out after {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            );
        }
    }
}

/// Tells a plain HTTP client what it did, as dockerd does, then closes. The request is read
/// (bounded) so that closing does not reset the connection before the client reads the answer.
async fn refuse_plain_http(mut sock: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        sock.write_all(PLAIN_HTTP_REPLY).await?;
        sock.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match sock.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// The server's TLS configuration: its certificate and key, TLS 1.2 and 1.3, and a client
/// certificate that chains to `ca` required of every client.
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("--tls-cert", cert)?;
    let private_key = private_key(key)?;
    let mut roots = RootCertStore::empty();
    for (index, c) in certificates("--tls-ca", ca)?.into_iter().enumerate() {
        roots.add(c).map_err(|source| TlsError::BadCa {
            path: ca.to_path_buf(),
            index: index + 1,
            source,
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TlsError::Verifier {
            path: ca.to_path_buf(),
            source,
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::CertKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key, from a file only its owner can read (checked before reading it).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        flag: "--tls-key",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = read("--tls-key", path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(TlsError::Pem {
            flag: "--tls-key",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn flags(addr: Option<&str>, insecure: bool) -> TcpApiFlags {
        TcpApiFlags {
            addr: addr.map(Into::into),
            insecure,
            ..Default::default()
        }
    }

    #[test]
    fn no_tcp_flags_no_tcp_api() {
        assert!(TcpApi::prepare(&TcpApiFlags::default()).unwrap().is_none());
    }

    #[test]
    fn tcp_without_tls_is_refused_unless_insecure_and_loopback() {
        let e = TcpApi::prepare(&flags(Some("127.0.0.1:0"), false)).unwrap_err();
        assert!(matches!(e, TcpApiError::NoTls { .. }), "{e}");
        assert!(e.to_string().contains("root on this host"), "{e}");
        let ok = TcpApi::prepare(&flags(Some("127.0.0.1:0"), true)).unwrap();
        assert!(!ok.unwrap().is_tls());
        assert!(TcpApi::prepare(&flags(Some("[::1]:0"), true)).is_ok());
        assert!(TcpApi::prepare(&flags(Some("localhost:0"), true)).is_ok());
        for wide in ["0.0.0.0:2375", "[::]:2375", "192.0.2.1:2375"] {
            let e = TcpApi::prepare(&flags(Some(wide), true)).unwrap_err();
            assert!(matches!(e, TcpApiError::NotLoopback { .. }), "{wide}: {e}");
        }
    }

    #[test]
    fn tls_flags_must_come_together_and_with_an_address() {
        let some = TcpApiFlags {
            addr: Some("127.0.0.1:0".into()),
            cert: Some("c.pem".into()),
            ..Default::default()
        };
        let e = TcpApi::prepare(&some).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--api-tcp 127.0.0.1:0 needs all of --tls-cert, --tls-key and --tls-ca; \
             missing --tls-key and --tls-ca"
        );
        let no_addr = TcpApiFlags {
            addr: None,
            ..some.clone()
        };
        assert!(matches!(
            TcpApi::prepare(&no_addr).unwrap_err(),
            TcpApiError::NoAddress { .. }
        ));
        let both = TcpApiFlags {
            insecure: true,
            ..some
        };
        assert!(matches!(
            TcpApi::prepare(&both).unwrap_err(),
            TcpApiError::InsecureWithTls
        ));
    }

    #[test]
    fn serve_args_round_trip_with_absolute_files() {
        let f = TcpApiFlags {
            addr: Some("127.0.0.1:2376".into()),
            cert: Some("cert.pem".into()),
            key: Some("/k/key.pem".into()),
            ca: Some("ca.pem".into()),
            insecure: false,
        };
        let args = f.serve_args();
        assert_eq!(args.len(), 8);
        assert_eq!(args[0], "--api-tcp");
        assert_eq!(args[5], "/k/key.pem");
        assert!(Path::new(&args[3]).is_absolute());
        assert!(!args.contains(&OsString::from("--api-insecure-tcp")));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = TestDir::new("tls");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let e = certificates("--tls-cert", &garbage).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }));
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        let e = certificates("--tls-ca", &dir.path().join("missing.pem")).unwrap_err();
        assert!(e.to_string().starts_with("--tls-ca "), "{e}");
        assert!(e.to_string().contains("missing.pem: cannot read it"), "{e}");
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = private_key(&garbage).unwrap_err();
        assert!(matches!(e, TlsError::KeyMode { mode: 0o644, .. }), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            private_key(&garbage).unwrap_err(),
            TlsError::NoKey { .. }
        ));
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
        assert!(matches!(
            certificates("--tls-cert", &broken).unwrap_err(),
            TlsError::Pem { .. }
        ));
    }
}
