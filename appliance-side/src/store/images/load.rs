//! Loading: the [`LoadWork`] directory a `docker load` or a pull writes into, and the steps from
//! an unpacked archive or layout to images in the store: every digest and tag checked, each new
//! image built (its layers in the layer store, or a flattened disk) and installed, then tagged.

use std::path::{Path, PathBuf};

use super::archive::ArchiveError;
use super::layers::{chain_ids, LayerApplier};
use super::record::Image;
use super::reference::Reference;
use super::{
    archive, build, read_file, work_is_live, write_record, ImageStore, StoreError, CONFIG_FILE,
    DISK_FILE, IMAGE_FILE, WORK_SUFFIX,
};
use crate::path_io::io_err;

/// The applier of a one-layer image's chain, which only has a base: never asked to apply.
struct BaseOnly;

impl LayerApplier for BaseOnly {
    fn apply(&self, _disk: &Path, _tar: &Path, what: &str) -> Result<(), String> {
        Err(format!("{what}: no VM can be booted here to apply it"))
    }
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

impl ImageStore {
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
            self.pin_locked(load, &chain)?;
        }
        let store = self.layers();
        let record = self.diff_ids();
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
                // A pull leaves out the blobs of layers it found built (and pinned).
                let path = blob.path.as_deref().ok_or_else(|| ArchiveError::Missing {
                    file: blob.name.clone(),
                })?;
                let built = store.build(i + 1, id, diff, parent, path, &dir, applier);
                let _ = std::fs::remove_dir_all(&dir);
                built?;
                // Its DiffID was checked: a later pull naming this blob may skip it (the blob
                // checked against its digest first: an archive's names are not verified).
                if let Some(digest) = &blob.digest {
                    let actual =
                        bootstrap::digest::sha256_file(path).map_err(io_err("reading", path))?;
                    if digest.strip_prefix("sha256:") == Some(actual.as_str()) {
                        // Under the lock: a collection's view of the live layers includes it.
                        let _lock = self.lock()?;
                        record.put(digest, diff)?;
                    }
                }
            }
            size += store.get(id).map_or(0, |r| r.tar_size);
        }
        finish_dir(c, out, size, true)
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
        finish_dir(c, out, size, false)
    }

    /// Adds `ids` to the layers the load in `work` pins; the caller holds the images lock.
    pub(super) fn pin_locked(&self, work: &LoadWork, ids: &[String]) -> Result<(), StoreError> {
        let path = work.pins();
        let mut pins = std::fs::read_to_string(&path).unwrap_or_default();
        for id in ids {
            pins.push_str(id);
            pins.push('\n');
        }
        Ok(std::fs::write(&path, pins).map_err(io_err("writing", &path))?)
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
                Ok(std::fs::rename(out, dir).map_err(io_err("installing the image at", dir))?)
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// Completes a built image's directory at `out`: the config blob as loaded, and the record,
/// with the image's `size` and whether its disk is the top of a chain in the layer store.
fn finish_dir(
    c: &archive::Candidate,
    out: &Path,
    size: u64,
    layered: bool,
) -> Result<(), StoreError> {
    std::fs::create_dir_all(out).map_err(io_err("creating", out))?;
    let config = out.join(CONFIG_FILE);
    std::fs::copy(&c.config_path, &config).map_err(io_err("writing", &config))?;
    let mut f = c.file.clone();
    f.size = size;
    f.layered = layered;
    write_record(&out.join(IMAGE_FILE), &f)
}
