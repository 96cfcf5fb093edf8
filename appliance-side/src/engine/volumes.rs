//! Volumes as docker's daemon owns them: `docker volume create/ls/inspect/rm/prune` with its
//! rules and words, the volumes a container create asks for (made when missing, anonymous ones
//! named), the mounts and extra disks a start gives the VM, and `docker rm -v`.
//!
//! A volume is in use while any container's record names it (docker's reference, stopped
//! containers too): it cannot be removed then. On top of docker's rules, a volume's disk has
//! one writer (a datastore disk, as in VIC; ext4 is not a cluster filesystem), so a container
//! cannot start while another container that mounts the same volume is running.

use std::collections::BTreeMap;
use std::path::PathBuf;

use guestinfo::{CopyMode, MountSource, MountSpec};

use crate::engine::events::EngineEvent;
use crate::engine::filters::Filters;
use crate::engine::maintenance::maintenance_id;
use crate::engine::{Engine, EngineError};
use crate::store::records::Record;
use crate::store::volumes::{
    MountKind, MountOption, NewVolume, Volume, VolumeStoreError, DEFAULT_SIZE, MIN_SIZE,
};

/// The driver options `docker volume create --opt` takes here.
const OPTIONS: [&str; 1] = ["size"];

/// A size as docker's `units.RAMInBytes` reads it: a number, an optional `k`/`m`/`g`/`t`/`p`
/// (powers of 1024), an optional `i` and `b`.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let power = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    Some((number * 1024f64.powi(power)) as u64)
}

/// What a volume create asks for, checked: only `size`, at least [`MIN_SIZE`].
fn new_volume(
    name: Option<String>,
    options: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
) -> Result<NewVolume, EngineError> {
    let shown = name.clone().unwrap_or_default();
    let bad = |what: String| EngineError::BadRequest(format!("create {shown}: {what}"));
    if let Some(unknown) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
        return Err(bad(format!(
            "invalid option: {unknown:?} (a volume here is an ext4 disk; its one option is size)"
        )));
    }
    let size_bytes = match options.get("size") {
        None => DEFAULT_SIZE,
        Some(text) => {
            let size = parse_size(text).ok_or_else(|| bad(format!("invalid size: '{text}'")))?;
            if size < MIN_SIZE {
                return Err(bad(format!(
                    "size {text} is too small: a volume's ext4 needs at least {} MiB",
                    MIN_SIZE >> 20
                )));
            }
            size
        }
    };
    Ok(NewVolume {
        name,
        size_bytes,
        labels,
        options,
    })
}

fn store_error(name: &str, op: &str, e: VolumeStoreError) -> EngineError {
    let message = format!("{op} {name}: {e}");
    match e {
        VolumeStoreError::NotFound => EngineError::NotFound(message),
        VolumeStoreError::NameTooShort | VolumeStoreError::BadName(_) => {
            EngineError::BadRequest(message)
        }
        VolumeStoreError::Disk(_) | VolumeStoreError::Io { .. } => EngineError::Internal(message),
    }
}

/// Whether a volume's labels pass docker's `label=` (all given) and `label!=` (none given)
/// filters, `K` or `K=V` each.
fn labels_pass(labels: &BTreeMap<String, String>, want: &[String], refuse: &[String]) -> bool {
    let has = |f: &String| match f.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(f),
    };
    want.iter().all(has) && !refuse.iter().any(has)
}

impl Engine {
    fn volume_event(&self, action: &str, name: &str) {
        self.events.emit(EngineEvent {
            kind: "volume",
            action: action.to_string(),
            id: name.to_string(),
            attributes: [("driver".to_string(), "local".to_string())].into(),
            time_nano: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        });
    }

