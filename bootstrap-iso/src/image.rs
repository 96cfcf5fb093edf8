//! Container images to a root filesystem: a `docker save` tarball, or an OCI image layout (a
//! directory or a tar of one). Layers are applied in order with whiteouts (`.wh.NAME` deletes
//! NAME, `.wh..wh..opq` empties the directory of lower layers' content), and every digest given is
//! verified: each OCI blob against its name, each docker-save layer against the config's diff_ids.
//! A plain rootfs directory or tarball is taken as it is.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::{sha256_file, sha256_reader};
use crate::dirtimes::DirTimes;
use crate::error::IoError;
use crate::paths::safe_join;

/// What an image input can be, for the messages that say what to give instead.
const INPUTS: &str = "a docker save tarball, an OCI layout (directory or tar), or a rootfs \
                      directory or tarball";

/// What can go wrong turning an image into a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {}: {source} (give {INPUTS})", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("image {} is an empty file, not an image (give {INPUTS})", .0.display())]
    EmptyFile(PathBuf),
    #[error("image {}: not a tar archive, or a truncated one ({}); give {INPUTS}", path.display(), printable(source))]
    NotTar { path: PathBuf, source: io::Error },
    #[error("{}: invalid JSON: {source} (is the image complete? re-export it)", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{file} lists no {what}: the image is incomplete; re-export it")]
    Empty {
        file: &'static str,
        what: &'static str,
    },
    #[error("unsupported digest {0:?}: only sha256 is; re-export the image with sha256 digests")]
    UnsupportedDigest(String),
    #[error("malformed digest {0:?}: expected sha256: and 64 hex digits")]
    MalformedDigest(String),
    #[error(
        "blob {} does not match its digest: expected sha256:{expected}, got sha256:{actual} \
         (the image is corrupt or was changed; re-export it)",
        path.display()
    )]
    BlobMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "manifest.json lists {layers} layers but the config has {diff_ids} diff_ids: the image \
         is inconsistent; re-export it"
    )]
    LayerCount { layers: usize, diff_ids: usize },
    #[error(
        "layer {index} ({}) does not match its digest sha256:{digest} (the image is corrupt or \
         was changed; re-export it)",
        path.display()
    )]
    LayerMismatch {
        index: usize,
        path: PathBuf,
        digest: String,
    },
    #[error(
        "layer {} is zstd-compressed, which is not supported yet; re-export the image with gzip",
        .0.display()
    )]
    Zstd(PathBuf),
    /// Unpacking a plain rootfs tarball failed; the message names the file.
    #[error("unpacking the rootfs tarball: {0}")]
    Rootfs(io::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The tar reader's message, which can quote the bytes of a header that is not one: printable,
/// and short enough for a line.
fn printable(e: &io::Error) -> String {
    let text: String = crate::error::with_causes(e)
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                '?'
            } else {
                c
            }
        })
        .collect();
    match text.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

fn read_json(path: &Path) -> Result<Value, Error> {
    let bytes = std::fs::read(path).map_err(IoError::at(path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// A layer to apply, with the digest it must have (hex sha256 of the file as stored).
struct Layer {
    path: PathBuf,
    digest: String,
}

/// The blob for `sha256:HEX` in an OCI layout, verified against its digest.
fn oci_blob(root: &Path, digest: &str) -> Result<PathBuf, Error> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::UnsupportedDigest(digest.to_string()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::MalformedDigest(digest.to_string()));
    }
    let path = root.join("blobs/sha256").join(hex);
    let actual = sha256_file(&path).map_err(IoError::at(&path))?;
    if actual != hex {
        return Err(Error::BlobMismatch {
            path,
            expected: hex.to_string(),
            actual,
        });
    }
    Ok(path)
}

/// The layers of an OCI image layout, verified, lowest first.
fn oci_layers(root: &Path) -> Result<Vec<Layer>, Error> {
    let index = read_json(&root.join("index.json"))?;
    let mut desc = index["manifests"].get(0).cloned().ok_or(Error::Empty {
        file: "index.json",
        what: "manifests",
    })?;
    // Follow nested indexes (multi-platform images) to a linux/amd64 manifest.
    for _ in 0..4 {
        let media = desc["mediaType"].as_str().unwrap_or("");
        if !media.contains("index") && !media.contains("manifest.list") {
            break;
        }
        let nested = read_json(&oci_blob(root, desc["digest"].as_str().unwrap_or(""))?)?;
        let manifests = nested["manifests"].as_array().cloned().unwrap_or_default();
        desc = manifests
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64" && m["platform"]["os"] == "linux")
            .or(manifests.first())
            .cloned()
            .ok_or(Error::Empty {
                file: "an image index",
                what: "manifests",
            })?;
    }
    let manifest = read_json(&oci_blob(root, desc["digest"].as_str().unwrap_or(""))?)?;
    if let Some(config) = manifest["config"]["digest"].as_str() {
        oci_blob(root, config)?;
    }
    manifest["layers"]
        .as_array()
        .ok_or(Error::Empty {
            file: "the image manifest",
            what: "layers",
        })?
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().unwrap_or("").to_string();
            let path = oci_blob(root, &digest)?;
            Ok(Layer {
                path,
                digest: digest.trim_start_matches("sha256:").to_string(),
            })
        })
        .collect()
}

