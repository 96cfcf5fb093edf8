//! Image archives as `docker load` takes them: a `docker save` tarball (`manifest.json` lists
//! each image's `Config`, `RepoTags` and `Layers`) or an OCI archive (`index.json`, tags in the
//! `io.containerd.image.name` or `org.opencontainers.image.ref.name` annotations), either of them
//! possibly gzipped. Reading one yields every image it holds, each with its id (the sha256 of
//! its config blob, checked against the name the archive gives the blob) and its tags, all
//! checked before anything is built.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

use super::record::{ImageConfig, ImageFile};
use super::reference::{is_hex64, parse_normalized, Reference, ReferenceError};

/// What was expected, for the messages about input that is no image archive.
const GIVE: &str =
    "expected a tar archive, optionally gzipped: the output of `docker save` or an OCI archive";

/// Manifests, indexes and configs are small; a bigger one is not an image's.
const MAX_JSON: u64 = 16 << 20;

/// Why an archive cannot be loaded. Each message names the file of the archive at fault.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("empty archive: the request body had no bytes ({GIVE})")]
    Empty,
    #[error("the archive is {0}-compressed, which load does not read; decompress it first")]
    Compressed(&'static str),
    #[error("not a tar archive ({0}); {GIVE}")]
    NotTar(String),
    #[error("the archive is truncated or corrupt: {detail}")]
    Truncated { detail: String },
    #[error("the archive has neither manifest.json (docker save) nor index.json (OCI); {GIVE}")]
    NoManifest,
    #[error("{0} in the archive lists no images")]
    NoImages(&'static str),
    #[error("{file} in the archive is not valid: {detail} (is the archive complete?)")]
    Json { file: String, detail: String },
    #[error("{file} in the archive is over {MAX_JSON} bytes: not an image manifest or config")]
    TooLarge { file: String },
    #[error("the archive names {file} but does not contain it: it is incomplete or truncated")]
    Missing { file: String },
    #[error("{0:?} in the archive points outside the archive")]
    Escapes(String),
    #[error(
        "{file} in the archive does not match its digest: expected sha256:{expected}, got \
         sha256:{actual} (the archive is corrupt or was changed)"
    )]
    DigestMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("unsupported digest {0:?}: expected sha256: and 64 hex digits")]
    BadDigest(String),
    #[error("{config} lists {layers} layers but {diff_ids} diff_ids: the image is inconsistent")]
    LayerCount {
        config: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("cannot load {os}/{arch} image: containerVMs here run linux/amd64")]
    Platform { os: String, arch: String },
    #[error("the OCI index has no linux/amd64 image")]
    NoPlatform,
    #[error("invalid tag {tag:?} in the archive: {source}")]
    InvalidTag {
        tag: String,
        #[source]
        source: ReferenceError,
    },
    #[error("invalid tag {0:?} in the archive: a loaded image's name needs a tag, not a digest")]
    NotTagged(String),
    #[error("reading the archive: {0}")]
    Io(#[source] io::Error),
}

/// One image found in an archive, checked, not yet built.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    /// The record to store, less its size (known once the disk is built).
    pub file: ImageFile,
    pub tags: Vec<Reference>,
    pub config_path: PathBuf,
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// The layer files, lowest first.
    Docker { layers: Vec<PathBuf> },
    /// The archive's blob directory and the image manifest's descriptor.
    Oci { blobs: PathBuf, manifest: Value },
}

