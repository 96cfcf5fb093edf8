//! Reaching a registry: HTTPS, or plain HTTP where allowed, and the clients that talk to it.
//!
//! As dockerd: every registry is HTTPS, verified against the system's roots, `--registry-ca`
//! and `/etc/docker/certs.d/<host:port>/*.crt`. A registry on 127.0.0.0/8, `::1` or
//! `localhost`, or named by `--insecure-registry`, may be plain HTTP: HTTPS is tried first (with
//! the same verification: a certificate that does not verify is never accepted), and HTTP is
//! used when the registry does not speak TLS at all.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::config::RegistryConfig;
use super::error::{retry, Cause};

/// One registry, reachable: its scheme chosen and its trust roots loaded.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    /// `host[:port]` as requests name it (Docker Hub's is `index.docker.io`).
    pub registry: String,
    pub https: bool,
    pub timeout: Duration,
    roots: Vec<Vec<u8>>,
    http: reqwest::Client,
}

impl Endpoint {
    pub fn v2_url(&self) -> String {
        format!("{}://{}/v2/", self.scheme(), self.registry)
    }

    fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// An oci-client for this registry. A client keeps the first credentials it is given per
    /// registry, so each pull makes its own.
    pub fn oci_client(&self) -> oci_client::Client {
        let protocol = if self.https {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(vec![self.registry.clone()])
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            extra_root_certificates: self
                .roots
                .iter()
                .map(|der| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: der.clone(),
                })
                .collect(),
            connect_timeout: Some(self.timeout),
            read_timeout: Some(self.timeout),
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            user_agent: concat!("tether-appliance/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }
}

/// The registry oci-client's requests go to for `domain` (Docker Hub's API host).
pub(super) fn api_host(domain: &str) -> &str {
    if domain == "docker.io" {
        "index.docker.io"
    } else {
        domain
    }
}

/// rustls needs one process-wide provider; the API's TLS uses ring too.
fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn load_roots(config: &RegistryConfig, registry: &str) -> Result<Vec<Vec<u8>>, Cause> {
    let mut files: Vec<std::path::PathBuf> = config.ca_files.clone();
    let dir = config.certs_dir.join(registry);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut found: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
            .collect();
        found.sort();
        files.extend(found);
    }
    let mut out = Vec::new();
    for f in files {
        out.extend(read_pem(&f)?);
    }
    Ok(out)
}

fn read_pem(path: &Path) -> Result<Vec<Vec<u8>>, Cause> {
    let bad = |detail: String| Cause::Io {
        what: "reading the registry CA",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
    };
    let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The host of `registry` (`host[:port]`, `[v6]:port`).
fn host_of(registry: &str) -> &str {
    match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    }
}

/// Whether `registry` is on this machine (localhost, 127.0.0.0/8, ::1).
fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether plain HTTP is allowed for `registry` (`host[:port]`).
fn insecure(config: &RegistryConfig, registry: &str) -> bool {
    let host = host_of(registry);
    is_loopback(registry) || config.insecure.iter().any(|i| i == registry || i == host)
}

fn http_client(timeout: Duration, roots: &[Vec<u8>]) -> Result<reqwest::Client, Cause> {
    install_provider();
    let mut b = reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(concat!("tether-appliance/", env!("CARGO_PKG_VERSION")));
    for der in roots {
        let cert =
            reqwest::Certificate::from_der(der).map_err(|e| Cause::Registry(e.to_string()))?;
        b = b.add_root_certificate(cert);
    }
    b.build()
        .map_err(|e| Cause::Registry(format!("cannot make an HTTP client: {e}")))
}

/// Sends `req` (for `what`, at `url`) under the endpoint's timeout; the network's failures
/// become [`Cause::Unreachable`] or [`Cause::Timeout`].
pub(super) async fn send(
    endpoint: &Endpoint,
    url: &str,
    what: &'static str,
    req: reqwest::RequestBuilder,
) -> Result<reqwest::Response, Cause> {
    match tokio::time::timeout(endpoint.timeout, req.send()).await {
        Err(_) => Err(timeout(url, endpoint.timeout, what)),
        Ok(Err(e)) => Err(transport(url, endpoint.timeout, what, &e)),
        Ok(Ok(r)) => Ok(r),
    }
}

pub(super) fn timeout(url: &str, t: Duration, what: &'static str) -> Cause {
    Cause::Timeout {
        url: url.to_string(),
        secs: t.as_secs_f64(),
        what,
    }
}

/// An error with its causes, which reqwest keeps in its source chain.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

pub(super) fn transport(url: &str, t: Duration, what: &'static str, e: &reqwest::Error) -> Cause {
    if e.is_timeout() {
        return timeout(url, t, what);
    }
    Cause::Unreachable {
        url: url.to_string(),
        detail: chain(e),
    }
}

/// The registry at `domain` (a reference's domain), reachable, with its scheme chosen.
pub(super) async fn endpoint(config: &RegistryConfig, domain: &str) -> Result<Endpoint, Cause> {
    let registry = api_host(domain).to_string();
    if config.loopback_only && !is_loopback(&registry) {
        return Err(Cause::Unreachable {
            url: format!("https://{registry}/v2/"),
            detail: "this engine reaches registries on this machine only".into(),
        });
    }
    let roots = load_roots(config, &registry)?;
    let http = http_client(config.timeout, &roots)?;
    let mut e = Endpoint {
        registry: registry.clone(),
        https: true,
        timeout: config.timeout,
        roots,
        http,
    };
    let may_http = insecure(config, &registry);
    e.https = retry(|| choose_scheme(e.clone(), may_http)).await?;
    Ok(e)
}

async fn ping(e: &Endpoint) -> Result<reqwest::StatusCode, Cause> {
    let url = e.v2_url();
    send(e, &url, "ping", e.http.get(&url))
        .await
        .map(|r| r.status())
}

/// True for HTTPS. Any answer over HTTPS settles it; plain HTTP only where allowed.
async fn choose_scheme(mut e: Endpoint, may_http: bool) -> Result<bool, Cause> {
    e.https = true;
    let tls_err = match ping(&e).await {
        Ok(_) => return Ok(true),
        Err(err) if !may_http => return Err(err),
        Err(err) => err,
    };
    e.https = false;
    match ping(&e).await {
        // Go's TLS servers answer plain HTTP with a 400: the registry speaks TLS, and the
        // HTTPS failure is the one to report.
        Ok(reqwest::StatusCode::BAD_REQUEST) | Err(_) => Err(tls_err),
        Ok(_) => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_named_registries_may_be_http() {
        let mut c = RegistryConfig::default();
        for r in [
            "127.0.0.1:5000",
            "127.3.4.5",
            "[::1]:5000",
            "localhost:80",
            "localhost",
        ] {
            assert!(insecure(&c, r), "{r}");
        }
        for r in ["10.0.0.1:5000", "registry.example:5000", "index.docker.io"] {
            assert!(!insecure(&c, r), "{r}");
        }
        c.insecure = vec!["registry.example:5000".into()];
        assert!(insecure(&c, "registry.example:5000"));
        assert!(!insecure(&c, "registry.example:5001"));
    }
}
