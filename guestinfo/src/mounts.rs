//! The container's mounts (volumes and tmpfs), in VIC's `MountSpec` layout under
//! `guestinfo.vice./mounts`:
//!
//! | key | meaning |
//! |---|---|
//! | `mounts` | the map's ids (a volume's name; `tmpfs:DEST` for a tmpfs) |
//! | `mounts\|ID/source` | `label://LABEL`: the ext4 disk with that label (VIC writes `label:LABEL`, also read); `tmpfs://`: a tmpfs |
//! | `mounts\|ID/dest` | the absolute, clean path in the container (not `/`) |
//! | `mounts\|ID/mode` | comma-separated options: `ro` or `rw`; for a tmpfs also `size=`, `mode=` (octal), `uid=`, `gid=`, `nr_inodes=`, `exec`/`noexec`, `suid`/`nosuid`, `dev`/`nodev` |
//! | `mounts\|ID/copymode` | VIC's numbers: `1` never copy, `2` (or absent) copy the image's content under `dest` into the volume when it is empty |
//!
//! Tether mounts them in the order of their destinations, so a nested destination lands inside
//! the volume that holds it.

use std::collections::BTreeMap;

use crate::keys::{KeyError, KeyPath, KeySource, KeyWriter};

/// Where a mount's filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// The block device whose ext4 label this is: a volume's disk.
    Label(String),
    /// A new tmpfs, in the VM's memory.
    Tmpfs,
}

/// Whether an empty volume is filled from the image (VIC's `CopyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// VIC's `CopyNever` (1): docker's `nocopy`.
    Never,
    /// VIC's `CopyNew` (2): on first use, the image's files under the destination are copied
    /// into the volume, and the volume's root takes the image directory's owner and mode.
    New,
}

impl CopyMode {
    fn number(self) -> u8 {
        match self {
            Self::Never => 1,
            Self::New => 2,
        }
    }
}

/// The longest ext4 volume label (`s_volume_name` is 16 bytes).
pub const MAX_LABEL_LEN: usize = 16;

/// The options a mode may hold, by the kind of mount; `name=` ones take a value.
const VOLUME_OPTIONS: [&str; 2] = ["ro", "rw"];
const TMPFS_OPTIONS: [&str; 8] = [
    "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev",
];
const TMPFS_VALUED: [&str; 5] = ["size", "mode", "uid", "gid", "nr_inodes"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: MountSource,
    /// The path in the container: absolute, clean, not `/`.
    pub destination: String,
    /// Comma-separated options (see the module's table); empty is `rw`.
    pub mode: String,
    pub copy: CopyMode,
}

impl MountSpec {
    /// A volume disk with `label` at `destination`.
    pub fn volume(label: &str, destination: &str, read_only: bool, copy: CopyMode) -> Self {
        Self {
            source: MountSource::Label(label.to_string()),
            destination: destination.to_string(),
            mode: if read_only { "ro" } else { "rw" }.to_string(),
            copy,
        }
    }

    /// The mode's options, in order, without empty ones.
    pub fn options(&self) -> impl Iterator<Item = &str> {
        self.mode
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
    }

    /// The last of `ro`/`rw` in the mode wins, as mount(8) reads options.
    pub fn read_only(&self) -> bool {
        self.options()
            .filter(|o| *o == "ro" || *o == "rw")
            .last()
            .is_some_and(|o| o == "ro")
    }

    /// Whether tether will take this mount: the checks its decoder makes.
    pub fn check(&self) -> Result<(), String> {
        check_destination(&self.destination)?;
        if let MountSource::Label(l) = &self.source {
            parse_source(&format!("label://{l}"))?;
        }
        check_mode(self)
    }

    fn source_text(&self) -> String {
        match &self.source {
            MountSource::Label(l) => format!("label://{l}"),
            MountSource::Tmpfs => "tmpfs://".to_string(),
        }
    }
}

