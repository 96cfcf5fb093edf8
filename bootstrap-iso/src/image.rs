//! Container images to a root filesystem: a `docker save` tarball, or an OCI image layout (a
//! directory or a tar of one). Layers are applied in order with whiteouts (`.wh.NAME` deletes
//! NAME, `.wh..wh..opq` empties the directory of lower layers' content), and every digest given is
//! verified: each OCI blob against its name, each docker-save layer against the config's diff_ids.
//! A plain rootfs directory or tarball is taken as it is.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::dirtimes::DirTimes;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn sha256_hex(path: &Path) -> io::Result<String> {
    crate::disk::sha256_file(path)
}

fn read_json(path: &Path) -> io::Result<Value> {
    let bytes = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("{}: invalid JSON: {e}", path.display())))
}

/// A layer to apply, with the digest it must have (hex sha256 of the file as stored).
struct Layer {
    path: PathBuf,
    digest: String,
}

/// The blob for `sha256:HEX` in an OCI layout, verified against its digest.
fn oci_blob(root: &Path, digest: &str) -> io::Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| bad(format!("unsupported digest {digest:?}: only sha256 is")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("malformed digest {digest:?}")));
    }
    let path = root.join("blobs/sha256").join(hex);
    let actual = sha256_hex(&path)?;
    if actual != hex {
        return Err(bad(format!(
            "blob {} does not match its digest: expected sha256:{hex}, got sha256:{actual}",
            path.display()
        )));
    }
    Ok(path)
}

/// The layers of an OCI image layout, verified, lowest first.
fn oci_layers(root: &Path) -> io::Result<Vec<Layer>> {
    let index = read_json(&root.join("index.json"))?;
    let mut desc = index["manifests"]
        .get(0)
        .cloned()
        .ok_or_else(|| bad("index.json lists no manifests"))?;
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
            .ok_or_else(|| bad("an image index lists no manifests"))?;
    }
    let manifest = read_json(&oci_blob(root, desc["digest"].as_str().unwrap_or(""))?)?;
    if let Some(config) = manifest["config"]["digest"].as_str() {
        oci_blob(root, config)?;
    }
    manifest["layers"]
        .as_array()
        .ok_or_else(|| bad("the image manifest has no layers"))?
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
fn docker_save_layers(root: &Path) -> io::Result<Vec<Layer>> {
    let manifest = read_json(&root.join("manifest.json"))?;
    let entry = manifest
        .get(0)
        .ok_or_else(|| bad("manifest.json lists no images"))?;
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
        return Err(bad(format!(
            "manifest.json lists {} layers but the config has {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    layers
        .iter()
        .zip(diff_ids)
        .map(|(rel, digest)| {
            let path = root.join(rel);
            Ok(Layer { path, digest })
        })
        .collect()
}

/// Opens a layer, decompressing gzip; checks the digest of what docker-save layers hold.
fn layer_reader(layer: &Layer) -> io::Result<Box<dyn Read>> {
    let mut f = std::fs::File::open(&layer.path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(&layer.path)?;
    match &magic[..n.min(4)] {
        [0x1f, 0x8b, ..] => Ok(Box::new(flate2::read::GzDecoder::new(f))),
        [0x28, 0xb5, 0x2f, 0xfd] => Err(bad(format!(
            "layer {} is zstd-compressed, which is not supported yet; re-export the image with gzip",
            layer.path.display()
        ))),
        _ => Ok(Box::new(f)),
    }
}

pub(crate) fn safe_join(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut out = root.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None, // absolute or .. : never outside the root
        }
    }
    Some(out)
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
fn apply_layer(layer: &Layer, root: &Path, dir_times: &mut DirTimes) -> io::Result<()> {
    let mut archive = tar::Archive::new(layer_reader(layer)?);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
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
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
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
        entry.unpack_in(root)?;
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

pub fn detect(path: &Path) -> io::Result<Kind> {
    let meta = std::fs::metadata(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if meta.is_dir() {
        let image = path.join("oci-layout").exists() || path.join("manifest.json").exists();
        return Ok(if image {
            Kind::ImageDir
        } else {
            Kind::RootfsDir
        });
    }
    Ok(if tar_is_image(path)? {
        Kind::ImageTar
    } else {
        Kind::RootfsTar
    })
}

/// Builds the root filesystem of `input` in `dest` (a new directory); returns where it is (the
/// input itself for a rootfs directory).
pub fn materialize(input: &Path, work: &Path) -> io::Result<PathBuf> {
    let kind = detect(input)?;
    let image_dir = match kind {
        Kind::RootfsDir => return Ok(input.to_path_buf()),
        Kind::RootfsTar => {
            let dest = work.join("rootfs");
            crate::disk::extract_tar(input, &dest)?;
            return Ok(dest);
        }
        Kind::ImageDir => input.to_path_buf(),
        Kind::ImageTar => {
            let dir = work.join("image");
            std::fs::create_dir_all(&dir)?;
            tar::Archive::new(std::fs::File::open(input)?).unpack(&dir)?;
            dir
        }
    };
    let layers = if image_dir.join("index.json").exists() {
        oci_layers(&image_dir)?
    } else {
        docker_save_layers(&image_dir)?
    };
    let dest = work.join("rootfs");
    std::fs::create_dir_all(&dest)?;
    let mut dir_times = DirTimes::default();
    for (i, layer) in layers.iter().enumerate() {
        let actual = sha256_hex(&layer.path)?;
        // docker-save diff_ids name the uncompressed tar; OCI digests the blob as stored.
        if actual != layer.digest && !uncompressed_matches(layer)? {
            return Err(bad(format!(
                "layer {} ({}) does not match its digest sha256:{}",
                i + 1,
                layer.path.display(),
                layer.digest
            )));
        }
        eprintln!("bootstrap-iso: applying layer {}/{}", i + 1, layers.len());
        apply_layer(layer, &dest, &mut dir_times)?;
    }
    dir_times.apply()?;
    Ok(dest)
}

fn uncompressed_matches(layer: &Layer) -> io::Result<bool> {
    let mut h = Sha256::new();
    let mut r = layer_reader(layer)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex == layer.digest)
}
