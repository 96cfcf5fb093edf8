//! `_ping`, `version` and `info`: what the docker CLI asks before anything else.

use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::api::body;
use crate::api::http::json_response;
use crate::api::{Api, ApiResponse, API_VERSION, MIN_API_VERSION};
use crate::store::state::ContainerStatus;

pub(crate) fn ping(method: &Method) -> ApiResponse {
    Response::builder()
        .header("Api-Version", API_VERSION)
        .header("Ostype", "linux")
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(body::full(if method == Method::HEAD { "" } else { "OK" }))
        .expect("static")
}

pub(crate) fn version() -> Value {
    json!({
        "Platform": {"Name": "tether"},
        "Version": env!("CARGO_PKG_VERSION"),
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux",
        "Arch": "amd64",
        "KernelVersion": "",
        "GoVersion": "n/a (rust)",
        "GitCommit": "",
        "BuildTime": "",
        "Components": [{"Name": "tether session server", "Version": env!("CARGO_PKG_VERSION"), "Details": {}}],
    })
}

impl Api {
    pub(crate) fn info(&self) -> ApiResponse {
        let all = self.engine.containers();
        let running = all
            .iter()
            .filter(|r| self.state(&r.id).status == ContainerStatus::Running)
            .count();
        json_response(
            StatusCode::OK,
            &json!({
                "ID": "tether",
                "Containers": all.len(),
                "ContainersRunning": running,
                "ContainersPaused": 0,
                "ContainersStopped": all.len() - running,
                "Images": self.engine.images.list().len(),
                "Driver": "containervm",
                "LoggingDriver": "json-file",
                "OperatingSystem": "tether containerVMs",
                "OSType": "linux",
                "Architecture": "x86_64",
                "Name": "tether",
                "ServerVersion": env!("CARGO_PKG_VERSION"),
                "DockerRootDir": self.engine.home().root(),
            }),
        )
    }
}
