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
//! `docker load` streams its archive into a [`LoadWork`] directory, then [`ImageStore::load`]
//! unpacks it (`archive`), checks every digest and tag, builds each new image's disk (`build`)
//! and tags it. The work directory goes away whether the load succeeded or not.

mod archive;
mod build;
mod layers;
mod record;
pub mod reference;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

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

/// The applier of a one-layer image's chain, which only has a base: never asked to apply.
struct BaseOnly;

impl LayerApplier for BaseOnly {
    fn apply(&self, _disk: &Path, _tar: &Path, what: &str) -> Result<(), String> {
        Err(format!("{what}: no VM can be booted here to apply it"))
    }
}

/// What went wrong in the image store. [`StoreError::Archive`] is bad input (the archive
/// given); the rest are this machine's failures.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// Something a load reports as it goes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadEvent {
    /// Progress on one image (`id` is the short id).
    Status { id: String, status: &'static str },
    /// `tag` moved to the image being loaded from `old_id`, which keeps its other tags.
    Retagged { tag: String, old_id: String },
    /// One image is in the store, with these tags (docker's form).
    Loaded { id: String, tags: Vec<String> },
}

/// The directory one load works in (`images/.load-<pid>-<random>.work`), removed when dropped.
#[derive(Debug)]
pub struct LoadWork {
    dir: PathBuf,
}

impl LoadWork {
    /// Where the archive being loaded is written.
    pub fn archive(&self) -> PathBuf {
        self.dir.join("archive.tar")
    }

    /// The layers this load uses, which a collection running meanwhile keeps.
    fn pins(&self) -> PathBuf {
        self.dir.join("pins")
    }

    /// Where an image already unpacked (an OCI image layout, as a pull writes it) is put,
    /// for [`ImageStore::load_layout`].
    pub fn layout(&self) -> PathBuf {
        self.dir.join("layout")
    }
}

