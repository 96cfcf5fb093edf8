use super::*;
use crate::testing::{mode_and_mtime, TestDir};
use std::os::unix::fs::PermissionsExt;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn set_attr(p: &Path, name: &str, value: &[u8]) {
    set_xattrs(p, &vec![(CString::new(name).unwrap(), value.to_vec())]).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// An image directory with one of each kind of entry a volume's first use must keep.
fn image_dir(src: &Path) {
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::write(src.join("passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    std::fs::write(src.join("sub/deeper/setuid"), "#!/bin/sh\n").unwrap();
    chmod(&src.join("sub/deeper/setuid"), 0o4755);
    std::fs::write(src.join("shadow"), "secret\n").unwrap();
    chmod(&src.join("shadow"), 0o640);
    std::fs::write(src.join("a"), "linked").unwrap();
    std::fs::hard_link(src.join("a"), src.join("sub/b")).unwrap();
    std::os::unix::fs::symlink("/etc/absolute-and-dangling", src.join("link")).unwrap();
    std::os::unix::fs::symlink("../passwd", src.join("sub/rel")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    // 8 MiB with 4 bytes of data in the middle and a hole at the end.
    let sparse = File::create(src.join("sparse")).unwrap();
    sparse.write_all_at(b"data", 4 << 20).unwrap();
    sparse.set_len(8 << 20).unwrap();
    set_attr(&src.join("passwd"), "user.origin", b"image\0bytes");
    chmod(&src.join("sub"), 0o2750);
    if root() {
        std::os::unix::fs::lchown(src.join("shadow"), Some(0), Some(42)).unwrap();
        std::os::unix::fs::lchown(src.join("sub"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(src.join("link"), Some(7), Some(8)).unwrap();
        set_attr(&src.join("shadow"), "trusted.note", b"t");
    }
    // Times last: the steps above touched the directories.
    for p in ["passwd", "sub", "link", "sub/deeper/setuid"] {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join(p),
            &TimeSpec::new(1_000_000, 5),
            &TimeSpec::new(1_500_000_000, 123_456_789),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

#[test]
fn a_copy_keeps_owners_modes_times_xattrs_links_and_holes() {
    let dir = TestDir::new("copy-tree");
    let src = dir.path().join("image-etc");
    let dst = dir.path().join("volume-data");
    std::fs::create_dir(&src).unwrap();
    chmod(&src, 0o1775);
    image_dir(&src);
    copy_tree(&src, &dst).unwrap();

    for p in [
        "",
        "passwd",
        "shadow",
        "sub",
        "sub/deeper/setuid",
        "fifo",
        "sparse",
    ] {
        assert_eq!(
            mode_and_mtime(&dst.join(p)),
            mode_and_mtime(&src.join(p)),
            "mode and mtime of {p:?}"
        );
        assert_eq!(owner(&dst.join(p)), owner(&src.join(p)), "owner of {p:?}");
    }
    assert_eq!(
        mode_and_mtime(&dst).0,
        0o1775,
        "the root takes the image dir's mode"
    );
    assert_eq!(mode_and_mtime(&dst.join("sub")).1, 1_500_000_000);
    let mtime_ns = |p: &Path| std::fs::symlink_metadata(p).unwrap().mtime_nsec();
    assert_eq!(mtime_ns(&dst.join("passwd")), 123_456_789);
    assert_eq!(
        std::fs::read(dst.join("passwd")).unwrap(),
        b"root:x:0:0::/:/bin/sh\n"
    );
    assert_eq!(
        xattrs(&dst.join("passwd")).unwrap(),
        vec![(
            CString::new("user.origin").unwrap(),
            b"image\0bytes".to_vec()
        )]
    );
    // Links: the pair shares an inode, symlinks stay symlinks with their own owner and time.
    let ino = |p: &str| std::fs::metadata(dst.join(p)).unwrap().ino();
    assert_eq!(ino("a"), ino("sub/b"));
    assert_eq!(std::fs::metadata(dst.join("a")).unwrap().nlink(), 2);
    assert_eq!(
        std::fs::read_link(dst.join("link")).unwrap(),
        Path::new("/etc/absolute-and-dangling")
    );
    assert_eq!(
        std::fs::read_link(dst.join("sub/rel")).unwrap(),
        Path::new("../passwd")
    );
    assert_eq!(owner(&dst.join("link")), owner(&src.join("link")));
    assert_eq!(mode_and_mtime(&dst.join("link")).1, 1_500_000_000);
    assert!(std::fs::symlink_metadata(dst.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // The sparse file: the same bytes, and about one block of them on disk, not 8 MiB.
    let data = std::fs::read(dst.join("sparse")).unwrap();
    assert_eq!(data.len(), 8 << 20);
    assert_eq!(&data[4 << 20..(4 << 20) + 4], b"data");
    assert_eq!(data.iter().filter(|&&b| b != 0).count(), 4);
    let blocks = std::fs::metadata(dst.join("sparse")).unwrap().blocks();
    assert!(
        blocks * 512 <= 64 * 1024,
        "{blocks} blocks: the holes were filled"
    );
    if root() {
        assert_eq!(owner(&dst.join("shadow")), (0, 42));
        assert_eq!(owner(&dst.join("sub")), (1000, 1000));
        assert_eq!(owner(&dst.join("link")), (7, 8));
        assert!(xattrs(&dst.join("shadow"))
            .unwrap()
            .contains(&(CString::new("trusted.note").unwrap(), b"t".to_vec())));
    } else {
        eprintln!("not root: owners other than ours and trusted.* attributes not checked");
    }
}

#[test]
fn a_copy_refuses_a_target_that_exists_and_a_source_that_is_no_directory() {
    let dir = TestDir::new("copy-refuses");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let existing = dir.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    let e = copy_tree(&src, &existing).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert!(
        e.to_string().contains("existing"),
        "the error names the path: {e}"
    );
    let e = copy_tree(&src.join("f"), &dir.path().join("new")).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    assert!(!dir.path().join("new").exists());
}
