//! The image store, `$TETHER_HOME/images/<hex id>/`: `image.json` (id, tags, created, size,
//! platform, layers and the config fields containers start from), `config.json` (the config blob
//! exactly as loaded, so its sha256 is the id) and the image's disk, built once when the image
//! is loaded, which every container of the image overlays: with a [`LayerApplier`] (the engine,
//! when it has a backend to run VMs) the top of the image's chain in the layer store
//! (`layers`, shared by every image on the same lower layers); without one, a flattened
//! `disk.qcow2` of all its layers in the image's directory.
//!
//! An image directory appears whole: it is assembled in a `.work` directory and renamed in, and
//! each `image.json` is written atomically. Changes (tags, new images, removal) take an exclusive
//! lock on `$TETHER_HOME/images.lock`, so two loads, or a load and an `rmi`, never interleave;
//! readers take no lock. Tags are kept normalized (`docker.io/library/busybox:latest`) and shown
//! the way docker shows them (`busybox:latest`).
//!
//! `docker load` streams its archive into a [`load::LoadWork`] directory, then
//! [`ImageStore::load`] (`load`) unpacks it (`archive`), checks every digest and tag, builds each
//! new image's disk (`build`) and tags it. The work directory goes away whether the load succeeded or not.

mod archive;
mod build;
pub mod distribution;
mod layers;
pub mod load;
mod record;
pub mod reference;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::path_io::{io_err, PathIoError};

use crate::home::Home;
use crate::store::atomic::{hex, random, write_atomic};

pub use self::archive::ArchiveError;
pub use self::build::BuildError;
pub use self::layers::{
    allocated, chain_ids, LayerApplier, LayerError, LayerRecord, LayerStore, BASE_MIN_MB,
};
use self::record::ImageFile;
pub use self::record::{Image, ImageConfig};
use self::reference::{parse_any, AnyReference, Reference};

const IMAGE_FILE: &str = "image.json";
const CONFIG_FILE: &str = "config.json";
const DISK_FILE: &str = "disk.qcow2";
const WORK_SUFFIX: &str = ".work";

/// What went wrong in the image store. [`StoreError::Archive`] is bad input (the archive
/// given); the rest are this machine's failures.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{}: invalid image record: {source}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("No such image: {0}")]
    NoSuchImage(String),
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    home: Home,
}

impl ImageStore {
    pub fn new(home: Home) -> Self {
        Self { home }
    }

    /// `$TETHER_HOME/images`.
    pub fn root(&self) -> PathBuf {
        self.home.root().join("images")
    }

    fn image_dir(&self, id: &str) -> PathBuf {
        self.root().join(id.strip_prefix("sha256:").unwrap_or(id))
    }

    /// The image's built disk (qcow2), the read-only base of its containers' disks: the top
    /// layer's in the layer store, or the image's own flattened disk.
    pub fn disk(&self, image: &Image) -> PathBuf {
        match chain_ids(&image.layers).last() {
            Some(top) if image.layered => self.layers().disk(top),
            _ => self.image_dir(&image.id).join(DISK_FILE),
        }
    }

    /// The layer store (`images/layers`).
    pub fn layers(&self) -> LayerStore {
        LayerStore::new(&self.root())
    }

    /// The chain ids of the image's disk chain in the layer store, lowest first (none for a
    /// flattened image).
    pub fn chain(&self, image: &Image) -> Vec<String> {
        match image.layered {
            true => chain_ids(&image.layers),
            false => Vec::new(),
        }
    }

