use super::*;
use crate::os::recording::Recording;

fn ext4_image(label: &str) -> Vec<u8> {
    let mut img = vec![0u8; 2048];
    img[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
    img[1024 + 0x78..1024 + 0x78 + label.len()].copy_from_slice(label.as_bytes());
    img
}

#[test]
fn finds_the_labelled_disk_among_others() {
    let os = Recording::default();
    os.file("/sys/class/block/vda/dev", b"");
    os.file("/sys/class/block/vdb/dev", b"");
    os.file("/dev/vda", &ext4_image("scratch"));
    os.file("/dev/vdb", &ext4_image("containerfs"));
    let dev = find_disk(&os, "containerfs", Duration::from_secs(1)).unwrap();
    assert_eq!(dev, PathBuf::from("/dev/vdb"));
}

#[test]
fn waits_for_a_late_disk_then_gives_up_naming_what_it_saw() {
    let os = Recording::default();
    os.file("/sys/class/block/vda/dev", b"");
    os.file("/dev/vda", &ext4_image("other"));
    os.appear_at
        .borrow_mut()
        .push((300, "/sys/class/block/vdb/dev".into(), vec![]));
    os.appear_at
        .borrow_mut()
        .push((300, "/dev/vdb".into(), ext4_image("containerfs")));
    assert_eq!(
        find_disk(&os, "containerfs", Duration::from_secs(1)).unwrap(),
        PathBuf::from("/dev/vdb")
    );
    assert!(*os.clock_ms.borrow() >= 300);

    let os = Recording::default();
    os.file("/sys/class/block/vda/dev", b"");
    os.file("/dev/vda", &ext4_image("other"));
    os.file("/sys/class/block/sr0/dev", b"");
    let e = find_disk(&os, "containerfs", Duration::from_millis(500)).unwrap_err();
    let BootError::DiskNotFound {
        label,
        waited,
        seen,
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(
        (label.as_str(), *waited),
        ("containerfs", Duration::from_millis(500))
    );
    assert_eq!(seen, &["sr0 (no ext4 label)", "vda (ext4 label \"other\")"]);
    assert_eq!(
        e.to_string(),
        "no disk labelled \"containerfs\" appeared within 500 ms; block devices seen: \
         sr0 (no ext4 label), vda (ext4 label \"other\"). Attach the image disk \
         (bootstrap-iso disk labels it \"containerfs\")"
    );
    assert_eq!(*os.clock_ms.borrow(), 500, "the wait is bounded");
}

#[test]
fn config_from_fw_cfg_then_cmdline_else_a_clear_error() {
    let os = Recording::default();
    os.file(FW_CFG_PATH, b"a = \"1\"");
    assert_eq!(read_config(&os).unwrap(), "a = \"1\"");
    let os = Recording::default();
    os.file(
        "/proc/cmdline",
        b"console=ttyS0 tether.config=/cfg.vmx quiet",
    );
    os.file("/cfg.vmx", b"b = \"2\"");
    assert_eq!(read_config(&os).unwrap(), "b = \"2\"");
    let os = Recording::default();
    os.file("/proc/cmdline", b"tether.config=/gone.vmx");
    let e = read_config(&os).unwrap_err();
    assert!(
        matches!(&e, BootError::ConfigMissing { looked } if looked == &[FW_CFG_PATH, "/gone.vmx"]),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "config: no config found (looked at {FW_CFG_PATH}, /gone.vmx); pass it with \
             -fw_cfg name=opt/org.tether/config,file=..."
        )),
        "{e}"
    );
    let os = Recording::default();
    os.file(FW_CFG_PATH, b"\xff\xfe");
    assert!(matches!(
        read_config(&os),
        Err(BootError::ConfigNotUtf8 { path }) if path == FW_CFG_PATH
    ));
}

