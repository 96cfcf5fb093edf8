//! `docker cp` and `docker top` on a running container, through tether's built-ins:
//! `HEAD|GET|PUT /containers/{id}/archive?path=` and `GET /containers/{id}/top`.

use std::collections::HashMap;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;
use wire::BuiltinOp;

use crate::api::body;
use crate::api::http::{error, flag, json_response, query, ApiError};
use crate::api::{Api, ApiResponse};
use crate::engine::EngineError;

/// The header docker's CLI reads a path's stat from.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

fn engine_error(e: EngineError) -> ApiResponse {
    ApiError::from(e).into_response()
}

impl Api {
    /// `docker top`: tether's process list.
    pub(crate) async fn top(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let ps_args = q.get("ps_args").cloned().unwrap_or_default();
        match self
            .engine
            .builtin_output(&rec, BuiltinOp::Processes { ps_args })
            .await
        {
            Ok(out) => match serde_json::from_slice::<Value>(&out) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("tether's process list does not parse: {e}"),
                ),
            },
            Err(e) => engine_error(e),
        }
    }

    /// HEAD, GET and PUT of `/containers/{id}/archive`; a container that is not running has
    /// its disk booted in a maintenance VM for the copy (docker copies from stopped ones too).
    pub(crate) async fn archive(&self, reference: &str, req: Request<Incoming>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        if self.engine.is_running(&rec.id) {
            return self.archive_in(&rec, req, None).await;
        }
        let m = match self.engine.maintenance(&rec).await {
            Ok(m) => m,
            Err(e) => return engine_error(e),
        };
        let target = m.record.clone();
        self.archive_in(&target, req, Some(m)).await
    }

    /// The copy against `rec`'s running VM; `maintenance` is ended once the copy is done.
    async fn archive_in(
        &self,
        rec: &crate::store::records::Record,
        req: Request<Incoming>,
        mut maintenance: Option<crate::engine::maintenance::Maintenance>,
    ) -> ApiResponse {
        let answer = self.archive_with(rec, req, &mut maintenance).await;
        // Unless a streaming body took it on, the copy is done here.
        if let Some(m) = maintenance {
            m.end().await;
        }
        answer
    }

    async fn archive_with(
        &self,
        rec: &crate::store::records::Record,
        req: Request<Incoming>,
        maintenance: &mut Option<crate::engine::maintenance::Maintenance>,
    ) -> ApiResponse {
        let rec = rec.clone();
        let q = query(&req);
        let Some(path) = q.get("path").filter(|p| !p.is_empty()).cloned() else {
            return error(
                StatusCode::BAD_REQUEST,
                "the archive API needs a path (?path=)",
            );
        };
        let method = req.method().clone();
        if method == Method::PUT {
            let no_overwrite = flag(&q, "noOverwriteDirNonDir");
            return self.archive_put(&rec, path, no_overwrite, req).await;
        }
        let stat = match self
            .engine
            .builtin_output(&rec, BuiltinOp::Stat { path: path.clone() })
            .await
        {
            Ok(s) => s,
            Err(e) => return engine_error(e),
        };
        let stat = base64::engine::general_purpose::STANDARD.encode(trim_newline(&stat));
        if method == Method::HEAD {
            return Response::builder()
                .status(StatusCode::OK)
                .header(STAT_HEADER, stat)
                .body(body::empty())
                .expect("static");
        }
        let mut run = match self
            .engine
            .builtin(&rec, BuiltinOp::ArchiveGet { path }, None)
            .await
        {
            Ok(r) => r,
            Err(e) => return engine_error(e),
        };
        // The body streams on after this returns: the task ends the maintenance.
        let maintenance = maintenance.take();
        let (tx, body) = body::channel(8);
        tokio::spawn(async move {
            while let Some(chunk) = run.stdout.recv().await {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            if let Some(m) = maintenance {
                m.end().await;
            }
            // The status is out already; a failure mid-archive can only cut the tar short,
            // which the client's tar reader reports.
            if let Ok(end) = run.end.await {
                if end.exit_code != 0 {
                    tracing::warn!(container = %rec.id, "docker cp out of the container failed: {}", end.stderr.trim());
                }
            }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header("Content-Type", "application/x-tar")
            .header(STAT_HEADER, stat)
            .body(body)
            .expect("static")
    }

    async fn archive_put(
        &self,
        rec: &crate::store::records::Record,
        path: String,
        no_overwrite_dir_non_dir: bool,
        req: Request<Incoming>,
    ) -> ApiResponse {
        let (input_tx, input) = mpsc::channel::<Bytes>(8);
        let run = self
            .engine
            .builtin(
                rec,
                BuiltinOp::ArchivePut {
                    path,
                    no_overwrite_dir_non_dir,
                },
                Some(input),
            )
            .await;
        let run = match run {
            Ok(r) => r,
            Err(e) => return engine_error(e),
        };
        // The request body, frame by frame, into the session's stdin (bounded both ways).
        let mut incoming = req.into_body();
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "reading the archive from the request failed",
                );
            };
            if let Ok(data) = frame.into_data() {
                if input_tx.send(data).await.is_err() {
                    break;
                }
            }
        }
        drop(input_tx);
        let mut stdout = run.stdout;
        while stdout.recv().await.is_some() {}
        match run.end.await {
            Ok(end) if end.exit_code == 0 => Response::builder()
                .status(StatusCode::OK)
                .body(body::empty())
                .expect("static"),
            Ok(end) => engine_error(end.into_error()),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the copy's session was lost",
            ),
        }
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}
