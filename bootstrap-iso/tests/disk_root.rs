//! The image disk's root holds what the root filesystem holds: mke2fs's own `lost+found` is not
//! left in a container's root (docker shows none), one the image has is kept, and the
//! filesystem checks clean either way.

use std::path::{Path, PathBuf};
use std::process::Command;

use bootstrap::disk;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("disk-root-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `ls /path` inside the disk, by debugfs: the names, `.` and `..` left out.
fn ls(raw: &Path, dir: &str) -> Vec<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("ls -p {dir}"))
        .arg(raw)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // -p: /inode/mode/uid/gid/name/size/ per entry.
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn fsck_clean(raw: &Path) {
    let out = Command::new("e2fsck").arg("-fn").arg(raw).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk of a root holding one file at `dir/name`: its root and that directory listed, and
/// checked clean.
fn disk_with_one_file(tag: &str, dir: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let d = scratch(tag);
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join(dir)).unwrap();
    std::fs::write(root.join(dir).join(name), "content\n").unwrap();
    let raw = d.join("disk.raw");
    disk::ext4_from_dir(&root, &raw, "containerfs", 0).unwrap();
    let listed = (ls(&raw, "/"), ls(&raw, &format!("/{dir}")));
    fsck_clean(&raw);
    let _ = std::fs::remove_dir_all(&d);
    listed
}

#[test]
fn mkfs_lost_and_found_is_not_in_the_containers_root_and_the_disk_checks_clean() {
    assert_eq!(
        disk_with_one_file("none", "etc", "passwd"),
        (vec!["etc".to_string()], vec!["passwd".to_string()])
    );
}

#[test]
fn an_images_own_lost_and_found_is_kept_with_its_content() {
    assert_eq!(
        disk_with_one_file("own", "lost+found", "kept"),
        (vec!["lost+found".to_string()], vec!["kept".to_string()])
    );
}
