//! An image's record: what `image.json` holds ([`ImageFile`], tags normalized) and what the
//! engine sees ([`Image`], tags as docker shows them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::reference;

/// What a container takes from its image (docker's `Config` of the image).
#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    /// `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// Mount points, sorted.
    pub volumes: Vec<String>,
}

/// An image as the engine sees it.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `sha256:<64 hex>`: the digest of the config blob.
    pub id: String,
    /// As docker shows them (`busybox:latest`), sorted.
    pub tags: Vec<String>,
    /// The manifest digests pulls of it resolved, per repository, as docker shows them
    /// (`busybox@sha256:…`: `RepoDigests`), sorted.
    pub digests: Vec<String>,
    /// RFC 3339, from the config.
    pub created: String,
    /// Bytes of the root filesystem's content.
    pub size: u64,
    pub config: ImageConfig,
    /// `linux`: the only one loaded.
    pub os: String,
    /// `amd64`: the only one loaded.
    pub architecture: String,
    /// The layers' diff ids (`sha256:...`), lowest first: docker's `RootFS.Layers`.
    pub layers: Vec<String>,
    /// The disk is the top of the image's chain in the layer store, not a flattened disk.
    pub layered: bool,
}

impl Image {
    /// The 12 hex digits docker shows for an id.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }
}

/// `image.json`. Tags are stored normalized; `removed` marks an image that was deleted while a
/// container still had its disk as a backing file (the disk stays until no container uses it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ImageFile {
    pub id: String,
    pub tags: Vec<String>,
    pub created: String,
    pub size: u64,
    pub os: String,
    pub architecture: String,
    pub layers: Vec<String>,
    pub config: ImageConfig,
    #[serde(default)]
    pub removed: bool,
    /// Digest references (`docker.io/library/busybox@sha256:…`), normalized as tags are;
    /// absent in records from before pulls recorded them.
    #[serde(default)]
    pub digests: Vec<String>,
    /// See [`Image::layered`]; absent in records from before the layer store.
    #[serde(default)]
    pub layered: bool,
}

impl From<ImageFile> for Image {
    fn from(f: ImageFile) -> Self {
        let familiar = |refs: &[String]| {
            let mut out: Vec<String> = refs
                .iter()
                .map(|t| {
                    reference::parse_normalized(t).map_or_else(|_| t.clone(), |r| r.familiar())
                })
                .collect();
            out.sort();
            out
        };
        Image {
            id: f.id,
            tags: familiar(&f.tags),
            digests: familiar(&f.digests),
            created: f.created,
            size: f.size,
            config: f.config,
            os: f.os,
            architecture: f.architecture,
            layers: f.layers,
            layered: f.layered,
        }
    }
}
