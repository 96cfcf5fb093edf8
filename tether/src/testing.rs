//! What tether's unit tests and its host-mode tests (`tests/common`, which includes this file)
//! both use: a temporary directory removed on drop (std has none; not worth a dependency), and
//! a tar archive read back entry by entry.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tether-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("a temporary directory");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (type, mode, mtime, link target, bytes) of an entry.
pub type Entry = (u8, u32, u64, String, Vec<u8>);

/// The entries of `tar` by name, and the names in archive order.
pub fn tar_entries(tar: &[u8]) -> (Vec<String>, BTreeMap<String, Entry>) {
    let mut a = tar::Archive::new(tar);
    let (mut order, mut map) = (Vec::new(), BTreeMap::new());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap())
            .unwrap_or_default();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        order.push(name.clone());
        let kind = h.entry_type().as_byte();
        map.insert(
            name,
            (kind, h.mode().unwrap(), h.mtime().unwrap(), link, bytes),
        );
    }
    (order, map)
}
