//! The OCI image layout a pull hands to the image store: `oci-layout`, an `index.json` of the
//! one image manifest (named by `io.containerd.image.name` when the pull had a tag), the
//! manifest's bytes as a blob, and hard links to the config and layers in the blob cache.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::error::Cause;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Cause {
    let path = path.to_path_buf();
    move |source| Cause::Io { what, path, source }
}

pub(super) fn write(
    dir: &Path,
    manifest: &[u8],
    manifest_digest: &str,
    media: &str,
    blobs: &[(String, PathBuf)],
    name: Option<&str>,
) -> Result<(), Cause> {
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).map_err(io("creating", &blob_dir))?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let m = blob_dir.join(hex(manifest_digest));
    std::fs::write(&m, manifest).map_err(io("writing", &m))?;
    for (digest, path) in blobs {
        let link = blob_dir.join(hex(digest));
        if link.exists() {
            continue;
        }
        // The cache and the work directory are both under images/; a copy only if not.
        if std::fs::hard_link(path, &link).is_err() {
            std::fs::copy(path, &link).map_err(io("copying a blob to", &link))?;
        }
    }
    let mut desc = json!({
        "mediaType": media,
        "digest": manifest_digest,
        "size": manifest.len(),
    });
    if let Some(n) = name {
        desc["annotations"] = json!({ "io.containerd.image.name": n });
    }
    let index = json!({"schemaVersion": 2, "manifests": [desc]});
    let p = dir.join("index.json");
    std::fs::write(&p, index.to_string()).map_err(io("writing", &p))?;
    let p = dir.join("oci-layout");
    std::fs::write(&p, r#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("writing", &p))
}
