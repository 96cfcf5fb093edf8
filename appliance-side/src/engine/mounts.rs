//! The mounts a create request asks for, as dockerd reads them (`daemon/volume/mounts`'s Linux
//! parser and `registerMountPoints`), to the container's mount list:
//!
//! * `HostConfig.Binds` (`-v NAME:PATH[:ro|rw|nocopy,...]`, `-v PATH`): a volume, named or
//!   anonymous. A host path as the source is refused: a containerVM shares no filesystem with
//!   the host, so there is nothing a bind could show.
//! * `HostConfig.Mounts` (`--mount type=volume|tmpfs,...`); `type=bind` refused likewise.
//! * `HostConfig.Tmpfs` (`--tmpfs PATH[:OPTIONS]`).
//! * `Config.Volumes` and the image's `VOLUME`s: an anonymous volume at each path nothing else
//!   is mounted on.
//!
//! Errors are dockerd's words (`invalid volume specification: '...'`, `Duplicate mount point:
//! ...`, `invalid mount config for type "volume": ...`), all 400.

use serde_json::Value;

use crate::engine::json::string_map;
use crate::engine::EngineError;
use crate::store::images::ImageConfig;
use crate::store::volumes::{check_name, MountKind, MountOption};

/// The options every tmpfs gets before its own, as dockerd gives them.
const TMPFS_DEFAULTS: &str = "rw,noexec,nosuid,nodev";

/// Mode words dockerd's Linux parser takes in `-v`, by category (one of each at most).
const RW_MODES: [&str; 2] = ["ro", "rw"];
const LABEL_MODES: [&str; 2] = ["z", "Z"];
const PROPAGATION_MODES: [&str; 6] = [
    "private", "rprivate", "slave", "rslave", "shared", "rshared",
];
const COPY_MODES: [&str; 1] = ["nocopy"];
const CONSISTENCY_MODES: [&str; 3] = ["consistent", "cached", "delegated"];

fn bad(message: String) -> EngineError {
    EngineError::BadRequest(message)
}

/// Why a bind of a host path cannot be: said the same way for `-v` and `--mount type=bind`.
fn bind_refused(what: &str) -> EngineError {
    bad(format!(
        "bind mounts of host paths are not supported ({what}): a containerVM shares no \
         filesystem with the host; use a named volume instead (-v NAME:PATH)"
    ))
}

/// `path.Clean` of an absolute path.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for element in path.split('/') {
        match element {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            e => out.push(e),
        }
    }
    format!("/{}", out.join("/"))
}

/// dockerd's target checks, with its words; the clean path.
fn target(kind: &str, target: &str) -> Result<String, String> {
    let config = |e: &str| format!("invalid mount config for type \"{kind}\": {e}");
    if target.is_empty() {
        return Err(config("field Target must not be empty"));
    }
    if !target.starts_with('/') {
        return Err(config(&format!(
            "invalid mount path: '{target}' mount path must be absolute"
        )));
    }
    let cleaned = clean(target);
    if cleaned == "/" {
        return Err(config("invalid specification: destination can't be '/'"));
    }
    Ok(cleaned)
}

/// Whether `mode` is a valid `-v` mode (each word known, one of each category).
fn valid_mode(mode: &str) -> bool {
    if mode.is_empty() {
        return true;
    }
    let categories: [&[&str]; 5] = [
        &RW_MODES,
        &LABEL_MODES,
        &PROPAGATION_MODES,
        &COPY_MODES,
        &CONSISTENCY_MODES,
    ];
    let mut counts = [0usize; 5];
    for word in mode.split(',') {
        match categories.iter().position(|c| c.contains(&word)) {
            Some(i) => counts[i] += 1,
            None => return false,
        }
    }
    counts.iter().all(|&n| n <= 1)
}

/// One `-v` entry (dockerd's `ParseMountRaw`).
fn parse_bind(raw: &str) -> Result<MountOption, EngineError> {
    let invalid = || bad(format!("invalid volume specification: '{raw}'"));
    let parts: Vec<&str> = raw.splitn(4, ':').collect();
    if parts[0].is_empty() {
        return Err(invalid());
    }
    let (source, dest, mode) = match parts.as_slice() {
        [dest] => ("", *dest, ""),
        [_, second] if valid_mode(second) => return Err(invalid()),
        [source, dest] => (*source, *dest, ""),
        [source, dest, mode] => (*source, *dest, *mode),
        _ => return Err(invalid()),
    };
    if !valid_mode(mode) {
        return Err(bad(format!("invalid mode: {mode}")));
    }
    if source.starts_with('/') {
        return Err(bind_refused(raw));
    }
    let destination = target("volume", dest)
        .map_err(|e| bad(format!("invalid volume specification: '{raw}': {e}")))?;
    let words: Vec<&str> = mode.split(',').collect();
    let option = MountOption {
        kind: MountKind::Volume,
        name: source.to_string(),
        destination,
        read_only: words.contains(&"ro"),
        copy: !words.contains(&"nocopy"),
        anonymous: source.is_empty(),
        ..Default::default()
    };
    check_volume_name(&option)?;
    Ok(option)
}

fn check_volume_name(option: &MountOption) -> Result<(), EngineError> {
    if option.anonymous {
        return Ok(());
    }
    check_name(&option.name).map_err(|e| bad(format!("create {}: {e}", option.name)))
}