/// The layers of a `docker save` directory (legacy layout), verified against the config's diff_ids.
fn docker_save_layers(root: &Path) -> Result<Vec<Layer>, Error> {
    let manifest = read_json(&root.join("manifest.json"))?;
    let entry = manifest.get(0).ok_or(Error::Empty {
        file: "manifest.json",
        what: "images",
    })?;
    let config = read_json(&root.join(entry["Config"].as_str().unwrap_or("")))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str())
                .map(|d| d.trim_start_matches("sha256:").to_string())
                .collect()
        })
        .unwrap_or_default();
    let layers: Vec<&str> = entry["Layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str()).collect())
        .unwrap_or_default();
    if layers.len() != diff_ids.len() {
        return Err(Error::LayerCount {
            layers: layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    Ok(layers
        .iter()
        .zip(diff_ids)
        .map(|(rel, digest)| Layer {
            path: root.join(rel),
            digest,
        })
        .collect())
}

/// Opens a layer, decompressing gzip.
fn layer_reader(layer: &Layer) -> Result<Box<dyn Read>, Error> {
    let at = || IoError::at(&layer.path);
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(&layer.path)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(at())?;
    let f = std::fs::File::open(&layer.path).map_err(at())?;
    match &magic[..n.min(4)] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(Error::Zstd(layer.path.clone())),
        _ => Ok(Box::new(f)),
    }
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Applies one layer over `root`: whiteouts first (they refer to lower layers), then content.
fn apply_layer(layer: &Layer, root: &Path, dir_times: &mut DirTimes) -> Result<(), Error> {
    // Reading the layer fails with the layer named; unpacking into the root with the root named.
    let at = || IoError::at(&layer.path);
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    for entry in archive.entries().map_err(at())? {
        let entry = entry.map_err(at())?;
        let path = entry.path().map_err(at())?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new(""));
        let Some(dir) = safe_join(root, parent) else {
            continue;
        };
        if name == ".wh..wh..opq" {
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                remove_any(&child.path());
            }
        } else if let Some(target) = name.strip_prefix(".wh.") {
            remove_any(&dir.join(target));
        }
    }
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(at())? {
        let mut entry = entry.map_err(at())?;
        let path = entry.path().map_err(at())?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(".wh.") {
            continue;
        }
        if let Some(dest) = safe_join(root, &path) {
            dir_times.record(dest.clone(), &entry);
            // A file may replace a directory of a lower layer and the other way round.
            let is_dir = entry.header().entry_type().is_dir();
            if let Ok(m) = std::fs::symlink_metadata(&dest) {
                if m.is_dir() != is_dir || m.file_type().is_symlink() {
                    remove_any(&dest);
                }
            }
        }
        entry
            .unpack_in(root)
            .map_err(IoError::at(&root.join(&path)))?;
    }
    Ok(())
}

/// What kind of input a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RootfsDir,
    RootfsTar,
    /// An OCI layout or docker-save tree (a directory, or a tar of one).
    ImageDir,
    ImageTar,
}

fn tar_is_image(path: &Path) -> io::Result<bool> {
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()?.take(64) {
        let entry = entry?;
        let p = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if matches!(p.as_str(), "manifest.json" | "oci-layout" | "index.json") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What `path` holds. An empty file is an error (the tar format would read it as an empty
/// rootfs, which is never what was meant), and so is a file that is not a tar archive.
pub fn detect(path: &Path) -> Result<Kind, Error> {
    let meta = std::fs::metadata(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let image = path.join("oci-layout").exists() || path.join("manifest.json").exists();
        return Ok(if image {
            Kind::ImageDir
        } else {
            Kind::RootfsDir
        });
    }
    if meta.len() == 0 {
        return Err(Error::EmptyFile(path.to_path_buf()));
    }
    let image = tar_is_image(path).map_err(|source| Error::NotTar {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if image {
        Kind::ImageTar
    } else {
        Kind::RootfsTar
    })
}

/// Builds the root filesystem of `input` under `work` (a directory for the build's files);
/// returns where it is (the input itself for a rootfs directory).
pub fn materialize(input: &Path, work: &Path) -> Result<PathBuf, Error> {
    let kind = detect(input)?;
    let image_dir = match kind {
        Kind::RootfsDir => return Ok(input.to_path_buf()),
        Kind::RootfsTar => {
            let dest = work.join("rootfs");
            crate::disk::extract_tar(input, &dest).map_err(Error::Rootfs)?;
            return Ok(dest);
        }
        Kind::ImageDir => input.to_path_buf(),
        Kind::ImageTar => {
            let dir = work.join("image");
            std::fs::create_dir_all(&dir).map_err(IoError::at(&dir))?;
            std::fs::File::open(input)
                .and_then(|f| tar::Archive::new(f).unpack(&dir))
                .map_err(IoError::at(input))?;
            dir
        }
    };
    let layers = if image_dir.join("index.json").exists() {
        oci_layers(&image_dir)?
    } else {
        docker_save_layers(&image_dir)?
    };
    let dest = work.join("rootfs");
    std::fs::create_dir_all(&dest).map_err(IoError::at(&dest))?;
    let mut dir_times = DirTimes::default();
    for (i, layer) in layers.iter().enumerate() {
        let actual = sha256_file(&layer.path).map_err(IoError::at(&layer.path))?;
        // docker-save diff_ids name the uncompressed tar; OCI digests the blob as stored.
        if actual != layer.digest && !uncompressed_matches(layer)? {
            return Err(Error::LayerMismatch {
                index: i + 1,
                path: layer.path.clone(),
                digest: layer.digest.clone(),
            });
        }
        eprintln!("bootstrap-iso: applying layer {}/{}", i + 1, layers.len());
        apply_layer(layer, &dest, &mut dir_times)?;
    }
    dir_times.apply()?;
    Ok(dest)
}

fn uncompressed_matches(layer: &Layer) -> Result<bool, Error> {
    let hex = sha256_reader(layer_reader(layer)?).map_err(IoError::at(&layer.path))?;
    Ok(hex == layer.digest)
}
