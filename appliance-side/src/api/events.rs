//! `GET /events`: docker's event stream, past events from `since`, live ones until `until` (or
//! until the client leaves), filtered by type, container, event and label.

use std::collections::HashMap;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::api::body;
use crate::api::http::{error, parse_unix};
use crate::api::{Api, ApiResponse};
use crate::engine::events::EngineEvent;

/// docker's event filters: values of one key are alternatives, keys must all hold.
struct EventFilter(Vec<(String, Vec<String>)>);

impl EventFilter {
    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self(Vec::new()));
        }
        let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid filters: {e}"))?;
        let obj = v.as_object().ok_or("invalid filters: not an object")?;
        let mut out = Vec::new();
        for (k, vals) in obj {
            let vals: Vec<String> = match vals {
                Value::Object(m) => m.keys().cloned().collect(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect(),
                _ => return Err(format!("invalid filter '{k}'")),
            };
            out.push((k.clone(), vals));
        }
        Ok(Self(out))
    }

    fn matches(&self, e: &EngineEvent) -> bool {
        self.0.iter().all(|(k, vals)| {
            vals.iter().any(|v| match k.as_str() {
                "type" => e.kind == v,
                "event" => e.action == *v,
                "container" => e.id.starts_with(v.as_str()) || e.attributes.get("name") == Some(v),
                "image" => e.attributes.get("image") == Some(v),
                "label" => match v.split_once('=') {
                    Some((lk, lv)) => e.attributes.get(lk).is_some_and(|x| x == lv),
                    None => e.attributes.contains_key(v),
                },
                _ => false,
            })
        })
    }
}

fn line(e: &EngineEvent) -> Bytes {
    let mut s = e.to_docker_json().to_string();
    s.push('\n');
    Bytes::from(s)
}

impl Api {
    pub(crate) fn events(&self, q: &HashMap<String, String>) -> ApiResponse {
        let time = |key: &str| -> Result<Option<i128>, String> {
            match q.get(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => parse_unix(v)
                    .map(Some)
                    .ok_or_else(|| format!("invalid {key} {v:?}: give Unix seconds")),
            }
        };
        let (since, until) = match (time("since"), time("until")) {
            (Ok(s), Ok(u)) => (s, u),
            (Err(m), _) | (_, Err(m)) => return error(StatusCode::BAD_REQUEST, m),
        };
        let filter = match EventFilter::parse(q.get("filters").map_or("", String::as_str)) {
            Ok(f) => f,
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        };
        // Without `since`, only what happens from now on (docker's default).
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let (past, mut live) = self.engine.events.replay_and_follow(since.unwrap_or(now));
        let (tx, body) = body::channel(64);
        tokio::spawn(async move {
            let in_window = |e: &EngineEvent| until.is_none_or(|u| e.time_nano <= u);
            for e in past.iter().filter(|e| filter.matches(e) && in_window(e)) {
                if tx.send(line(e)).await.is_err() {
                    return;
                }
            }
            if until.is_some_and(|u| u <= now) {
                return;
            }
            let deadline = until.map(|u| {
                let wait_ns = (u - now).max(0) as u64;
                tokio::time::Instant::now() + std::time::Duration::from_nanos(wait_ns)
            });
            loop {
                let next = async {
                    match deadline {
                        Some(d) => tokio::time::timeout_at(d, live.recv()).await.ok(),
                        None => Some(live.recv().await),
                    }
                };
                let e = tokio::select! {
                    e = next => e,
                    _ = tx.closed() => return,
                };
                match e {
                    None => return,
                    Some(Ok(e)) if filter.matches(&e) => {
                        if tx.send(line(&e)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(_))
                    | Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    Some(Err(_)) => return,
                }
            }
        });
        Response::builder()
            .header("Content-Type", "application/json")
            .body(body)
            .expect("static")
    }
}
