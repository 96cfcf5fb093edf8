//! Bodies of the fuzz targets, shared by `wire/fuzz` (libFuzzer) and the regression test that
//! replays saved inputs in `make test`. Each panics only on a real bug.

use crate::frame::{FrameDecoder, MAX_PAYLOAD};
use crate::message::{decode, encode, Control, Message};
use crate::mux::{Role, StreamConfig, Streams};
use crate::ControlDecoder;

/// Arbitrary bytes, in arbitrary chunks, through the frame decoder.
pub fn frame_decoder(data: &[u8]) {
    // The first byte picks the chunk size, so splits at every position get explored.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new();
    let mut payload_bytes = 0u64;
    for piece in rest.chunks(chunk) {
        dec.feed(piece, |r| {
            if let Ok(p) = r {
                assert!(
                    p.len() <= MAX_PAYLOAD,
                    "decoder produced an oversized payload"
                );
                payload_bytes += p.len() as u64;
            }
        });
    }
    assert!(
        dec.stats().dropped_bytes <= rest.len() as u64,
        "dropped more than was fed"
    );
    assert!(
        payload_bytes <= rest.len() as u64,
        "produced more than was fed"
    );
}

/// Arbitrary bytes as a link message, a control record and control-stream bytes. Whatever
/// decodes must re-encode losslessly, and an established channel must absorb or reject it.
pub fn message_decode(data: &[u8]) {
    if let Ok(msg) = decode::<Message>(data) {
        let again = encode(&msg);
        assert_eq!(
            decode::<Message>(&again).as_ref(),
            Ok(&msg),
            "lossy round trip"
        );
        for role in [Role::Guest, Role::Appliance] {
            let mut streams = Streams::new(role, StreamConfig::default());
            let _ = streams.on_message(msg.clone());
            // Bounded: the reply to one message is a handful of acks, pongs and rewinds.
            for _ in 0..64 {
                if streams.poll_transmit().is_none() {
                    break;
                }
            }
        }
    }
    if let Ok(rec) = decode::<Control>(data) {
        assert_eq!(
            decode::<Control>(&encode(&rec)).as_ref(),
            Ok(&rec),
            "lossy round trip"
        );
    }
    let _ = ControlDecoder::new().push(data);
}
