//! Registry credentials as docker sends them, and `docker login`'s check of them.
//!
//! `docker pull` (and the CLI's implicit pull) send `X-Registry-Auth`: base64url of a JSON
//! object with `username` and `password`, or an `identitytoken` (or `registrytoken`).
//! `docker login` posts the same object to `/auth`, which answers only after the registry
//! accepted the credentials, as dockerd's `loginV2` does: `GET /v2/` with basic auth, or, when
//! the registry asks for a bearer token, a token request to its realm with them, which may
//! answer with a refresh token: `/auth` returns it as the `IdentityToken` the CLI keeps and
//! sends from then on instead of the password. A pull with an identity token exchanges it for
//! an access token first (`token.rs`).

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::config::RegistryConfig;
use super::connect::{self, Endpoint};
use super::error::Cause;
use super::token;

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

    /// As oci-client takes them. A registry token is sent as the bearer token itself; an
    /// identity token is first exchanged at the token server ([`pull_auth`]), so here it
    /// counts as nothing.
    pub(super) fn registry_auth(&self) -> RegistryAuth {
        if !self.registry_token.is_empty() {
            RegistryAuth::Bearer(self.registry_token.clone())
        } else if !self.identity_token.is_empty() {
            RegistryAuth::Anonymous
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
}

/// `docker login`'s check: the credentials are good when the registry lets them in. Returns
/// the identity token for the CLI to keep instead of the password, when the registry's token
/// server gave a refresh token (as dockerd's `loginV2`); `None` keeps the password.
pub(super) async fn login(
    config: &RegistryConfig,
    server: &str,
    creds: &Credentials,
) -> Result<Option<String>, Cause> {
    let endpoint = connect::endpoint(config, server).await?;
    let base = endpoint.v2_url();
    if !creds.identity_token.is_empty() {
        let bearer = token::challenge(&endpoint)
            .await?
            .ok_or_else(|| no_token_server(&endpoint))?;
        let answer = token::refresh(&endpoint, &bearer, &creds.identity_token, None).await?;
        let kept = if answer.refresh_token.is_empty() {
            creds.identity_token.clone()
        } else {
            answer.refresh_token
        };
        return Ok(Some(kept));
    }
    let http = endpoint.http();
    let send = |req: reqwest::RequestBuilder| connect::send(&endpoint, &base, "login", req);
    let mut req = http.get(&base);
    if !creds.username.is_empty() {
        req = req.basic_auth(&creds.username, Some(&creds.password));
    }
    let resp = send(req).await?;
    if resp.status().is_success() {
        return Ok(None);
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
    let Some(bearer) = token::bearer_challenge(&challenge) else {
        return Err(failed(reqwest::StatusCode::UNAUTHORIZED, &base));
    };
    // A token registry: the realm hands out tokens to good credentials, and a refresh token
    // (the identity token) when asked for one.
    let mut query = vec![
        ("account", creds.username.clone()),
        ("client_id", token::CLIENT_ID.to_string()),
        ("offline_token", "true".to_string()),
    ];
    if let Some(service) = &bearer.service {
        query.push(("service", service.clone()));
    }
    let mut req = http.get(&bearer.realm).query(&query);
    if !creds.username.is_empty() {
        req = req.basic_auth(&creds.username, Some(&creds.password));
    } else if !creds.registry_token.is_empty() {
        req = req.bearer_auth(&creds.registry_token);
    }
    let resp = send(req).await?;
    if !resp.status().is_success() {
        return Err(failed(resp.status(), &bearer.realm));
    }
    let answer = token::answer(&endpoint, &bearer, resp, "the credentials").await?;
    Ok(Some(answer.refresh_token).filter(|t| !t.is_empty()))
}

/// How a pull from `repository` at `endpoint` authenticates. An identity token is a refresh
/// token for the registry's token server, never sent to the registry itself: it buys an access
/// token for the repository by the OAuth2 refresh grant first.
pub(super) async fn pull_auth(
    endpoint: &Endpoint,
    creds: &Credentials,
    repository: &str,
) -> Result<RegistryAuth, Cause> {
    if !creds.registry_token.is_empty() || creds.identity_token.is_empty() {
        return Ok(creds.registry_auth());
    }
    let bearer = token::challenge(endpoint)
        .await?
        .ok_or_else(|| no_token_server(endpoint))?;
    let scope = format!("repository:{repository}:pull");
    let answer = token::refresh(endpoint, &bearer, &creds.identity_token, Some(&scope)).await?;
    let access = answer.access().ok_or_else(|| {
        unauthorized(
            endpoint,
            format!("the token server {} answered no access token", bearer.realm),
        )
    })?;
    Ok(RegistryAuth::Bearer(access.to_string()))
}

fn no_token_server(endpoint: &Endpoint) -> Cause {
    unauthorized(
        endpoint,
        format!(
            "the credentials are an identity token, which only a token server takes, and {} \
             names none; `docker logout` and log in with a password",
            endpoint.v2_url()
        ),
    )
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
        // The CLI sends the user name beside an identity token; neither goes to the registry
        // as they are (the token is exchanged at the token server first).
        let tok = base64::engine::general_purpose::URL_SAFE
            .encode(r#"{"username":"u","identitytoken":"t"}"#);
        let c = Credentials::from_header(&tok).unwrap();
        assert_eq!(c.identity_token, "t");
        assert_eq!(c.registry_auth(), RegistryAuth::Anonymous);
        let reg = base64::engine::general_purpose::URL_SAFE.encode(r#"{"registrytoken":"r"}"#);
        assert_eq!(
            Credentials::from_header(&reg).unwrap().registry_auth(),
            RegistryAuth::Bearer("r".into())
        );
        assert!(Credentials::from_header("!!!").is_err());
    }
}
