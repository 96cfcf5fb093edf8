//! Requests to handlers: one match over method and path, docker's 404 for the rest.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::api::http::{error, json_response, query, read_json, route_path};
use crate::api::{attach, images, logs, pull, system, Api, ApiResponse};

impl Api {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<ApiResponse, Infallible> {
        let path = route_path(req.uri().path()).to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let resp = match (&method, parts.as_slice()) {
            (&Method::GET, ["_ping"]) | (&Method::HEAD, ["_ping"]) => system::ping(&method),
            (&Method::GET, ["version"]) => json_response(StatusCode::OK, &system::version()),
            (&Method::GET, ["info"]) => self.info(),
            (&Method::GET, ["system", "df"]) => self.system_df(),
            (&Method::GET, ["containers", "json"]) => self.list(&query(&req)),
            (&Method::GET, ["containers", id, "json"]) => self.inspect(id),
            (&Method::GET, ["containers", id, "logs"]) => logs::logs(&self, id, &query(&req)),
            (&Method::POST, ["containers", "create"]) => {
                let q = query(&req);
                match read_json(req).await {
                    Ok(v) => self.create(&q, &v),
                    Err(r) => r.into_response(),
                }
            }
            (&Method::POST, ["containers", id, "start"]) => self.start(id).await,
            (&Method::POST, ["containers", id, "stop"]) => self.stop(id, &query(&req)).await,
            (&Method::POST, ["containers", id, "restart"]) => self.restart(id, &query(&req)).await,
            (&Method::DELETE, ["containers", id]) => self.remove(id, &query(&req)).await,
            (&Method::POST, ["containers", id, "rename"]) => self.rename(id, &query(&req)),
            (&Method::POST, ["containers", id, "kill"]) => self.kill(id, &query(&req)).await,
            (&Method::POST, ["containers", id, "wait"]) => self.wait(id, &query(&req)),
            (&Method::GET, ["events"]) => self.events(&query(&req)),
            (&Method::GET, ["containers", id, "top"]) => self.top(id, &query(&req)).await,
            (&Method::GET, ["containers", id, "stats"]) => self.stats(id, &query(&req)).await,
            (&Method::HEAD | &Method::GET | &Method::PUT, ["containers", id, "archive"]) => {
                let id = id.to_string();
                self.archive(&id, req).await
            }
            (&Method::POST, ["containers", id, "resize"]) => {
                self.resize_container(id, &query(&req))
            }
            (&Method::POST, ["containers", id, "attach"]) => {
                let id = id.to_string();
                attach::attach(self.clone(), &id, req).await
            }
            (&Method::POST, ["containers", id, "exec"]) => {
                let id = id.to_string();
                match read_json(req).await {
                    Ok(v) => self.exec_create(&id, &v).await,
                    Err(r) => r.into_response(),
                }
            }
            (&Method::POST, ["exec", id, "start"]) => {
                let id = id.to_string();
                attach::exec_start(self.clone(), &id, req).await
            }
            (&Method::GET, ["exec", id, "json"]) => self.exec_inspect(id),
            (&Method::POST, ["exec", id, "resize"]) => self.exec_resize(id, &query(&req)),
            (&Method::GET, ["networks"]) => self.network_list(&query(&req)),
            (&Method::POST, ["networks", "create"]) => match read_json(req).await {
                Ok(v) => self.network_create(&v),
                Err(r) => r.into_response(),
            },
            (&Method::POST, ["networks", "prune"]) => self.network_prune(&query(&req)),
            (&Method::GET, ["networks", id]) => self.network_inspect(id),
            (&Method::DELETE, ["networks", id]) => self.network_remove(id),
            (&Method::POST, ["networks", id, verb @ ("connect" | "disconnect")]) => {
                let (id, verb) = (id.to_string(), *verb);
                match read_json(req).await {
                    Ok(v) if verb == "connect" => self.network_connect(&id, &v).await,
                    Ok(v) => self.network_disconnect(&id, &v).await,
                    Err(r) => r.into_response(),
                }
            }
            // Image names may hold slashes (`localhost/app`): the name is every part between.
            (&Method::GET, ["images", "json"]) => self.images_list(&query(&req)),
            (&Method::POST, ["images", "load"]) => images::load(self.clone(), req).await,
            (&Method::POST, ["images", "create"]) => pull::create(self.clone(), req).await,
            (&Method::POST, ["auth"]) => pull::login(self.clone(), req).await,
            (&Method::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
                self.image_inspect(&name.join("/"))
            }
            (&Method::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
                self.image_tag(&name.join("/"), &query(&req))
            }
            (&Method::DELETE, ["images", name @ ..]) if !name.is_empty() => {
                self.image_remove(&name.join("/"), &query(&req))
            }
            (&Method::GET, ["volumes"]) => self.volume_list(&query(&req)),
            (&Method::POST, ["volumes", "create"]) => match read_json(req).await {
                Ok(v) => self.volume_create(&v),
                Err(r) => r.into_response(),
            },
            (&Method::POST, ["volumes", "prune"]) => self.volume_prune(&query(&req)),
            (&Method::GET, ["volumes", name]) => self.volume_inspect(name),
            (&Method::DELETE, ["volumes", name]) => self.volume_remove(name, &query(&req)),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("page not found: {method} {path} is not part of this engine's API subset"),
            ),
        };
        Ok(resp)
    }
}
