use super::*;
use crate::boot::NEW_ROOT;
use crate::os::recording::Recording;
use crate::os::FileStat;
use guestinfo::SessionSpec;

const LABEL: &str = "tv0123456789abcd";

fn ext4_image(label: &str) -> Vec<u8> {
    let mut img = vec![0u8; 2048];
    img[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
    img[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
    img
}

const DIR: FileStat = FileStat {
    is_dir: true,
    uid: 0,
    gid: 0,
    mode: 0o755,
};

/// The image disk on vda, the volume's on vdb (a fresh filesystem: only lost+found), and the
/// image's own directory at `/etc`.
fn guest() -> Recording {
    let os = Recording::default();
    os.file("/sys/class/block/vda/dev", b"");
    os.file("/sys/class/block/vdb/dev", b"");
    os.file("/dev/vda", &ext4_image("containerfs"));
    os.file("/dev/vdb", &ext4_image(LABEL));
    os.file(&format!("/volumes/{LABEL}/lost+found/.x"), b"");
    os.stat_as(&format!("{NEW_ROOT}/etc"), DIR);
    os
}

fn spec(mounts: &[(&str, MountSpec)]) -> ContainerSpec {
    ContainerSpec {
        id: "abc".into(),
        secret: b"s".to_vec(),
        disk_wait_ms: 500,
        sessions: [(
            "abc".to_string(),
            SessionSpec {
                id: "abc".into(),
                path: "/bin/true".into(),
                ..Default::default()
            },
        )]
        .into(),
        mounts: mounts
            .iter()
            .map(|(id, m)| (id.to_string(), m.clone()))
            .collect(),
        ..Default::default()
    }
}

fn volume(dest: &str, ro: bool, copy: CopyMode) -> MountSpec {
    MountSpec::volume(LABEL, dest, ro, copy)
}

fn calls_from(os: &Recording, first: &str) -> Vec<String> {
    let calls = os.calls();
    let i = calls
        .iter()
        .position(|c| c.starts_with(first))
        .unwrap_or_else(|| panic!("no {first:?} in {calls:#?}"));
    calls[i..].to_vec()
}

#[test]
fn a_fresh_volume_is_filled_from_the_image_then_its_data_bound_onto_the_destination() {
    let os = guest();
    let s = spec(&[("v", volume("/etc", false, CopyMode::New))]);
    let ro = mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    assert!(ro.is_empty());
    let staging = format!("/volumes/{LABEL}");
    assert_eq!(
        calls_from(&os, "mkdir /volumes"),
        [
            format!("mkdir {staging}"),
            format!("mount /dev/vdb {staging} ext4 noinit_itable"),
            format!("mkdir {staging}/data"),
            format!("copy {NEW_ROOT}/etc {staging}/data.copying"),
            format!("rename {staging}/data.copying {staging}/data"),
            format!("mkdir {NEW_ROOT}/etc"),
            format!("mount {staging}/data {NEW_ROOT}/etc bind "),
            format!("umount {staging}"),
            format!("rmdir {staging}"),
        ]
    );
}

#[test]
fn a_used_volume_a_nocopy_one_and_a_new_mount_point_are_not_copied_into() {
    // The data directory holds files: the volume keeps them.
    let os = guest();
    os.stat_as(&format!("/volumes/{LABEL}/data"), DIR);
    os.file(&format!("/volumes/{LABEL}/data/hosts"), b"mine");
    let s = spec(&[("v", volume("/etc", false, CopyMode::New))]);
    mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    assert!(
        !os.calls().iter().any(|c| c.starts_with("copy")),
        "{:#?}",
        os.calls()
    );
    assert!(
        !os.calls().iter().any(|c| c.ends_with("/data")),
        "data exists: not made"
    );

    // nocopy (CopyNever): an empty volume stays empty.
    let os = guest();
    let s = spec(&[("v", volume("/etc", false, CopyMode::Never))]);
    mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    assert!(!os.calls().iter().any(|c| c.starts_with("copy")));

    // Nothing in the image at the destination: a mount point is made, nothing copied.
    let os = guest();
    let s = spec(&[("v", volume("/srv/data", false, CopyMode::New))]);
    mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    let calls = os.calls();
    assert_eq!(calls[0], format!("mkdir {NEW_ROOT}/srv/data"), "{calls:#?}");
    assert!(!calls.iter().any(|c| c.starts_with("copy")));
    assert!(calls.contains(&format!(
        "mount /volumes/{LABEL}/data {NEW_ROOT}/srv/data bind "
    )));
}

#[test]
fn an_unfinished_copy_is_thrown_away_and_made_again() {
    let os = guest();
    // `data` is made before a copy starts: a boot cut short mid-copy left both.
    os.stat_as(&format!("/volumes/{LABEL}/data"), DIR);
    os.stat_as(&format!("/volumes/{LABEL}/data.copying"), DIR);
    os.file(&format!("/volumes/{LABEL}/data.copying/half"), b"");
    let s = spec(&[("v", volume("/etc", false, CopyMode::New))]);
    mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    let calls = calls_from(&os, &format!("rm -r /volumes/{LABEL}/data.copying"));
    assert!(calls[1..]
        .iter()
        .any(|c| c.starts_with(&format!("copy {NEW_ROOT}/etc"))));
}

#[test]
fn a_disk_made_elsewhere_without_a_data_directory_is_bound_whole() {
    let os = guest();
    os.file(&format!("/volumes/{LABEL}/theirs.db"), b"");
    let s = spec(&[("v", volume("/etc", false, CopyMode::New))]);
    mount_all(&os, Path::new(NEW_ROOT), &s).unwrap();
    let calls = os.calls();
    assert!(calls.contains(&format!("mount /volumes/{LABEL} {NEW_ROOT}/etc bind ")));
    assert!(!calls.iter().any(|c| c.starts_with("copy")));
}

#[test]
fn a_missing_disk_is_an_error_naming_the_label_and_destination_after_a_bounded_wait() {
    let os = guest();
    let s = spec(&[(
        "v",
        MountSpec::volume("nosuchlabel", "/data", false, CopyMode::New),
    )]);
    let e = mount_all(&os, Path::new(NEW_ROOT), &s).unwrap_err();
    assert!(
        matches!(&e, BootError::Volume(v) if matches!(&**v, VolumeError::DiskNotFound { label, .. } if label == "nosuchlabel")),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "volume for /data: no disk labelled \"nosuchlabel\" appeared within 500 ms; block \
             devices seen: vda (ext4 label \"containerfs\"), vdb (ext4 label \"{LABEL}\"). The \
             appliance attaches each volume's disk at boot: check that the volume exists and \
             that its disk is intact"
        )
    );
    assert_eq!(*os.clock_ms.borrow(), 500, "the wait is bounded");
    assert!(!os.calls().iter().any(|c| c.starts_with("mount")));
}

#[test]
fn a_file_at_the_destination_is_refused_and_a_failed_copy_leaves_nothing_mounted() {
    let os = guest();
    os.stat_as(
        &format!("{NEW_ROOT}/etc/passwd"),
        FileStat {
            is_dir: false,
            ..DIR
        },
    );
    let s = spec(&[("v", volume("/etc/passwd", false, CopyMode::New))]);
    let e = mount_all(&os, Path::new(NEW_ROOT), &s).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "volume \"{LABEL}\" for /etc/passwd: the image has a file there, not a directory; a \
             volume can only be mounted on a directory"
        )
    );
    assert!(os.calls().is_empty(), "{:#?}", os.calls());

    let os = guest();
    os.failing.borrow_mut().push("copy".into());
    let s = spec(&[("v", volume("/etc", false, CopyMode::New))]);
    let e = mount_all(&os, Path::new(NEW_ROOT), &s).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("volume \"{LABEL}\" for /etc: copying the image's files into it: EIO: I/O error")
    );
    let calls = calls_from(&os, "copy");
    assert_eq!(
        calls[1..],
        [
            format!("umount /volumes/{LABEL}"),
            format!("rmdir /volumes/{LABEL}")
        ],
        "the staging mount is dropped and nothing bound"
    );
}

