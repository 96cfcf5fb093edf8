use super::*;
use serde_json::json;

fn parsed(body: Value) -> Result<Vec<MountOption>, String> {
    parse(&body, &ImageConfig::default()).map_err(|e| e.to_string())
}

fn binds(binds: &[&str]) -> Result<Vec<MountOption>, String> {
    parsed(json!({"HostConfig": {"Binds": binds}}))
}

#[test]
fn dash_v_names_a_volume_with_its_mode_and_cleans_the_path() {
    let m = binds(&[
        "data:/var/lib//data/:ro",
        "cache:/cache:nocopy,rw",
        "logs:/logs",
    ])
    .unwrap();
    assert_eq!(
        m[0],
        MountOption {
            kind: MountKind::Volume,
            name: "data".into(),
            destination: "/var/lib/data".into(),
            read_only: true,
            copy: true,
            ..Default::default()
        }
    );
    assert!(!m[1].copy && !m[1].read_only);
    assert!(m[2].copy && !m[2].read_only && !m[2].anonymous);
    let anon = binds(&["/scratch"]).unwrap();
    assert!(anon[0].anonymous && anon[0].name.is_empty());
}

#[test]
fn host_paths_are_refused_saying_why() {
    for e in [
        binds(&["/etc:/x"]).unwrap_err(),
        parsed(
            json!({"HostConfig": {"Mounts": [{"Type": "bind", "Source": "/srv", "Target": "/x"}]}}),
        )
        .unwrap_err(),
    ] {
        assert!(
            e.starts_with("bind mounts of host paths are not supported (")
                && e.contains("a containerVM shares no filesystem with the host")
                && e.contains("-v NAME:PATH"),
            "{e}"
        );
    }
    assert!(binds(&["/etc:/x"]).unwrap_err().contains("(/etc:/x)"));
}

#[test]
fn bad_specs_get_dockerds_words() {
    let cases: [(&[&str], &str); 8] = [
        (&[":/x"], "invalid volume specification: ':/x'"),
        (&["/x:ro"], "invalid volume specification: '/x:ro'"),
        (&["a:b:c:d"], "invalid volume specification: 'a:b:c:d'"),
        (&["data:/x:rx"], "invalid mode: rx"),
        (&["data:/x:ro,rw"], "invalid mode: ro,rw"),
        (
            &["data:x"],
            "invalid volume specification: 'data:x': invalid mount config for type \"volume\": \
             invalid mount path: 'x' mount path must be absolute",
        ),
        (
            &["data:/"],
            "invalid volume specification: 'data:/': invalid mount config for type \"volume\": \
             invalid specification: destination can't be '/'",
        ),
        (&["aa:/x", "bb:/x/"], "Duplicate mount point: /x"),
    ];
    for (spec, want) in cases {
        assert_eq!(binds(spec).unwrap_err(), want, "{spec:?}");
    }
    let e = binds(&["a b:/x"]).unwrap_err();
    assert!(
        e.starts_with("create a b: \"a b\" includes invalid characters for a local volume name"),
        "{e}"
    );
    let e = binds(&["vol:/a", "vol:/b"]).unwrap_err();
    assert!(e.contains("volume vol is mounted at both /a and /b"), "{e}");
}

#[test]
fn dash_dash_mount_takes_volumes_and_tmpfs() {
    let m = parsed(json!({"HostConfig": {"Mounts": [
        {"Type": "volume", "Source": "db", "Target": "/db", "ReadOnly": true,
         "VolumeOptions": {"NoCopy": true, "Labels": {"a": "b"},
                           "DriverConfig": {"Name": "local", "Options": {"size": "64m"}}}},
        {"Type": "volume", "Target": "/anon"},
        {"Type": "tmpfs", "Target": "/run/t", "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1777}},
    ]}}))
    .unwrap();
    assert_eq!(
        (m[0].name.as_str(), m[0].read_only, m[0].copy),
        ("db", true, false)
    );
    assert_eq!(m[0].create_options["size"], "64m");
    assert_eq!(m[0].create_labels["a"], "b");
    assert!(m[1].anonymous);
    assert_eq!(m[2].kind, MountKind::Tmpfs);
    assert_eq!(
        m[2].options,
        "rw,noexec,nosuid,nodev,mode=1777,size=1048576"
    );
    let cases = [
        (
            json!({"Type": "volume"}),
            "invalid mount config for type \"volume\": field Target must not be empty",
        ),
        (
            json!({"Type": "tmpfs", "Source": "x", "Target": "/t"}),
            "invalid mount config for type \"tmpfs\": field Source must not be specified",
        ),
        (
            json!({"Type": "tmpfs", "Target": "/t", "VolumeOptions": {}}),
            "invalid mount config for type \"tmpfs\": field VolumeOptions must not be specified",
        ),
        (
            json!({"Type": "weird", "Target": "/t"}),
            "invalid mount config for type \"weird\": mount type unknown",
        ),
        (
            json!({"Type": "volume", "Source": "vol", "Target": "/t", "VolumeOptions": {"DriverConfig": {"Name": "nfs"}}}),
            "create vol: error looking up volume plugin nfs: plugin \"nfs\" not found",
        ),
    ];
    for (m, want) in cases {
        let e = parsed(json!({"HostConfig": {"Mounts": [m]}})).unwrap_err();
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn dash_dash_tmpfs_gets_dockers_defaults_then_its_own_options() {
    let m = parsed(json!({"HostConfig": {"Tmpfs": {"/run/a": "", "/run/b": "size=64m,exec"}}}))
        .unwrap();
    assert_eq!(m[0].options, "rw,noexec,nosuid,nodev");
    assert_eq!(m[1].options, "rw,noexec,nosuid,nodev,size=64m,exec");
    let e = parsed(json!({"HostConfig": {"Tmpfs": {"/run/a": "bogus"}}})).unwrap_err();
    assert!(
        e.starts_with("invalid tmpfs options for /run/a: unknown option \"bogus\""),
        "{e}"
    );
    let e = parsed(json!({"HostConfig": {"Binds": ["vol:/t"], "Tmpfs": {"/t": ""}}})).unwrap_err();
    assert_eq!(e, "Duplicate mount point: /t");
}

#[test]
fn image_volumes_become_anonymous_volumes_where_nothing_else_is_mounted() {
    let image = ImageConfig {
        volumes: vec!["/data".into(), "/var/log".into()],
        ..Default::default()
    };
    let body = json!({"Volumes": {"/extra": {}}, "HostConfig": {"Binds": ["named:/data"]}});
    let m = parse(&body, &image).unwrap();
    let view: Vec<(&str, &str, bool)> = m
        .iter()
        .map(|o| (o.destination.as_str(), o.name.as_str(), o.anonymous))
        .collect();
    assert_eq!(
        view,
        [
            ("/data", "named", false),
            ("/extra", "", true),
            ("/var/log", "", true)
        ]
    );
    assert!(m.iter().all(|o| o.copy));
}
