//! The spec decoder on VIC-style key sets, well-formed and malformed.

use guestinfo::{spec_from_vmx, spec_to_vmx, ConfigError, ContainerSpec, Rlimit, SessionSpec};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

const VIC_STYLE: &str = r#"
guestinfo.vice./common/id = "0123456789abcdef0123"
guestinfo.vice./common/name = "web"
guestinfo.vice./channel/secret@secret = "c2VjcmV0"
guestinfo.vice./sessions = "0123456789abcdef0123"
guestinfo.vice./sessions|0123456789abcdef0123/common/id = "0123456789abcdef0123"
guestinfo.vice./sessions|0123456789abcdef0123/cmd/Path = "/bin/sh"
guestinfo.vice./sessions|0123456789abcdef0123/cmd/Args = "2"
guestinfo.vice./sessions|0123456789abcdef0123/cmd/Args~ = "/bin/sh|7C-c|7Cecho a\|7Cb"
guestinfo.vice./sessions|0123456789abcdef0123/cmd/Env@non-persistent = "0"
guestinfo.vice./sessions|0123456789abcdef0123/cmd/Env~@non-persistent = "PATH=/bin:/usr/bin"
guestinfo.vice./sessions|0123456789abcdef0123/tty = "true"
guestinfo.vice./sessions|0123456789abcdef0123/rlimits = "0"
guestinfo.vice./sessions|0123456789abcdef0123/rlimits~ = "NOFILE=1024:4096"
guestinfo.vice./hostname = "<nil>"
"#;

#[test]
fn decodes_a_vic_style_key_set() {
    let spec = spec_from_vmx(VIC_STYLE).unwrap();
    assert_eq!(spec.id, "0123456789abcdef0123");
    assert_eq!(spec.secret, b"secret");
    let main = spec.main_session().unwrap();
    assert_eq!(main.args, ["/bin/sh", "-c", "echo a|b"]);
    assert_eq!(main.env, ["PATH=/bin:/usr/bin"]);
    assert!(main.tty);
    assert_eq!(main.dir, "/");
    assert_eq!(main.stop_signal, "SIGTERM");
    assert_eq!(
        main.rlimits,
        [Rlimit {
            name: "nofile".into(),
            soft: Some(1024),
            hard: Some(4096)
        }]
    );
    assert_eq!(spec.hostname, None);
    assert_eq!(spec.effective_hostname(), "0123456789ab");
    assert_eq!(spec.disk_label, "containerfs");
}

fn err_of(text: &str) -> String {
    spec_from_vmx(text).unwrap_err().to_string()
}

