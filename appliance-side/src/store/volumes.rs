//! Volumes on disk: `$TETHER_HOME/volumes/<name>/` holds `volume.json` (name, ext4 label,
//! size, docker's labels and options) and `disk.qcow2`, an ext4 filesystem a containerVM gets
//! as an extra disk (VIC's volume VMDK on a datastore). A volume outlives every container that
//! mounts it and the appliance itself. Which containers use a volume is not stored: their
//! records name it ([`MountOption`]).
//!
//! A volume is made whole in `.creating-*` and renamed into place, and renamed to
//! `.removing-*` before it is deleted, so a crash leaves either a whole volume or none;
//! [`VolumeStore::new`] sweeps what a crash left.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::store::atomic::{hex, random, write_atomic};

/// The label docker puts on a volume made without a name.
pub const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";
/// A volume's size unless `--opt size=` says otherwise.
pub const DEFAULT_SIZE: u64 = 1 << 30;
/// The smallest ext4 with a journal worth having.
pub const MIN_SIZE: u64 = 16 << 20;
const RECORD: &str = "volume.json";
const DISK: &str = "disk.qcow2";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// The ext4 label tether finds the volume's disk by: unique among the volumes, at most 16
    /// bytes (`s_volume_name`), so not the name itself.
    pub label: String,
    /// RFC 3339.
    pub created: String,
    /// The filesystem's size (the disk is sparse: it takes what is written).
    pub size_bytes: u64,
    /// docker's labels (`--label`), the anonymous marker among them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// docker's driver options as given (`--opt size=...`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Volume {
    /// Made for one container (an image's VOLUME, `-v /path`): `docker rm -v` and `docker
    /// volume prune` remove it.
    pub fn is_anonymous(&self) -> bool {
        self.labels.contains_key(ANONYMOUS_LABEL)
    }
}

/// What a container mounts, as its record keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    #[default]
    Volume,
    Tmpfs,
}

/// One mount of a container: a volume (by name) or a tmpfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountOption {
    pub kind: MountKind,
    /// The volume's name; empty until an anonymous volume is made for it.
    pub name: String,
    /// The clean, absolute path in the container.
    pub destination: String,
    pub read_only: bool,
    /// Copy the image's files into the volume when it is empty (docker's default; not
    /// `nocopy`).
    pub copy: bool,
    /// Made for this container: `docker rm -v` removes it with the container.
    pub anonymous: bool,
    /// A tmpfs's mount options (`size=...,mode=...`), docker's defaults first.
    pub options: String,
    /// Driver options for a volume this mount creates (`--mount` `volume-opt=size=...`).
    pub create_options: BTreeMap<String, String>,
    /// Labels for a volume this mount creates (`--mount` `volume-label=`).
    pub create_labels: BTreeMap<String, String>,
}

/// A volume to make.
#[derive(Debug, Clone, Default)]
pub struct NewVolume {
    /// `None`: an anonymous volume, named by a random id.
    pub name: Option<String>,
    pub size_bytes: u64,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeStoreError {
    #[error("volume name is too short, names should be at least two alphanumeric characters")]
    NameTooShort,
    #[error(
        "{0:?} includes invalid characters for a local volume name, only \
         \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, \
         use absolute path"
    )]
    BadName(String),
    #[error("no such volume")]
    NotFound,
    #[error("making the volume's disk: {0}")]
    Disk(io::Error),
    #[error("the volume store ({}): {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &std::path::Path) -> impl FnOnce(io::Error) -> VolumeStoreError + '_ {
    move |source| VolumeStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// docker's rule for local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn check_name(name: &str) -> Result<(), VolumeStoreError> {
    if name.len() == 1 {
        return Err(VolumeStoreError::NameTooShort);
    }
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VolumeStoreError::BadName(name.to_string()))
    }
}

pub struct VolumeStore {
    home: Home,
    /// One create or remove at a time: labels and names stay unique.
    lock: Mutex<()>,
}

impl VolumeStore {
    /// The store under `home`, with what an interrupted create or remove left swept away.
    pub fn new(home: Home) -> Self {
        let store = Self {
            home,
            lock: Mutex::new(()),
        };
        for entry in std::fs::read_dir(store.root())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".creating-") || name.starts_with(".removing-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        store
    }

    fn root(&self) -> PathBuf {
        self.home.root().join("volumes")
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root().join(name)
    }

