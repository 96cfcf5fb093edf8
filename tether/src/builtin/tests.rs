//! The archive built-ins against real files in a temporary root, without the fork: a put and a
//! get back, escapes, docker's overwrite rules and its error messages.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tar::EntryType;

use super::archive_get::archive;
use super::archive_put::Extract;
use super::scope::Scope;
use crate::testing::{mode_and_mtime, tar_entries, TarWriter, TestDir};

const MTIME: u64 = 1_600_000_000;
const LONG: &str = "a-directory-name-that-is-long-enough/to-need-a-gnu-long-name-entry/in-a-tar-header-of-100-bytes";

/// The owner every sample entry has, restored when the tests run as root.
const OWNER: (u64, u64) = (1234, 4321);

fn tar() -> TarWriter {
    TarWriter::new(MTIME, OWNER)
}

/// A tar as `docker cp DIR c:/target` sends it.
fn sample() -> Vec<u8> {
    tar()
        .dir("d/", 0o750)
        .file("d/f", 0o4755, b"hello, world\n")
        .symlink("d/link", "f")
        .link(EntryType::Link, "d/hard", 0o644, "d/f")
        .empty(EntryType::Fifo, "d/pipe", 0o600)
        .dir("d/ro/", 0o555)
        .file("d/ro/in", 0o444, b"ro")
        .file(&format!("d/{LONG}/file"), 0o600, b"deep")
        .finish()
}

fn root_with_target() -> (TestDir, Scope) {
    let d = TestDir::new("archive");
    std::fs::create_dir_all(d.path().join("target")).unwrap();
    let scope = Scope::new(d.path());
    (d, scope)
}

fn put(scope: &Scope, path: &str, no_overwrite: bool, tar: &[u8]) -> Result<(), String> {
    Extract {
        scope,
        path,
        no_overwrite_dir_non_dir: no_overwrite,
        owners: nix::unistd::geteuid().is_root(),
        layer: false,
    }
    .run(tar)
    .map_err(|e| e.to_string())
}