    /// `docker volume create`: the new volume, or the existing one of that name.
    pub fn volume_create(
        &self,
        name: Option<String>,
        driver: &str,
        options: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume, EngineError> {
        let name = name.filter(|n| !n.is_empty());
        if !driver.is_empty() && driver != "local" {
            return Err(super::mounts::unknown_driver(
                name.as_deref().unwrap_or_default(),
                driver,
            ));
        }
        let new = new_volume(name, options, labels)?;
        let _refs = self.volume_refs.lock().expect("volume refs lock");
        self.make_volume(&new)
    }

    fn make_volume(&self, new: &NewVolume) -> Result<Volume, EngineError> {
        let shown = new.name.clone().unwrap_or_default();
        let (volume, created) = self
            .volumes
            .create(new)
            .map_err(|e| store_error(&shown, "create", e))?;
        if created {
            tracing::info!(volume = %volume.name, label = %volume.label, size = volume.size_bytes, "volume created");
            self.volume_event("create", &volume.name);
        }
        Ok(volume)
    }

    /// `docker volume inspect`.
    pub fn volume(&self, name: &str) -> Result<Volume, EngineError> {
        self.volumes
            .get(name)
            .ok_or_else(|| store_error(name, "get", VolumeStoreError::NotFound))
    }

    /// Bytes the volume's disk takes on this host.
    pub fn volume_usage(&self, name: &str) -> u64 {
        self.volumes.disk_usage(name)
    }

    /// The volume's disk file.
    pub fn volume_disk(&self, name: &str) -> PathBuf {
        self.volumes.disk(name)
    }

    /// The containers whose records mount the volume, oldest first.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|r| mounts_volume(r, name))
            .map(|r| r.id)
            .collect()
    }

    /// `docker volume ls`, with docker's `dangling`, `name`, `driver` and `label` filters.
    pub fn volume_list(&self, filters: &str) -> Result<Vec<Volume>, EngineError> {
        let f = Filters::parse_keys(filters, &["dangling", "name", "driver", "label"])?;
        let dangling = f.values("dangling");
        if let Some(bad) = dangling
            .iter()
            .find(|d| !matches!(d.as_str(), "true" | "false" | "1" | "0"))
        {
            return Err(EngineError::BadRequest(format!(
                "invalid filter 'dangling={bad}'"
            )));
        }
        let records = self.containers();
        Ok(self
            .volumes
            .list()
            .into_iter()
            .filter(|v| {
                let used = records.iter().any(|r| mounts_volume(r, &v.name));
                let any = |key: &str, pass: &dyn Fn(&String) -> bool| {
                    let values = f.values(key);
                    values.is_empty() || values.iter().any(pass)
                };
                any("dangling", &|d| (d == "true" || d == "1") != used)
                    && any("name", &|n| v.name.contains(n.as_str()))
                    && any("driver", &|d| d == "local")
                    && labels_pass(&v.labels, f.values("label"), &[])
            })
            .collect())
    }

    /// What the backend keeps of a volume (vSphere: its disk on the datastore) removed, before
    /// the volume goes from the store: a failure keeps the volume, to be removed again.
    fn remove_backend_copy(&self, name: &str) -> Result<(), EngineError> {
        let Some(b) = self.backend.as_ref() else {
            return Ok(());
        };
        b.remove_volume(&self.volumes.disk(name)).map_err(|e| {
            EngineError::Internal(format!(
                "remove {name}: the backend's copy of its disk: {e}"
            ))
        })
    }

