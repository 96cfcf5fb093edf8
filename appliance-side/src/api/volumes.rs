//! `/volumes/...`: create, list, inspect, remove, prune, in docker's shapes. A volume's
//! `Mountpoint` is its disk file on the appliance host (there is no directory to show: the
//! filesystem lives in the disk), and `Status` says which disk and label.

use std::collections::HashMap;

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::api::http::{flag, json_response, no_content, ApiError};
use crate::api::{Api, ApiResponse};
use crate::engine::json::string_map;
use crate::store::records::Record;
use crate::store::volumes::{MountKind, Volume};

impl Api {
    fn volume_json(&self, v: &Volume) -> Value {
        let disk = self.engine.volume_disk(&v.name);
        json!({
            "Name": v.name,
            "Driver": "local",
            "Mountpoint": disk,
            "CreatedAt": v.created,
            "Labels": v.labels,
            "Options": v.options,
            "Scope": "local",
            "Status": {
                "Disk": disk,
                "Label": v.label,
                "Size": v.size_bytes,
                "DiskUsage": self.engine.volume_usage(&v.name),
            },
        })
    }

    /// A container's `Mounts` as docker's inspect and ps show them.
    pub(crate) fn mount_points(&self, rec: &Record) -> Value {
        let points: Vec<Value> = rec
            .options
            .mounts
            .iter()
            .map(|m| match m.kind {
                MountKind::Volume => json!({
                    "Type": "volume",
                    "Name": m.name,
                    "Source": self.engine.volume_disk(&m.name),
                    "Destination": m.destination,
                    "Driver": "local",
                    "Mode": if m.read_only { "ro" } else { "" },
                    "RW": !m.read_only,
                    "Propagation": "",
                }),
                MountKind::Tmpfs => json!({
                    "Type": "tmpfs",
                    "Source": "",
                    "Destination": m.destination,
                    "Mode": m.options,
                    "RW": !m.options.split(',').any(|o| o == "ro"),
                    "Propagation": "",
                }),
            })
            .collect();
        Value::Array(points)
    }

    /// `docker system df`'s volumes: each with the bytes its disk takes and how many
    /// containers mount it.
    pub(crate) fn volumes_df(&self) -> Value {
        let list = self.engine.volume_list("").unwrap_or_default();
        let out: Vec<Value> = list
            .iter()
            .map(|v| {
                let mut j = self.volume_json(v);
                j["UsageData"] = json!({
                    "Size": self.engine.volume_usage(&v.name),
                    "RefCount": self.engine.volume_users(&v.name).len(),
                });
                j
            })
            .collect();
        Value::Array(out)
    }

    /// `POST /volumes/create`: 201 with the volume (the existing one if the name is taken).
    pub(crate) fn volume_create(&self, body: &Value) -> ApiResponse {
        let name = body["Name"].as_str().map(str::to_string);
        match self.engine.volume_create(
            name,
            body["Driver"].as_str().unwrap_or_default(),
            string_map(&body["DriverOpts"]),
            string_map(&body["Labels"]),
        ) {
            Ok(v) => json_response(StatusCode::CREATED, &self.volume_json(&v)),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    /// `GET /volumes`.
    pub(crate) fn volume_list(&self, q: &HashMap<String, String>) -> ApiResponse {
        match self
            .engine
            .volume_list(q.get("filters").map_or("", String::as_str))
        {
            Ok(vs) => {
                let list: Vec<Value> = vs.iter().map(|v| self.volume_json(v)).collect();
                json_response(
                    StatusCode::OK,
                    &json!({"Volumes": list, "Warnings": Value::Null}),
                )
            }
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    /// `GET /volumes/{name}`.
    pub(crate) fn volume_inspect(&self, name: &str) -> ApiResponse {
        match self.engine.volume(name) {
            Ok(v) => json_response(StatusCode::OK, &self.volume_json(&v)),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    /// `DELETE /volumes/{name}[?force=1]`: 204.
    pub(crate) fn volume_remove(&self, name: &str, q: &HashMap<String, String>) -> ApiResponse {
        match self.engine.volume_remove(name, flag(q, "force")) {
            Ok(()) => no_content(),
            Err(e) => ApiError::from(e).into_response(),
        }
    }

    /// `POST /volumes/prune`.
    pub(crate) fn volume_prune(&self, q: &HashMap<String, String>) -> ApiResponse {
        match self
            .engine
            .volume_prune(q.get("filters").map_or("", String::as_str))
        {
            Ok((removed, reclaimed)) => json_response(
                StatusCode::OK,
                &json!({"VolumesDeleted": removed, "SpaceReclaimed": reclaimed}),
            ),
            Err(e) => ApiError::from(e).into_response(),
        }
    }
}