#[test]
fn malformed_key_sets_give_errors_naming_the_key() {
    let without = |needle: &str| {
        VIC_STYLE
            .lines()
            .filter(|l| !l.contains(needle))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = err_of(&without("common/id = "));
    assert!(
        e.contains("guestinfo.vice./common/id") && e.contains("required"),
        "{e}"
    );

    let e = err_of(&without("secret"));
    assert!(
        e.contains("channel/secret") && e.contains("appliance knows"),
        "{e}"
    );

    let e = err_of(&VIC_STYLE.replace("tty = \"true\"", "tty = \"yes\""));
    assert!(e.contains("/tty`") && e.contains("\"yes\""), "{e}");

    // VIC's own bug: an unescaped | inside an arg splits it. The count catches it.
    let e = err_of(&VIC_STYLE.replace("echo a\\|7Cb", "echo a|7Cb"));
    assert!(e.contains("declares 3 item(s) but 4 found"), "{e}");

    let e = err_of(&VIC_STYLE.replace("NOFILE=1024:4096", "NOFILE=lots"));
    assert!(e.contains("rlimits~") && e.contains("\"lots\""), "{e}");

    let e = err_of(&VIC_STYLE.replace(
        "guestinfo.vice./sessions = \"0123456789abcdef0123\"",
        "guestinfo.vice./sessions = \"other\"",
    ));
    assert!(e.contains("sessions|other/cmd/Path"), "{e}");

    let e = err_of(&without("/cmd/Path"));
    assert!(e.contains("cmd/Path") && e.contains("required"), "{e}");

    let e = err_of("guestinfo.vice./common/id = broken");
    assert!(matches!(
        spec_from_vmx("x = broken"),
        Err(ConfigError::Vmx(_))
    ));
    assert!(e.contains("line 1"), "{e}");

    let e = err_of(&VIC_STYLE.replace("secret = \"c2VjcmV0\"", "secret = \"!!\""));
    assert!(e.contains("base64"), "{e}");
}

#[test]
fn extra_hosts_console_size_and_hold_decode() {
    let text = format!(
        "{VIC_STYLE}\
guestinfo.vice./network/hosts = \"2\"
guestinfo.vice./network/hosts~ = \"db:10.0.0.5|7Cv6:2001:db8::1|7Codd\\|7Cname:1.2.3.4\"
guestinfo.vice./sessions|0123456789abcdef0123/rows = \"40\"
guestinfo.vice./sessions|0123456789abcdef0123/cols = \"132\"
"
    );
    let spec = spec_from_vmx(&text).unwrap();
    assert_eq!(
        spec.extra_hosts,
        ["db:10.0.0.5", "v6:2001:db8::1", "odd|name:1.2.3.4"]
    );
    let main = spec.main_session().unwrap();
    assert_eq!((main.rows, main.cols), (40, 132));
    assert!(!main.is_hold() && main.builtin.is_empty());
    assert_eq!(spec_from_vmx(&spec_to_vmx(&spec)).unwrap(), spec);

    // Absent: no extra hosts, no size (0), a program.
    let spec = spec_from_vmx(VIC_STYLE).unwrap();
    assert!(spec.extra_hosts.is_empty());
    let main = spec.main_session().unwrap();
    assert_eq!((main.rows, main.cols, main.builtin.as_str()), (0, 0, ""));

    // A hold session needs no program.
    let hold: String = VIC_STYLE
        .lines()
        .filter(|l| !l.contains("/cmd/"))
        .chain(["guestinfo.vice./sessions|0123456789abcdef0123/builtin = \"hold\""])
        .collect::<Vec<_>>()
        .join("\n");
    let spec = spec_from_vmx(&hold).unwrap();
    let main = spec.main_session().unwrap();
    assert!(main.is_hold());
    assert_eq!((main.path.as_str(), main.args.len()), ("", 0));
    assert_eq!(spec_from_vmx(&spec_to_vmx(&spec)).unwrap(), spec);

    let e = err_of(&hold.replace("= \"hold\"", "= \"sleep\""));
    assert!(
        e.contains("sessions|0123456789abcdef0123/builtin`")
            && e.contains("unknown built-in \"sleep\""),
        "{e}"
    );
    let e = err_of(&text.replace("rows = \"40\"", "rows = \"70000\""));
    assert!(e.contains("/rows`") && e.contains("u16"), "{e}");
}

#[test]
fn short_and_empty_ids_never_panic() {
    for id in ["a", "é", "0123456789abcdefXYZ"] {
        let text = VIC_STYLE.replace("0123456789abcdef0123", id);
        let spec = spec_from_vmx(&text).unwrap();
        assert_eq!(
            spec.effective_hostname(),
            id.chars().take(12).collect::<String>()
        );
    }
}

fn text() -> impl Strategy<Value = String> {
    // Everything a user may put in args and env: pipes, quotes, backslashes, newlines, non-ASCII.
    vec(
        prop_oneof![
            Just('|'),
            Just('\\'),
            Just('"'),
            Just('#'),
            Just('\n'),
            Just(' '),
            Just('é'),
            Just('€'),
            any::<char>(),
            proptest::char::range('a', 'z'),
        ],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn session(id: String) -> impl Strategy<Value = SessionSpec> {
    (
        text(),
        vec(text(), 1..5),
        vec(text(), 0..4),
        any::<bool>(),
        any::<bool>(),
        (any::<u16>(), any::<u16>(), any::<bool>()),
    )
        .prop_map(
            move |(path, args, env, tty, restart, (rows, cols, hold))| SessionSpec {
                id: id.clone(),
                name: "n".into(),
                path: format!("/{path}"),
                args,
                env,
                dir: "/".into(),
                user: String::new(),
                group: String::new(),
                tty,
                attach: true,
                open_stdin: tty,
                restart,
                stop_signal: "SIGTERM".into(),
                rlimits: vec![],
                cap_drop: vec!["NET_RAW".into()],
                rows,
                cols,
                builtin: if hold { "hold".into() } else { String::new() },
            },
        )
}

/// ExtraHosts entries as docker's `--add-host` gives them (IPv6 unbracketed), and odd text.
fn extra_host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("db:10.0.0.5".to_string()),
        Just("v6:2001:db8::1".to_string()),
        Just("gw:host-gateway".to_string()),
        Just("a|b:10.0.0.1".to_string()),
        text(),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        main in session("main-id".into()),
        execs in btree_map("[a-z|]{1,6}", session(String::new()), 0..3),
        hostname in proptest::option::of("[a-z]{1,10}"),
        secret in vec(any::<u8>(), 1..40),
        extra_hosts in vec(extra_host(), 0..4),
    ) {
        let execs = execs
            .into_iter()
            .map(|(k, mut s)| {
                s.id = k.clone();
                (k, s)
            })
            .collect();
        let spec = ContainerSpec {
            id: "main-id".into(),
            name: "web".into(),
            debug: 2,
            hostname,
            domainname: None,
            secret,
            channel_device: None,
            disk_label: "containerfs".into(),
            disk_wait_ms: 5000,
            stop_grace_ms: 3000,
            dns: vec!["10.0.0.2".into()],
            dns_search: vec![],
            extra_hosts,
            networks: Default::default(),
            sessions: [("main-id".to_string(), main)].into(),
            execs,
        };
        let text = spec_to_vmx(&spec);
        prop_assert_eq!(spec_from_vmx(&text).unwrap(), spec);
    }
}
