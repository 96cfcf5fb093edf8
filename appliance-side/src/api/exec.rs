//! The exec half of the engine API: `POST /containers/{id}/exec`, `GET /exec/{id}/json`,
//! `POST /exec/{id}/resize` (start is in `attach`, with the other hijacked streams), and the
//! running exec ids that container inspect reports.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{json, Value};
use wire::ExecSpec;

use crate::api::containers::resize;
use crate::api::http::{error, json_response, ApiError};
use crate::api::{Api, ApiResponse};
use crate::store::atomic::hex;
use crate::store::execs::Exec;

impl Api {
    pub(crate) async fn exec_create(&self, reference: &str, v: &Value) -> ApiResponse {
        let rec = match self.resolve(reference) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        };
        if let Err(e) = self.running_soon(&rec).await {
            return e.into_response();
        }
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let cmd = strings("Cmd");
        if cmd.is_empty() {
            return error(StatusCode::BAD_REQUEST, "No exec command specified");
        }
        let mut env = rec.env.clone();
        env.extend(strings("Env"));
        let (rows, cols) = match v["ConsoleSize"].as_array() {
            Some(a) if a.len() == 2 => (
                a[0].as_u64().unwrap_or(0) as u16,
                a[1].as_u64().unwrap_or(0) as u16,
            ),
            _ => (0, 0),
        };
        let exec = Exec {
            id: hex(&crate::store::atomic::random::<32>()),
            container: rec.id.clone(),
            spec: ExecSpec {
                path: cmd[0].clone(),
                args: cmd,
                env,
                dir: v["WorkingDir"].as_str().unwrap_or("").to_string(),
                user: v["User"].as_str().unwrap_or("").to_string(),
                group: String::new(),
                tty: v["Tty"].as_bool().unwrap_or(false),
                open_stdin: v["AttachStdin"].as_bool().unwrap_or(false),
                rows,
                cols,
            },
            attach_stdin: v["AttachStdin"].as_bool().unwrap_or(false),
            attach_stdout: v["AttachStdout"].as_bool().unwrap_or(true),
            attach_stderr: v["AttachStderr"].as_bool().unwrap_or(true),
            session: None,
        };
        let id = exec.id.clone();
        if let Err(e) = self.engine.execs.put(&exec) {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store exec {id}: {e}"),
            );
        }
        json_response(StatusCode::CREATED, &json!({"Id": id}))
    }

    /// Ids of the container's execs that are running (docker's `ExecIDs`).
    pub(crate) fn running_execs(&self, container: &str) -> Vec<String> {
        let st = self.state(container);
        self.engine
            .execs
            .of_container(container)
            .into_iter()
            .filter(|e| {
                e.session
                    .and_then(|s| st.sessions.get(&s))
                    .is_some_and(|s| s.running)
            })
            .map(|e| e.id)
            .collect()
    }

    pub fn exec(&self, id: &str) -> Result<Exec, ApiError> {
        Ok(self.engine.exec(id)?)
    }

    pub(crate) fn exec_inspect(&self, id: &str) -> ApiResponse {
        let exec = match self.exec(id) {
            Ok(e) => e,
            Err(r) => return r.into_response(),
        };
        let st = self.state(&exec.container);
        let session = exec.session.and_then(|s| st.sessions.get(&s).cloned());
        let running = session.as_ref().is_some_and(|s| s.running);
        let exit_code = session.as_ref().and_then(|s| s.exit_code);
        json_response(
            StatusCode::OK,
            &json!({
                "ID": exec.id,
                "Running": running,
                "ExitCode": exit_code,
                "ProcessConfig": {
                    "tty": exec.spec.tty,
                    "entrypoint": exec.spec.path,
                    "arguments": exec.spec.args.iter().skip(1).collect::<Vec<_>>(),
                    "user": exec.spec.user,
                },
                "OpenStdin": exec.attach_stdin,
                "OpenStdout": exec.attach_stdout,
                "OpenStderr": exec.attach_stderr,
                "CanRemove": false,
                "ContainerID": exec.container,
                "DetachKeys": "",
                "Pid": session.and_then(|s| s.pid).unwrap_or(0),
            }),
        )
    }

    pub(crate) fn exec_resize(&self, id: &str, q: &HashMap<String, String>) -> ApiResponse {
        let exec = match self.exec(id) {
            Ok(e) => e,
            Err(r) => return r.into_response(),
        };
        let (Some(session), Some(c)) =
            (exec.session, self.engine.server.container(&exec.container))
        else {
            return error(StatusCode::CONFLICT, format!("exec {id} is not running"));
        };
        resize(&c, session, q)
    }
}
