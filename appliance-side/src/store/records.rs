//! Container records: what the appliance knows about each containerVM it created, including the
//! channel secret (never readable by the guest beyond its own config), kept under
//! `$TETHER_HOME/containers/<id>/record.json`.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use base64::Engine as _;
use guestinfo::{ContainerSpec, SessionSpec};
use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::store::atomic::{hex, random, write_atomic_with, Access};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// Base64 of the per-container channel secret.
    pub secret: String,
    /// RFC 3339.
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub tty: bool,
    pub open_stdin: bool,
    /// The image reference as the user gave it.
    #[serde(default)]
    pub image: String,
    /// Everything else docker's create carries (older records have the defaults).
    #[serde(default)]
    pub options: ContainerOptions,
    /// Restarts by its restart policy since it was last started by hand (docker's
    /// RestartCount; on-failure's MaximumRetryCount counts these).
    #[serde(default)]
    pub restart_count: u32,
}

/// A container's configuration beyond its command: what docker's create request carries, with the
/// image's config already merged in. Kept in the record; the VM's config is made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerOptions {
    /// `sha256:...` of the image, when it came from the image store.
    pub image_id: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub hostname: String,
    pub domainname: String,
    pub labels: BTreeMap<String, String>,
    /// Name or number; empty means SIGTERM.
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL; `None` is docker's 10.
    pub stop_timeout: Option<u32>,
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    /// The VM's memory; 0 is the default size.
    pub memory_mb: u32,
    /// The VM's vCPUs; 0 is one.
    pub cpus: u32,
    pub auto_remove: bool,
    /// docker's restart policy name ("", "no", "always", "unless-stopped", "on-failure").
    pub restart_policy: String,
    pub restart_max: u32,
    /// docker's `--ulimit` form, `NAME=SOFT[:HARD]`.
    pub ulimits: Vec<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    /// Rows and columns of the tty at start.
    pub console_size: Option<(u16, u16)>,
    /// How the VM's channel reaches the server: "" (virtio-serial) or "serial" (the COM port on
    /// the server's TCP channel port, as vSphere's network serial port).
    pub transport: String,
    /// Volumes and tmpfs mounts, in the order given.
    pub mounts: Vec<crate::store::volumes::MountOption>,
    /// docker's NetworkMode: "" (the default network), "none", or the first network's name.
    pub network_mode: String,
    /// One endpoint per network the container is on (none with `--network none`).
    pub endpoints: Vec<crate::store::endpoints::Endpoint>,
    /// `-p`: the ports to publish and where.
    pub port_bindings: Vec<crate::store::endpoints::PortBinding>,
    /// `-P`: every exposed port published on a free host port.
    pub publish_all: bool,
    /// The image's EXPOSE and `--expose`, as `PORT/PROTO`.
    pub exposed_ports: Vec<String>,
}

impl Record {
    /// The stop signal as a number (SIGTERM when unset or unknown).
    pub fn stop_signal(&self) -> i32 {
        wire::message::parse_signal(&self.options.stop_signal).unwrap_or(libc::SIGTERM)
    }

    /// Seconds `docker stop` waits before SIGKILL unless the request names a timeout.
    pub fn stop_timeout(&self) -> u32 {
        self.options.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT)
    }

    pub fn secret_bytes(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.secret)
            .unwrap_or_default()
    }
}

/// Options for a new container.
#[derive(Debug, Clone, Default)]
pub struct NewContainer {
    pub name: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub dir: String,
    pub user: String,
    pub tty: bool,
    pub open_stdin: bool,
    pub attach: bool,
    pub image: String,
    pub options: ContainerOptions,
}

/// docker's default grace between the stop signal and SIGKILL, in seconds.
pub const DEFAULT_STOP_TIMEOUT: u32 = 10;

/// Why a record cannot be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("no command given: the image has no Entrypoint or Cmd, and none was given")]
    NoCommand,
    #[error("{0}")]
    BadOption(String),
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse { name: String, id: String },
    #[error("Invalid container name ({0}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")]
    BadName(String),
    #[error("the container store: {0}")]
    Io(#[from] io::Error),
}

