//! What tether's unit tests and its host-mode tests (`tests/common`, which includes this file)
//! both use: a temporary directory removed on drop (std has none; not worth a dependency), a
//! session's exit among the records tether sent, and tar archives written and read back.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use tar::{EntryType, Header};
use wire::Control;

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

/// The permission bits (setuid, setgid and sticky too) and the mtime of `p`, not following a
/// symlink there.
pub fn mode_and_mtime(p: &Path) -> (u32, i64) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::symlink_metadata(p).expect("the file is there");
    (m.permissions().mode() & 0o7777, m.mtime())
}

/// The (exit code, signal) of the session's Exited among `control`, the records tether sent.
pub fn exit_in(control: &[Control], session: u32) -> Option<(i32, Option<i32>)> {
    control.iter().find_map(|c| match c {
        Control::Exited {
            session: s,
            exit_code,
            signal,
        } if *s == session => Some((*exit_code, *signal)),
        _ => None,
    })
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

/// A tar archive written entry by entry, as `docker cp` sends one: every entry has the same
/// mtime and owner, so a test can compare what comes out with what went in.
pub struct TarWriter {
    b: tar::Builder<Vec<u8>>,
    mtime: u64,
    owner: (u64, u64),
}

impl TarWriter {
    pub fn new(mtime: u64, owner: (u64, u64)) -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
            mtime,
            owner,
        }
    }

    /// A GNU header of this archive's mtime and owner.
    pub fn header(&self, kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(self.owner.0);
        h.set_gid(self.owner.1);
        h
    }

    /// An entry of a kind with no contents (directory, fifo, device).
    pub fn empty(mut self, kind: EntryType, name: &str, mode: u32) -> Self {
        let mut h = self.header(kind, mode, 0);
        self.b.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }

    pub fn dir(self, name: &str, mode: u32) -> Self {
        self.empty(EntryType::Directory, name, mode)
    }

    pub fn file(mut self, name: &str, mode: u32, bytes: &[u8]) -> Self {
        let mut h = self.header(EntryType::Regular, mode, bytes.len() as u64);
        self.b.append_data(&mut h, name, bytes).unwrap();
        self
    }

    /// A symlink (`EntryType::Symlink`) or hard link (`EntryType::Link`) to `target`.
    pub fn link(mut self, kind: EntryType, name: &str, mode: u32, target: &str) -> Self {
        let mut h = self.header(kind, mode, 0);
        self.b.append_link(&mut h, name, target).unwrap();
        self
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.link(EntryType::Symlink, name, 0o777, target)
    }

    /// An entry whose header the caller has filled in (a raw name tar::Builder would refuse).
    pub fn raw(mut self, header: &Header, body: &[u8]) -> Self {
        self.b.append(header, body).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}
