//! Replays every saved fuzz input (wire/fuzz/regressions/<target>/*) through the target's code.
//! A crash the fuzzer once found stays fixed: copy its artifact into the directory.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        eprintln!("replaying {}", path.display());
        run(&data);
        count += 1;
    }
    count
}

#[test]
fn frame_decoder_regressions() {
    assert!(replay("frame_decoder", wire::fuzzing::frame_decoder) > 0);
}

#[test]
fn message_decode_regressions() {
    assert!(replay("message_decode", wire::fuzzing::message_decode) > 0);
}