    /// The image a reference names: `sha256:<id>`, a unique prefix of the id's hex (with or
    /// without `sha256:`), or a tag in any form docker accepts (`busybox` is `busybox:latest`,
    /// and `docker.io/library/busybox:latest` names it too).
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        let all = self.files();
        match parse_any(reference) {
            Ok(AnyReference::Id(id)) => {
                return all.into_iter().find(|f| f.id == id).map(Image::from);
            }
            Ok(AnyReference::Named(r)) if r.digest.is_some() => {
                // As docker: a tag beside the digest is ignored; a digest no pull recorded
                // may still be the image's id.
                let digest = r.digest.clone().unwrap_or_default();
                let full = r.favor_digest().full();
                return all
                    .iter()
                    .find(|f| f.digests.contains(&full))
                    .or_else(|| all.iter().find(|f| f.id == digest))
                    .map(|f| f.clone().into());
            }
            Ok(AnyReference::Named(r)) => {
                let full = r.tag_name_only().full();
                if let Some(f) = all.iter().find(|f| f.tags.contains(&full)) {
                    return Some(f.clone().into());
                }
            }
            Err(_) => {}
        }
        // As docker: a name that is no tag may still be the start of an id.
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.is_empty() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut hits = all.into_iter().filter(|f| {
            f.id.strip_prefix("sha256:")
                .is_some_and(|h| h.starts_with(hex))
        });
        let first = hits.next()?;
        hits.next().is_none().then(|| first.into())
    }

    /// Every image, newest first (as docker lists them).
    pub fn list(&self) -> Vec<Image> {
        let mut all: Vec<Image> = self.files().into_iter().map(Image::from).collect();
        all.sort_by(|a, b| created_key(b).cmp(&created_key(a)).then(a.id.cmp(&b.id)));
        all
    }

    /// The records of every image not removed. A directory without a readable `image.json` is
    /// not an image (a disk cache file, a work directory) and is skipped.
    fn files(&self) -> Vec<ImageFile> {
        let Ok(dir) = std::fs::read_dir(self.root()) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| reference::is_hex64(&e.file_name().to_string_lossy()))
            .filter_map(|e| read_file(&e.path().join(IMAGE_FILE)).ok())
            .filter(|f| !f.removed)
            .collect()
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.home.root().join("images.lock");
        std::fs::create_dir_all(self.home.root()).map_err(io_err("creating", self.home.root()))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err("locking", &path)(errno.into()).into())
    }

    fn write(&self, f: &ImageFile) -> Result<(), StoreError> {
        write_record(&self.image_dir(&f.id).join(IMAGE_FILE), f)
    }

    fn live_file(&self, id: &str) -> Result<ImageFile, StoreError> {
        read_file(&self.image_dir(id).join(IMAGE_FILE))
            .ok()
            .filter(|f| !f.removed)
            .ok_or_else(|| StoreError::NoSuchImage(id.to_string()))
    }

    /// Gives image `id` the tag `r` (which must carry one; see [`Reference::tag_name_only`]),
    /// taking it from the image that had it. Returns that image's id.
    pub fn tag(&self, id: &str, r: &Reference) -> Result<Option<String>, StoreError> {
        let _lock = self.lock()?;
        self.tag_locked(id, r)
    }

    fn tag_locked(&self, id: &str, r: &Reference) -> Result<Option<String>, StoreError> {
        let full = r.full();
        let mut target = self.live_file(id)?;
        if target.tags.contains(&full) {
            return Ok(None);
        }
        let mut previous = None;
        // Untag the old owner first: a crash in between loses the tag rather than leaving it
        // on two images.
        for mut other in self.files() {
            if other.id != id && other.tags.contains(&full) {
                other.tags.retain(|t| *t != full);
                self.write(&other)?;
                previous = Some(other.id);
            }
        }
        target.tags.push(full);
        target.tags.sort();
        self.write(&target)?;
        Ok(previous)
    }

    /// Records that a pull of `r`'s repository resolved to manifest digest `r.digest` for
    /// image `id` (docker's digest reference, shown in `RepoDigests`); another image that had
    /// the reference loses it.
    pub fn add_digest(&self, id: &str, r: &Reference) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let full = r.clone().favor_digest().full();
        let mut target = self.live_file(id)?;
        if target.digests.contains(&full) {
            return Ok(());
        }
        for mut other in self.files() {
            if other.id != id && other.digests.contains(&full) {
                other.digests.retain(|d| *d != full);
                self.write(&other)?;
            }
        }
        target.digests.push(full);
        target.digests.sort();
        self.write(&target)
    }

    /// Removes reference `r` from image `id`: its digest reference when `r` has a digest, else
    /// its tag. False if the image did not have it.
    pub fn untag(&self, id: &str, r: &Reference) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let mut f = self.live_file(id)?;
        let full = r.clone().favor_digest().full();
        let refs = match r.digest {
            Some(_) => &mut f.digests,
            None => &mut f.tags,
        };
        let before = refs.len();
        refs.retain(|t| *t != full);
        if refs.len() == before {
            return Ok(false);
        }
        self.write(&f)?;
        Ok(true)
    }

    /// Deletes image `id` with its tags. With `keep_disk` (a container's disk is layered on
    /// it) the image stops being listed or resolvable but its disk stays, until
    /// [`ImageStore::prune_removed`] finds it unused.
    pub fn delete(&self, id: &str, keep_disk: bool) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut f = self.live_file(id)?;
        if keep_disk {
            f.tags.clear();
            f.digests.clear();
            f.removed = true;
            return self.write(&f);
        }
        self.remove_dir(id)
    }

    /// Removes the disks of deleted images that no container uses any more.
    pub fn prune_removed(&self, in_use: &dyn Fn(&str) -> bool) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let Ok(dir) = std::fs::read_dir(self.root()) else {
            return Ok(());
        };
        for e in dir.flatten() {
            if let Ok(f) = read_file(&e.path().join(IMAGE_FILE)) {
                if f.removed && !in_use(&f.id) {
                    self.remove_dir(&f.id)?;
                }
            }
        }
        self.collect_layers_locked();
        Ok(())
    }

    /// Removes the layers no image needs any more (`docker rmi` does at its end, the server at
    /// its start); returns their chain ids.
    pub fn collect_layers(&self) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock()?;
        Ok(self.collect_layers_locked())
    }

    /// The reference count, taken now: every layer in the chain of an image record (a removed
    /// one kept for its containers included) or pinned by a live load.
    fn collect_layers_locked(&self) -> Vec<String> {
        let mut referenced = std::collections::HashSet::new();
        for e in std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(f) = read_file(&e.path().join(IMAGE_FILE)) {
                if f.layered {
                    referenced.extend(chain_ids(&f.layers));
                }
            } else if name.starts_with(".load-") && work_is_live(&name) {
                let pins = std::fs::read_to_string(e.path().join("pins")).unwrap_or_default();
                referenced.extend(pins.lines().map(str::to_string));
            }
        }
        let removed = self
            .layers()
            .collect(&referenced, &|| self.work_path("rm-layer"));
        let live = self
            .layers()
            .list()
            .into_iter()
            .map(|l| l.diff_id)
            .collect();
        self.diff_ids().collect(&live);
        removed
    }

    /// Renames the image's directory out of the way first, so a crash halfway through the
    /// removal never leaves a directory that looks like an image with parts missing.
    fn remove_dir(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.image_dir(id);
        let gone = self.work_path("rm");
        std::fs::rename(&dir, &gone).map_err(io_err("removing", &dir))?;
        Ok(std::fs::remove_dir_all(&gone).map_err(io_err("removing", &gone))?)
    }

    /// `images/.<what>-<pid>-<random>.work`: the pid lets a later load sweep what a crashed
    /// server left.
    fn work_path(&self, what: &str) -> PathBuf {
        let name = format!(
            ".{what}-{}-{}{WORK_SUFFIX}",
            std::process::id(),
            hex(&random::<6>())
        );
        self.root().join(name)
    }
}

