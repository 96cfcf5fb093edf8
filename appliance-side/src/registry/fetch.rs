//! One pull: the manifest (through a manifest list or OCI index to linux/amd64), the config
//! and the layers, each verified, with docker's progress along the way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc::UnboundedSender;

use super::auth::{self, Credentials};
use super::blobs::{BlobCache, BlobHolds};
use super::config::RegistryConfig;
use super::connect::{self, Endpoint};
use super::error::{retry, Cause};
use super::layout;
use crate::store::images::reference::{is_hex64, Reference};

/// Manifest types a pull accepts, as the `Accept` header lists them.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const INDEX_TYPES: &[&str] = &[MANIFEST_TYPES[2], MANIFEST_TYPES[3]];
const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Layers the image builder unpacks: tar, gzipped or not.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];
/// Layers downloaded at once by one pull (dockerd's default).
const CONCURRENT_LAYERS: usize = 3;
/// Bytes between two `Downloading` messages for one layer.
const PROGRESS_STEP: u64 = 512 * 1024;

/// What a pull tells its client, in order per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// `{"status":"Pulling from <path>","id":"<tag or digest>"}` (the path without the
    /// registry: `library/busybox`, as dockerd says it).
    PullingFrom { id: String, name: String },
    /// A layer's step: `Pulling fs layer`, `Waiting`, `Already exists`, `Verifying Checksum`,
    /// `Download complete`, `Pull complete` (`id` is the layer digest's first 12 hex digits).
    Layer { id: String, status: &'static str },
    /// `{"status":"Downloading","progressDetail":{"current":..,"total":..},"id":..}`.
    Downloading {
        id: String,
        current: u64,
        total: u64,
    },
    /// A line of its own: `Digest: sha256:…`, `Status: …`.
    Status(String),
    /// A step on the image as a whole (its disk being built), by short image id.
    Image { id: String, status: &'static str },
}

/// What a fetch found.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The image's id: `sha256:` and its config blob's digest.
    pub config_digest: String,
    /// The digest the reference resolved to (a manifest list's, when it named one).
    pub digest: String,
    /// The short ids of the layers downloaded (not those the store had), lowest first.
    pub downloaded: Vec<String>,
    /// The store had the image already: nothing was fetched and no layout written.
    pub present: bool,
    /// The blobs fetched stay in the cache while this (or a clone) lives: until the image is
    /// built from the layout.
    pub holds: Arc<BlobHolds>,
}

/// What the local store has, as a pull asks it before downloading.
pub trait Local: Sync {
    /// The store has the image with this id (`sha256:` and the config's digest).
    fn has_image(&self, id: &str) -> bool;
    /// How many of the image's lowest layers (the registry's blob digests `blobs`, the
    /// config's DiffIDs `diff_ids`, lowest first) the store has built already, and keeps for
    /// this pull's build: those are not downloaded, and the layout leaves them out.
    fn known_layers(&self, blobs: &[String], diff_ids: &[String]) -> usize;
}

fn short(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(12)
        .collect()
}

/// oci-client's errors as causes.
fn cause(endpoint: &Endpoint, url: &str, what: &'static str, e: OciDistributionError) -> Cause {
    use OciDistributionError as E;
    match e {
        E::RequestError(r) => connect::transport(url, endpoint.timeout, what, &r),
        E::UnauthorizedError { url } => {
            auth::unauthorized(endpoint, format!("the registry refused {url}"))
        }
        E::AuthenticationFailure(m) => auth::unauthorized(endpoint, m),
        E::RegistryError { envelope, .. } => {
            let text = envelope
                .errors
                .iter()
                .map(|e| format!("{}: {}", code_name(&e.code), e.message))
                .collect::<Vec<_>>()
                .join("; ");
            let code = envelope.errors.first().map(|e| &e.code);
            match code {
                Some(OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)
                | Some(OciErrorCode::NotFound | OciErrorCode::BlobUnknown) => {
                    Cause::NotFound { detail: text }
                }
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                    auth::unauthorized(endpoint, text)
                }
                _ => Cause::Registry(text),
            }
        }
        E::ServerError {
            code: 404, message, ..
        } => Cause::NotFound { detail: message },
        E::ServerError { code, message, url } => {
            Cause::Registry(format!("{code} for {url}: {}", message.trim()))
        }
        E::UnsupportedMediaTypeError(m) => Cause::MediaType {
            what: "the manifest".into(),
            media: m,
        },
        E::DigestError(d) => Cause::Manifest(d.to_string()),
        other => Cause::Manifest(other.to_string()),
    }
}