fn get(scope: &Scope, path: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    archive(scope, path, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn a_put_tree_comes_back_from_a_get() {
    let (d, scope) = root_with_target();
    put(&scope, "/target", true, &sample()).unwrap();
    let t = d.path().join("target/d");
    let meta = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap();
    assert_eq!(std::fs::read(t.join("f")).unwrap(), b"hello, world\n");
    let mtime = MTIME as i64;
    assert_eq!(mode_and_mtime(&t.join("f")), (0o4755, mtime));
    assert_eq!(
        mode_and_mtime(&t.join(".")),
        (0o750, mtime),
        "directories get their mtime last"
    );
    assert_eq!(meta("ro").permissions().mode() & 0o7777, 0o555);
    assert_eq!(std::fs::read_link(t.join("link")).unwrap(), Path::new("f"));
    assert_eq!(meta("hard").ino(), meta("f").ino());
    assert!(meta("pipe").file_type().is_fifo());
    assert_eq!(std::fs::read(t.join(LONG).join("file")).unwrap(), b"deep");
    if nix::unistd::geteuid().is_root() {
        let owner = |p: &str| (u64::from(meta(p).uid()), u64::from(meta(p).gid()));
        assert_eq!(owner("f"), OWNER);
        assert_eq!(owner("link"), OWNER);
    }

    let back = get(&scope, "/target/d").unwrap();
    let (order, got) = tar_entries(&back);
    let long_dir = format!("d/{LONG}/");
    let long_a = format!("d/{}/", LONG.split('/').next().unwrap());
    let long_b = format!("d/{}/", LONG.rsplit_once('/').unwrap().0);
    let want_order = [
        "d/",
        &long_a,
        &long_b,
        &long_dir,
        &format!("{long_dir}file"),
        "d/f",
        "d/hard",
        "d/link",
        "d/pipe",
        "d/ro/",
        "d/ro/in",
    ];
    assert_eq!(
        order, want_order,
        "the basename first, then depth first in name order"
    );
    let (_, sent) = tar_entries(&sample());
    for name in [
        "d/",
        "d/f",
        "d/link",
        "d/pipe",
        "d/ro/",
        "d/ro/in",
        &format!("{long_dir}file"),
    ] {
        let (kind, mode, mtime, link, body) = &got[name];
        let want = &sent[name];
        assert_eq!(
            (kind, mode, mtime, link, body),
            (&want.0, &want.1, &want.2, &want.3, &want.4),
            "{name}"
        );
    }
    // The second name of a hard-linked file is a link to the first.
    assert_eq!(got["d/hard"].0, b'1');
    assert_eq!(got["d/hard"].3, "d/f");

    // A file by itself is named after its last element; the root is ".".
    let (order, got) = tar_entries(&get(&scope, "/target/d/link").unwrap());
    assert_eq!(
        (order, got["link"].3.as_str()),
        (vec!["link".to_string()], "f")
    );
    // `link/` follows the link: to a file, which is not a directory.
    assert_eq!(
        get(&scope, "/target/d/link/").unwrap_err(),
        "/target/d/link/: not a directory"
    );
    let (order, _) = tar_entries(&get(&scope, "/target/d/ro/.").unwrap());
    assert_eq!(order, ["./", "in"]);
}

/// A tar with one file entry whose raw name is `name` (tar::Builder refuses `..`).
fn raw_entry(name: &[u8], kind: EntryType, link: &[u8]) -> Vec<u8> {
    let body: &[u8] = if kind == EntryType::Regular {
        b"x"
    } else {
        b""
    };
    let w = tar();
    let mut h = w.header(kind, 0o644, body.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    w.raw(&h, body).finish()
}

#[test]
fn entries_that_leave_the_directory_are_refused() {
    let (d, scope) = root_with_target();
    for name in [&b"../evil"[..], b"a/../../evil", b".."] {
        let e = put(
            &scope,
            "/target",
            false,
            &raw_entry(name, EntryType::Regular, b""),
        )
        .unwrap_err();
        assert!(e.starts_with("refusing to extract"), "{e}");
    }
    let e = put(
        &scope,
        "/target",
        false,
        &raw_entry(b"h", EntryType::Link, b"../../etc/passwd"),
    )
    .unwrap_err();
    assert!(e.starts_with("refusing to extract \"h\""), "{e}");
    assert!(!d.path().join("evil").exists());
    // An absolute name is taken below the destination, as docker takes it.
    put(
        &scope,
        "/target",
        false,
        &raw_entry(b"/abs", EntryType::Regular, b""),
    )
    .unwrap();
    assert!(d.path().join("target/abs").exists());
}

#[test]
fn a_symlink_in_the_archive_cannot_lead_out_of_the_root() {
    let (d, scope) = root_with_target();
    let escapes = tar()
        .symlink("etc", "/etc")
        .symlink("up", "../../../../..")
        .file("etc/hostname", 0o644, b"x")
        .file("up/tmp/escaped", 0o644, b"x")
        .finish();
    put(&scope, "/target", false, &escapes).unwrap();
    // Through the container's own /etc and /, never the host's.
    assert_eq!(std::fs::read(d.path().join("etc/hostname")).unwrap(), b"x");
    assert_eq!(std::fs::read(d.path().join("tmp/escaped")).unwrap(), b"x");
    assert!(!Path::new("/tmp/escaped").exists());
    // And a get through the symlink reads the container's file.
    let (order, got) = tar_entries(&get(&scope, "/target/etc/hostname").unwrap());
    assert_eq!(
        (order[0].as_str(), got["hostname"].4.as_slice()),
        ("hostname", &b"x"[..])
    );
}

#[test]
fn dirs_and_non_dirs_replace_each_other_only_when_allowed() {
    let (d, scope) = root_with_target();
    let t = d.path().join("target");
    std::fs::create_dir_all(t.join("was-dir/inside")).unwrap();
    std::fs::write(t.join("was-file"), "old").unwrap();
    let file_over_dir = tar().file("was-dir", 0o644, b"new").finish();
    let dir_over_file = tar().dir("was-file/", 0o755).finish();

    let e = put(&scope, "/target", true, &file_over_dir).unwrap_err();
    assert_eq!(
        e,
        "cannot overwrite directory \"/target/was-dir\" with non-directory \"was-dir\""
    );
    let e = put(&scope, "/target", true, &dir_over_file).unwrap_err();
    assert_eq!(
        e,
        "cannot overwrite non-directory \"/target/was-file\" with directory \"was-file/\""
    );
    assert!(t.join("was-dir/inside").is_dir() && t.join("was-file").is_file());

    put(&scope, "/target", false, &file_over_dir).unwrap();
    put(&scope, "/target", false, &dir_over_file).unwrap();
    assert_eq!(std::fs::read(t.join("was-dir")).unwrap(), b"new");
    assert!(t.join("was-file").is_dir());
}

#[test]
fn missing_paths_and_non_directories_get_dockers_messages() {
    let (d, scope) = root_with_target();
    std::fs::write(d.path().join("file"), "x").unwrap();
    let tar = raw_entry(b"f", EntryType::Regular, b"");
    assert_eq!(
        put(&scope, "/nope", false, &tar).unwrap_err(),
        "Could not find the file /nope in container"
    );
    assert_eq!(
        put(&scope, "/file", false, &tar).unwrap_err(),
        "extraction point is not a directory"
    );
    assert_eq!(
        get(&scope, "/nope/x").unwrap_err(),
        "Could not find the file /nope/x in container"
    );
    // The root of the container is archived as ".".
    let (order, _) = tar_entries(&get(&scope, "/").unwrap());
    assert_eq!(order[..2], ["./", "file"]);
    // Trailing bytes after the archive's end are read, not left for the sender to block on.
    let mut padded = tar.clone();
    padded.extend_from_slice(&[7u8; 10_000]);
    put(&scope, "/target", false, &padded).unwrap();
    assert_eq!(
        std::fs::metadata(d.path().join("target/f")).unwrap().len(),
        1
    );
}
