//! VIC's extraconfig key encoding, read side and write side.
//!
//! * Read-only keys (the guest reads them, cannot change them): `guestinfo.vice./a/b`.
//! * Read-write keys (the guest writes status back): `guestinfo.vice..a.b`.
//! * A map at `p`: `p` holds the keys joined by `|`; entry `k` lives under `p|k`.
//! * A slice of scalars at `p`: `p` holds `len - 1` (`-1` for empty); `p~` holds the items
//!   joined by `|`.
//! * `<nil>` marks an absent optional value. Bytes are standard base64.
//! * Suffixes `@secret` and `@non-persistent` may end a key; they do not change its meaning here.
//!
//! **Extension over VIC:** list items and map keys escape `\` as `\\` and `|` as `\|`, so args and
//! env values containing `|` survive (VIC split them apart). Any other `\x` is kept literally, so
//! VIC-written values without backslash-pipe sequences decode as VIC meant them.

use std::collections::BTreeMap;

use base64::Engine as _;
use thiserror::Error;

pub const READ_ONLY_PREFIX: &str = "guestinfo.vice./";
pub const READ_WRITE_PREFIX: &str = "guestinfo.vice..";
pub const NIL: &str = "<nil>";
const SUFFIXES: [&str; 2] = ["@secret", "@non-persistent"];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("config key `{key}`: {problem}")]
pub struct KeyError {
    pub key: String,
    pub problem: String,
}

fn key_error(key: &str, problem: impl Into<String>) -> KeyError {
    KeyError {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// Joins items with `|`, escaping `\` and `|` inside them.
pub fn join_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        for c in item.as_ref().chars() {
            if c == '\\' || c == '|' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// Splits at unescaped `|`, undoing `\\` and `\|`.
pub fn split_list(text: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('\\') | Some('|')) => {
                let next = chars.next().expect("peeked");
                items.last_mut().expect("never empty").push(next);
            }
            '|' => items.push(String::new()),
            c => items.last_mut().expect("never empty").push(c),
        }
    }
    items
}

/// Where guestinfo values come from, with typed, erroring accessors on top of `lookup`.
pub trait KeySource {
    /// The value stored under `key` (its `@secret`/`@non-persistent` suffix already resolved),
    /// `<nil>` included.
    fn lookup(&self, key: &str) -> Option<String>;

    /// The value, `None` when absent or `<nil>`.
    fn raw(&self, key: &str) -> Option<String> {
        self.lookup(key).filter(|v| v != NIL)
    }

    fn string(&self, key: &str) -> Option<String> {
        self.raw(key)
    }

    fn required(&self, key: &str) -> Result<String, KeyError> {
        match self.raw(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(key_error(key, "required but missing or empty")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, KeyError> {
        match self.raw(key).as_deref() {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") => Ok(Some(false)),
            Some(other) => Err(key_error(
                key,
                format!("expected true or false, got {other:?}"),
            )),
        }
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, KeyError>
    where
        Self: Sized,
    {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                key_error(
                    key,
                    format!("expected a number of type {}, got {v:?}", short_type::<T>()),
                )
            }),
        }
    }

    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, KeyError> {
        match self.raw(key) {
            None => Ok(None),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(Some)
                .map_err(|e| key_error(key, format!("expected base64: {e}"))),
        }
    }

    /// A slice of scalars: count at `key`, items at `key~`.
    fn list(&self, key: &str) -> Result<Vec<String>, KeyError> {
        let count = match self.raw(key) {
            None => None,
            Some(c) => Some(c.trim().parse::<i64>().map_err(|_| {
                key_error(key, format!("expected the item count minus one, got {c:?}"))
            })?),
        };
        let items_key = format!("{key}~");
        let items = self.raw(&items_key).map(|v| split_list(&v));
        match (count, items) {
            (None, None) | (Some(-1), None) => Ok(Vec::new()),
            (None, Some(items)) => Ok(items),
            (Some(n), Some(items)) if n >= 0 && items.len() as i64 == n + 1 => Ok(items),
            (Some(n), Some(items)) => Err(key_error(
                &items_key,
                format!(
                    "{key} declares {} item(s) but {} found; a `|` inside an item must be written `\\|`",
                    n + 1,
                    items.len()
                ),
            )),
            (Some(n), None) => Err(key_error(
                &items_key,
                format!("{key} declares {} item(s) but the item key is missing", n + 1),
            )),
        }
    }

    /// A map's keys, listed at `key`.
    fn map_keys(&self, key: &str) -> Vec<String> {
        match self.raw(key).as_deref() {
            None | Some("") => Vec::new(),
            Some(v) => split_list(v),
        }
    }
}

/// A complete set of keys (from VMX text). Suffixes are stripped on the way in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    values: BTreeMap<String, String>,
}

impl KeySet {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut values = BTreeMap::new();
        for (mut k, v) in pairs {
            for s in SUFFIXES {
                if let Some(stripped) = k.strip_suffix(s) {
                    k = stripped.to_string();
                }
            }
            values.insert(k, v);
        }
        Self { values }
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl KeySource for KeySet {
    fn lookup(&self, key: &str) -> Option<String> {
        self.values.get(key).cloned()
    }
}

/// Keys fetched one at a time (the VMware backdoor's info-get), trying each suffix in turn.
pub struct LookupSource<F: Fn(&str) -> Option<String>>(pub F);

impl<F: Fn(&str) -> Option<String>> KeySource for LookupSource<F> {
    fn lookup(&self, key: &str) -> Option<String> {
        (self.0)(key).or_else(|| SUFFIXES.iter().find_map(|s| (self.0)(&format!("{key}{s}"))))
    }
}

fn short_type<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Builds keys in VIC's layout: read-only paths separate fields with `/`, read-write with `.`.
#[derive(Debug, Clone)]
pub struct KeyPath {
    path: String,
    separator: char,
}

impl KeyPath {
    pub fn read_only() -> Self {
        Self {
            path: "guestinfo.vice.".to_string(),
            separator: '/',
        }
    }

