//! HTTP helpers every resource shares: docker's error shape, JSON responses, query strings,
//! request bodies and the version prefix of paths.

use std::collections::HashMap;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

pub const API_VERSION: &str = "1.45";
pub const MIN_API_VERSION: &str = "1.24";

pub type ApiResponse = Response<ApiBody>;
use serde_json::{json, Value};

use crate::api::body::{self, ApiBody};
use crate::engine::EngineError;

/// An error as docker reports it: a status and `{"message": ...}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> ApiResponse {
        error(self.status, self.message)
    }
}

pub fn error(status: StatusCode, message: impl Into<String>) -> ApiResponse {
    json_response(status, &json!({ "message": message.into() }))
}

pub fn json_response(status: StatusCode, v: &Value) -> ApiResponse {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Api-Version", API_VERSION)
        .body(body::full(serde_json::to_vec(v).unwrap_or_default()))
        .expect("static response parts")
}

pub fn no_content() -> ApiResponse {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(body::empty())
        .expect("static response parts")
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::NoSuchContainer(_)
            | EngineError::NoSuchExec(_)
            | EngineError::NoSuchImage(_)
            | EngineError::NotFound(_) => StatusCode::NOT_FOUND,
            EngineError::NotRunning(_) | EngineError::Conflict(_) => StatusCode::CONFLICT,
            EngineError::NotModified(..) => StatusCode::NOT_MODIFIED,
            EngineError::Forbidden(_) => StatusCode::FORBIDDEN,
            EngineError::BadRequest(_) => StatusCode::BAD_REQUEST,
            // dockerd answers 400 for a process that cannot be executed, 500 otherwise.
            EngineError::StartFailed { exit_code, .. }
                if *exit_code == 126 || *exit_code == 127 =>
            {
                StatusCode::BAD_REQUEST
            }
            EngineError::StartFailed { .. } | EngineError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, e.to_string())
    }
}

/// Query parameters (docker's values are simple; no repeated keys needed here).
pub fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(
        q.get(key).map(String::as_str),
        Some("1") | Some("true") | Some("True")
    )
}

/// Strips docker's `/v1.45` version prefix.
pub(crate) fn route_path(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some(i) = rest.find('/') {
            if rest[..i].chars().all(|c| c.is_ascii_digit() || c == '.') {
                return &rest[i..];
            }
        }
    }
    path
}

pub(crate) async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    read_json_body(req).await.map(|(_, v)| v)
}

/// The request's parts and its JSON body (`null` when empty).
pub async fn read_json_body(
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Value), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok((parts, Value::Null));
    }
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    Ok((parts, v))
}

/// docker sends `since`/`until` as Unix seconds with an optional fraction.
pub fn parse_unix(s: &str) -> Option<i128> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i128 = secs.parse().ok()?;
    let mut nanos: i128 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    Some(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(route_path("/v1.45/containers/json"), "/containers/json");
        assert_eq!(route_path("/_ping"), "/_ping");
        assert_eq!(percent_decode("a%20b+c%2F"), "a b c/");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(parse_unix("1700000000.5"), Some(1_700_000_000_500_000_000));
        assert_eq!(parse_unix("12"), Some(12_000_000_000));
        assert_eq!(parse_unix("x"), None);
    }
}
