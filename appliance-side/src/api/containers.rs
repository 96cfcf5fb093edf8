//! `/containers/...`: list, inspect, kill, wait, resize.

use std::collections::HashMap;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use wire::{Control, SessionId};

use guestinfo::contract::MAIN_SESSION;

use crate::api::body;
use crate::api::http::{error, flag, json_response, no_content};
use crate::api::{Api, ApiResponse};
use crate::server::container::Container;
use crate::server::events::Event;
use crate::store::records::Record;
use crate::store::state::{ContainerStatus, State};

impl Api {
    pub(crate) fn list(&self, q: &HashMap<String, String>) -> ApiResponse {
        let all = flag(q, "all");
        let mut out = Vec::new();
        for rec in self.engine.containers().into_iter().rev() {
            let st = self.state(&rec.id);
            let running = st.status == ContainerStatus::Running;
            if !all && !running {
                continue;
            }
            out.push(json!({
                "Id": rec.id,
                "Names": [format!("/{}", rec.name)],
                "Image": rec.image,
                "ImageID": "",
                "Command": command_line(&rec),
                "Created": created_unix(&rec),
                "State": docker_status(&st),
                "Status": status_text(&st),
                "Ports": [],
                "Labels": {},
                "HostConfig": {"NetworkMode": "default"},
                "NetworkSettings": {"Networks": {}},
                "Mounts": [],
            }));
        }
        json_response(StatusCode::OK, &Value::Array(out))
    }

    pub(crate) fn inspect(&self, reference: &str) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let st = self.state(&rec.id);
        let main = st.main().cloned().unwrap_or_default();
        let running = st.status == ContainerStatus::Running;
        json_response(
            StatusCode::OK,
            &json!({
                "Id": rec.id,
                "Created": rec.created,
                "Path": rec.path,
                "Args": rec.args.iter().skip(1).collect::<Vec<_>>(),
                "Name": format!("/{}", rec.name),
                "Image": rec.image,
                "State": {
                    "Status": docker_status(&st),
                    "Running": running,
                    "Paused": false,
                    "Restarting": false,
                    "OOMKilled": false,
                    "Dead": false,
                    "Pid": if running { main.pid.unwrap_or(0) } else { 0 },
                    "ExitCode": main.exit_code.unwrap_or(0),
                    "Error": if main.error.is_empty() { st.detail.clone() } else { main.error.clone() },
                    "StartedAt": or_zero_time(&main.started_at),
                    "FinishedAt": or_zero_time(&main.finished_at),
                },
                "Config": {
                    "Hostname": &rec.id[..12.min(rec.id.len())],
                    "Tty": rec.tty,
                    "OpenStdin": rec.open_stdin,
                    "StdinOnce": rec.open_stdin,
                    "AttachStdin": rec.open_stdin,
                    "AttachStdout": true,
                    "AttachStderr": true,
                    "Env": rec.env,
                    "Cmd": rec.args,
                    "Image": rec.image,
                    "Labels": {},
                },
                "HostConfig": {"NetworkMode": "default", "LogConfig": {"Type": "json-file", "Config": {}}},
                "Mounts": [],
                "NetworkSettings": {"Networks": {}},
                "ExecIDs": self.running_execs(&rec.id),
                // Extension: what the serial channel lost and repaired (see docs/protocol.md).
                "TetherLink": st.link,
            }),
        )
    }

    pub(crate) fn kill(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let signal_text = q.get("signal").map_or("SIGKILL", String::as_str);
        let Some(signal) = wire::message::parse_signal(signal_text) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid signal: {signal_text}"),
            );
        };
        let c = match self.running(&rec) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        match c.send_control(Control::Signal {
            session: MAIN_SESSION,
            signal,
            group: false,
        }) {
            Ok(()) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    pub(crate) fn wait(&self, reference: &str, q: &HashMap<String, String>) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let next_exit = q.get("condition").is_some_and(|c| c == "next-exit");
        let st = self.state(&rec.id);
        let finished = |st: &State| {
            st.main()
                .and_then(|m| m.exit_code)
                .filter(|_| st.status != ContainerStatus::Running)
        };
        if let (Some(code), false) = (finished(&st), next_exit) {
            return json_response(StatusCode::OK, &json!({"StatusCode": code, "Error": null}));
        }
        // Stream the answer once the main session exits: headers now, body at exit.
        let (tx, body) = body::channel(1);
        let server = self.engine.server.clone();
        let id = rec.id.clone();
        tokio::spawn(async move {
            loop {
                if let Some(c) = server.container(&id) {
                    let mut events = c.events.subscribe();
                    let st = c.state();
                    if let (Some(code), false) = (
                        finished(&st),
                        next_exit && st.status == ContainerStatus::Running,
                    ) {
                        let _ = tx.send(wait_body(code)).await;
                        return;
                    }
                    loop {
                        match events.recv().await {
                            Ok(Event::Exited {
                                session: MAIN_SESSION,
                                exit_code,
                            }) => {
                                let _ = tx.send(wait_body(exit_code)).await;
                                return;
                            }
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => break,
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if tx.is_closed() {
                    return;
                }
            }
        });
        Response::builder()
            .header("Content-Type", "application/json")
            .body(body)
            .expect("static")
    }

    pub(crate) fn resize_container(
        &self,
        reference: &str,
        q: &HashMap<String, String>,
    ) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        let c = match self.running(&rec) {
            Ok(c) => c,
            Err(e) => return e.into_response(),
        };
        resize(&c, MAIN_SESSION, q)
    }
}

fn wait_body(code: i32) -> Bytes {
    Bytes::from(format!("{{\"StatusCode\":{code},\"Error\":null}}\n"))
}

pub fn resize(c: &Container, session: SessionId, q: &HashMap<String, String>) -> ApiResponse {
    let dim = |k: &str| q.get(k).and_then(|v| v.parse::<u16>().ok());
    let (Some(rows), Some(cols)) = (dim("h"), dim("w")) else {
        return error(StatusCode::BAD_REQUEST, "resize needs numeric h and w");
    };
    match c.send_control(Control::Resize {
        session,
        rows,
        cols,
    }) {
        Ok(()) => Response::builder()
            .status(StatusCode::OK)
            .body(body::empty())
            .expect("static"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn docker_status(st: &State) -> &'static str {
    st.status.docker_word()
}

fn status_text(st: &State) -> String {
    match st.status {
        ContainerStatus::Running => "Up".into(),
        ContainerStatus::Exited | ContainerStatus::Failed => format!(
            "Exited ({})",
            st.main().and_then(|m| m.exit_code).unwrap_or(0)
        ),
        ContainerStatus::Created => "Created".into(),
    }
}

fn command_line(rec: &Record) -> String {
    rec.args.join(" ")
}

fn created_unix(rec: &Record) -> i64 {
    time::OffsetDateTime::parse(&rec.created, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

fn or_zero_time(t: &str) -> String {
    if t.is_empty() {
        "0001-01-01T00:00:00Z".into()
    } else {
        t.to_string()
    }
}