impl Drop for LoadWork {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
            .map_err(|(_, errno)| io_err("locking", &path)(errno.into()))
    }

    fn write(&self, f: &ImageFile) -> Result<(), StoreError> {
        let path = self.image_dir(&f.id).join(IMAGE_FILE);
        let bytes = serde_json::to_vec_pretty(f).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
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

    /// Removes tag `r` from image `id`; false if the image did not have it.
    pub fn untag(&self, id: &str, r: &Reference) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        let full = r.full();
        let mut f = self.live_file(id)?;
        let before = f.tags.len();
        f.tags.retain(|t| *t != full);
        if f.tags.len() == before {
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
        self.layers()
            .collect(&referenced, &|| self.work_path("rm-layer"))
    }

    /// Renames the image's directory out of the way first, so a crash halfway through the
    /// removal never leaves a directory that looks like an image with parts missing.
    fn remove_dir(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.image_dir(id);
        let gone = self.work_path("rm");
        std::fs::rename(&dir, &gone).map_err(io_err("removing", &dir))?;
        std::fs::remove_dir_all(&gone).map_err(io_err("removing", &gone))
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

    /// A fresh work directory for one load; stale ones of dead processes are removed first.
    pub fn begin_load(&self) -> Result<LoadWork, StoreError> {
        let root = self.root();
        std::fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
        self.sweep_stale_work();
        let dir = self.work_path("load");
        std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
        Ok(LoadWork { dir })
    }

    fn sweep_stale_work(&self) {
        let Ok(dir) = std::fs::read_dir(self.root()) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(WORK_SUFFIX) else {
                continue;
            };
            if name.starts_with('.') && !work_is_live(stem) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Imports the archive written to `work.archive()`: a `docker save` tarball or an OCI
    /// archive, possibly gzipped, with any number of images. Every image's config digest and
    /// tags are checked before any disk is built; an image already in the store only gains
    /// tags. `events` hears progress and each image as it lands.
    ///
    /// With `applier` each image's layers go to the layer store (those already there are
    /// shared, not built again); without one, each image gets a flattened disk.
    pub fn load(
        &self,
        work: &LoadWork,
        events: &mut dyn FnMut(LoadEvent),
        applier: Option<&dyn LayerApplier>,
    ) -> Result<Vec<Image>, StoreError> {
        let unpacked = work.dir.join("archive");
        archive::unpack(&work.archive(), &unpacked)?;
        let _ = std::fs::remove_file(work.archive());
        self.load_unpacked(work, &unpacked, events, applier)
    }

    /// Imports the OCI image layout (or `docker save` directory) written to `work.layout()`,
    /// with every check and step of [`ImageStore::load`] after the unpacking: a pull hands
    /// its images in here.
    pub fn load_layout(
        &self,
        work: &LoadWork,
        events: &mut dyn FnMut(LoadEvent),
        applier: Option<&dyn LayerApplier>,
    ) -> Result<Vec<Image>, StoreError> {
        self.load_unpacked(work, &work.layout(), events, applier)
    }

    fn load_unpacked(
        &self,
        work: &LoadWork,
        unpacked: &Path,
        events: &mut dyn FnMut(LoadEvent),
        applier: Option<&dyn LayerApplier>,
    ) -> Result<Vec<Image>, StoreError> {
        let candidates = archive::read(unpacked)?;
        let mut loaded = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            let short = c.file.id.get(7..19).unwrap_or_default().to_string();
            let dir = self.image_dir(&c.file.id);
            let built = if read_file(&dir.join(IMAGE_FILE)).is_ok() {
                events(LoadEvent::Status {
                    id: short.clone(),
                    status: "Image disk already built",
                });
                None
            } else {
                events(LoadEvent::Status {
                    id: short.clone(),
                    status: "Building the image disk",
                });
                let out = work.dir.join(format!("image-{i}"));
                let build = work.dir.join(format!("build-{i}"));
                match applier {
                    Some(a) if !c.file.layers.is_empty() => {
                        self.build_layered(c, work, &build, &out, a, events)?
                    }
                    // One layer is the chain's base, built on this machine: no VM needed.
                    None if c.file.layers.len() == 1 => {
                        self.build_layered(c, work, &build, &out, &BaseOnly, events)?
                    }
                    _ => self.build_image(c, unpacked, &build, &out)?,
                }
                events(LoadEvent::Status {
                    id: short.clone(),
                    status: "Image disk built",
                });
                Some(out)
            };
            let _lock = self.lock()?;
            self.install(built.as_deref(), &dir)?;
            for tag in &c.tags {
                if let Some(old_id) = self.tag_locked(&c.file.id, tag)? {
                    events(LoadEvent::Retagged {
                        tag: tag.familiar(),
                        old_id,
                    });
                }
            }
            let image: Image = self.live_file(&c.file.id)?.into();
            events(LoadEvent::Loaded {
                id: image.id.clone(),
                tags: c.tags.iter().map(Reference::familiar).collect(),
            });
            loaded.push(image);
        }
        Ok(loaded)
    }

    /// Builds the image's layers that the layer store lacks, then its directory (config blob
    /// and record, no disk of its own) at `out`.
    fn build_layered(
        &self,
        c: &archive::Candidate,
        load: &LoadWork,
        work: &Path,
        out: &Path,
        applier: &dyn LayerApplier,
        events: &mut dyn FnMut(LoadEvent),
    ) -> Result<(), StoreError> {
        let blobs = archive::layer_files(c)?;
        let chain = chain_ids(&c.file.layers);
        {
            // Pinned under the lock: a collection either ran before (and a layer it removed
            // is built again below) or sees the pins.
            let _lock = self.lock()?;
            let mut pins = std::fs::read_to_string(load.pins()).unwrap_or_default();
            for id in &chain {
                pins.push_str(id);
                pins.push('\n');
            }
            let path = load.pins();
            std::fs::write(&path, pins).map_err(io_err("writing", &path))?;
        }
        let store = self.layers();
        let short = c.file.id.get(7..19).unwrap_or_default().to_string();
        let mut size = 0;
        for (i, (id, (diff, blob))) in chain
            .iter()
            .zip(c.file.layers.iter().zip(&blobs))
            .enumerate()
        {
            if store.get(id).is_none() {
                events(LoadEvent::Status {
                    id: short.clone(),
                    status: if i == 0 {
                        "Building the base layer"
                    } else {
                        "Applying a layer in a containerVM"
                    },
                });
                let parent = i.checked_sub(1).map(|p| chain[p].as_str());
                let dir = work.join(format!("layer-{i}"));
                let built = store.build(i + 1, id, diff, parent, blob, &dir, applier);
                let _ = std::fs::remove_dir_all(&dir);
                built?;
            }
            size += store.get(id).map_or(0, |r| r.tar_size);
        }
        std::fs::create_dir_all(out).map_err(io_err("creating", out))?;
        let config = out.join(CONFIG_FILE);
        std::fs::copy(&c.config_path, &config).map_err(io_err("writing", &config))?;
        let mut f = c.file.clone();
        f.size = size;
        f.layered = true;
        let path = out.join(IMAGE_FILE);
        let bytes = serde_json::to_vec_pretty(&f).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }

    /// Builds the image's directory (disk, config blob, record) at `out`.
    fn build_image(
        &self,
        c: &archive::Candidate,
        unpacked: &Path,
        work: &Path,
        out: &Path,
    ) -> Result<(), StoreError> {
        std::fs::create_dir_all(out).map_err(io_err("creating", out))?;
        let layout = work.join("layout");
        archive::write_layout(c, &layout).map_err(io_err("writing", &layout))?;
        let real = unpacked
            .canonicalize()
            .unwrap_or_else(|_| unpacked.to_path_buf());
        let scrub = [real, unpacked.to_path_buf(), layout.clone()];
        let size = build::disk(&layout, work, &out.join(DISK_FILE), &scrub)?;
        let _ = std::fs::remove_dir_all(work);
        let config = out.join(CONFIG_FILE);
        std::fs::copy(&c.config_path, &config).map_err(io_err("writing", &config))?;
        let mut f = c.file.clone();
        f.size = size;
        let path = out.join(IMAGE_FILE);
        let bytes = serde_json::to_vec_pretty(&f).map_err(|source| StoreError::Record {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(io_err("writing", &path))
    }

    /// Puts a built image in place (under the lock), or revives a removed one whose disk is
    /// still here. Another load may have installed the same image meanwhile: then its copy
    /// stays and ours is dropped with the work directory.
    fn install(&self, built: Option<&Path>, dir: &Path) -> Result<(), StoreError> {
        match (read_file(&dir.join(IMAGE_FILE)), built) {
            (Ok(mut f), _) if f.removed => {
                f.removed = false;
                self.write(&f)
            }
            (Ok(_), _) => Ok(()),
            (Err(_), Some(out)) => {
                // A directory without a readable record is no image (an unreadable
                // image.json): replace it.
                if dir.exists() {
                    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                    self.remove_dir(&id.unwrap_or_default())?;
                }
                std::fs::rename(out, dir).map_err(io_err("installing the image at", dir))
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// Whether the work directory named `.<what>-<pid>-...` belongs to a live process.
fn work_is_live(name: &str) -> bool {
    let pid = name.split('-').nth(1).and_then(|p| p.parse::<i32>().ok());
    pid.is_some_and(|p| {
        p as u32 == std::process::id()
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
    })
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
            layered: false,
        };
        self.write(&f).unwrap();
        f.id
    }
}
