//! The handshake: version negotiation and mutual proof of the per-container secret.
//!
//! ```text
//! tether (client)                              appliance (server)
//!   Hello{min,max, id, boot_id, Nc}     ->
//!                                       <-    Challenge{v, Ns, MAC(K, "server", T)}
//!   (verifies server MAC)
//!   Proof{MAC(K, "client", T), pos}     ->
//!                                       <-    Welcome{pos} | Refused{reason}
//! T = v || id || boot_id || Nc || Ns (length-prefixed), K = the container's secret
//! ```
//!
//! Both nonces are fresh per attempt, so a recorded Proof is worthless against a new Challenge.
//! The direction label stops a MAC from one side being reflected as the other's. Nonces and
//! secrets come from the caller: this module does no I/O and has no clock or RNG.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use thiserror::Error;

use crate::message::{
    BootId, Challenge, Hello, Mac, Nonce, Position, Proof, RefuseReason, Refused, Welcome,
};

/// Versions this build speaks. A peer offering a disjoint range is refused.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
pub const PROTOCOL_VERSION_MAX: u16 = 1;

/// Container ids are at most this long (docker ids are 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 128;

const LABEL_SERVER: &[u8] = b"tether-wire/v1 server proof";
const LABEL_CLIENT: &[u8] = b"tether-wire/v1 client proof";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    #[error("server refused the channel ({reason:?}): {detail}")]
    Refused {
        reason: RefuseReason,
        detail: String,
    },
    #[error("server chose protocol version {0}, outside the range this side offered")]
    VersionNotOffered(u16),
    #[error("server failed to prove it knows this container's secret; not continuing")]
    ServerProofInvalid,
    #[error("unexpected message during the handshake: expected {expected}")]
    Unexpected { expected: &'static str },
}

/// The secret shared by one containerVM and the appliance.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

struct Transcript<'a> {
    version: u16,
    container_id: &'a str,
    boot_id: &'a BootId,
    client_nonce: &'a Nonce,
    server_nonce: &'a Nonce,
}

impl Transcript<'_> {
    fn mac_with(&self, secret: &Secret, label: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(&secret.0)
            .expect("HMAC accepts keys of any length");
        mac.update(&(label.len() as u32).to_le_bytes());
        mac.update(label);
        mac.update(&self.version.to_le_bytes());
        mac.update(&(self.container_id.len() as u32).to_le_bytes());
        mac.update(self.container_id.as_bytes());
        mac.update(self.boot_id);
        mac.update(self.client_nonce);
        mac.update(self.server_nonce);
        mac
    }

    fn sign(&self, secret: &Secret, label: &[u8]) -> Mac {
        self.mac_with(secret, label).finalize().into_bytes().into()
    }

    /// Constant-time comparison, so timing does not leak how much of a forged MAC was right.
    fn verify(&self, secret: &Secret, label: &[u8], mac: &Mac) -> bool {
        self.mac_with(secret, label).verify_slice(mac).is_ok()
    }
}

/// Tether's side of the handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    container_id: String,
    boot_id: BootId,
    nonce: Nonce,
    secret: Secret,
}

impl ClientHandshake {
    pub fn start(
        container_id: impl Into<String>,
        boot_id: BootId,
        secret: Secret,
        nonce: Nonce,
    ) -> (Self, Hello) {
        let container_id = container_id.into();
        let hello = Hello {
            min_version: PROTOCOL_VERSION_MIN,
            max_version: PROTOCOL_VERSION_MAX,
            container_id: container_id.clone(),
            boot_id,
            nonce,
        };
        let this = Self {
            container_id,
            boot_id,
            nonce,
            secret,
        };
        (this, hello)
    }

    /// What both proofs of this exchange are computed over.
    fn transcript<'a>(&'a self, challenge: &'a Challenge) -> Transcript<'a> {
        Transcript {
            version: challenge.version,
            container_id: &self.container_id,
            boot_id: &self.boot_id,
            client_nonce: &self.nonce,
            server_nonce: &challenge.nonce,
        }
    }