/// Whether the work file or directory named `.<what>-<pid>-...` belongs to a live process
/// (this one included).
pub fn work_is_live(name: &str) -> bool {
    let pid = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
    pid.is_some_and(|p| {
        p as u32 == std::process::id()
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
    })
}

/// Writes an image record (atomically) at `path`.
fn write_record(path: &Path, f: &ImageFile) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(f).map_err(|source| StoreError::Record {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(write_atomic(path, &bytes).map_err(io_err("writing", path))?)
}

fn read_file(path: &Path) -> Result<ImageFile, StoreError> {
    let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Record {
        path: path.to_path_buf(),
        source,
    })
}

/// Sorts RFC 3339 times in time order (a plain string compare is wrong across fractions).
fn created_key(image: &Image) -> i128 {
    time::OffsetDateTime::parse(
        &image.created,
        &time::format_description::well_known::Rfc3339,
    )
    .map_or(0, |t| t.unix_timestamp_nanos())
}

/// Images put straight into a store, without an archive or a disk build, for the rules that
/// only look at records.
#[cfg(test)]
impl ImageStore {
    pub(crate) fn insert_for_tests(&self, hex: &str, tags: &[&str], created: &str) -> String {
        let dir = self.image_dir(hex);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DISK_FILE), b"QFI\xfb").unwrap();
        let f = ImageFile {
            id: format!("sha256:{hex}"),
            tags: tags
                .iter()
                .map(|t| {
                    reference::parse_normalized(t)
                        .unwrap()
                        .tag_name_only()
                        .full()
                })
                .collect(),
            created: created.into(),
            size: 1,
            os: "linux".into(),
            architecture: "amd64".into(),
            layers: vec![],
            config: ImageConfig::default(),
            removed: false,
            digests: Vec::new(),
            layered: false,
        };
        self.write(&f).unwrap();
        f.id
    }
}
