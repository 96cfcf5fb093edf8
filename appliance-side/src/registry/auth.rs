//! Registry credentials as docker sends them, and `docker login`'s check of them.
//!
//! `docker pull` (and the CLI's implicit pull) send `X-Registry-Auth`: base64url of a JSON
//! object with `username` and `password`, or an `identitytoken` (or `registrytoken`).
//! `docker login` posts the same object to `/auth`, which answers only after the registry
//! accepted the credentials, as dockerd's `loginV2` does: `GET /v2/` with basic auth, or, when
//! the registry asks for a bearer token, a token request to its realm with them.

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::config::RegistryConfig;
use super::connect::{self, Endpoint};
use super::error::Cause;

/// Who a request is made as. Its `Debug` leaves the secrets out.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default, rename = "identitytoken")]
    pub identity_token: String,
    #[serde(default, rename = "registrytoken")]
    pub registry_token: String,
    #[serde(default, rename = "serveraddress")]
    pub server_address: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `X-Registry-Auth` header's value: base64url (padded or not; docker's CLI has sent
    /// both, and older clients plain base64) of the JSON object. Empty or `{}` is anonymous.
    pub fn from_header(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self::default());
        }
        let engines = [
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|e| e.decode(value).ok())
            .ok_or("X-Registry-Auth is not base64")?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("X-Registry-Auth is not valid: {e}"))
    }

    /// As oci-client takes them. A token is sent as the bearer token itself.
    pub(super) fn registry_auth(&self) -> RegistryAuth {
        if !self.registry_token.is_empty() {
            RegistryAuth::Bearer(self.registry_token.clone())
        } else if !self.identity_token.is_empty() {
            RegistryAuth::Bearer(self.identity_token.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
}

/// `docker login`'s check: the credentials are good when the registry lets them in.
pub(super) async fn login(
    config: &RegistryConfig,
    server: &str,
    creds: &Credentials,
) -> Result<(), Cause> {
    let endpoint = connect::endpoint(config, server).await?;
    let base = endpoint.v2_url();
    let http = endpoint.http();
    let send = |req: reqwest::RequestBuilder| connect::send(&endpoint, &base, "login", req);
    let mut req = http.get(&base);
    if !creds.username.is_empty() {
        req = req.basic_auth(&creds.username, Some(&creds.password));
    }
    let resp = send(req).await?;
    if resp.status().is_success() {
        return Ok(());
    }
    let failed = |status: reqwest::StatusCode, url: &str| Cause::Unauthorized {
        registry: server.to_string(),
        detail: format!(
            "login attempt to {url} failed with status: {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    };
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(failed(resp.status(), &base));
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(bearer) = bearer_challenge(&challenge) else {
        return Err(failed(reqwest::StatusCode::UNAUTHORIZED, &base));
    };
    // A token registry: the realm hands out tokens to good credentials.
    let mut query = vec![("account", creds.username.clone())];
    if let Some(service) = bearer.service {
        query.push(("service", service));
    }
    let mut req = http.get(&bearer.realm).query(&query);
    if !creds.username.is_empty() {
        req = req.basic_auth(&creds.username, Some(&creds.password));
    } else if let RegistryAuth::Bearer(t) = creds.registry_auth() {
        req = req.bearer_auth(t);
    }
    let resp = send(req).await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(failed(resp.status(), &bearer.realm))
    }
}

struct Bearer {
    realm: String,
    service: Option<String>,
}

/// `Bearer realm="https://auth.example/token",service="registry.example"`.
fn bearer_challenge(header: &str) -> Option<Bearer> {
    let rest = header.trim().strip_prefix("Bearer ").or_else(|| {
        header
            .trim()
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| &header.trim()[7..])
    })?;
    let mut realm = None;
    let mut service = None;
    for part in split_params(rest) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some(Bearer {
        realm: realm?,
        service,
    })
}

/// Splits `a="x,y",b=z` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// What the fetch's errors become for the registry at `endpoint`.
pub(super) fn unauthorized(endpoint: &Endpoint, detail: impl Into<String>) -> Cause {
    Cause::Unauthorized {
        registry: endpoint.registry.clone(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms_decode() {
        let json = r#"{"username":"u","password":"p?>","serveraddress":"r:5000"}"#;
        for e in [
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::STANDARD_NO_PAD,
        ] {
            let c = Credentials::from_header(&e.encode(json)).unwrap();
            assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p?>"));
        }
        assert_eq!(
            Credentials::from_header("").unwrap(),
            Credentials::default()
        );
        let anon = base64::engine::general_purpose::URL_SAFE.encode("{}");
        assert_eq!(
            Credentials::from_header(&anon).unwrap().registry_auth(),
            RegistryAuth::Anonymous
        );
        let tok = base64::engine::general_purpose::URL_SAFE.encode(r#"{"identitytoken":"t"}"#);
        assert_eq!(
            Credentials::from_header(&tok).unwrap().registry_auth(),
            RegistryAuth::Bearer("t".into())
        );
        assert!(Credentials::from_header("!!!").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let b = bearer_challenge(r#"Bearer realm="https://a/token",service="reg,x",scope="s""#)
            .unwrap();
        assert_eq!(b.realm, "https://a/token");
        assert_eq!(b.service.as_deref(), Some("reg,x"));
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
    }
}