/// A destination as tether takes it: absolute, clean (no `.`, `..` or empty element), not `/`.
pub fn check_destination(dest: &str) -> Result<(), String> {
    if !dest.starts_with('/') {
        return Err(format!("{dest:?} is not an absolute path"));
    }
    if dest == "/" {
        return Err("a mount cannot replace the container's root `/`".into());
    }
    let elements: Vec<&str> = dest[1..].split('/').collect();
    if elements
        .iter()
        .any(|e| e.is_empty() || *e == "." || *e == "..")
    {
        return Err(format!(
            "{dest:?} is not a clean path (no `.`, `..`, `//` or trailing `/`)"
        ));
    }
    if dest.contains('\0') {
        return Err(format!("{dest:?} contains a NUL byte"));
    }
    Ok(())
}

fn parse_source(text: &str) -> Result<MountSource, String> {
    let (scheme, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not label://LABEL or tmpfs://"))?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    match scheme {
        "label" => {
            if rest.is_empty() {
                return Err(format!("{text:?} names no label"));
            }
            if rest.len() > MAX_LABEL_LEN {
                return Err(format!(
                    "label {rest:?} is {} bytes; an ext4 label holds at most {MAX_LABEL_LEN}",
                    rest.len()
                ));
            }
            Ok(MountSource::Label(rest.to_string()))
        }
        "tmpfs" if rest.is_empty() => Ok(MountSource::Tmpfs),
        "tmpfs" => Err(format!(
            "{text:?}: a tmpfs source takes nothing after tmpfs://"
        )),
        other => Err(format!(
            "unsupported source scheme {other:?} in {text:?}: tether mounts label:// (a volume \
             disk) and tmpfs://"
        )),
    }
}

fn check_mode(spec: &MountSpec) -> Result<(), String> {
    let tmpfs = spec.source == MountSource::Tmpfs;
    for option in spec.options() {
        let known = match option.split_once('=') {
            Some((name, value)) if tmpfs && TMPFS_VALUED.contains(&name) => {
                if value.is_empty() || value.contains(char::is_whitespace) {
                    return Err(format!("option {option:?} has no usable value"));
                }
                true
            }
            Some(_) => false,
            None if tmpfs => TMPFS_OPTIONS.contains(&option),
            None => VOLUME_OPTIONS.contains(&option),
        };
        if !known {
            let allowed = if tmpfs {
                "ro, rw, exec, noexec, suid, nosuid, dev, nodev, size=, mode=, uid=, gid=, nr_inodes="
            } else {
                "ro, rw"
            };
            return Err(format!(
                "unknown option {option:?} (a {} mount takes {allowed})",
                if tmpfs { "tmpfs" } else { "volume" }
            ));
        }
    }
    Ok(())
}

fn error(key: &KeyPath, problem: String) -> KeyError {
    KeyError {
        key: key.to_string(),
        problem,
    }
}

/// Decodes the `mounts` map under `map`. Every error names its key.
pub fn decode(
    keys: &impl KeySource,
    map: &KeyPath,
) -> Result<BTreeMap<String, MountSpec>, KeyError> {
    let mut out = BTreeMap::new();
    let mut destinations: BTreeMap<String, String> = BTreeMap::new();
    for id in keys.map_keys(map.as_str()) {
        let p = map.entry(&id);
        let source_key = p.field("source");
        let source = parse_source(&keys.required(source_key.as_str())?)
            .map_err(|problem| error(&source_key, problem))?;
        let dest_key = p.field("dest");
        let destination = keys.required(dest_key.as_str())?;
        check_destination(&destination).map_err(|problem| error(&dest_key, problem))?;
        if let Some(other) = destinations.insert(destination.clone(), id.clone()) {
            return Err(error(
                &dest_key,
                format!("{destination:?} is also the destination of mount {other:?}"),
            ));
        }
        let copy_key = p.field("copymode");
        let copy = match keys.number::<u8>(copy_key.as_str())? {
            None | Some(2) => CopyMode::New,
            Some(1) => CopyMode::Never,
            Some(n) => {
                return Err(error(
                    &copy_key,
                    format!("copy mode {n}: use 1 (never copy) or 2 (copy into a new volume)"),
                ))
            }
        };
        let spec = MountSpec {
            source,
            destination,
            mode: keys.string(p.field("mode").as_str()).unwrap_or_default(),
            copy,
        };
        check_mode(&spec).map_err(|problem| error(&p.field("mode"), problem))?;
        out.insert(id, spec);
    }
    Ok(out)
}