    /// Verifies the server's proof and answers with ours plus what we hold of its streams.
    pub fn on_challenge(
        &self,
        challenge: &Challenge,
        received: Vec<Position>,
    ) -> Result<(u16, Proof), HandshakeError> {
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&challenge.version) {
            return Err(HandshakeError::VersionNotOffered(challenge.version));
        }
        let transcript = self.transcript(challenge);
        if !transcript.verify(&self.secret, LABEL_SERVER, &challenge.mac) {
            return Err(HandshakeError::ServerProofInvalid);
        }
        let mac = transcript.sign(&self.secret, LABEL_CLIENT);
        Ok((challenge.version, Proof { mac, received }))
    }

    /// The proof this client would send, without checking the server's: what a lying peer does.
    /// For adversarial tests only (feature `testing`); a real client must use `on_challenge`.
    #[cfg(feature = "testing")]
    pub fn on_challenge_unchecked(&self, challenge: &Challenge, received: Vec<Position>) -> Proof {
        let transcript = self.transcript(challenge);
        Proof {
            mac: transcript.sign(&self.secret, LABEL_CLIENT),
            received,
        }
    }
}

/// A peer that completed the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub version: u16,
    pub container_id: String,
    pub boot_id: BootId,
    /// What the peer holds of the streams we send.
    pub peer_received: Vec<Position>,
}

/// The appliance's side of the handshake, after it has read a Hello.
#[derive(Debug)]
pub struct ServerHandshake {
    version: u16,
    hello: Hello,
    nonce: Nonce,
    secret: Secret,
}

fn refusal(reason: RefuseReason, detail: String) -> Refused {
    Refused { reason, detail }
}

impl ServerHandshake {
    /// Answers a Hello. `secret_for` looks the claimed id up in the server's own records; the
    /// guest never supplies its secret, only proof of it.
    pub fn on_hello(
        hello: Hello,
        nonce: Nonce,
        secret_for: impl FnOnce(&str) -> Option<Secret>,
    ) -> Result<(Self, Challenge), Refused> {
        let lo = hello.min_version.max(PROTOCOL_VERSION_MIN);
        let hi = hello.max_version.min(PROTOCOL_VERSION_MAX);
        if lo > hi {
            return Err(refusal(
                RefuseReason::UnsupportedVersion,
                format!(
                    "guest speaks versions {}..={}, this server {}..={}; upgrade the older side",
                    hello.min_version,
                    hello.max_version,
                    PROTOCOL_VERSION_MIN,
                    PROTOCOL_VERSION_MAX
                ),
            ));
        }
        if hello.container_id.is_empty() || hello.container_id.len() > MAX_CONTAINER_ID {
            return Err(refusal(
                RefuseReason::UnknownContainer,
                format!(
                    "container id must be 1..={MAX_CONTAINER_ID} bytes, got {}",
                    hello.container_id.len()
                ),
            ));
        }
        let Some(secret) = secret_for(&hello.container_id) else {
            return Err(refusal(
                RefuseReason::UnknownContainer,
                format!(
                    "no container with id {:?} is known here",
                    hello.container_id
                ),
            ));
        };
        let version = hi;
        let transcript = Transcript {
            version,
            container_id: &hello.container_id,
            boot_id: &hello.boot_id,
            client_nonce: &hello.nonce,
            server_nonce: &nonce,
        };
        let challenge = Challenge {
            version,
            nonce,
            mac: transcript.sign(&secret, LABEL_SERVER),
        };
        Ok((
            Self {
                version,
                hello,
                nonce,
                secret,
            },
            challenge,
        ))
    }

    /// Checks the guest's proof. On success the caller sends `Welcome` with its own positions.
    pub fn on_proof(self, proof: Proof) -> Result<Authenticated, Refused> {
        let transcript = Transcript {
            version: self.version,
            container_id: &self.hello.container_id,
            boot_id: &self.hello.boot_id,
            client_nonce: &self.hello.nonce,
            server_nonce: &self.nonce,
        };
        if !transcript.verify(&self.secret, LABEL_CLIENT, &proof.mac) {
            return Err(refusal(
                RefuseReason::BadProof,
                format!(
                    "proof for container {:?} does not match its secret",
                    self.hello.container_id
                ),
            ));
        }
        Ok(Authenticated {
            version: self.version,
            container_id: self.hello.container_id,
            boot_id: self.hello.boot_id,
            peer_received: proof.received,
        })
    }
}

