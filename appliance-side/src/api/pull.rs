//! `POST /images/create?fromImage=&tag=` (`docker pull`, and the pull docker's CLI makes itself
//! when a create answers 404 for a missing image) and `POST /auth` (`docker login`).
//!
//! A pull answers as dockerd does: an error found before anything was pulled (a malformed
//! reference: 400; an image the registry does not have: 404) is the response's status; after
//! that, the response is a stream of docker's JSON progress messages, one object a line
//! (`{"status":"Pulling from library/busybox","id":"latest"}`, per layer `Pulling fs layer`,
//! `Downloading` with `progressDetail` `{current,total}` (the CLI's bars), `Verifying
//! Checksum`, `Download complete`, `Pull complete`, then `Digest: …` and `Status: …`), and a
//! failure is its last line, `{"errorDetail":{"message":…},"error":…}`, on which the CLI exits
//! 1. Credentials come base64url-encoded in `X-Registry-Auth`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::http::{error, json_response, query, read_json_body, ApiError};
use crate::api::images::{error_line, line, pull_status as status, stream_response};
use crate::api::{body, Api, ApiResponse};
use crate::engine::images::ImageError;
use crate::engine::pull::pull_reference;
use crate::registry::{Cause, Credentials, PullEvent};

/// One progress message as docker writes it.
fn message(e: &PullEvent) -> Value {
    match e {
        PullEvent::PullingFrom { id, name } => {
            json!({"status": format!("Pulling from {name}"), "id": id})
        }
        PullEvent::Layer { id, status } => {
            json!({"status": status, "progressDetail": {}, "id": id})
        }
        PullEvent::Downloading { id, current, total } => json!({
            "status": "Downloading",
            "progressDetail": {"current": current, "total": total},
            "id": id,
        }),
        PullEvent::Status(s) => json!({ "status": s }),
        PullEvent::Image { id, status } => {
            json!({"status": status, "progressDetail": {}, "id": id})
        }
    }
}

/// `POST /images/create`.
pub(crate) async fn create(api: Arc<Api>, req: Request<Incoming>) -> ApiResponse {
    let q = query(&req);
    if q.get("fromSrc").is_some_and(|s| !s.is_empty()) {
        return error(
            StatusCode::NOT_IMPLEMENTED,
            "docker import is not supported: pull from a registry or docker load an archive",
        );
    }
    let from = q.get("fromImage").map_or("", String::as_str);
    let tag = q.get("tag").map_or("", String::as_str);
    let reference = match pull_reference(from, tag) {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let header = req
        .headers()
        .get("X-Registry-Auth")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let creds = match Credentials::from_header(header) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    let engine = api.engine.clone();
    let shown = reference.familiar();
    tokio::spawn(async move {
        let r = engine.image_pull(&reference, &creds, events_tx).await;
        if let Err(e) = &r {
            tracing::warn!(image = %shown, error = %e, "docker pull failed");
        }
        let _ = done_tx.send(r);
    });
    // Nothing is sent until the first message: a failure before it is the status.
    let first = tokio::select! {
        biased;
        e = events.recv() => e,
        r = &mut done => {
            return match r {
                Ok(Err(e @ ImageError::Pull(_))) if !matches!(&e, ImageError::Pull(p) if matches!(p.cause, Cause::NotFound { .. })) => {
                    stream_response(body::full(error_line(&e.to_string())))
                }
                Ok(Err(e)) => ApiError::from(e).into_response(),
                Ok(Ok(_)) => stream_response(body::empty()),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the pull ended without a result"),
            };
        }
    };
    let (tx, out) = body::channel(64);
    tokio::spawn(async move {
        let mut next = first;
        while let Some(e) = next {
            // A client that went away does not stop the pull; its lines are dropped.
            let _ = tx.send(line(&message(&e))).await;
            next = events.recv().await;
        }
        match done.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let _ = tx.send(error_line(&e.to_string())).await;
            }
            Err(_) => {
                let _ = tx.send(error_line("the pull ended without a result")).await;
            }
        }
    });
    stream_response(out)
}

/// `POST /auth`: `{"Status":"Login Succeeded"}` once the registry took the credentials;
/// 401 with the registry's refusal otherwise.
pub(crate) async fn login(api: Arc<Api>, req: Request<Incoming>) -> ApiResponse {
    let v = match read_json_body(req).await {
        Ok((_, v)) => v,
        Err(e) => return e.into_response(),
    };
    let creds: Credentials = match serde_json::from_value(v) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid login: {e}")),
    };
    match api
        .engine
        .registry_login(&creds.server_address, &creds)
        .await
    {
        Ok(identity) => json_response(
            StatusCode::OK,
            &json!({"Status": "Login Succeeded", "IdentityToken": identity.unwrap_or_default()}),
        ),
        Err(e) => {
            tracing::info!(registry = %e.image, error = %e.cause, "docker login refused");
            match &e.cause {
                Cause::Unauthorized { detail, .. } => {
                    error(StatusCode::UNAUTHORIZED, detail.clone())
                }
                c => error(status(c), e.to_string()),
            }
        }
    }
}