/// One `HostConfig.Mounts` entry (`--mount`).
fn parse_mount(m: &Value) -> Result<MountOption, EngineError> {
    let kind = m["Type"].as_str().unwrap_or_default();
    let config = |e: &str| bad(format!("invalid mount config for type \"{kind}\": {e}"));
    let source = m["Source"].as_str().unwrap_or_default();
    let read_only = m["ReadOnly"].as_bool().unwrap_or(false);
    for (field, for_kind) in [
        ("BindOptions", "bind"),
        ("VolumeOptions", "volume"),
        ("TmpfsOptions", "tmpfs"),
    ] {
        if !m[field].is_null() && kind != for_kind {
            return Err(config(&format!("field {field} must not be specified")));
        }
    }
    match kind {
        "bind" => Err(bind_refused(&format!("type=bind,source={source}"))),
        "volume" => {
            let destination =
                target(kind, m["Target"].as_str().unwrap_or_default()).map_err(bad)?;
            let options = &m["VolumeOptions"];
            if !options["Subpath"].as_str().unwrap_or_default().is_empty() {
                return Err(config("a volume subpath is not supported by a containerVM"));
            }
            let driver = options["DriverConfig"]["Name"].as_str().unwrap_or_default();
            if !driver.is_empty() && driver != "local" {
                return Err(unknown_driver(source, driver));
            }
            let option = MountOption {
                kind: MountKind::Volume,
                name: source.to_string(),
                destination,
                read_only,
                copy: !options["NoCopy"].as_bool().unwrap_or(false),
                anonymous: source.is_empty(),
                create_options: string_map(&options["DriverConfig"]["Options"]),
                create_labels: string_map(&options["Labels"]),
                ..Default::default()
            };
            check_volume_name(&option)?;
            Ok(option)
        }
        "tmpfs" => {
            let destination =
                target(kind, m["Target"].as_str().unwrap_or_default()).map_err(bad)?;
            if !source.is_empty() {
                return Err(config("field Source must not be specified"));
            }
            let mut options = TMPFS_DEFAULTS.to_string();
            if read_only {
                options.push_str(",ro");
            }
            let o = &m["TmpfsOptions"];
            if let Some(mode) = o["Mode"].as_u64().filter(|m| *m != 0) {
                options.push_str(&format!(",mode={mode:o}"));
            }
            if let Some(size) = o["SizeBytes"].as_i64().filter(|s| *s != 0) {
                if size < 0 {
                    return Err(config("tmpfs size must be positive"));
                }
                options.push_str(&format!(",size={size}"));
            }
            tmpfs(destination, options)
        }
        "" => Err(config("mount type unknown")),
        "npipe" | "cluster" | "image" => Err(config("mount type not supported by a containerVM")),
        _ => Err(config("mount type unknown")),
    }
}

/// docker's words for a driver it does not have.
pub fn unknown_driver(name: &str, driver: &str) -> EngineError {
    EngineError::NotFound(format!(
        "create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found \
         (this engine has the local driver only: volumes are ext4 disks)"
    ))
}

/// A tmpfs whose options tether will take (checked by the same rules as its decoder).
fn tmpfs(destination: String, options: String) -> Result<MountOption, EngineError> {
    let spec = guestinfo::MountSpec {
        source: guestinfo::MountSource::Tmpfs,
        destination: destination.clone(),
        mode: options.clone(),
        copy: guestinfo::CopyMode::Never,
    };
    spec.check()
        .map_err(|e| bad(format!("invalid tmpfs options for {destination}: {e}")))?;
    Ok(MountOption {
        kind: MountKind::Tmpfs,
        destination,
        options,
        ..Default::default()
    })
}

/// Adds a mount unless its destination is taken, or its volume mounted already.
fn add(option: MountOption, out: &mut Vec<MountOption>) -> Result<(), EngineError> {
    if out.iter().any(|o| o.destination == option.destination) {
        return Err(bad(format!(
            "Duplicate mount point: {}",
            option.destination
        )));
    }
    if let Some(other) = out
        .iter()
        .find(|o| o.kind == MountKind::Volume && !o.name.is_empty() && o.name == option.name)
    {
        return Err(bad(format!(
            "volume {} is mounted at both {} and {}: a containerVM gets a volume's disk once, \
             so it can be mounted at one path only",
            option.name, other.destination, option.destination
        )));
    }
    out.push(option);
    Ok(())
}

/// Every mount a create request asks for, in dockerd's order: binds, mounts, tmpfs, then an
/// anonymous volume for each `Config.Volumes` or image `VOLUME` path not already mounted.
pub fn parse(body: &Value, image: &ImageConfig) -> Result<Vec<MountOption>, EngineError> {
    let h = &body["HostConfig"];
    let mut out: Vec<MountOption> = Vec::new();
    for raw in h["Binds"].as_array().into_iter().flatten() {
        add(parse_bind(raw.as_str().unwrap_or_default())?, &mut out)?;
    }
    for m in h["Mounts"].as_array().into_iter().flatten() {
        add(parse_mount(m)?, &mut out)?;
    }
    if let Some(tmpfs_map) = h["Tmpfs"].as_object() {
        for (dest, options) in tmpfs_map {
            let destination = target("tmpfs", dest).map_err(bad)?;
            let own = options.as_str().unwrap_or_default();
            let options = if own.is_empty() {
                TMPFS_DEFAULTS.to_string()
            } else {
                format!("{TMPFS_DEFAULTS},{own}")
            };
            add(tmpfs(destination, options)?, &mut out)?;
        }
    }
    // The request's Config is the body itself (HostConfig beside its fields).
    let requested: Vec<String> = body["Volumes"]
        .as_object()
        .map(|v| v.keys().cloned().collect())
        .unwrap_or_default();
    for path in requested.iter().chain(image.volumes.iter()) {
        let destination = target("volume", path).map_err(bad)?;
        if out.iter().any(|o| o.destination == destination) {
            continue; // mounted already (dockerd: "mountpoint already exists")
        }
        out.push(MountOption {
            kind: MountKind::Volume,
            destination,
            copy: true,
            anonymous: true,
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