/// Unpacks `archive` (tar, or gzipped tar) into `dest`.
pub(super) fn unpack(archive: &Path, dest: &Path) -> Result<(), ArchiveError> {
    let meta = std::fs::metadata(archive).map_err(ArchiveError::Io)?;
    if meta.len() == 0 {
        return Err(ArchiveError::Empty);
    }
    let mut magic = [0u8; 6];
    let n = std::fs::File::open(archive)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(ArchiveError::Io)?;
    let file = std::fs::File::open(archive).map_err(ArchiveError::Io)?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [b'B', b'Z', b'h', ..] => return Err(ArchiveError::Compressed("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => return Err(ArchiveError::Compressed("xz")),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(ArchiveError::Compressed("zstd")),
        _ => Box::new(file),
    };
    std::fs::create_dir_all(dest).map_err(ArchiveError::Io)?;
    let consumed = Rc::new(Cell::new(0u64));
    let mut tar = tar::Archive::new(Counting {
        inner: reader,
        n: consumed.clone(),
    });
    let mut entries = 0;
    let mut last_end = 0;
    // A header that does not parse: at the start the input is no tar at all; later the archive
    // was cut or damaged.
    let bad_header = |entries: usize, e: io::Error| {
        if entries == 0 {
            ArchiveError::NotTar(printable(&e, dest))
        } else {
            ArchiveError::Truncated {
                detail: format!("a header after entry {entries}: {}", printable(&e, dest)),
            }
        }
    };
    for entry in tar.entries().map_err(|e| bad_header(0, e))? {
        let mut entry = entry.map_err(|e| bad_header(entries, e))?;
        let name = entry.path().map_or_else(
            |_| "an entry".to_string(),
            |p| p.to_string_lossy().into_owned(),
        );
        use tar::EntryType::*;
        // The archive's members are blobs and JSON: hard links, devices and fifos have no
        // business here.
        if matches!(
            entry.header().entry_type(),
            Regular | Directory | Symlink | Continuous
        ) {
            entry.unpack_in(dest).map_err(|e| ArchiveError::Truncated {
                // The tar crate says a member's data ran out as "failed to write entire file".
                detail: match root_cause(&e) {
                    c if c == "failed to write entire file" => format!("{name} ends early"),
                    c => format!("{name} ends early ({c})"),
                },
            })?;
        }
        entries += 1;
        last_end = entry.raw_file_position()
            + entry.header().entry_size().unwrap_or(0).div_ceil(512) * 512;
    }
    if entries == 0 {
        return Err(ArchiveError::NotTar("it has no entries".into()));
    }
    // tar(1), Go's archive/tar (docker, podman, skopeo) and the tar crate all end an archive
    // with zero blocks, which the reader stops at; input cut at a member boundary ends
    // without them.
    if consumed.get() < last_end + 512 {
        return Err(ArchiveError::Truncated {
            detail: format!("it ends after entry {entries} without tar's end-of-archive blocks"),
        });
    }
    owner_writable(dest);
    Ok(())
}

/// Counts the bytes the tar reader takes, to tell where it stopped.
struct Counting<R> {
    inner: R,
    n: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.set(self.n.get() + k as u64);
        Ok(k)
    }
}

/// The innermost cause: the tar reader wraps its I/O errors in two layers of paths.
fn root_cause(e: &io::Error) -> String {
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// The tar reader's message with its causes, its paths relative to the archive, and the bytes
/// it quotes from a header that is not one left out (they are not text).
fn printable(e: &io::Error, dest: &Path) -> String {
    let text = bootstrap::error::with_causes(e).replace(&format!("{}/", dest.display()), "");
    if text.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return "binary data where a tar header should be".to_string();
    }
    text.chars().take(200).collect()
}

/// Archive members keep the modes they were saved with (often read-only): give the owner
/// access, so the work directory can always be removed.
fn owner_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    let _ =
                        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644));
                }
                _ => {}
            }
        }
    }
}

/// A member of the unpacked archive, which must exist and, after symlinks, stay inside it.
fn member(root: &Path, rel: &str) -> Result<PathBuf, ArchiveError> {
    let path = root.join(rel.trim_start_matches('/'));
    let real = path.canonicalize().map_err(|_| ArchiveError::Missing {
        file: rel.to_string(),
    })?;
    let base = root.canonicalize().map_err(ArchiveError::Io)?;
    if !real.starts_with(&base) {
        return Err(ArchiveError::Escapes(rel.to_string()));
    }
    if !real.is_file() {
        return Err(ArchiveError::Missing {
            file: rel.to_string(),
        });
    }
    Ok(real)
}

/// A JSON member, read through [`member`] (a symlink to `/dev/zero` or out of the archive is
/// refused) and at most [`MAX_JSON`] bytes of it.
fn read_json<T: for<'de> Deserialize<'de>>(root: &Path, name: &str) -> Result<T, ArchiveError> {
    read_json_at(&member(root, name)?, name)
}