/// docker's rule for names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// Creates a container record with a fresh id and secret; returns it and the spec tether runs.
/// A name must be unique: the caller serialises creates and renames (the engine holds a lock).
pub fn create(home: &Home, new: &NewContainer) -> Result<(Record, ContainerSpec), RecordError> {
    if new.args.is_empty() {
        return Err(RecordError::NoCommand);
    }
    let id = hex(&random::<32>());
    let secret = random::<32>();
    let name = match &new.name {
        Some(n) => {
            let n = n.strip_prefix('/').unwrap_or(n);
            if !valid_name(n) {
                return Err(RecordError::BadName(n.to_string()));
            }
            check_name_free(home, n, &id)?;
            n.to_string()
        }
        None => format!("tether_{}", &id[..8]),
    };
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut options = new.options.clone();
    if options.working_dir.is_empty() {
        options.working_dir.clone_from(&new.dir);
    }
    if options.user.is_empty() {
        options.user.clone_from(&new.user);
    }
    let record = Record {
        id: id.clone(),
        name,
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
        created: now,
        path: new.args[0].clone(),
        args: new.args.clone(),
        env: new.env.clone(),
        tty: new.tty,
        open_stdin: new.open_stdin,
        image: new.image.clone(),
        options,
        restart_count: 0,
    };
    let spec = spec_for(&record, new.attach)?;
    let dir = home.container(&id);
    // Owner-only whatever the caller's umask (`appliance create` runs with the user's).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    save(home, &record)?;
    write_config(&dir, &spec)?;
    Ok((record, spec))
}

/// Fails with docker's conflict if another container has `name`.
pub fn check_name_free(home: &Home, name: &str, own_id: &str) -> Result<(), RecordError> {
    match list(home)
        .into_iter()
        .find(|r| r.name == name && r.id != own_id)
    {
        Some(other) => Err(RecordError::NameInUse {
            name: name.to_string(),
            id: other.id,
        }),
        None => Ok(()),
    }
}

/// The config tether runs for this record. `attach`: the main process waits for the first
/// attach before it starts, so an attached client misses none of its output.
pub fn spec_for(record: &Record, attach: bool) -> Result<ContainerSpec, RecordError> {
    let o = &record.options;
    let rlimits = o
        .ulimits
        .iter()
        .map(|u| guestinfo::Rlimit::parse(u).map_err(RecordError::BadOption))
        .collect::<Result<Vec<_>, _>>()?;
    let main = SessionSpec {
        id: record.id.clone(),
        name: record.name.clone(),
        path: record.path.clone(),
        args: record.args.clone(),
        env: record.env.clone(),
        dir: if o.working_dir.is_empty() {
            "/".into()
        } else {
            o.working_dir.clone()
        },
        user: o.user.clone(),
        tty: record.tty,
        attach,
        open_stdin: record.open_stdin,
        stop_signal: if o.stop_signal.is_empty() {
            "SIGTERM".into()
        } else {
            o.stop_signal.clone()
        },
        rlimits,
        cap_drop: o.cap_drop.clone(),
        rows: o.console_size.map_or(0, |(rows, _)| rows),
        cols: o.console_size.map_or(0, |(_, cols)| cols),
        ..Default::default()
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(ContainerSpec {
        id: record.id.clone(),
        name: record.name.clone(),
        debug: 1,
        hostname: non_empty(&o.hostname),
        domainname: non_empty(&o.domainname),
        secret: record.secret_bytes(),
        channel_device: None,
        disk_label: guestinfo::contract::DEFAULT_DISK_LABEL.into(),
        disk_wait_ms: guestinfo::spec::DEFAULT_DISK_WAIT_MS,
        // Tether's own grace at shutdown: the stop timeout, so a `docker stop` that reaches
        // tether gets the same grace docker gives.
        stop_grace_ms: u64::from(record.stop_timeout()) * 1000,
        dns: o.dns.clone(),
        dns_search: o.dns_search.clone(),
        extra_hosts: o.extra_hosts.clone(),
        networks: Default::default(),
        sessions: [(record.id.clone(), main)].into(),
        execs: Default::default(),
        mounts: Default::default(),
    })
}

/// Replaces the stored record (owner-only: it holds the channel secret).
pub fn save(home: &Home, record: &Record) -> Result<(), RecordError> {
    write_atomic_with(
        &home.container(&record.id).join("record.json"),
        &serde_json::to_vec_pretty(record).map_err(io::Error::from)?,
        Access::Owner,
    )?;
    Ok(())
}

/// Renames a container (names stay unique).
pub fn rename(home: &Home, id: &str, new_name: &str) -> Result<Record, RecordError> {
    let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
    if !valid_name(new_name) {
        return Err(RecordError::BadName(new_name.to_string()));
    }
    let mut record = load(home, id).ok_or_else(|| {
        RecordError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no record {id}"),
        ))
    })?;
    check_name_free(home, new_name, id)?;
    record.name = new_name.to_string();
    save(home, &record)?;
    Ok(record)
}