#[test]
fn nested_destinations_mount_parents_first_and_read_only_is_applied_after_etc_is_written() {
    let os = guest();
    os.file("/sys/class/block/vdc/dev", b"");
    os.file("/dev/vdc", &ext4_image("inner"));
    os.file("/volumes/inner/lost+found/.x", b"");
    let s = spec(&[
        (
            "inner",
            MountSpec::volume("inner", "/etc/app", true, CopyMode::New),
        ),
        ("outer", volume("/etc", true, CopyMode::New)),
        (
            "tmpfs:/etc/app/run",
            MountSpec {
                source: MountSource::Tmpfs,
                destination: "/etc/app/run".into(),
                mode: "rw,noexec,nosuid,size=64m,mode=1777".into(),
                copy: CopyMode::Never,
            },
        ),
    ]);
    crate::boot::prepare_root(&os, Path::new("/dev/vda"), &s, &[]).unwrap();
    let calls = os.calls();
    let at = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {calls:#?}"))
    };
    let outer = at(&format!("mount /volumes/{LABEL}/data {NEW_ROOT}/etc bind"));
    let inner = at(&format!(
        "mount /volumes/inner/data {NEW_ROOT}/etc/app bind"
    ));
    let tmpfs = at(&format!(
        "mount tmpfs {NEW_ROOT}/etc/app/run tmpfs size=64m,mode=1777"
    ));
    let hosts = at(&format!("write {NEW_ROOT}/etc/hosts"));
    let sealed = at(&format!("remount-bind-ro {NEW_ROOT}/etc"));
    assert!(
        outer < inner && inner < tmpfs && tmpfs < hosts && hosts < sealed,
        "{calls:#?}"
    );
    assert_eq!(
        calls[sealed..sealed + 2],
        [
            format!("remount-bind-ro {NEW_ROOT}/etc"),
            format!("remount-bind-ro {NEW_ROOT}/etc/app"),
        ]
    );
    assert!(!calls.contains(&format!("remount-bind-ro {NEW_ROOT}/etc/app/run")));
}