fn read_json_at<T: for<'de> Deserialize<'de>>(path: &Path, name: &str) -> Result<T, ArchiveError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_JSON + 1).read_to_end(&mut bytes))
        .map_err(ArchiveError::Io)?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(ArchiveError::TooLarge {
            file: name.to_string(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Json {
        file: name.to_string(),
        detail: e.to_string(),
    })
}

fn sha256(path: &Path) -> Result<String, ArchiveError> {
    bootstrap::digest::sha256_file(path).map_err(ArchiveError::Io)
}

/// Every image in the unpacked archive at `root`, merged by id (an image listed twice keeps
/// the tags of both), in the archive's order.
pub(super) fn read(root: &Path) -> Result<Vec<Candidate>, ArchiveError> {
    // Absolute, so the layouts written from it can point into it from anywhere.
    let root = &root.canonicalize().map_err(ArchiveError::Io)?;
    // Present at all (a link is followed, and checked, when read).
    let has = |name: &str| root.join(name).symlink_metadata().is_ok();
    let found = if has("manifest.json") {
        docker_images(root)?
    } else if has("index.json") {
        oci_images(root)?
    } else {
        return Err(ArchiveError::NoManifest);
    };
    let mut out: Vec<Candidate> = Vec::new();
    for c in found {
        match out.iter_mut().find(|o| o.file.id == c.file.id) {
            Some(o) => {
                for t in c.tags {
                    if !o.tags.contains(&t) {
                        o.tags.push(t);
                    }
                }
            }
            None => out.push(c),
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn docker_images(root: &Path) -> Result<Vec<Candidate>, ArchiveError> {
    let items: Vec<ManifestItem> = read_json(root, "manifest.json")?;
    if items.is_empty() {
        return Err(ArchiveError::NoImages("manifest.json"));
    }
    items
        .into_iter()
        .map(|m| {
            let config_path = member(root, &m.config)?;
            let id = sha256(&config_path)?;
            // `<hex>.json` (docker before 25, podman) or `blobs/sha256/<hex>`: the name is a
            // digest the content must have.
            let named = Path::new(&m.config)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
                .filter(|n| is_hex64(n));
            if let Some(expected) = named {
                if expected != id {
                    return Err(ArchiveError::DigestMismatch {
                        file: m.config.clone(),
                        expected,
                        actual: id,
                    });
                }
            }
            let file = image_file(&config_path, &m.config, &id)?;
            let layers = m
                .layers
                .iter()
                .map(|l| member(root, l))
                .collect::<Result<Vec<_>, _>>()?;
            if layers.len() != file.layers.len() {
                return Err(ArchiveError::LayerCount {
                    config: m.config.clone(),
                    layers: layers.len(),
                    diff_ids: file.layers.len(),
                });
            }
            let tags = m.repo_tags.unwrap_or_default();
            Ok(Candidate {
                file,
                tags: tags
                    .iter()
                    .map(|t| parse_tag(t))
                    .collect::<Result<_, _>>()?,
                config_path,
                source: Source::Docker { layers },
            })
        })
        .collect()
}

/// A tag as the archive gives it, which must name a repository and a tag.
fn parse_tag(tag: &str) -> Result<Reference, ArchiveError> {
    let r = parse_normalized(tag).map_err(|source| ArchiveError::InvalidTag {
        tag: tag.to_string(),
        source,
    })?;
    if r.tag.is_none() || r.digest.is_some() {
        return Err(ArchiveError::NotTagged(tag.to_string()));
    }
    Ok(r)
}

/// `blobs/sha256/<hex>` of an OCI layout, checked against its digest.
fn oci_blob(root: &Path, digest: &str) -> Result<PathBuf, ArchiveError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| is_hex64(h))
        .ok_or_else(|| ArchiveError::BadDigest(digest.to_string()))?;
    let rel = format!("blobs/sha256/{hex}");
    let path = member(root, &rel)?;
    let actual = sha256(&path)?;
    if actual != hex {
        return Err(ArchiveError::DigestMismatch {
            file: rel,
            expected: hex.to_string(),
            actual,
        });
    }
    Ok(path)
}

fn is_index(desc: &Value) -> bool {
    let media = desc["mediaType"].as_str().unwrap_or("");
    media.contains("image.index") || media.contains("manifest.list")
}

fn oci_images(root: &Path) -> Result<Vec<Candidate>, ArchiveError> {
    let index: Value = read_json(root, "index.json")?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    if manifests.is_empty() {
        return Err(ArchiveError::NoImages("index.json"));
    }
    manifests
        .iter()
        .map(|top| {
            let tags = oci_tags(top)?;
            let mut desc = top.clone();
            // Multi-platform images nest an index; follow it to the linux/amd64 manifest.
            for _ in 0..4 {
                if !is_index(&desc) {
                    break;
                }
                let digest = desc["digest"].as_str().unwrap_or("").to_string();
                let nested: Value = read_json_at(&oci_blob(root, &digest)?, &digest)?;
                desc = nested["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| {
                        m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                    })
                    .cloned()
                    .ok_or(ArchiveError::NoPlatform)?;
            }
            let digest = desc["digest"].as_str().unwrap_or("").to_string();
            let manifest: Value = read_json_at(&oci_blob(root, &digest)?, &digest)?;
            let config_digest = manifest["config"]["digest"].as_str().unwrap_or("");
            let config_path = oci_blob(root, config_digest)?;
            let id = config_digest.trim_start_matches("sha256:").to_string();
            let file = image_file(&config_path, config_digest, &id)?;
            let layers = manifest["layers"].as_array().map_or(0, Vec::len);
            if layers != file.layers.len() {
                return Err(ArchiveError::LayerCount {
                    config: config_digest.to_string(),
                    layers,
                    diff_ids: file.layers.len(),
                });
            }
            Ok(Candidate {
                file,
                tags,
                config_path,
                source: Source::Oci {
                    blobs: root.join("blobs"),
                    manifest: desc,
                },
            })
        })
        .collect()
}

/// An OCI descriptor's tag: containerd's full name, else the OCI ref name when it is a whole
/// reference. A bare ref name (`v1`) is only a tag, with no repository to put it in, so the
/// image loads untagged.
fn oci_tags(desc: &Value) -> Result<Vec<Reference>, ArchiveError> {
    let ann = &desc["annotations"];
    if let Some(name) = ann["io.containerd.image.name"].as_str() {
        return Ok(vec![parse_tag(name)?]);
    }
    match ann["org.opencontainers.image.ref.name"].as_str() {
        Some(name) if name.contains(['/', ':']) => Ok(vec![parse_tag(name)?]),
        _ => Ok(Vec::new()),
    }
}

#[derive(Deserialize, Default)]
struct RawImage {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<RawConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    exposed_ports: Option<BTreeMap<String, Value>>,
    volumes: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The record of an image from its config blob.
fn image_file(path: &Path, name: &str, hex: &str) -> Result<ImageFile, ArchiveError> {
    let raw: RawImage = read_json_at(path, name)?;
    let os = if raw.os.is_empty() { "linux" } else { &raw.os };
    let arch = if raw.architecture.is_empty() {
        "amd64"
    } else {
        &raw.architecture
    };
    if os != "linux" || arch != "amd64" {
        return Err(ArchiveError::Platform {
            os: os.to_string(),
            arch: arch.to_string(),
        });
    }
    let c = raw.config.unwrap_or_default();
    let created = raw
        .created
        .filter(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    Ok(ImageFile {
        id: format!("sha256:{hex}"),
        tags: Vec::new(),
        created,
        size: 0,
        os: os.to_string(),
        architecture: arch.to_string(),
        layers: raw.rootfs.unwrap_or_default().diff_ids,
        config: ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
        },
        removed: false,
        digests: Vec::new(),
        layered: false,
    })
}

/// A layout holding only this image, in the form the toolchain's `materialize` reads: a
/// `manifest.json` of one entry (absolute paths into the unpacked archive) or an OCI
/// `index.json` of one manifest with the archive's blobs linked in.
pub(super) fn write_layout(c: &Candidate, out: &Path) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    match &c.source {
        Source::Docker { layers } => {
            let manifest = json!([{
                "Config": c.config_path,
                "RepoTags": [],
                "Layers": layers,
            }]);
            std::fs::write(out.join("manifest.json"), manifest.to_string())
        }
        Source::Oci { blobs, manifest } => {
            std::os::unix::fs::symlink(blobs, out.join("blobs"))?;
            std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
            let index = json!({"schemaVersion": 2, "manifests": [manifest]});
            std::fs::write(out.join("index.json"), index.to_string())
        }
    }
}

/// One layer's file as the archive stores it (gzip or not).
#[derive(Debug, Clone)]
pub(super) struct LayerFile {
    /// Its name in the archive, for messages.
    pub name: String,
    /// `None`: a pulled layout that left the layer out (the layer store has it).
    pub path: Option<PathBuf>,
    /// The blob's digest in an OCI layout (what a registry serves); `None` in a `docker save`
    /// archive.
    pub digest: Option<String>,
}

/// The image's layer files, lowest first, in the order of the config's diff ids (checked
/// against them when each layer is built).
pub(super) fn layer_files(c: &Candidate) -> Result<Vec<LayerFile>, ArchiveError> {
    match &c.source {
        Source::Docker { layers } => Ok(layers
            .iter()
            .map(|p| LayerFile {
                name: p.display().to_string(),
                path: Some(p.clone()),
                digest: None,
            })
            .collect()),
        Source::Oci { blobs, manifest } => {
            let root = blobs.parent().unwrap_or(blobs);
            let digest = manifest["digest"].as_str().unwrap_or("");
            let m: Value = read_json_at(&oci_blob(root, digest)?, digest)?;
            m["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    let d = l["digest"].as_str().unwrap_or("");
                    let hex = d
                        .strip_prefix("sha256:")
                        .filter(|h| is_hex64(h))
                        .ok_or_else(|| ArchiveError::BadDigest(d.to_string()))?;
                    let name = format!("blobs/sha256/{hex}");
                    let path = match member(root, &name) {
                        Ok(p) => Some(p),
                        Err(ArchiveError::Missing { .. }) => None,
                        Err(e) => return Err(e),
                    };
                    Ok(LayerFile {
                        name,
                        path,
                        digest: Some(d.to_string()),
                    })
                })
                .collect()
        }
    }
}