/// Deletes everything the store holds for the container: record, state, logs, its disk.
pub fn remove(home: &Home, id: &str) -> Result<(), RecordError> {
    let dir = home.container(id);
    // Renamed first, so a half-finished removal never looks like a container.
    let doomed = home.containers().join(format!(".removing-{id}"));
    match std::fs::rename(&dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_dir_all(&doomed)?;
    Ok(())
}

/// Writes the config tether reads (`config.vmx`, guestinfo keys), owner-only: it holds the secret.
pub fn write_config(dir: &Path, spec: &ContainerSpec) -> io::Result<()> {
    write_atomic_with(
        &dir.join("config.vmx"),
        guestinfo::spec_to_vmx(spec).as_bytes(),
        Access::Owner,
    )
}

pub fn load(home: &Home, id: &str) -> Option<Record> {
    let bytes = std::fs::read(home.container(id).join("record.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Every record, oldest first.
pub fn list(home: &Home) -> Vec<Record> {
    let mut out: Vec<Record> = std::fs::read_dir(home.containers())
        .into_iter()
        .flatten()
        .flatten()
        // Containers only: maintenance identities (`<id>.cp`) and half-removed ones are not.
        .filter(|e| is_full_id(&e.file_name().to_string_lossy()))
        .filter_map(|e| load(home, &e.file_name().to_string_lossy()))
        .collect();
    out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    out
}

fn is_full_id(reference: &str) -> bool {
    reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Finds a record by full id, unique id prefix, or name (as docker resolves references).
pub fn resolve(home: &Home, reference: &str) -> Option<Record> {
    // A full id (what engines pass) is one file read; names and prefixes need every record,
    // which at 10,000 containers made each exec round trip ~200 ms (`make bench`).
    if is_full_id(reference) {
        if let Some(r) = load(home, reference) {
            return Some(r);
        }
    }
    let all = list(home);
    if let Some(r) = all
        .iter()
        .find(|r| r.id == reference || r.name == reference)
    {
        return Some(r.clone());
    }
    let mut prefixed = all.into_iter().filter(|r| r.id.starts_with(reference));
    let first = prefixed.next()?;
    prefixed.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn resolves_full_id_name_and_unique_prefix_as_docker_does() {
        let dir = TestDir::new("records-resolve");
        let home = dir.home();
        let made: Vec<Record> = (0..20)
            .map(|i| {
                let new = NewContainer {
                    name: Some(format!("web{i}")),
                    args: vec!["/bin/true".into()],
                    ..Default::default()
                };
                create(&home, &new).unwrap().0
            })
            .collect();
        for r in &made {
            assert_eq!(resolve(&home, &r.id).map(|x| x.id), Some(r.id.clone()));
            assert_eq!(resolve(&home, &r.name).map(|x| x.id), Some(r.id.clone()));
        }
        // The shortest prefix of the first id that no other id shares.
        let first = &made[0].id;
        let unique = (1..=64)
            .map(|n| &first[..n])
            .find(|p| made.iter().filter(|r| r.id.starts_with(p)).count() == 1)
            .unwrap();
        assert_eq!(resolve(&home, unique).map(|x| x.id), Some(first.clone()));
        // Some one-character prefix is shared by two ids among 20 (pigeonhole over 16 digits).
        let shared = (0..16)
            .map(|d| format!("{d:x}"))
            .find(|p| made.iter().filter(|r| r.id.starts_with(p.as_str())).count() > 1)
            .unwrap();
        assert!(resolve(&home, &shared).is_none(), "ambiguous prefix");
        assert!(resolve(&home, &"f".repeat(64)).is_none());
        assert!(resolve(&home, "nope").is_none());
    }
}
