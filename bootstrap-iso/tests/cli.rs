//! The `bootstrap-iso` binary: every command has `--help`, mistakes on the command line are
//! named, and the flags the Makefile, the benchmarks and the docs use still work.

mod common;

use common::scratch;
use std::path::Path;
use std::process::{Command, Output};

const VERBS: [&str; 4] = ["initramfs", "iso", "guestinfo", "disk"];

fn bootstrap_iso(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootstrap-iso"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `bootstrap-iso ARGS` fails, and its stderr says `what`.
fn fails_saying(args: &[&str], what: &str) {
    let o = bootstrap_iso(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(stderr(&o).contains(what), "{}", stderr(&o));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_top_level_help_lists_exactly_the_commands_tested_here() {
    let o = bootstrap_iso(&["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(commands, VERBS, "{help}");
    fails_saying(&[], "Usage: bootstrap-iso");
}

#[test]
fn every_command_has_help() {
    for verb in VERBS {
        for args in [vec![verb, "--help"], vec![verb, "-h"], vec!["help", verb]] {
            let o = bootstrap_iso(&args);
            assert!(o.status.success(), "{args:?}: {}", stderr(&o));
            let help = stdout(&o);
            assert!(
                help.contains(&format!("Usage: bootstrap-iso {verb} ")),
                "{args:?}: {help}"
            );
            assert!(help.contains("-o, --output <OUT>"), "{args:?}: {help}");
        }
    }
}

#[test]
fn an_unknown_flag_is_an_error_that_names_it() {
    for verb in VERBS {
        let o = bootstrap_iso(&[verb, "--no-such-flag", "x", "-o", "/dev/null"]);
        assert_eq!(o.status.code(), Some(2), "{verb}");
        let err = stderr(&o);
        assert!(
            err.contains("unexpected argument '--no-such-flag'"),
            "{verb}: {err}"
        );
        assert!(stdout(&o).is_empty(), "{verb}: nothing built, no checksum");
    }
    fails_saying(&["dsik", "--image", "x"], "'dsik'");
}

#[test]
fn a_missing_flag_and_a_stray_argument_are_named() {
    for (args, named) in [
        (&["initramfs", "-o", "/dev/null"][..], "--tether <PATH>"),
        (&["guestinfo", "--spec", "s.toml"], "--output <OUT>"),
        // `--` ends the flags; no command takes arguments after it.
        (
            &["disk", "--image", "x", "-o", "y", "--", "--label"],
            "'--label'",
        ),
        (
            &["disk", "--image", "x", "--format", "vhd", "-o", "y"],
            "\"vhd\"",
        ),
        (
            &["disk", "--image", "x", "--size", "big", "-o", "y"],
            "'big'",
        ),
    ] {
        fails_saying(args, named);
    }
}

/// An empty file is not an empty image: it is refused, naming the file. `--rootfs` and `--tar`
/// are the older names of `--image`.
#[test]
fn an_empty_file_given_as_an_image_is_refused_naming_it() {
    let d = scratch("empty");
    let empty = d.join("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let out = d.join("disk.raw");
    for flag in ["--image", "--rootfs", "--tar"] {
        let o = bootstrap_iso(&["disk", flag, s(&empty), "-o", s(&out)]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        let err = stderr(&o);
        assert!(
            err.contains(s(&empty)) && err.contains("empty file"),
            "{flag}: {err}"
        );
        assert!(!out.exists(), "{flag}: no disk built");
    }
}

#[test]
fn initramfs_writes_the_archive_and_prints_its_sha256() {
    let d = scratch("initramfs");
    let tether = d.join("tether");
    std::fs::write(&tether, b"pretend tether").unwrap();
    let out = d.join("initramfs.gz");
    let o = bootstrap_iso(&["initramfs", "--tether", s(&tether), "-o", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let built = std::fs::read(&out).unwrap();
    assert_eq!(
        built,
        bootstrap::initramfs::build(b"pretend tether").unwrap()
    );
    let sum = bootstrap::disk::sha256_file(&out).unwrap();
    assert_eq!(stdout(&o), format!("{sum}  {}\n", out.display()));

    fails_saying(
        &["initramfs", "--tether", s(&d.join("nope")), "-o", s(&out)],
        "make tether",
    );
}

#[test]
fn guestinfo_takes_id_and_the_long_and_equals_forms_of_output() {
    let d = scratch("guestinfo");
    let spec = d.join("spec.toml");
    std::fs::write(
        &spec,
        "secret = \"c2VjcmV0\"\n[main]\ncmd = [\"/bin/true\"]\n",
    )
    .unwrap();
    let out = d.join("out.vmx");
    let arg = format!("--output={}", s(&out));
    let o = bootstrap_iso(&["guestinfo", "--spec", s(&spec), "--id", "c7", &arg]);
    assert!(o.status.success(), "{}", stderr(&o));
    let vmx = std::fs::read_to_string(&out).unwrap();
    let parsed = guestinfo::spec_from_vmx(&vmx).unwrap();
    assert_eq!(parsed.id, "c7");
    assert_eq!(parsed.disk_label, guestinfo::contract::DEFAULT_DISK_LABEL);

    std::fs::write(&spec, "secret = \"c2VjcmV0\"\n[main]\ncmd = []\n").unwrap();
    fails_saying(
        &["guestinfo", "--spec", s(&spec), "-o", s(&out)],
        "cmd must name a program",
    );
}

/// `--append` may be repeated; its words make up the kernel command line in order.
#[test]
fn iso_joins_repeated_append_flags_into_the_command_line() {
    let d = scratch("iso");
    std::fs::write(d.join("kernel"), vec![1u8; 4096]).unwrap();
    std::fs::write(d.join("initramfs"), b"initramfs").unwrap();
    let out = d.join("boot.iso");
    let o = bootstrap_iso(&[
        "iso",
        "--kernel",
        s(&d.join("kernel")),
        "--initramfs",
        s(&d.join("initramfs")),
        "--append",
        "console=ttyS0",
        "--append=quiet",
        "-o",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let iso = std::fs::read(&out).unwrap();
    let want = b"APPEND initrd=/boot/initramfs.gz console=ttyS0 quiet\n";
    assert!(iso.windows(want.len()).any(|w| w == want));
}

#[test]
fn disk_builds_a_labelled_ext4_from_a_rootfs_directory() {
    let d = scratch("disk");
    let root = d.rootfs();
    for (label, args) in [
        ("containerfs", vec![]),
        ("other", vec!["--label", "other", "--size", "40"]),
    ] {
        let out = d.join(format!("{label}.raw"));
        let mut all = vec!["disk", "--image", s(&root), "-o", s(&out)];
        all.extend(args);
        let o = bootstrap_iso(&all);
        assert!(o.status.success(), "{}", stderr(&o));
        let e2label = Command::new("e2label").arg(&out).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&e2label.stdout).trim(), label);
        assert!(
            !d.join(format!("{label}.work")).exists(),
            "work dir removed"
        );
    }
    let size = std::fs::metadata(d.join("other.raw")).unwrap().len();
    assert_eq!(size, 40 * 1024 * 1024);
}