#[test]
fn tmpfs_options_split_into_flags_and_data() {
    let m = |mode: &str| MountSpec {
        source: MountSource::Tmpfs,
        destination: "/t".into(),
        mode: mode.into(),
        copy: CopyMode::Never,
    };
    let (flags, data) = tmpfs_options(&m("rw,noexec,nosuid,nodev,size=65536k,mode=1777,uid=5"));
    assert_eq!(flags, libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV);
    assert_eq!(data, "size=65536k,mode=1777,uid=5");
    let (flags, data) = tmpfs_options(&m("noexec,exec,ro"));
    assert_eq!((flags, data.as_str()), (0, ""));
}

#[test]
fn release_ends_every_process_then_unmounts_children_first_and_syncs() {
    let os = Recording::default();
    let s = spec(&[
        ("outer", volume("/data", false, CopyMode::New)),
        (
            "inner",
            MountSpec::volume("inner", "/data/sub", false, CopyMode::New),
        ),
    ]);
    os.failing.borrow_mut().push("umount /data/sub".into());
    release(&os, Path::new("/"), &s.mounts);
    assert_eq!(
        os.calls(),
        [
            "kill all",
            "umount /data/sub",
            "remount-ro /data/sub",
            "umount /data",
            "sync"
        ]
    );
    // No mounts: shutdown is as before, no process is killed here.
    let os = Recording::default();
    release(&os, Path::new("/"), &BTreeMap::new());
    assert!(os.calls().is_empty());
}
