//! A registry's token server, as docker's distribution client talks to it: the `Bearer`
//! challenge of `GET /v2/` names the realm and service; credentials buy a token there by
//! `GET realm?service=&scope=` with basic auth (asking for a refresh token with
//! `offline_token=true`, which `docker login` hands the CLI as its identity token), and an
//! identity token buys one by the OAuth2 refresh grant, `POST realm` with
//! `grant_type=refresh_token&refresh_token=&service=&scope=&client_id=`.

use serde::Deserialize;

use super::connect::{self, Endpoint};
use super::error::Cause;

/// The `client_id` dockerd sends to token servers (distribution's `AuthClientID`).
pub(super) const CLIENT_ID: &str = "docker";

/// A `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bearer {
    pub realm: String,
    pub service: Option<String>,
}

/// What a token server answers: `token` (docker's name) or `access_token` (OAuth2's), and a
/// refresh token when one was asked for.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenAnswer {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    pub refresh_token: String,
}

impl TokenAnswer {
    /// The token to send the registry, if the answer held one.
    pub fn access(&self) -> Option<&str> {
        [&self.access_token, &self.token]
            .into_iter()
            .find(|t| !t.is_empty())
            .map(String::as_str)
    }
}

/// `Bearer realm="https://auth.example/token",service="registry.example"`.
pub(super) fn bearer_challenge(header: &str) -> Option<Bearer> {
    let h = header.trim();
    let rest = h
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| &h[7..])?;
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

/// The bearer challenge an anonymous `GET /v2/` gets; `None` when the registry asks for none
/// (it lets everyone in, or takes basic auth).
pub(super) async fn challenge(endpoint: &Endpoint) -> Result<Option<Bearer>, Cause> {
    let url = endpoint.v2_url();
    let resp = connect::send(endpoint, &url, "ping", endpoint.http().get(&url)).await?;
    if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    Ok(resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge))
}

/// The OAuth2 refresh grant: a token for `scope` (none: only the identity checked) bought
/// with the identity token `refresh_token`.
pub(super) async fn refresh(
    endpoint: &Endpoint,
    bearer: &Bearer,
    refresh_token: &str,
    scope: Option<&str>,
) -> Result<TokenAnswer, Cause> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", CLIENT_ID),
    ];
    if let Some(s) = &bearer.service {
        form.push(("service", s));
    }
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let req = endpoint.http().post(&bearer.realm).form(&form);
    let resp = connect::send(endpoint, &bearer.realm, "token refresh", req).await?;
    answer(endpoint, bearer, resp, "the identity token").await
}

/// A token server's answer, or why it refused (`with` names what was offered).
pub(super) async fn answer(
    endpoint: &Endpoint,
    bearer: &Bearer,
    resp: reqwest::Response,
    with: &str,
) -> Result<TokenAnswer, Cause> {
    let status = resp.status();
    let refused = |detail: String| Cause::Unauthorized {
        registry: endpoint.registry.clone(),
        detail,
    };
    if !status.is_success() {
        return Err(refused(format!(
            "the token server {} refused {with}: {} {}",
            bearer.realm,
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let body = tokio::time::timeout(endpoint.timeout, resp.bytes())
        .await
        .map_err(|_| connect::timeout(&bearer.realm, endpoint.timeout, "token"))?
        .map_err(|e| connect::transport(&bearer.realm, endpoint.timeout, "token", &e))?;
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
        refused(format!(
            "the token server {} answered no token: {e}",
            bearer.realm
        ))
    })?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let b = bearer_challenge(r#"Bearer realm="https://a/token",service="reg,x",scope="s""#)
            .unwrap();
        assert_eq!(b.realm, "https://a/token");
        assert_eq!(b.service.as_deref(), Some("reg,x"));
        let b = bearer_challenge(r#"bearer realm="http://b/t""#).unwrap();
        assert_eq!((b.realm.as_str(), b.service), ("http://b/t", None));
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(bearer_challenge(r#"Bearer service="no realm""#).is_none());
    }

    #[test]
    fn either_token_field_is_the_access_token() {
        let a: TokenAnswer = serde_json::from_str(r#"{"token":"t"}"#).unwrap();
        assert_eq!(a.access(), Some("t"));
        let a: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"a","refresh_token":"r"}"#).unwrap();
        assert_eq!((a.access(), a.refresh_token.as_str()), (Some("a"), "r"));
        let a: TokenAnswer = serde_json::from_str("{}").unwrap();
        assert_eq!(a.access(), None);
    }
}
