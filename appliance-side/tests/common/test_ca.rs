//! A throwaway certificate authority for TLS tests: a CA and one leaf it signed, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The files [`write_test_ca`] made.
pub struct TestCerts {
    /// The CA's certificate: what a client is told to trust.
    pub ca_pem: PathBuf,
    /// The leaf's certificate and key: what a test server serves.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`: a CA named `ca_name` and a leaf for
/// `names` (its subject alternative names) signed by it.
pub fn write_test_ca(dir: &Path, ca_name: &str, names: &[&str]) -> TestCerts {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let certs = TestCerts {
        ca_pem: dir.join("ca.pem"),
        cert_pem: dir.join("cert.pem"),
        key_pem: dir.join("key.pem"),
    };
    std::fs::write(&certs.ca_pem, ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    std::fs::write(
        &certs.cert_pem,
        leaf.signed_by(&key, &issuer).unwrap().pem(),
    )
    .unwrap();
    std::fs::write(&certs.key_pem, key.serialize_pem()).unwrap();
    certs
}