    pub fn read_write() -> Self {
        Self {
            path: "guestinfo.vice.".to_string(),
            separator: '.',
        }
    }

    /// A struct field.
    pub fn field(&self, name: &str) -> Self {
        Self {
            path: format!("{}{}{}", self.path, self.separator, name),
            separator: self.separator,
        }
    }

    /// An entry of the map at this path. The map key is escaped like a list item.
    pub fn entry(&self, map_key: &str) -> Self {
        Self {
            path: format!("{}|{}", self.path, join_list(&[map_key])),
            separator: self.separator,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// Collects key/value pairs in VIC's layout.
#[derive(Debug, Default)]
pub struct KeyWriter {
    pairs: BTreeMap<String, String>,
}

impl KeyWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn string(&mut self, key: &KeyPath, value: &str) {
        self.pairs.insert(key.to_string(), value.to_string());
    }

    pub fn optional(&mut self, key: &KeyPath, value: Option<&str>) {
        self.string(key, value.unwrap_or(NIL));
    }

    pub fn bool(&mut self, key: &KeyPath, value: bool) {
        self.string(key, if value { "true" } else { "false" });
    }

    pub fn number(&mut self, key: &KeyPath, value: impl std::fmt::Display) {
        self.string(key, &value.to_string());
    }

    pub fn bytes(&mut self, key: &KeyPath, value: &[u8]) {
        self.string(
            key,
            &base64::engine::general_purpose::STANDARD.encode(value),
        );
    }

    pub fn list<S: AsRef<str>>(&mut self, key: &KeyPath, items: &[S]) {
        self.number(key, items.len() as i64 - 1);
        if !items.is_empty() {
            self.pairs.insert(format!("{key}~"), join_list(items));
        }
    }

    pub fn map_keys<S: AsRef<str>>(&mut self, key: &KeyPath, keys: &[S]) {
        self.string(key, &join_list(keys));
    }

    pub fn into_pairs(self) -> BTreeMap<String, String> {
        self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_escaping_round_trips_pipes_and_backslashes() {
        let items = ["a|b", "c\\", "\\|", "", "plain"];
        let joined = join_list(&items);
        assert_eq!(
            joined,
            "a\\|b|c\\\\|\\\\\\||| plain".replace("| plain", "|plain")
        );
        assert_eq!(split_list(&joined), items);
    }

    #[test]
    fn vic_values_without_escapes_split_as_vic_did() {
        assert_eq!(
            split_list("/bin/sh|-c|echo hi"),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(split_list("C:\\dir|x"), ["C:\\dir", "x"]);
    }

    #[test]
    fn key_paths_follow_vic_layout() {
        let ro = KeyPath::read_only();
        assert_eq!(
            ro.field("sessions")
                .entry("abc")
                .field("cmd")
                .field("Path")
                .as_str(),
            "guestinfo.vice./sessions|abc/cmd/Path"
        );
        let rw = KeyPath::read_write();
        assert_eq!(
            rw.field("sessions").entry("abc").field("status").as_str(),
            "guestinfo.vice..sessions|abc.status"
        );
    }

    fn set(pairs: &[(&str, &str)]) -> KeySet {
        KeySet::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn typed_accessors_and_their_errors() {
        let s = set(&[
            ("t", "true"),
            ("bad", "yes"),
            ("n", "42"),
            ("nil", "<nil>"),
            ("secret@secret", "aGk="),
            ("l", "1"),
            ("l~", "a\\|b|c"),
            ("short", "2"),
            ("short~", "a|b"),
            ("empty", "-1"),
        ]);
        assert_eq!(s.bool("t").unwrap(), Some(true));
        let e = s.bool("bad").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key `bad`: expected true or false, got \"yes\""
        );
        assert_eq!(s.number::<u32>("n").unwrap(), Some(42));
        assert!(s.number::<u8>("t").unwrap_err().problem.contains("u8"));
        assert_eq!(s.string("nil"), None);
        let lazy = LookupSource(|k: &str| (k == "secret@secret").then(|| "aGk=".to_string()));
        assert_eq!(lazy.bytes("secret").unwrap(), Some(b"hi".to_vec()));
        assert_eq!(lazy.raw("other"), None);
        assert!(s.required("nil").is_err());
        assert_eq!(s.bytes("secret").unwrap(), Some(b"hi".to_vec()));
        assert_eq!(s.list("l").unwrap(), ["a|b", "c"]);
        let e = s.list("short").unwrap_err();
        assert!(e.problem.contains("declares 3 item(s) but 2 found"), "{e}");
        assert_eq!(s.list("empty").unwrap(), Vec::<String>::new());
        assert_eq!(s.list("absent").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn writer_output_reads_back() {
        let mut w = KeyWriter::new();
        let p = KeyPath::read_only().field("x");
        w.list(&p.field("args"), &["a|b", "", "ü"]);
        w.list(&p.field("none"), &[] as &[&str]);
        w.bytes(&p.field("b"), &[0, 255]);
        w.map_keys(&p.field("m"), &["k|1", "k2"]);
        let s = KeySet::from_pairs(w.into_pairs());
        assert_eq!(s.list(p.field("args").as_str()).unwrap(), ["a|b", "", "ü"]);
        assert!(s.list(p.field("none").as_str()).unwrap().is_empty());
        assert_eq!(s.bytes(p.field("b").as_str()).unwrap(), Some(vec![0, 255]));
        assert_eq!(s.map_keys(p.field("m").as_str()), ["k|1", "k2"]);
    }
}
