//! The `hold` main session in host mode, as the appliance uses it for `docker cp` on a stopped
//! container: tether boots with no program to run, serves a built-in, and powers off (here:
//! exits) when the appliance signals the hold session.

mod common;

use common::{spec, Harness, TestDir, ID};
use guestinfo::SessionSpec;
use wire::BuiltinOp;

#[test]
fn a_hold_main_session_serves_an_archive_get_then_ends_on_its_signal() {
    let root = TestDir::new("hold-root");
    std::fs::create_dir_all(root.path().join("data")).unwrap();
    std::fs::write(
        root.path().join("data/kept.txt"),
        b"left by the container\n",
    )
    .unwrap();
    let main = SessionSpec {
        id: ID.into(),
        name: "main".into(),
        open_stdin: true,
        stop_signal: "SIGTERM".into(),
        builtin: guestinfo::spec::BUILTIN_HOLD.into(),
        ..Default::default()
    };
    let mut h = Harness::start_in(&spec(main), root.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = rt.block_on(async {
        let mut c = h.accept().await;
        c.until(10, |s| s.started_pid(1).is_some()).await;
        // Its stdin goes nowhere, and does not hold anything up.
        c.stdin(1, b"ignored\n", true).await;
        c.builtin(
            4096,
            "cp",
            BuiltinOp::ArchiveGet {
                path: "/data/kept.txt".into(),
            },
        )
        .await;
        c.until(20, |s| s.done(4096)).await;
        assert_eq!(c.seen.exit(1), None, "the hold outlives the built-in");
        c.signal(1, libc::SIGTERM).await;
        c.until(10, |s| s.done(1)).await;
        c.seen
    });
    assert_eq!(h.wait(), 0, "SIGTERM ends a hold cleanly");
    assert_eq!(seen.started_pid(1), Some(0), "no process: pid 0");
    assert_eq!(seen.exit(1), Some((0, None)));
    assert!(seen.stdout(1).is_empty() && seen.stderr(1).is_empty());

    assert_eq!(
        seen.exit(4096),
        Some((0, None)),
        "{}",
        String::from_utf8_lossy(seen.stderr(4096))
    );
    let mut archive = tar::Archive::new(seen.stdout(4096));
    let mut entries = archive.entries().unwrap();
    let mut entry = entries.next().unwrap().unwrap();
    assert_eq!(&*entry.path_bytes(), b"kept.txt");
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut body).unwrap();
    assert_eq!(body, b"left by the container\n");
}