#[test]
fn container_root_gets_its_own_dev_without_the_channel() {
    let os = Recording::default();
    let mut spec = guestinfo::spec_from_vmx(&guestinfo::spec_to_vmx(&sample())).unwrap();
    spec.hostname = Some("web".into());
    spec.domainname = Some("example.com".into());
    let root = prepare_root(&os, Path::new("/dev/vdb"), &spec, &[]).unwrap();
    assert_eq!(root, PathBuf::from(NEW_ROOT));
    let calls = os.calls();
    assert!(calls.contains(&"mount /dev/vdb /mnt/containerfs ext4 noinit_itable".to_string()));
    assert!(calls.contains(&"mknod /mnt/containerfs/dev/null 666 1:3".to_string()));
    assert!(calls
        .iter()
        .any(|c| c.starts_with("mount devpts /mnt/containerfs/dev/pts devpts newinstance")));
    assert!(calls.contains(&"sethostname web.example.com".to_string()));
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("vport") || c.contains("ttyS")),
        "no channel device in the container's /dev"
    );
    let hosts = os
        .read_file(Path::new("/mnt/containerfs/etc/hosts"))
        .unwrap();
    assert!(String::from_utf8(hosts)
        .unwrap()
        .contains("127.0.1.1\tweb.example.com web\n"));
}

#[test]
fn a_maintenance_boot_writes_nothing_into_the_root() {
    let os = Recording::default();
    let mut spec = sample();
    if let Some(main) = spec.sessions.get_mut("abc") {
        main.builtin = guestinfo::spec::BUILTIN_HOLD.into();
    }
    prepare_root(&os, Path::new("/dev/vdb"), &spec, &[]).unwrap();
    let calls = os.calls();
    // Only the disk is mounted: no kernel filesystem over the layer's own proc/, sys/, dev/,
    // no device nodes, no mount points made.
    let mounts: Vec<&String> = calls.iter().filter(|c| c.starts_with("mount ")).collect();
    assert_eq!(mounts.len(), 1, "{calls:?}");
    assert!(mounts[0].contains("/dev/vdb"), "{mounts:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("mknod") || c.starts_with("mkdir /mnt/containerfs/")),
        "{calls:?}"
    );
    assert!(
        os.read_file(Path::new("/mnt/containerfs/etc/hosts"))
            .is_err(),
        "no /etc/hosts written into a layer being built: {calls:?}"
    );
    assert!(os
        .read_file(Path::new("/mnt/containerfs/etc/hostname"))
        .is_err());
}

