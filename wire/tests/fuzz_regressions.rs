//! Replays every saved fuzz input (fuzz/regressions/<target>/*) through the target's code.
//! A crash the fuzzer once found stays fixed: copy its artifact into the directory.

use wire::fuzzing::{frame_decoder, handshake, message_decode, replay};

#[test]
fn frame_decoder_regressions() {
    assert!(replay("frame_decoder", frame_decoder) > 0);
}

#[test]
fn message_decode_regressions() {
    assert!(replay("message_decode", message_decode) > 0);
}

#[test]
fn handshake_regressions() {
    assert!(replay("handshake", handshake) > 0);
}