    /// The volume's disk file.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.dir(name).join(DISK)
    }

    /// Bytes the volume's disk takes on the host.
    pub fn disk_usage(&self, name: &str) -> u64 {
        std::fs::metadata(self.disk(name)).map_or(0, |m| m.blocks() * 512)
    }

    pub fn get(&self, name: &str) -> Option<Volume> {
        if check_name(name).is_err() {
            return None;
        }
        let bytes = std::fs::read(self.dir(name).join(RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every volume, by name.
    pub fn list(&self) -> Vec<Volume> {
        let mut out: Vec<Volume> = std::fs::read_dir(self.root())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.get(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Makes the volume, or returns the one of that name (docker's create is idempotent);
    /// `true` when it is new.
    pub fn create(&self, new: &NewVolume) -> Result<(Volume, bool), VolumeStoreError> {
        let name = match &new.name {
            Some(n) => {
                check_name(n)?;
                n.clone()
            }
            None => hex(&random::<32>()),
        };
        let _guard = self.lock.lock().expect("volume store lock");
        if let Some(existing) = self.get(&name) {
            return Ok((existing, false));
        }
        let root = self.root();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(io_at(&root))?;
        let mut labels = new.labels.clone();
        if new.name.is_none() {
            labels.insert(ANONYMOUS_LABEL.into(), String::new());
        }
        let volume = Volume {
            label: self.fresh_label(),
            created: crate::store::logs::now_rfc3339().0,
            size_bytes: new.size_bytes,
            labels,
            options: new.options.clone(),
            name,
        };
        let work = root.join(format!(".creating-{}", hex(&random::<8>())));
        let made = self.build(&work, &volume);
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        made?;
        Ok((volume, true))
    }

    fn build(&self, work: &std::path::Path, volume: &Volume) -> Result<(), VolumeStoreError> {
        std::fs::create_dir(work).map_err(io_at(work))?;
        bootstrap::disk::empty_ext4_qcow2(&work.join(DISK), &volume.label, volume.size_bytes)
            .map_err(VolumeStoreError::Disk)?;
        let record = work.join(RECORD);
        let json = serde_json::to_vec_pretty(volume).map_err(io::Error::from);
        json.and_then(|j| write_atomic(&record, &j))
            .map_err(io_at(&record))?;
        let dir = self.dir(&volume.name);
        std::fs::rename(work, &dir).map_err(io_at(&dir))
    }

    /// A label no other volume has: `tv` and 14 random hex digits (16 bytes, ext4's limit).
    fn fresh_label(&self) -> String {
        let taken: Vec<String> = self.list().into_iter().map(|v| v.label).collect();
        loop {
            let label = format!("tv{}", &hex(&random::<7>()));
            if !taken.contains(&label) {
                return label;
            }
        }
    }

    /// Deletes the volume and its disk; the bytes the disk took.
    pub fn remove(&self, name: &str) -> Result<u64, VolumeStoreError> {
        let _guard = self.lock.lock().expect("volume store lock");
        if self.get(name).is_none() {
            return Err(VolumeStoreError::NotFound);
        }
        let freed = self.disk_usage(name);
        let dir = self.dir(name);
        let doomed = self
            .root()
            .join(format!(".removing-{name}-{}", hex(&random::<4>())));
        std::fs::rename(&dir, &doomed).map_err(io_at(&dir))?;
        std::fs::remove_dir_all(&doomed).map_err(io_at(&doomed))?;
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn names_follow_dockers_rule_with_its_words() {
        for good in ["ab", "data", "my_vol.1-x", "0abc"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        assert_eq!(
            check_name("a").unwrap_err().to_string(),
            "volume name is too short, names should be at least two alphanumeric characters"
        );
        for bad in ["", "-ab", ".ab", "a/b", "a b", "../x", "a:b"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(
                e.contains("includes invalid characters for a local volume name")
                    && e.contains("use absolute path"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_volume_is_made_once_listed_found_and_removed_whole() {
        let dir = TestDir::new("volumes-store");
        let store = VolumeStore::new(dir.home());
        let new = NewVolume {
            name: Some("data".into()),
            size_bytes: 64 << 20,
            labels: [("team".to_string(), "core".to_string())].into(),
            options: [("size".to_string(), "64m".to_string())].into(),
        };
        let (v, created) = store.create(&new).unwrap();
        assert!(created);
        assert_eq!(v.label.len(), 16);
        assert!(v.label.starts_with("tv"));
        assert!(!v.is_anonymous());
        // The disk: a qcow2 of 64 MiB holding an ext4 labelled with the volume's label.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(store.disk("data"))
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert_eq!(info["virtual-size"], 64u64 << 20);
        assert!(
            store.disk_usage("data") < 8 << 20,
            "sparse: {}",
            store.disk_usage("data")
        );
        // Made again: the same volume, not a second one.
        let (again, created) = store.create(&new).unwrap();
        assert!(!created);
        assert_eq!(again, v);
        let (anon, _) = store
            .create(&NewVolume {
                size_bytes: MIN_SIZE,
                ..Default::default()
            })
            .unwrap();
        assert!(anon.is_anonymous());
        assert_eq!(anon.name.len(), 64);
        assert_ne!(anon.label, v.label);
        let names: Vec<String> = store.list().into_iter().map(|v| v.name).collect();
        let mut want = vec![anon.name.clone(), "data".to_string()];
        want.sort();
        assert_eq!(names, want);
        // A new store on the same home (an appliance restart) finds them.
        let store = VolumeStore::new(dir.home());
        assert_eq!(store.get("data"), Some(v));
        assert!(store.remove("data").unwrap() > 0);
        assert!(store.get("data").is_none());
        assert!(matches!(
            store.remove("data"),
            Err(VolumeStoreError::NotFound)
        ));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(&anon.name)]);
    }

    #[test]
    fn a_failed_create_leaves_nothing_and_a_crash_is_swept() {
        let dir = TestDir::new("volumes-fail");
        let store = VolumeStore::new(dir.home());
        // Too small for mkfs.ext4: the tool's error, no volume, no work directory.
        let e = store
            .create(&NewVolume {
                name: Some("tiny".into()),
                size_bytes: 4096,
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.to_string().contains("mkfs.ext4"), "{e}");
        assert!(store.get("tiny").is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("volumes"))
                .unwrap()
                .count(),
            0
        );
        std::fs::create_dir_all(dir.path().join("volumes/.creating-x/sub")).unwrap();
        std::fs::create_dir_all(dir.path().join("volumes/.removing-y")).unwrap();
        let _store = VolumeStore::new(dir.home());
        assert_eq!(
            std::fs::read_dir(dir.path().join("volumes"))
                .unwrap()
                .count(),
            0
        );
    }
}