#[test]
fn a_failing_mount_is_an_error_naming_it() {
    let os = Recording::default();
    os.failing.borrow_mut().push("mount /dev/vdb".into());
    let e = prepare_root(&os, Path::new("/dev/vdb"), &sample(), &[]).unwrap_err();
    let BootError::ImageDisk { disk, source } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(disk, Path::new("/dev/vdb"));
    assert!(
        matches!(&**source, BootError::Mount { fstype, target, source }
            if fstype == "ext4" && target == Path::new(NEW_ROOT)
                && source.raw_os_error() == Some(libc::EIO)),
        "{source:?}"
    );
    assert_eq!(
        e.to_string(),
        "mounting the image disk /dev/vdb: mount ext4 on /mnt/containerfs: EIO: I/O error"
    );

    // A later step names its own object, inside the container.
    let os = Recording::default();
    os.failing
        .borrow_mut()
        .push("write /mnt/containerfs/etc/hosts".into());
    let e = prepare_root(&os, Path::new("/dev/vdb"), &sample(), &[]).unwrap_err();
    assert!(
        matches!(&e, BootError::Write { path, .. } if path == "/etc/hosts"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "writing /etc/hosts: EIO: I/O error");
}

#[test]
fn extra_hosts_follow_tethers_own_entries_in_order() {
    let os = Recording::default();
    let mut spec = sample();
    spec.hostname = Some("web".into());
    spec.extra_hosts = vec![
        "db:10.0.0.5".into(),
        "v6:2001:db8::1".into(),
        "br:[fd00::2]".into(),
        "gw:host-gateway".into(),
        "db:10.0.0.6".into(),
    ];
    prepare_root(&os, Path::new("/dev/vdb"), &spec, &[]).unwrap();
    let hosts = os
        .read_file(Path::new("/mnt/containerfs/etc/hosts"))
        .unwrap();
    assert_eq!(
        String::from_utf8(hosts).unwrap(),
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb web\n\
         10.0.0.5\tdb\n2001:db8::1\tv6\nfd00::2\tbr\nhost-gateway\tgw\n10.0.0.6\tdb\n"
    );
}

#[test]
fn a_malformed_extra_host_is_a_boot_error_naming_it_before_any_mount() {
    for (entry, problem) in [
        ("db10.0.0.5", "no ':'"),
        (":10.0.0.5", "the name is empty"),
        ("db:", "the address is empty"),
        ("db:[]", "the address is empty"),
        (
            "db x:10.0.0.5",
            "it contains whitespace or a control character",
        ),
        (
            "db:10.0.0.5\n6.6.6.6 evil",
            "it contains whitespace or a control character",
        ),
    ] {
        let os = Recording::default();
        let mut spec = sample();
        spec.extra_hosts = vec!["ok:10.0.0.1".into(), entry.into()];
        let e = prepare_root(&os, Path::new("/dev/vdb"), &spec, &[]).unwrap_err();
        assert!(
            matches!(&e, BootError::ExtraHost { entry: got, problem: p } if got == entry && *p == problem),
            "{entry:?}: {e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("config network/hosts: entry {entry:?} is not NAME:ADDR: {problem}")
        );
        assert!(os.calls().is_empty(), "nothing done: {:?}", os.calls());
    }
}

#[test]
fn switch_root_moves_the_image_onto_slash() {
    let os = Recording::default();
    switch_root(&os, Path::new(NEW_ROOT)).unwrap();
    assert_eq!(
        os.calls(),
        [
            "chdir /mnt/containerfs",
            "move /mnt/containerfs /",
            "chroot .",
            "chdir /"
        ]
    );
}

#[test]
fn a_disk_being_built_is_mounted_without_journal_or_atime_and_gets_nothing_added() {
    let mut spec = sample();
    assert_eq!(image_disk_mount(&spec), (0, "noinit_itable"));
    for builtin in [
        guestinfo::spec::BUILTIN_HOLD,
        guestinfo::spec::BUILTIN_HOLD_BUILD,
    ] {
        spec.sessions.get_mut("abc").unwrap().builtin = builtin.into();
        let os = Recording::default();
        prepare_root(&os, Path::new("/dev/vdb"), &spec, &[]).unwrap();
        let mounts: Vec<String> = os
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount ") || c.starts_with("mknod ") || c.contains("/etc/"))
            .collect();
        let data = image_disk_mount(&spec).1;
        assert_eq!(
            mounts,
            [format!("mount /dev/vdb /mnt/containerfs ext4 {data}")]
        );
    }
    // The build hold's: ext4's noload (no journal on a clean filesystem) and MS_NOATIME.
    assert_eq!(
        image_disk_mount(&spec),
        (libc::MS_NOATIME, "noinit_itable,noload")
    );
    spec.sessions.get_mut("abc").unwrap().builtin = guestinfo::spec::BUILTIN_HOLD.into();
    assert_eq!(image_disk_mount(&spec), (0, "noinit_itable"));
}

fn sample() -> ContainerSpec {
    let main = guestinfo::SessionSpec {
        id: "abc".into(),
        path: "/bin/true".into(),
        args: vec!["/bin/true".into()],
        dir: "/".into(),
        stop_signal: "SIGTERM".into(),
        ..Default::default()
    };
    ContainerSpec {
        id: "abc".into(),
        name: String::new(),
        debug: 1,
        hostname: None,
        domainname: None,
        secret: b"s".to_vec(),
        channel_device: None,
        disk_label: guestinfo::contract::DEFAULT_DISK_LABEL.into(),
        disk_wait_ms: 100,
        stop_grace_ms: 100,
        dns: vec![],
        dns_search: vec![],
        extra_hosts: vec![],
        networks: Default::default(),
        sessions: [("abc".to_string(), main)].into(),
        execs: Default::default(),
        mounts: Default::default(),
    }
}
