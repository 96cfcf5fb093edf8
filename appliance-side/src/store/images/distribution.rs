//! The part of dockerd's distribution metadata ("v2 metadata") a pull needs: which layer (its
//! DiffID, the digest of the uncompressed tar) a registry blob (the digest of what the registry
//! serves, compressed or not) unpacks to. It is recorded when the layer store built a layer
//! from that blob and found the DiffID right, in
//! `images/distribution/diffid-by-digest/sha256/<blob hex>` (the DiffID, as text), so a later
//! pull of an image on the same lower layers knows from the manifest alone, before any
//! download, which of its layers the store has: those are skipped ("Already exists").
//!
//! An entry outlives the blob (which the pull does not keep) and goes with the last layer of
//! its DiffID (collected with the layers).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::layers::chain_ids;
use super::load::LoadWork;
use super::reference::is_hex64;
use super::{ImageStore, StoreError};
use crate::path_io::io_err;
use crate::store::atomic::write_atomic;

/// `images/distribution/diffid-by-digest/sha256`.
#[derive(Debug, Clone)]
pub struct DiffIds {
    dir: PathBuf,
}

fn hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_hex64(h))
}

impl DiffIds {
    pub fn new(images: &Path) -> Self {
        Self {
            dir: images.join("distribution/diffid-by-digest/sha256"),
        }
    }

    /// The DiffID blob `digest` was found to unpack to.
    pub fn get(&self, digest: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(hex(digest)?)).ok()?;
        let diff = text.trim();
        hex(diff).map(|_| diff.to_string())
    }

    /// Records that blob `digest` unpacks to layer `diff_id`.
    pub fn put(&self, digest: &str, diff_id: &str) -> Result<(), StoreError> {
        let Some(h) = hex(digest) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let path = self.dir.join(h);
        Ok(write_atomic(&path, diff_id.as_bytes()).map_err(io_err("writing", &path))?)
    }

    /// Removes the entries whose DiffID is not in `live`.
    pub fn collect(&self, live: &HashSet<String>) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let keep = is_hex64(&name)
                && self
                    .get(&format!("sha256:{name}"))
                    .is_some_and(|d| live.contains(&d));
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl ImageStore {
    /// The blob-to-DiffID record.
    pub fn diff_ids(&self) -> DiffIds {
        DiffIds::new(&self.root())
    }

    /// How many of an image's lowest layers the layer store has already, known from the
    /// registry's blob digests (`blobs`, lowest first) and the config's DiffIDs alone: layer
    /// `i` counts when blob `i` is recorded as unpacking to DiffID `i` and the layer of that
    /// chain is built, and every layer below it counts. Those layers are pinned for the load
    /// in `work` (under the images lock, so no collection removes them before it builds).
    pub fn pin_known_layers(
        &self,
        work: &LoadWork,
        blobs: &[String],
        diff_ids: &[String],
    ) -> Result<usize, StoreError> {
        if blobs.len() != diff_ids.len() {
            return Ok(0);
        }
        let record = self.diff_ids();
        let layers = self.layers();
        let _lock = self.lock()?;
        let chain = chain_ids(diff_ids);
        let known = blobs
            .iter()
            .zip(diff_ids)
            .zip(&chain)
            .take_while(|((blob, diff), id)| {
                record.get(blob).as_ref() == Some(*diff) && layers.get(id).is_some()
            })
            .count();
        self.pin_locked(work, &chain[..known])?;
        Ok(known)
    }
}