/// Encodes the `mounts` map under `map`.
pub fn encode(w: &mut KeyWriter, map: &KeyPath, mounts: &BTreeMap<String, MountSpec>) {
    let ids: Vec<&String> = mounts.keys().collect();
    w.map_keys(map, &ids);
    for (id, m) in mounts {
        let p = map.entry(id);
        w.string(&p.field("source"), &m.source_text());
        w.string(&p.field("dest"), &m.destination);
        w.string(&p.field("mode"), &m.mode);
        w.number(&p.field("copymode"), m.copy.number());
    }
}

/// The mounts in the order tether mounts them: by destination, a parent before what is under
/// it (`/a` before `/a/b`, whatever other paths sort between them).
pub fn in_mount_order(mounts: &BTreeMap<String, MountSpec>) -> Vec<&MountSpec> {
    let mut v: Vec<&MountSpec> = mounts.values().collect();
    v.sort_by(|a, b| {
        let depth = |m: &MountSpec| m.destination.matches('/').count();
        depth(a)
            .cmp(&depth(b))
            .then_with(|| a.destination.cmp(&b.destination))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;

    fn root() -> KeyPath {
        KeyPath::read_only().field("mounts")
    }

    fn round_trip(
        mounts: &BTreeMap<String, MountSpec>,
    ) -> Result<BTreeMap<String, MountSpec>, KeyError> {
        let mut w = KeyWriter::new();
        encode(&mut w, &root(), mounts);
        decode(&KeySet::from_pairs(w.into_pairs()), &root())
    }

    #[test]
    fn volumes_and_tmpfs_round_trip_in_vics_layout() {
        let mounts: BTreeMap<String, MountSpec> = [
            (
                "data|1".to_string(),
                MountSpec::volume("tv0123456789abcd", "/var/lib/data", true, CopyMode::New),
            ),
            (
                "tmpfs:/run/x".to_string(),
                MountSpec {
                    source: MountSource::Tmpfs,
                    destination: "/run/x".into(),
                    mode: "rw,noexec,size=65536k,mode=1777".into(),
                    copy: CopyMode::Never,
                },
            ),
        ]
        .into();
        let mut w = KeyWriter::new();
        encode(&mut w, &root(), &mounts);
        let pairs = w.into_pairs();
        assert_eq!(
            pairs["guestinfo.vice./mounts|data\\|1/source"],
            "label://tv0123456789abcd"
        );
        assert_eq!(
            pairs["guestinfo.vice./mounts|data\\|1/dest"],
            "/var/lib/data"
        );
        assert_eq!(pairs["guestinfo.vice./mounts|data\\|1/mode"], "ro");
        assert_eq!(pairs["guestinfo.vice./mounts|data\\|1/copymode"], "2");
        assert_eq!(
            pairs["guestinfo.vice./mounts|tmpfs:/run/x/source"],
            "tmpfs://"
        );
        assert_eq!(round_trip(&mounts).unwrap(), mounts);
        assert!(mounts["data|1"].read_only());
        assert!(!mounts["tmpfs:/run/x"].read_only());
    }

    #[test]
    fn vic_written_sources_and_an_absent_copy_mode_decode() {
        let p = root();
        let keys = KeySet::from_pairs(
            [
                (p.as_str().to_string(), "v1".to_string()),
                (
                    p.entry("v1").field("source").to_string(),
                    "label:abc".into(),
                ),
                (p.entry("v1").field("dest").to_string(), "/data".into()),
            ]
            .map(|(k, v)| (k, v)),
        );
        let m = decode(&keys, &p).unwrap();
        assert_eq!(m["v1"].source, MountSource::Label("abc".into()));
        assert_eq!(m["v1"].copy, CopyMode::New, "docker's default: copy");
        assert!(!m["v1"].read_only());
    }

    fn one(
        source: &str,
        dest: &str,
        mode: &str,
        copy: &str,
    ) -> Result<BTreeMap<String, MountSpec>, KeyError> {
        let p = root();
        let e = p.entry("m");
        decode(
            &KeySet::from_pairs([
                (p.to_string(), "m".to_string()),
                (e.field("source").to_string(), source.to_string()),
                (e.field("dest").to_string(), dest.to_string()),
                (e.field("mode").to_string(), mode.to_string()),
                (e.field("copymode").to_string(), copy.to_string()),
            ]),
            &p,
        )
    }

    #[test]
    fn bad_mounts_are_errors_naming_the_key_and_the_fix() {
        let cases = [
            (
                ("nfs://server/x", "/d", "", "2"),
                "/source`",
                "unsupported source scheme \"nfs\"",
            ),
            (("label://", "/d", "", "2"), "/source`", "names no label"),
            (
                ("label://abcdefghijklmnopq", "/d", "", "2"),
                "/source`",
                "at most 16",
            ),
            (
                ("label://a", "d", "", "2"),
                "/dest`",
                "not an absolute path",
            ),
            (
                ("label://a", "/", "", "2"),
                "/dest`",
                "cannot replace the container's root",
            ),
            (
                ("label://a", "/a/../b", "", "2"),
                "/dest`",
                "not a clean path",
            ),
            (("label://a", "/a/", "", "2"), "/dest`", "not a clean path"),
            (
                ("label://a", "/a", "ro,size=1m", "2"),
                "/mode`",
                "unknown option \"size=1m\"",
            ),
            (
                ("tmpfs://", "/a", "size=", "2"),
                "/mode`",
                "no usable value",
            ),
            (
                ("tmpfs://", "/a", "bogus", "2"),
                "/mode`",
                "a tmpfs mount takes",
            ),
            (
                ("label://a", "/a", "", "3"),
                "/copymode`",
                "use 1 (never copy) or 2",
            ),
        ];
        for ((source, dest, mode, copy), key, words) in cases {
            let e = one(source, dest, mode, copy).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(words),
                "{source} {dest} {mode}: {e}"
            );
        }
        let p = root();
        let keys = KeySet::from_pairs([
            (p.to_string(), "a|b".to_string()),
            (p.entry("a").field("source").to_string(), "label://a".into()),
            (p.entry("a").field("dest").to_string(), "/x".into()),
            (p.entry("b").field("source").to_string(), "tmpfs://".into()),
            (p.entry("b").field("dest").to_string(), "/x".into()),
        ]);
        let e = decode(&keys, &p).unwrap_err().to_string();
        assert!(e.contains("also the destination of mount \"a\""), "{e}");
    }

    #[test]
    fn parents_mount_before_what_is_under_them() {
        let m = |d: &str| MountSpec::volume("l", d, false, CopyMode::New);
        let mounts: BTreeMap<String, MountSpec> = [
            ("1".to_string(), m("/a/b/c")),
            ("2".to_string(), m("/a-z")),
            ("3".to_string(), m("/a")),
            ("4".to_string(), m("/a/b")),
        ]
        .into();
        let order: Vec<&str> = in_mount_order(&mounts)
            .iter()
            .map(|m| m.destination.as_str())
            .collect();
        assert_eq!(order, ["/a", "/a-z", "/a/b", "/a/b/c"]);
    }
}
