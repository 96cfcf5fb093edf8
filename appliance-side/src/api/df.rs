//! `GET /system/df`: what `docker system df` prints. Sizes are bytes on disk: each image's
//! `Size` is its whole disk chain, `SharedSize` the part in layers another image shares, and
//! `LayersSize` every layer once (the total the CLI shows for images). `type=` filters are
//! ignored: every section is always given, volumes and the build cache empty.

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::api::http::json_response;
use crate::api::{Api, ApiResponse};

fn unix(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp())
}

impl Api {
    pub(crate) fn system_df(&self) -> ApiResponse {
        let du = self.engine.disk_usage();
        let images: Vec<Value> = du
            .images
            .iter()
            .map(|u| {
                let i = &u.image;
                json!({
                    "Id": i.id,
                    "ParentId": "",
                    "RepoTags": if i.tags.is_empty() { json!(["<none>:<none>"]) } else { json!(i.tags) },
                    "RepoDigests": i.digests,
                    "Created": unix(&i.created),
                    "Size": u.size,
                    "SharedSize": u.shared_size,
                    "UniqueSize": u.size - u.shared_size,
                    "VirtualSize": u.size,
                    "Labels": if i.config.labels.is_empty() { Value::Null } else { json!(i.config.labels) },
                    "Containers": u.containers,
                })
            })
            .collect();
        let mut containers = Vec::new();
        for (id, size_rw) in &du.containers {
            let Ok(rec) = self.engine.resolve(id) else {
                continue;
            };
            let st = self.state(&rec.id);
            let root = self
                .engine
                .image(&rec.options.image_id)
                .ok()
                .and_then(|i| du.images.iter().find(|u| u.image.id == i.id))
                .map_or(0, |u| u.size);
            containers.push(self.summary(
                &rec,
                &st,
                json!({"SizeRw": size_rw, "SizeRootFs": size_rw + root}),
            ));
        }
        json_response(
            StatusCode::OK,
            &json!({
                "LayersSize": du.layers_size,
                "Images": images,
                "Containers": containers,
                "Volumes": self.volumes_df(),
                "BuildCache": [],
            }),
        )
    }
}
