//! What `appliance serve` is told about registries (`--insecure-registry`, `--registry-ca`,
//! `--registry-timeout`).

use std::path::PathBuf;
use std::time::Duration;

/// How long one request (or one stalled read of a blob) may take, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a request that failed for the network's reasons is tried.
pub(super) const ATTEMPTS: u32 = 3;

/// What `appliance serve` was told about registries.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `--insecure-registry HOST[:PORT]`: may be plain HTTP (besides 127.0.0.0/8 and ::1,
    /// which always may, as dockerd's defaults).
    pub insecure: Vec<String>,
    /// `--registry-ca FILE`: CA certificates (PEM) trusted for every registry, besides the
    /// system's.
    pub ca_files: Vec<PathBuf>,
    /// dockerd's per-registry CAs, `<dir>/<host:port>/*.crt` (default `/etc/docker/certs.d`).
    pub certs_dir: PathBuf,
    /// `--registry-timeout`: connect, request and blob-stall timeout.
    pub timeout: Duration,
    /// Refuse every registry not on this machine (the API fuzz target, which must never
    /// reach the network whatever a request names).
    pub loopback_only: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            certs_dir: PathBuf::from("/etc/docker/certs.d"),
            timeout: DEFAULT_TIMEOUT,
            loopback_only: false,
        }
    }
}

impl RegistryConfig {
    /// The flags that give this config to a re-executed `appliance serve`.
    pub fn serve_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in &self.insecure {
            out.extend(["--insecure-registry".to_string(), i.clone()]);
        }
        for c in &self.ca_files {
            out.extend(["--registry-ca".to_string(), c.display().to_string()]);
        }
        if self.timeout != DEFAULT_TIMEOUT {
            out.extend([
                "--registry-timeout".to_string(),
                self.timeout.as_secs_f64().to_string(),
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_args_carry_the_config_across_detach() {
        assert!(RegistryConfig::default().serve_args().is_empty());
        let c = RegistryConfig {
            insecure: vec!["reg.example:5000".into(), "other:80".into()],
            ca_files: vec![PathBuf::from("/etc/ca.pem")],
            timeout: Duration::from_millis(1500),
            ..Default::default()
        };
        assert_eq!(
            c.serve_args(),
            [
                "--insecure-registry",
                "reg.example:5000",
                "--insecure-registry",
                "other:80",
                "--registry-ca",
                "/etc/ca.pem",
                "--registry-timeout",
                "1.5"
            ]
        );
    }
}
