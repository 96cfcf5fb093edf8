//! `/images`: load, list, inspect, tag and remove, in the shapes docker CLI v28 reads.
//!
//! `POST /images/load` answers as docker does, with a stream of JSON messages
//! (`application/json`, one object a line): `{"stream":"Loaded image: busybox:latest\n"}` per
//! tag, `{"stream":"Loaded image ID: sha256:...\n"}` for an untagged image, `{"status":...,"id":
//! ...}` progress unless `quiet`, and a failure as `{"errorDetail":{"message":...},"error":...}`,
//! which the CLI prints before exiting 1. The body is streamed to a file under `$TETHER_HOME`
//! first, never held in memory whole.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::api::body;
use crate::api::http::{flag, json_response, ApiError};
use crate::api::{Api, ApiResponse, API_VERSION};
use crate::engine::images::{ImageError, ImageFilter, Removed};
use crate::store::images::load::LoadEvent;
use crate::store::images::{Image, StoreError};

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = match &e {
            ImageError::NoSuchImage(_) => StatusCode::NOT_FOUND,
            ImageError::Reference(_) | ImageError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ImageError::Conflict(_) => StatusCode::CONFLICT,
            ImageError::Store(StoreError::Archive(_)) => StatusCode::BAD_REQUEST,
            ImageError::Pull(p) => pull_status(&p.cause),
            ImageError::Store(_) | ImageError::Pulled { .. } | ImageError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The HTTP status of a pull that failed before its stream began.
pub(super) fn pull_status(cause: &crate::registry::Cause) -> StatusCode {
    match cause {
        crate::registry::Cause::NotFound { .. } => StatusCode::NOT_FOUND,
        crate::registry::Cause::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn respond(r: Result<ApiResponse, ImageError>) -> ApiResponse {
    r.unwrap_or_else(|e| ApiError::from(e).into_response())
}

/// A JSON map of the strings, or `null` when there are none (as docker's Go maps encode).
fn set(keys: &[String]) -> Value {
    if keys.is_empty() {
        return Value::Null;
    }
    Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect())
}

fn labels(image: &Image) -> Value {
    if image.config.labels.is_empty() {
        return Value::Null;
    }
    json!(image.config.labels)
}

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

/// `filters` as docker sends it: `{"key":{"value":true}}`, or the older `{"key":["value"]}`.
fn parse_filters(raw: Option<&String>, all: bool) -> Result<ImageFilter, ImageError> {
    let mut f = ImageFilter {
        all,
        ..Default::default()
    };
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(f);
    };
    let bad = |e: String| ImageError::InvalidParameter(format!("invalid filters: {e}"));
    let v: Map<String, Value> = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
    for (key, values) in v {
        let values: Vec<String> = match values {
            Value::Object(m) => m
                .into_iter()
                .filter(|(_, on)| *on != false)
                .map(|(k, _)| k)
                .collect(),
            Value::Array(a) => a
                .into_iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            other => return Err(bad(format!("{key}: {other}"))),
        };
        match key.as_str() {
            "reference" => f.reference = values,
            "label" => f.label = values,
            "before" => f.before = values,
            "since" => f.since = values,
            "dangling" => {
                f.dangling = match values.as_slice() {
                    [] => None,
                    [v] if v.eq_ignore_ascii_case("true") || v == "1" => Some(true),
                    [v] if v.eq_ignore_ascii_case("false") || v == "0" => Some(false),
                    _ => {
                        return Err(ImageError::InvalidParameter(format!(
                            "invalid filter 'dangling={}'",
                            values.join(",")
                        )))
                    }
                }
            }
            _ => {
                return Err(ImageError::InvalidParameter(format!(
                    "invalid filter '{key}'"
                )))
            }
        }
    }
    Ok(f)
}

impl Api {
    /// `GET /images/json`.
    pub(crate) fn images_list(&self, q: &HashMap<String, String>) -> ApiResponse {
        respond((|| {
            let filter = parse_filters(q.get("filters"), flag(q, "all"))?;
            let rows: Vec<Value> = self
                .engine
                .image_list(&filter)?
                .into_iter()
                .map(|s| {
                    let (tags, digests) = if s.repo_tags.is_empty() && s.repo_digests.is_empty() {
                        (json!(["<none>:<none>"]), json!(["<none>@<none>"]))
                    } else {
                        (json!(s.repo_tags), json!(s.repo_digests))
                    };
                    json!({
                        "Id": s.image.id,
                        "ParentId": "",
                        "RepoTags": tags,
                        "RepoDigests": digests,
                        "Created": unix(&s.image.created),
                        "Size": s.image.size,
                        "SharedSize": -1,
                        "Labels": labels(&s.image),
                        "Containers": -1,
                    })
                })
                .collect();
            Ok(json_response(StatusCode::OK, &Value::Array(rows)))
        })())
    }

    /// `GET /images/{name}/json`.
    pub(crate) fn image_inspect(&self, name: &str) -> ApiResponse {
        respond(self.engine.image(name).map(|i| {
            let c = &i.config;
            json_response(
                StatusCode::OK,
                &json!({
                    "Id": i.id,
                    "RepoTags": i.tags,
                    "RepoDigests": i.digests,
                    "Parent": "",
                    "Comment": "",
                    "Created": i.created,
                    "DockerVersion": "",
                    "Author": "",
                    "Config": {
                        "Hostname": "",
                        "Domainname": "",
                        "User": c.user,
                        "AttachStdin": false,
                        "AttachStdout": false,
                        "AttachStderr": false,
                        "ExposedPorts": set(&c.exposed_ports),
                        "Tty": false,
                        "OpenStdin": false,
                        "StdinOnce": false,
                        "Env": if c.env.is_empty() { Value::Null } else { json!(c.env) },
                        "Cmd": c.cmd,
                        "Image": "",
                        "Volumes": set(&c.volumes),
                        "WorkingDir": c.working_dir,
                        "Entrypoint": c.entrypoint,
                        "OnBuild": null,
                        "Labels": labels(&i),
                        "StopSignal": c.stop_signal,
                    },
                    "Architecture": i.architecture,
                    "Os": i.os,
                    "Size": i.size,
                    "GraphDriver": {"Name": "containervm", "Data": {"Disk": self.engine.images.disk(&i)}},
                    "RootFS": {"Type": "layers", "Layers": i.layers},
                    "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
                }),
            )
        }))
    }

    /// `POST /images/{name}/tag?repo=&tag=`: 201 and no body.
    pub(crate) fn image_tag(&self, name: &str, q: &HashMap<String, String>) -> ApiResponse {
        let repo = q.get("repo").map_or("", String::as_str);
        let tag = q.get("tag").map_or("", String::as_str);
        respond(self.engine.image_tag(name, repo, tag).map(|_| {
            Response::builder()
                .status(StatusCode::CREATED)
                .header("Api-Version", API_VERSION)
                .body(body::empty())
                .expect("static response parts")
        }))
    }

    /// `DELETE /images/{name}?force=&noprune=` (nothing has parents here, so `noprune` changes
    /// nothing).
    pub(crate) fn image_remove(&self, name: &str, q: &HashMap<String, String>) -> ApiResponse {
        respond(
            self.engine
                .image_remove(name, flag(q, "force"))
                .map(|records| {
                    let rows: Vec<Value> = records
                        .into_iter()
                        .map(|r| match r {
                            Removed::Untagged(t) => json!({ "Untagged": t }),
                            Removed::Deleted(id) => json!({ "Deleted": id }),
                        })
                        .collect();
                    json_response(StatusCode::OK, &Value::Array(rows))
                }),
        )
    }
}

/// One line of docker's JSON message stream.
pub(super) fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

pub(super) fn error_line(message: &str) -> Bytes {
    line(&json!({"errorDetail": {"message": message}, "error": message}))
}

fn stream_line(text: String) -> Bytes {
    line(&json!({ "stream": text }))
}

pub(super) fn stream_response(body: body::ApiBody) -> ApiResponse {
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Api-Version", API_VERSION)
        .body(body)
        .expect("static response parts")
}

/// Writes the request body to `path` as it arrives.
async fn receive(body: Incoming, path: &Path) -> Result<u64, String> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut body = body;
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data)
                .await
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            total += data.len() as u64;
        }
    }
    // tokio's File writes in the background; flush waits for the last write.
    file.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(total)
}