/// Convenience for the client: turn the server's final answer into a result.
pub fn client_finish(answer: crate::Message) -> Result<Welcome, HandshakeError> {
    match answer {
        crate::Message::Welcome(w) => Ok(w),
        crate::Message::Refused(r) => Err(HandshakeError::Refused {
            reason: r.reason,
            detail: r.detail,
        }),
        _ => Err(HandshakeError::Unexpected {
            expected: "Welcome or Refused",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(id: &str) -> Option<Secret> {
        match id {
            "alpha" => Some(Secret::new(b"alpha-secret".to_vec())),
            "beta" => Some(Secret::new(b"beta-secret".to_vec())),
            _ => None,
        }
    }

    fn run(id: &str, secret: &[u8]) -> Result<Authenticated, String> {
        let (client, hello) =
            ClientHandshake::start(id, [1; 16], Secret::new(secret.to_vec()), [2; 32]);
        let (server, challenge) =
            ServerHandshake::on_hello(hello, [3; 32], secrets).map_err(|r| r.detail)?;
        let (_, proof) = client
            .on_challenge(&challenge, vec![])
            .map_err(|e| e.to_string())?;
        server.on_proof(proof).map_err(|r| r.detail)
    }

    #[test]
    fn right_secret_authenticates() {
        let auth = run("alpha", b"alpha-secret").unwrap();
        assert_eq!(auth.container_id, "alpha");
        assert_eq!(auth.version, 1);
    }

    #[test]
    fn claiming_another_id_fails_both_ways() {
        // beta's guest claims alpha: the server's proof (made with alpha's secret) does not
        // verify for the guest, and a guest that ignores that cannot produce alpha's proof.
        let err = run("alpha", b"beta-secret").unwrap_err();
        assert!(err.contains("server failed to prove"), "{err}");

        let (_, hello) =
            ClientHandshake::start("alpha", [1; 16], Secret::new(b"x".to_vec()), [2; 32]);
        let (server, _) = ServerHandshake::on_hello(hello, [3; 32], secrets).unwrap();
        let forged = Proof {
            mac: [0; 32],
            received: vec![],
        };
        assert_eq!(
            server.on_proof(forged).unwrap_err().reason,
            RefuseReason::BadProof
        );
    }

    #[test]
    fn replayed_proof_fails_against_a_fresh_nonce() {
        let secret = Secret::new(b"alpha-secret".to_vec());
        let (client, hello) = ClientHandshake::start("alpha", [1; 16], secret, [2; 32]);
        let (server1, ch1) = ServerHandshake::on_hello(hello.clone(), [3; 32], secrets).unwrap();
        let (_, proof) = client.on_challenge(&ch1, vec![]).unwrap();
        server1.on_proof(proof.clone()).unwrap();
        // Attacker replays the same Hello and Proof; the server picks a new nonce.
        let (server2, _) = ServerHandshake::on_hello(hello, [4; 32], secrets).unwrap();
        assert_eq!(
            server2.on_proof(proof).unwrap_err().reason,
            RefuseReason::BadProof
        );
    }

    #[test]
    fn server_mac_cannot_be_reflected_as_client_proof() {
        let (_, hello) = ClientHandshake::start("alpha", [1; 16], Secret::new(vec![]), [2; 32]);
        let (server, challenge) = ServerHandshake::on_hello(hello, [3; 32], secrets).unwrap();
        let reflected = Proof {
            mac: challenge.mac,
            received: vec![],
        };
        assert!(server.on_proof(reflected).is_err());
    }

    #[test]
    fn unknown_id_and_bad_versions_are_refused_with_reasons() {
        let (_, hello) = ClientHandshake::start("gamma", [1; 16], Secret::new(vec![]), [2; 32]);
        let r = ServerHandshake::on_hello(hello.clone(), [3; 32], secrets).unwrap_err();
        assert_eq!(r.reason, RefuseReason::UnknownContainer);
        assert!(r.detail.contains("gamma"));

        let future = Hello {
            min_version: 7,
            max_version: 9,
            ..hello
        };
        let r = ServerHandshake::on_hello(future, [3; 32], secrets).unwrap_err();
        assert_eq!(r.reason, RefuseReason::UnsupportedVersion);

        let (_, mut empty) = ClientHandshake::start("", [1; 16], Secret::new(vec![]), [2; 32]);
        let r = ServerHandshake::on_hello(empty.clone(), [3; 32], secrets).unwrap_err();
        assert_eq!(r.reason, RefuseReason::UnknownContainer);
        empty.container_id = "a".repeat(MAX_CONTAINER_ID + 1);
        assert!(ServerHandshake::on_hello(empty, [3; 32], secrets).is_err());
    }

    #[test]
    fn client_rejects_unoffered_version() {
        let (client, _) = ClientHandshake::start("alpha", [1; 16], Secret::new(vec![]), [2; 32]);
        let ch = Challenge {
            version: 99,
            nonce: [0; 32],
            mac: [0; 32],
        };
        assert_eq!(
            client.on_challenge(&ch, vec![]).unwrap_err(),
            HandshakeError::VersionNotOffered(99)
        );
    }
}