fn code_name(c: &OciErrorCode) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_else(|| format!("{c:?}").to_lowercase())
        .replace('_', " ")
}

struct Pull<'a> {
    endpoint: Endpoint,
    client: oci_client::Client,
    oref: oci_client::Reference,
    auth: RegistryAuth,
    blobs: &'a BlobCache,
    holds: &'a BlobHolds,
    events: UnboundedSender<PullEvent>,
}

impl Pull<'_> {
    fn manifest_url(&self, r: &str) -> String {
        format!(
            "{}{}/manifests/{r}",
            self.endpoint.v2_url(),
            self.oref.repository()
        )
    }

    /// A manifest (or index) by tag or digest, its digest verified against a digest
    /// reference; returns the bytes, their digest and the media type.
    async fn manifest(
        &self,
        r: &oci_client::Reference,
    ) -> Result<(bytes::Bytes, String, String), Cause> {
        let url = self.manifest_url(r.digest().or(r.tag()).unwrap_or("latest"));
        let t = self.endpoint.timeout;
        let (body, digest) = retry(|| async {
            match tokio::time::timeout(
                t,
                self.client.pull_manifest_raw(r, &self.auth, MANIFEST_TYPES),
            )
            .await
            {
                Err(_) => Err(connect::timeout(&url, t, "fetching the manifest")),
                Ok(res) => res.map_err(|e| cause(&self.endpoint, &url, "fetching the manifest", e)),
            }
        })
        .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Cause::Manifest(format!("{url}: not JSON: {e}")))?;
        if v["schemaVersion"] != 2 {
            let media = v["mediaType"].as_str().map_or_else(
                || format!("schema version {}", v["schemaVersion"]),
                String::from,
            );
            return Err(Cause::MediaType {
                what: "the manifest".into(),
                media,
            });
        }
        let media = match v["mediaType"].as_str() {
            Some(m) => m.to_string(),
            None if v.get("manifests").is_some() => INDEX_TYPES[0].to_string(),
            None => MANIFEST_TYPES[0].to_string(),
        };
        if !MANIFEST_TYPES.contains(&media.as_str()) {
            return Err(Cause::MediaType {
                what: "the manifest".into(),
                media,
            });
        }
        Ok((body, digest, media))
    }

    /// Blob `desc` (`what` it is, for messages) from the cache or the registry, verified.
    async fn blob(&self, desc: &Descriptor, what: &str, progress: bool) -> Result<PathBuf, Cause> {
        let digest = desc.digest().to_string();
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| is_hex64(h))
            .ok_or_else(|| Cause::Manifest(format!("{what} has an unsupported digest {digest:?}")))?
            .to_string();
        let size = desc.size();
        let id = short(&digest);
        self.holds.hold(&hex);
        let say = |status| {
            if progress {
                let _ = self.events.send(PullEvent::Layer {
                    id: id.clone(),
                    status,
                });
            }
        };
        let (path, downloaded) = self
            .blobs
            .get(
                &hex,
                size,
                || say("Waiting"),
                |tmp| async move {
                    retry(|| self.download(&digest, size, what, &tmp, progress)).await?;
                    say("Verifying Checksum");
                    Ok(())
                },
            )
            .await?;
        say(if downloaded {
            "Download complete"
        } else {
            "Already exists"
        });
        Ok(path)
    }

    async fn download(
        &self,
        digest: &str,
        size: u64,
        what: &str,
        tmp: &Path,
        progress: bool,
    ) -> Result<(), Cause> {
        let url = format!(
            "{}{}/blobs/{digest}",
            self.endpoint.v2_url(),
            self.oref.repository()
        );
        let t = self.endpoint.timeout;
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let mut stream =
            match tokio::time::timeout(t, self.client.pull_blob_stream(&self.oref, &desc)).await {
                Err(_) => return Err(connect::timeout(&url, t, "starting a blob download")),
                Ok(r) => {
                    r.map_err(|e| cause(&self.endpoint, &url, "starting a blob download", e))?
                }
            };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .await
            .map_err(|source| Cause::Io {
                what: "creating",
                path: tmp.to_path_buf(),
                source,
            })?;
        let write_err = |source| Cause::Io {
            what: "writing",
            path: tmp.to_path_buf(),
            source,
        };
        let (mut hasher, mut n, mut shown) = (Sha256::new(), 0u64, 0u64);
        let id = short(digest);
        let mut cut = String::new();
        loop {
            match tokio::time::timeout(t, stream.next()).await {
                Err(_) => return Err(connect::timeout(&url, t, "a blob download stalled")),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => {
                    n += chunk.len() as u64;
                    if n > size {
                        return Err(Cause::TooLarge {
                            what: what.to_string(),
                            digest: digest.to_string(),
                            want: size,
                        });
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk).await.map_err(write_err)?;
                    if progress && (n - shown >= PROGRESS_STEP || n == size) {
                        shown = n;
                        let _ = self.events.send(PullEvent::Downloading {
                            id: id.clone(),
                            current: n,
                            total: size,
                        });
                    }
                }
                Ok(Some(Err(e))) => {
                    // oci-client's own check at the end of the stream: the counts and the
                    // digest below say what was wrong.
                    let verifier = e
                        .get_ref()
                        .is_some_and(|r| r.is::<oci_client::errors::DigestError>());
                    if !verifier {
                        cut = format!(" (the connection failed: {})", connect::chain(&e));
                    }
                    break;
                }
            }
        }
        if n < size {
            return Err(Cause::Truncated {
                what: what.to_string(),
                digest: digest.to_string(),
                got: n,
                want: size,
                after: cut,
            });
        }
        let actual = crate::store::atomic::hex(&hasher.finalize());
        if Some(actual.as_str()) != digest.strip_prefix("sha256:") {
            return Err(Cause::DigestMismatch {
                what: what.to_string(),
                digest: digest.to_string(),
                actual,
            });
        }
        file.sync_all().await.map_err(write_err)?;
        Ok(())
    }
}