/// `POST /images/load?quiet=`.
pub(crate) async fn load(api: Arc<Api>, req: Request<Incoming>) -> ApiResponse {
    let quiet = flag(&crate::api::http::query(&req), "quiet");
    let work = match api.engine.images.begin_load() {
        Ok(w) => w,
        Err(e) => return ApiError::from(ImageError::from(e)).into_response(),
    };
    if let Err(e) = receive(req.into_body(), &work.archive()).await {
        return stream_response(body::full(error_line(&format!(
            "receiving the archive: {e}"
        ))));
    }
    let (tx, body) = body::channel(16);
    tokio::task::spawn_blocking(move || {
        // A client that went away does not stop the load; its lines are dropped.
        let send = |b: Bytes| {
            let _ = tx.blocking_send(b);
        };
        let load = || {
            api.engine.image_load(&work, &mut |event| match event {
                LoadEvent::Status { id, status } if !quiet => {
                    send(line(
                        &json!({"status": status, "progressDetail": {}, "id": id}),
                    ));
                }
                LoadEvent::Status { .. } => {}
                LoadEvent::Retagged { tag, old_id } => send(stream_line(format!(
                "The image {tag} already exists, renaming the old one with ID {old_id} to empty \
                 string\n"
            ))),
                LoadEvent::Loaded { id, tags } if tags.is_empty() => {
                    send(stream_line(format!("Loaded image ID: {id}\n")));
                }
                LoadEvent::Loaded { tags, .. } => {
                    for t in tags {
                        send(stream_line(format!("Loaded image: {t}\n")));
                    }
                }
            })
        };
        // A bug in the load must still end the stream with an error, not silently.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
            .unwrap_or_else(|_| Err(ImageError::Internal("the load panicked".into())));
        // The work directory (archive, unpacked layers, half-built disks) goes first, so a
        // client that sees the answer sees nothing left behind.
        drop(work);
        if let Err(e) = result {
            tracing::warn!(error = %e, "docker load failed");
            send(error_line(&e.to_string()));
        }
    });
    stream_response(body)
}
