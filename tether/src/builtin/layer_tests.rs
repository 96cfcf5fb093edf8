//! Applying OCI layers (`BuiltinOp::ApplyLayer`) over real files in a temporary root, without
//! the fork: every tar entry kind and every whiteout rule. Owners, device nodes and
//! `security.capability` need root, which the test tiers run as; without it those checks are
//! skipped and said so.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::archive_put::Extract;
use super::scope::Scope;
use crate::testing::{mode_and_mtime, TestDir};

const MTIME: u64 = 1_500_000_000;

/// `security.capability` of `cap_net_bind_service=ep`: VFS_CAP_REVISION_2 with the effective
/// flag, then permitted (bit 10) and inheritable, low and high words.
const CAP_NET_BIND_EP: [u8; 20] = [
    0x01, 0, 0, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(1000);
    h.set_gid(2000);
    h
}

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }
    fn file(&mut self, name: &str, body: &[u8]) -> &mut Self {
        let mut h = header(EntryType::Regular, 0o640, body.len() as u64);
        self.0.append_data(&mut h, name, body).unwrap();
        self
    }
    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let mut h = header(EntryType::Directory, mode, 0);
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }
    fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = header(kind, 0o777, 0);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    fn device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }
    fn bytes(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

fn apply(scope: &Scope, tar: &[u8]) -> Result<(), String> {
    Extract {
        scope,
        path: "/",
        no_overwrite_dir_non_dir: false,
        owners: root(),
        layer: true,
    }
    .run(tar)
    .map_err(|e| e.to_string())
}

/// A lower layer on disk: what the layer's whiteouts and replacements act on.
fn lower(r: &Path) {
    for d in [
        "etc",
        "gone-dir/deep",
        "opq/oldsub",
        "opq2/sub",
        "swap-dir/x",
        "keep",
    ] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for f in [
        "etc/a",
        "gone",
        "gone-dir/deep/f",
        "opq/old",
        "opq/oldsub/x",
        "opq2/sub/old",
        "swap-file",
        "keep/k",
        "mine",
    ] {
        std::fs::write(r.join(f), f).unwrap();
    }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a live buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn whiteouts_and_opaque_directories_follow_the_oci_rules() {
    let d = TestDir::new("layer-wh");
    let r = d.path();
    lower(r);
    let tar = Tar::new()
        .file(".wh.gone", b"")
        .file(".wh.gone-dir", b"")
        // The layer's own entry first, its directory's opaque marker after it: the marker
        // spares what this layer holds, whatever the order.
        .file("opq/new", b"new")
        .file("opq/.wh..wh..opq", b"")
        // Marker first; a lower directory named again by this layer loses its lower content.
        .file("opq2/.wh..wh..opq", b"")
        .dir("opq2/sub/", 0o755)
        .file("opq2/sub/y", b"y")
        // A whiteout never removes the layer's own entry.
        .file("fresh", b"fresh")
        .file(".wh.fresh", b"")
        .file(".wh.never-existed", b"")
        .file(".wh..wh.plnk", b"")
        .file("swap-dir", b"now a file")
        .dir("swap-file/", 0o700)
        .file("etc/a", b"replaced")
        .bytes();
    apply(&Scope::new(r), &tar).unwrap();
    assert!(!exists(&r.join("gone")));
    assert!(!exists(&r.join("gone-dir")));
    assert_eq!(names(&r.join("opq")), ["new"]);
    assert_eq!(names(&r.join("opq2")), ["sub"]);
    assert_eq!(names(&r.join("opq2/sub")), ["y"]);
    assert_eq!(std::fs::read(r.join("fresh")).unwrap(), b"fresh");
    assert_eq!(std::fs::read(r.join("swap-dir")).unwrap(), b"now a file");
    assert!(r.join("swap-file").is_dir());
    assert_eq!(std::fs::read(r.join("etc/a")).unwrap(), b"replaced");
    assert_eq!(std::fs::read(r.join("keep/k")).unwrap(), b"keep/k");
    // No whiteout file is ever written.
    let mut stack = vec![r.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            assert!(!e.file_name().as_bytes().starts_with(b".wh."), "{e:?}");
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn every_entry_kind_keeps_its_metadata() {
    let d = TestDir::new("layer-kinds");
    let r = d.path();
    let long = format!("long/{}", "n".repeat(200));
    let pax_long = format!("pax/{}", "p".repeat(200));
    let tar = Tar::new()
        .dir("d/", 0o751)
        .file("d/f", b"data")
        .link(EntryType::Link, "d/hard", "d/f")
        .link(EntryType::Symlink, "d/sym", "f")
        .device("d/null", 1, 3)
        .pax(&[
            ("SCHILY.xattr.security.capability", &CAP_NET_BIND_EP),
            ("SCHILY.xattr.user.tether", b"yes"),
        ])
        .file("d/cap", b"#!/bin/sh\n")
        // A 200-character name: the tar crate writes a GNU long-name entry for it.
        .file(&long, b"gnu")
        .pax(&[("path", pax_long.as_bytes())])
        .file("pax/short", b"pax")
        .bytes();
    apply(&Scope::new(r), &tar).unwrap();
    let m = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap();
    let mtime = MTIME as i64;
    assert_eq!(
        mode_and_mtime(&r.join("d")),
        (0o751, mtime),
        "a directory's mtime is set last"
    );
    assert_eq!(mode_and_mtime(&r.join("d/f")), (0o640, mtime));
    assert_eq!(m("d/f").ino(), m("d/hard").ino());
    assert_eq!(m("d/f").nlink(), 2);
    assert_eq!(std::fs::read_link(r.join("d/sym")).unwrap(), Path::new("f"));
    assert_eq!(std::fs::read(r.join(&long)).unwrap(), b"gnu");
    assert_eq!(std::fs::read(r.join(&pax_long)).unwrap(), b"pax");
    assert!(
        !exists(&r.join("pax/short")),
        "the PAX path names the entry"
    );
    if !root() {
        eprintln!("not root: owners, device nodes and file capabilities not checked");
        return;
    }
    assert_eq!((m("d/f").uid(), m("d/f").gid()), (1000, 2000));
    assert_eq!((m("d").uid(), m("d").gid()), (1000, 2000));
    let null = m("d/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);
    let cap = r.join("d/cap");
    assert_eq!(
        xattr(&cap, "security.capability").as_deref(),
        Some(&CAP_NET_BIND_EP[..]),
        "set after the chown, which would clear it"
    );
    // user.* attributes need a filesystem that takes them (tmpfs before 6.6 does not).
    if let Some(v) = xattr(&cap, "user.tether") {
        assert_eq!(v, b"yes");
    }
}

#[test]
fn a_ten_thousand_file_layer_applies() {
    let d = TestDir::new("layer-10k");
    let r = d.path();
    let mut t = Tar::new();
    for i in 0..10_000 {
        t.file(&format!("many/{:02}/f{i}", i % 100), b"x");
    }
    apply(&Scope::new(r), &t.bytes()).unwrap();
    let total: usize = (0..100)
        .map(|i| names(&r.join(format!("many/{i:02}"))).len())
        .sum();
    assert_eq!(total, 10_000);
}

#[test]
fn a_whiteout_cannot_leave_the_root() {
    let d = TestDir::new("layer-escape");
    let r = d.path().join("root");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(d.path().join("outside"), b"x").unwrap();
    // The tar crate refuses to write `..`: the name goes into the header by hand.
    let mut h = header(EntryType::Regular, 0o644, 0);
    let name = b"../.wh.outside";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    let mut t = Tar::new();
    t.0.append(&h, std::io::empty()).unwrap();
    let tar = t.bytes();
    let e = apply(&Scope::new(&r), &tar).unwrap_err();
    assert!(e.contains("leads out of the destination"), "{e}");
    assert!(d.path().join("outside").exists());
}