    /// `docker volume rm`: refused (409) while a container mounts it; `force` only makes a
    /// missing volume no error, as dockerd's.
    pub fn volume_remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        let _refs = self.volume_refs.lock().expect("volume refs lock");
        if self.volumes.get(name).is_none() {
            if force {
                return Ok(());
            }
            return Err(store_error(name, "get", VolumeStoreError::NotFound));
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return Err(EngineError::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(", ")
            )));
        }
        self.remove_backend_copy(name)?;
        self.volumes
            .remove(name)
            .map_err(|e| store_error(name, "remove", e))?;
        tracing::info!(volume = %name, "volume removed");
        self.volume_event("destroy", name);
        Ok(())
    }

    /// `docker volume prune`: unused anonymous volumes (every unused one with `all=true`), by
    /// `label`/`label!`; the names removed and the bytes their disks took.
    pub fn volume_prune(&self, filters: &str) -> Result<(Vec<String>, u64), EngineError> {
        let f = Filters::parse_keys(filters, &["label", "label!", "all"])?;
        let all = f.values("all").iter().any(|a| a == "true" || a == "1");
        let _refs = self.volume_refs.lock().expect("volume refs lock");
        let records = self.containers();
        let mut removed = Vec::new();
        let mut reclaimed = 0;
        for v in self.volumes.list() {
            let unused = !records.iter().any(|r| mounts_volume(r, &v.name));
            if unused
                && (all || v.is_anonymous())
                && labels_pass(&v.labels, f.values("label"), f.values("label!"))
            {
                if let Err(e) = self.remove_backend_copy(&v.name) {
                    tracing::warn!(volume = %v.name, "prune: {e}");
                    continue;
                }
                match self.volumes.remove(&v.name) {
                    Ok(bytes) => {
                        reclaimed += bytes;
                        self.volume_event("destroy", &v.name);
                        removed.push(v.name);
                    }
                    Err(e) => tracing::warn!(volume = %v.name, "prune: {e}"),
                }
            }
        }
        Ok((removed, reclaimed))
    }

    /// The volumes a new container's mounts need: missing named ones made (with the mount's
    /// options), anonymous ones made and named. Returns the anonymous ones made, for
    /// [`Engine::discard_volumes`] should the container not be made after all. The caller holds
    /// `volume_refs` until the record exists.
    pub(crate) fn provide_volumes(
        &self,
        mounts: &mut [MountOption],
    ) -> Result<Vec<String>, EngineError> {
        let mut made = Vec::new();
        for m in mounts.iter_mut().filter(|m| m.kind == MountKind::Volume) {
            let name = (!m.anonymous).then(|| m.name.clone());
            if name
                .as_deref()
                .is_some_and(|n| self.volumes.get(n).is_some())
            {
                continue;
            }
            let new = new_volume(name, m.create_options.clone(), m.create_labels.clone())
                .and_then(|new| self.make_volume(&new));
            match new {
                Ok(v) if m.anonymous => {
                    m.name.clone_from(&v.name);
                    made.push(v.name);
                }
                Ok(_) => {}
                Err(e) => {
                    self.discard_volumes(&made);
                    return Err(e);
                }
            }
        }
        Ok(made)
    }

    /// Removes volumes made for a container that was not made.
    pub(crate) fn discard_volumes(&self, names: &[String]) {
        for name in names {
            if let Err(e) = self.volumes.remove(name) {
                tracing::warn!(volume = %name, "removing an unused anonymous volume: {e}");
            }
        }
    }

    /// `docker rm -v` (and `--rm`): the container's anonymous volumes that no other container
    /// mounts. Called once its record is gone.
    pub(crate) fn remove_anonymous_volumes(&self, rec: &Record) {
        let _refs = self.volume_refs.lock().expect("volume refs lock");
        for m in rec
            .options
            .mounts
            .iter()
            .filter(|m| m.anonymous && !m.name.is_empty())
        {
            if !self.volume_users(&m.name).is_empty() {
                continue;
            }
            if let Err(e) = self.remove_backend_copy(&m.name) {
                tracing::warn!(volume = %m.name, "removing an anonymous volume: {e}");
                continue;
            }
            if self.volumes.remove(&m.name).is_ok() {
                self.volume_event("destroy", &m.name);
            }
        }
    }

    /// What a start gives the VM: tether's mounts and the volumes' disks. A volume whose disk
    /// is gone is an error naming the volume, its label and the path.
    pub(crate) fn boot_mounts(
        &self,
        rec: &Record,
    ) -> Result<(BTreeMap<String, MountSpec>, Vec<PathBuf>), EngineError> {
        let mut mounts = BTreeMap::new();
        let mut disks = Vec::new();
        for m in &rec.options.mounts {
            match m.kind {
                MountKind::Volume => {
                    let v = self.volume(&m.name).map_err(|_| {
                        EngineError::NotFound(format!(
                            "volume {} of container {} no longer exists",
                            m.name, rec.name
                        ))
                    })?;
                    let disk = self.volumes.disk(&v.name);
                    if !disk.exists() {
                        return Err(EngineError::Internal(format!(
                            "volume {} (disk label {:?}): its disk {} is missing",
                            v.name,
                            v.label,
                            disk.display()
                        )));
                    }
                    let copy = if m.copy {
                        CopyMode::New
                    } else {
                        CopyMode::Never
                    };
                    let spec = MountSpec::volume(&v.label, &m.destination, m.read_only, copy);
                    mounts.insert(v.name.clone(), spec);
                    disks.push(disk);
                }
                MountKind::Tmpfs => {
                    let spec = MountSpec {
                        source: MountSource::Tmpfs,
                        destination: m.destination.clone(),
                        mode: m.options.clone(),
                        copy: CopyMode::Never,
                    };
                    mounts.insert(format!("tmpfs:{}", m.destination), spec);
                }
            }
        }
        Ok((mounts, disks))
    }

    /// A start refused before its VM was launched: a `--rm` container goes, with its anonymous
    /// volumes, as dockerd removes an AutoRemove container whose start failed.
    pub(crate) fn start_refused(&self, rec: &Record, e: EngineError) -> EngineError {
        if rec.options.auto_remove {
            if let Err(rm) = self.remove_now(rec, true) {
                tracing::warn!(container = %rec.id, "--rm after a refused start: {rm}");
            }
        }
        e
    }

    /// One writer per volume disk: refused (409) while another container that mounts one of
    /// `rec`'s volumes is running or its VM is still up. The caller holds `volume_starts` from
    /// here until the VM it launches is watched.
    pub(crate) fn check_single_writer(&self, rec: &Record) -> Result<(), EngineError> {
        let names: Vec<&str> = rec
            .options
            .mounts
            .iter()
            .filter(|m| m.kind == MountKind::Volume)
            .map(|m| m.name.as_str())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        for other in self.containers().into_iter().filter(|o| o.id != rec.id) {
            let Some(name) = names.iter().find(|n| mounts_volume(&other, n)) else {
                continue;
            };
            if self.holds_its_disks(&other) {
                return Err(EngineError::Conflict(format!(
                    "volume {name} is in use by running container {}: a volume's disk has one \
                     writer, so only one running container can mount it; stop that container \
                     first",
                    other.id
                )));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Whether the container's VM may still have its disks open: its main process runs, its
    /// VM process is up, or (a VM that is no process here, vSphere) its VM is powered on.
    fn holds_its_disks(&self, rec: &Record) -> bool {
        // A stopped container's disk and volumes may be up in a `docker cp` VM.
        if self.vms.pid(&rec.id).is_some()
            || self.vms.pid(&maintenance_id(&rec.id)).is_some()
            || self.is_running(&rec.id)
        {
            return true;
        }
        match self.backend.as_ref().filter(|b| !b.runs_processes()) {
            Some(b) => b
                .vm_on(&self.home().container(&rec.id))
                .unwrap_or_else(|e| {
                    tracing::warn!(container = %rec.id, "the VM's power state: {e}");
                    true
                }),
            None => false,
        }
    }
}

fn mounts_volume(rec: &Record, name: &str) -> bool {
    rec.options
        .mounts
        .iter()
        .any(|m| m.kind == MountKind::Volume && m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_dockers_units_do() {
        for (text, want) in [
            ("1024", Some(1024)),
            ("64m", Some(64 << 20)),
            ("64MiB", Some(64 << 20)),
            ("2g", Some(2 << 30)),
            ("1.5G", Some(3 << 29)),
            ("10 kb", Some(10 << 10)),
            ("lots", None),
            ("5x", None),
        ] {
            assert_eq!(parse_size(text), want, "{text}");
        }
    }

    #[test]
    fn create_options_are_checked_with_the_name_in_the_error() {
        let opts = |k: &str, v: &str| [(k.to_string(), v.to_string())].into();
        let e = new_volume(Some("v".into()), opts("type", "nfs"), BTreeMap::new()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("create v: invalid option: \"type\""),
            "{e}"
        );
        let e = new_volume(Some("v".into()), opts("size", "1m"), BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "create v: size 1m is too small: a volume's ext4 needs at least 16 MiB"
        );
        let e = new_volume(Some("v".into()), opts("size", "big"), BTreeMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "create v: invalid size: 'big'");
        let n = new_volume(None, BTreeMap::new(), BTreeMap::new()).unwrap();
        assert_eq!(n.size_bytes, DEFAULT_SIZE);
    }

    #[test]
    fn label_filters_take_keys_and_pairs() {
        let labels: BTreeMap<String, String> = [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), String::new()),
        ]
        .into();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(labels_pass(&labels, &s(&["a", "a=1", "b"]), &[]));
        assert!(!labels_pass(&labels, &s(&["a=2"]), &[]));
        assert!(!labels_pass(&labels, &[], &s(&["b"])));
        assert!(labels_pass(&labels, &[], &s(&["c", "a=2"])));
    }
}
