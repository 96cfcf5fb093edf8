//! Container records: what the appliance knows about each containerVM it created, including the
//! channel secret (never readable by the guest beyond its own config), kept under
//! `$TETHER_HOME/containers/<id>/record.json`.

use std::io;
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
    #[serde(default)]
    pub image: String,
}

impl Record {
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
}

/// Creates a container record with a fresh id and secret; returns it and the spec tether runs.
pub fn create(home: &Home, new: &NewContainer) -> io::Result<(Record, ContainerSpec)> {
    if new.args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given",
        ));
    }
    let id = hex(&random::<32>());
    let secret = random::<32>();
    let name = new
        .name
        .clone()
        .unwrap_or_else(|| format!("tether_{}", &id[..8]));
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let record = Record {
        id: id.clone(),
        name: name.clone(),
        secret: base64::engine::general_purpose::STANDARD.encode(secret),
        created: now,
        path: new.args[0].clone(),
        args: new.args.clone(),
        env: new.env.clone(),
        tty: new.tty,
        open_stdin: new.open_stdin,
        image: new.image.clone(),
    };
    let main = SessionSpec {
        id: id.clone(),
        name: name.clone(),
        path: new.args[0].clone(),
        args: new.args.clone(),
        env: new.env.clone(),
        dir: if new.dir.is_empty() {
            "/".into()
        } else {
            new.dir.clone()
        },
        user: new.user.clone(),
        tty: new.tty,
        attach: new.attach,
        open_stdin: new.open_stdin,
        stop_signal: "SIGTERM".into(),
        ..Default::default()
    };
    let spec = ContainerSpec {
        id: id.clone(),
        name,
        debug: 1,
        hostname: None,
        domainname: None,
        secret: secret.to_vec(),
        channel_device: None,
        disk_label: guestinfo::contract::DEFAULT_DISK_LABEL.into(),
        disk_wait_ms: guestinfo::spec::DEFAULT_DISK_WAIT_MS,
        stop_grace_ms: guestinfo::spec::DEFAULT_STOP_GRACE_MS,
        dns: vec![],
        dns_search: vec![],
        sessions: [(id.clone(), main)].into(),
        execs: Default::default(),
    };
    let dir = home.container(&id);
    std::fs::create_dir_all(&dir)?;
    // Both hold the channel secret: readable by the appliance's user only.
    write_atomic_with(
        &dir.join("record.json"),
        &serde_json::to_vec_pretty(&record)?,
        Access::Owner,
    )?;
    write_config(&dir, &spec)?;
    Ok((record, spec))
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

    #[test]
    fn resolves_full_id_name_and_unique_prefix_as_docker_does() {
        let root = std::env::temp_dir().join(format!("records-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let home = Home::at(&root);
        std::fs::create_dir_all(home.containers()).unwrap();
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
        let _ = std::fs::remove_dir_all(&root);
    }
}
