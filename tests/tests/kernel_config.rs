//! The kernel config checker: the built config has every required option, and a config missing
//! one (or having one it wants off) fails with that option's name.

use std::process::Command;

#[test]
fn the_checker_names_a_missing_option() {
    let ws = e2e::workspace();
    let kernel = &e2e::artifacts().kernel;
    let config = kernel.parent().unwrap().join(".config");
    let fragment = ws.join("kernel-config/fragment.config");
    let check = ws.join("kernel-config/check.sh");
    let ok = Command::new(&check)
        .arg(&fragment)
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The built config with one change, checked: the checker's stderr, once it failed.
    let fails_with = |from: &str, to: &str| {
        let broken = std::env::temp_dir().join(format!("broken-config-{}", std::process::id()));
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(from), "the built config has no {from:?}");
        std::fs::write(&broken, text.replace(from, to)).unwrap();
        let out = Command::new(&check)
            .arg(&fragment)
            .arg(&broken)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&broken);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fails_with(
        "CONFIG_VIRTIO_CONSOLE=y",
        "# CONFIG_VIRTIO_CONSOLE is not set",
    );
    assert!(err.contains("CONFIG_VIRTIO_CONSOLE"), "{err}");
    assert!(err.contains("1 required option(s) missing"), "{err}");
    // An option the fragment wants off (`=n`) that is on fails too, named.
    let err = fails_with("# CONFIG_IPV6_SIT is not set", "CONFIG_IPV6_SIT=y");
    assert!(
        err.contains("CONFIG_IPV6_SIT: fragment wants it off"),
        "{err}"
    );
}
