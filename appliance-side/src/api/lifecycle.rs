//! A container's life over the API: create, start, stop, restart, kill, rm, rename, wait.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

use crate::api::body;
use crate::api::http::{error, flag, json_response, no_content, ApiError};
use crate::api::{Api, ApiResponse};
use crate::engine::{EngineError, WaitCondition};

/// 204 on success, docker's status and message otherwise.
fn done(r: Result<(), EngineError>) -> ApiResponse {
    match r {
        Ok(()) => no_content(),
        Err(EngineError::NotModified(..)) => Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(body::empty())
            .expect("static"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// docker's `t` (seconds) for stop and restart; `None` uses the container's own.
fn timeout(q: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    match q.get("t").filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => match t.parse::<i64>() {
            Ok(n) => Ok(Some(n.clamp(0, u32::MAX as i64) as u32)),
            Err(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid timeout {t:?}: give seconds"),
            )),
        },
    }
}

impl Api {
    pub(crate) fn create(&self, q: &HashMap<String, String>, body: &Value) -> ApiResponse {
        if !body.is_object() {
            return error(
                StatusCode::BAD_REQUEST,
                "config cannot be empty in order to create a container",
            );
        }
        let name = q.get("name").filter(|n| !n.is_empty()).cloned();
        match self.engine.create(body, name) {
            Ok(rec) => json_response(StatusCode::CREATED, &json!({"Id": rec.id, "Warnings": []})),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    pub(crate) async fn start(&self, reference: &str) -> ApiResponse {
        done(self.engine.start(reference).await)
    }

    pub(crate) async fn stop(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        match timeout(q) {
            Ok(t) => done(self.engine.stop(reference, t).await),
            Err(e) => e.into_response(),
        }
    }

    pub(crate) async fn restart(
        &self,
        reference: &str,
        q: &HashMap<String, String>,
    ) -> ApiResponse {
        match timeout(q) {
            Ok(t) => done(self.engine.restart(reference, t).await),
            Err(e) => e.into_response(),
        }
    }

    pub(crate) async fn kill(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let signal_text = q
            .get("signal")
            .filter(|s| !s.is_empty())
            .map_or("SIGKILL", String::as_str);
        let Some(signal) = wire::message::parse_signal(signal_text) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid signal: {signal_text}"),
            );
        };
        done(self.engine.kill(reference, signal).await)
    }

    pub(crate) async fn remove(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        done(
            self.engine
                .remove(reference, flag(q, "force"), flag(q, "v"))
                .await,
        )
    }

    pub(crate) fn rename(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        match q.get("name").filter(|n| !n.is_empty()) {
            Some(name) => done(self.engine.rename(reference, name)),
            None => error(StatusCode::BAD_REQUEST, "rename needs a new name (?name=)"),
        }
    }

    /// The headers go out at once (the CLI blocks on them before it sends start); the body, with
    /// the exit code, when the condition holds.
    pub(crate) fn wait(
        self: &Arc<Self>,
        reference: &str,
        q: &HashMap<String, String>,
    ) -> ApiResponse {
        let condition = match WaitCondition::parse(q.get("condition").map_or("", String::as_str)) {
            Ok(c) => c,
            Err(e) => return ApiError::from(e).into_response(),
        };
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let (tx, body) = body::channel(1);
        let api = self.clone();
        tokio::spawn(async move {
            let answer = tokio::select! {
                r = api.engine.wait(&rec.id, condition) => r,
                _ = tx.closed() => return,
            };
            let line = match answer {
                Ok(code) => format!("{{\"StatusCode\":{code},\"Error\":null}}\n"),
                Err(e) => format!(
                    "{{\"StatusCode\":-1,\"Error\":{{\"Message\":{}}}}}\n",
                    Value::String(e.to_string())
                ),
            };
            let _ = tx.send(Bytes::from(line)).await;
        });
        Response::builder()
            .header("Content-Type", "application/json")
            .body(body)
            .expect("static")
    }
}