fn check_media(desc: &Descriptor, allowed: &[&str], what: &str) -> Result<(), Cause> {
    let media = desc.media_type().to_string();
    if allowed.contains(&media.as_str()) {
        return Ok(());
    }
    Err(Cause::MediaType {
        what: format!("{what} {}", desc.digest()),
        media,
    })
}

fn platform_name(os: &Os, arch: &Arch, variant: Option<&str>) -> String {
    let mut s = format!("{os}/{arch}");
    if let Some(v) = variant.filter(|v| !v.is_empty()) {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// The linux/amd64 entry of an index.
fn pick_platform(index: &ImageIndex) -> Result<Descriptor, Cause> {
    let mut seen = Vec::new();
    for m in index.manifests() {
        match m.platform() {
            Some(p) if *p.os() == Os::Linux && *p.architecture() == Arch::Amd64 => {
                return Ok(m.clone());
            }
            Some(p) => seen.push(platform_name(
                p.os(),
                p.architecture(),
                p.variant().as_deref(),
            )),
            None => seen.push("no platform".into()),
        }
    }
    Err(Cause::Platform {
        available: if seen.is_empty() {
            "no images".into()
        } else {
            seen.join(", ")
        },
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Cause> {
    serde_json::from_slice(bytes).map_err(|e| Cause::Manifest(format!("{what}: {e}")))
}

pub(super) async fn fetch(
    config: &RegistryConfig,
    blobs: &Arc<BlobCache>,
    reference: &Reference,
    creds: &Credentials,
    layout_dir: &Path,
    local: &dyn Local,
    events: &UnboundedSender<PullEvent>,
) -> Result<Fetched, Cause> {
    let holds = Arc::new(BlobHolds::new(blobs.clone()));
    let endpoint = connect::endpoint(config, &reference.domain).await?;
    let registry = endpoint.registry.clone();
    let oref = match (&reference.digest, &reference.tag) {
        (Some(d), _) => {
            oci_client::Reference::with_digest(registry, reference.path.clone(), d.clone())
        }
        (None, t) => oci_client::Reference::with_tag(
            registry,
            reference.path.clone(),
            t.clone().unwrap_or_else(|| "latest".into()),
        ),
    };
    let auth = auth::pull_auth(&endpoint, creds, &reference.path).await?;
    let pull = Pull {
        client: endpoint.oci_client(),
        endpoint,
        oref: oref.clone(),
        auth,
        blobs,
        holds: &holds,
        events: events.clone(),
    };
    let (mut body, digest, mut media) = pull.manifest(&oref).await?;
    let mut manifest_digest = digest.clone();
    if INDEX_TYPES.contains(&media.as_str()) {
        let index: ImageIndex = parse(&body, "the manifest list")?;
        let entry = pick_platform(&index)?;
        let by_digest = oref.clone_with_digest(entry.digest().to_string());
        (body, manifest_digest, media) = pull.manifest(&by_digest).await?;
        if INDEX_TYPES.contains(&media.as_str()) {
            return Err(Cause::Manifest(format!(
                "the linux/amd64 entry {manifest_digest} is another manifest list"
            )));
        }
    }
    let manifest: ImageManifest = parse(&body, "the image manifest")?;
    check_media(manifest.config(), CONFIG_TYPES, "the config")?;
    for l in manifest.layers() {
        check_media(l, LAYER_TYPES, "layer")?;
    }
    let _ = events.send(PullEvent::PullingFrom {
        id: reference
            .digest
            .clone()
            .or(reference.tag.clone())
            .unwrap_or_else(|| "latest".into()),
        name: reference.path.clone(),
    });
    let config_digest = manifest.config().digest().to_string();
    let layer_ids: Vec<String> = manifest
        .layers()
        .iter()
        .map(|l| short(l.digest().as_ref()))
        .collect();
    let fetched = |present, known: usize| Fetched {
        config_digest: config_digest.clone(),
        digest: digest.clone(),
        downloaded: layer_ids[known.min(layer_ids.len())..].to_vec(),
        present,
        holds: holds.clone(),
    };
    if local.has_image(&config_digest) {
        for id in &layer_ids {
            let _ = events.send(PullEvent::Layer {
                id: id.clone(),
                status: "Already exists",
            });
        }
        return Ok(fetched(true, layer_ids.len()));
    }
    let config_path = pull.blob(manifest.config(), "the config", false).await?;
    let image: ImageConfiguration = parse(
        &std::fs::read(&config_path).map_err(|source| Cause::Io {
            what: "reading",
            path: config_path.clone(),
            source,
        })?,
        "the image config",
    )?;
    if *image.os() != Os::Linux || *image.architecture() != Arch::Amd64 {
        return Err(Cause::Platform {
            available: platform_name(image.os(), image.architecture(), image.variant().as_deref()),
        });
    }
    // As dockerd: layers the store has (known by their blob's recorded DiffID) are not
    // downloaded.
    let blob_digests: Vec<String> = manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect();
    let known = local.known_layers(&blob_digests, image.rootfs().diff_ids());
    for (i, id) in layer_ids.iter().enumerate() {
        let _ = events.send(PullEvent::Layer {
            id: id.clone(),
            status: if i < known {
                "Already exists"
            } else {
                "Pulling fs layer"
            },
        });
    }
    let wanted = &manifest.layers()[known.min(blob_digests.len())..];
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_LAYERS));
    let layers = futures_util::future::try_join_all(wanted.iter().map(|l| {
        let slots = slots.clone();
        let pull = &pull;
        async move {
            let _slot = slots.acquire().await.expect("semaphore open");
            pull.blob(l, "layer", true).await
        }
    }))
    .await?;
    let mut files = vec![(config_digest.clone(), config_path)];
    files.extend(wanted.iter().map(|l| l.digest().to_string()).zip(layers));
    let name = reference.tag.as_ref().map(|_| reference.full());
    layout::write(
        layout_dir,
        &body,
        &manifest_digest,
        &media,
        &files,
        name.as_deref(),
    )?;
    Ok(fetched(false, known))
}
