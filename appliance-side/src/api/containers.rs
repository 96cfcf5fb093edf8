//! `/containers/...`: list (with docker's filters), inspect, resize.

use std::collections::HashMap;

use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use wire::{Control, SessionId};

use guestinfo::contract::MAIN_SESSION;

use crate::api::body;
use crate::api::http::{error, flag, json_response, ApiError};
use crate::api::status::{health_json, status_text};
use crate::api::{Api, ApiResponse};
use crate::engine::filters::Filters;
use crate::server::container::Container;
use crate::store::records::Record;
use crate::store::state::{ContainerStatus, State};

impl Api {
    /// A container as `docker ps` and `docker system df` list it: the fields both give, and
    /// the object `extra`'s.
    pub(crate) fn summary(&self, rec: &Record, st: &State, extra: Value) -> Value {
        let mut summary = json!({
            "Id": rec.id,
            "Names": [format!("/{}", rec.name)],
            "Image": rec.image,
            "ImageID": rec.options.image_id,
            "Command": command_line(rec),
            "Created": created_unix(rec),
            "State": docker_status(st),
            "Status": status_text(st, self.engine.health(&rec.id, st).as_ref()),
            "Labels": rec.options.labels,
            "Mounts": self.mount_points(rec),
        });
        if let (Value::Object(fields), Value::Object(extra)) = (&mut summary, extra) {
            fields.extend(extra);
        }
        summary
    }

    /// `docker ps`: running containers (all with `all`, a status filter or a limit), newest
    /// first, filtered, at most `limit`.
    pub(crate) fn list(&self, q: &HashMap<String, String>) -> ApiResponse {
        let filters = match Filters::parse(q.get("filters").map_or("", String::as_str)) {
            Ok(f) => f,
            Err(e) => return ApiError::from(e).into_response(),
        };
        let limit = q
            .get("limit")
            .and_then(|l| l.parse::<i64>().ok())
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let all = flag(q, "all") || limit.is_some() || filters.names_status();
        let mut out = Vec::new();
        for rec in self.engine.containers().into_iter().rev() {
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let st = self.state(&rec.id);
            if !all && st.status != ContainerStatus::Running {
                continue;
            }
            if !filters.matches(&rec, &st, |v| image_matches(&rec, v)) {
                continue;
            }
            out.push(self.summary(&rec, &st, self.ps_network(&rec)));
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
        let health = self.engine.health(&rec.id, &st);
        // A full log store is what is wrong with a running container now; otherwise what
        // tether or the engine said of its (last) main process.
        let error = match health.as_ref().and_then(|h| h.store_error.clone()) {
            Some(full) => full,
            None if main.error.is_empty() => st.detail.clone(),
            None => main.error.clone(),
        };
        let mut state = json!({
            "Status": docker_status(&st),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": self.engine.host_pid(&rec.id, &st),
            "ExitCode": main.exit_code.unwrap_or(0),
            "Error": error,
            "StartedAt": or_zero_time(&main.started_at),
            "FinishedAt": or_zero_time(&main.finished_at),
        });
        if let Some(h) = &health {
            state["Health"] = health_json(
                h,
                self.engine.unresponsive_after(),
                &crate::store::logs::now_rfc3339().0,
            );
        }
        json_response(
            StatusCode::OK,
            &json!({
                "Id": rec.id,
                "Created": rec.created,
                "Path": rec.path,
                "Args": rec.args.iter().skip(1).collect::<Vec<_>>(),
                "Name": format!("/{}", rec.name),
                "RestartCount": rec.restart_count,
                "Image": rec.image,
                "State": state,
                "Config": config_json(&rec),
                "HostConfig": host_config_json(&rec),
                "Mounts": self.mount_points(&rec),
                "NetworkSettings": self.network_settings(&rec),
                "ExecIDs": self.running_execs(&rec.id),
                // Extension: what the serial channel lost and repaired (see docs/protocol.md).
                "TetherLink": st.link,
            }),
        )
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

pub(crate) fn docker_status(st: &State) -> &'static str {
    st.status.docker_word()
}

/// Whether the ancestor filter value `v` names the container's image (by id or id prefix).
fn image_matches(rec: &Record, v: &str) -> bool {
    let id = &rec.options.image_id;
    !id.is_empty()
        && (id == v
            || id
                .trim_start_matches("sha256:")
                .starts_with(v.trim_start_matches("sha256:")))
}

fn config_json(rec: &Record) -> Value {
    let o = &rec.options;
    // Records made by `appliance create`/`run` have no separate entrypoint: the argv is the Cmd.
    let (entrypoint, cmd) = if o.entrypoint.is_empty() && o.cmd.is_empty() {
        (Value::Null, json!(rec.args))
    } else {
        (
            if o.entrypoint.is_empty() {
                Value::Null
            } else {
                json!(o.entrypoint)
            },
            json!(o.cmd),
        )
    };
    let hostname = if o.hostname.is_empty() {
        rec.id[..12.min(rec.id.len())].to_string()
    } else {
        o.hostname.clone()
    };
    json!({
        "Hostname": hostname,
        "Domainname": o.domainname,
        "User": o.user,
        "Tty": rec.tty,
        "OpenStdin": rec.open_stdin,
        "StdinOnce": o.stdin_once,
        "AttachStdin": o.attach_stdin,
        "AttachStdout": o.attach_stdout,
        "AttachStderr": o.attach_stderr,
        "Env": rec.env,
        "Cmd": cmd,
        "Entrypoint": entrypoint,
        "WorkingDir": o.working_dir,
        "Image": rec.image,
        "Labels": o.labels,
        "StopSignal": if o.stop_signal.is_empty() { "SIGTERM" } else { o.stop_signal.as_str() },
        "StopTimeout": rec.stop_timeout(),
        "ExposedPorts": o.exposed_ports.iter().map(|p| (p.clone(), json!({}))).collect::<serde_json::Map<_, _>>(),
    })
}

fn host_config_json(rec: &Record) -> Value {
    let o = &rec.options;
    json!({
        "NetworkMode": crate::api::networks::network_mode(rec),
        "PortBindings": crate::api::networks::port_bindings_json(rec),
        "PublishAllPorts": o.publish_all,
        "LogConfig": {"Type": "json-file", "Config": {}},
        "AutoRemove": o.auto_remove,
        "RestartPolicy": {
            "Name": if o.restart_policy.is_empty() { "no" } else { o.restart_policy.as_str() },
            "MaximumRetryCount": o.restart_max,
        },
        "Memory": u64::from(o.memory_mb) * 1024 * 1024,
        "NanoCpus": u64::from(o.cpus) * 1_000_000_000,
        "CapAdd": o.cap_add,
        "CapDrop": o.cap_drop,
        "Dns": o.dns,
        "DnsSearch": o.dns_search,
        "ExtraHosts": o.extra_hosts,
        "Ulimits": o.ulimits.iter().filter_map(|u| {
            let (name, limits) = u.split_once('=')?;
            let (soft, hard) = limits.split_once(':').unwrap_or((limits, limits));
            Some(json!({"Name": name, "Soft": soft.parse::<i64>().ok()?, "Hard": hard.parse::<i64>().ok()?}))
        }).collect::<Vec<_>>(),
        "ConsoleSize": o.console_size.map_or(json!([0, 0]), |(r, c)| json!([r, c])),
    })
}

pub(crate) fn command_line(rec: &Record) -> String {
    rec.args.join(" ")
}

pub(crate) fn created_unix(rec: &Record) -> i64 {
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
