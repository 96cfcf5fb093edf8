//! The protocol spoken over a containerVM's one serial channel, between tether (the guest's
//! PID 1) and the appliance's session server. Everything here is a pure state machine: callers
//! own the sockets, the clock and the random numbers. See docs/protocol.md for the whole
//! protocol on one page.
//!
//! Layers, bottom up:
//! * [`frame`]: COBS + CRC-32 framing with 0x00 delimiters; a bounded, resynchronising decoder.
//! * [`message`]: the link messages (one per frame) and the control records, postcard-encoded.
//! * [`handshake`]: version negotiation and mutual proof of the per-container secret.
//! * [`stream`]: reliable byte streams: offsets, cumulative acks, credit, rewind, resume.
//! * [`mux`]: all streams of one channel: routing, fair scheduling, reconnect.
//! * [`keepalive`]: noticing a dead link within a bound.
//! * `io` (feature `tokio`): messages read from an async byte stream.

#![forbid(unsafe_code)]

pub mod control;
pub mod frame;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod handshake;
#[cfg(feature = "tokio")]
pub mod io;
pub mod keepalive;
pub mod message;
pub mod mux;
pub mod network;
pub mod stream;

pub use control::{encode_control, ControlDecoder, ControlError};
pub use frame::{encode_frame, DecoderStats, FrameDecoder, FrameError, MessageReader, MAX_PAYLOAD};
pub use handshake::{
    Authenticated, ClientHandshake, HandshakeError, Secret, ServerHandshake, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};
pub use keepalive::{Keepalive, Liveness};
pub use message::{
    decode, encode, BootId, BuiltinOp, Control, DecodeError, ExecSpec, GuestState, LogLevel,
    Message, Nonce, Position, RefuseReason, Refused, SessionId, StreamKey, StreamKind, Welcome,
};
pub use mux::{Inbound, MuxError, Role, StreamConfig, Streams, INITIAL_CREDIT, WRITE_BATCH};
pub use network::{EndpointStatus, Lease};
pub use stream::{Delivery, InStream, OutStream, StreamError};

/// Encodes `msg` as one complete frame appended to `out`.
///
/// Data chunks and control records are bounded well below MAX_PAYLOAD by construction
/// (StreamConfig::max_chunk, MAX_CONTROL_RECORD); handshake messages are tiny.
pub fn write_message(msg: &Message, out: &mut Vec<u8>) {
    if let Message::Data {
        key,
        seq,
        fin,
        bytes,
    } = msg
    {
        return write_data(*key, *seq, *fin, [bytes, &[]], out);
    }
    let payload = encode(msg);
    encode_frame(&payload, out).expect("messages are built within the frame limit");
}

/// Appends the frame of a `Message::Data` whose bytes are the two `parts` joined, without
/// joining them: postcard writes `bytes`, the last field, as a length and the bytes themselves,
/// so the payload is the encoding of the message without them, its length 0 replaced by the
/// real one, then the bytes, and the frame is built across the pieces in one pass.
pub fn write_data(key: StreamKey, seq: u64, fin: bool, parts: [&[u8]; 2], out: &mut Vec<u8>) {
    let mut header = encode(&Message::Data {
        key,
        seq,
        fin,
        bytes: Vec::new(),
    });
    debug_assert_eq!(
        header.last(),
        Some(&0),
        "an empty byte string encodes as length 0"
    );
    header.pop();
    push_varint(&mut header, parts[0].len() + parts[1].len());
    frame::encode_frame_parts(&[&header, parts[0], parts[1]], out)
        .expect("data chunks are built within the frame limit");
}

/// postcard's (LEB128) encoding of a length.
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The data fast path frames exactly what framing the postcard encoding would.
        #[test]
        fn data_frames_are_the_generic_encoding(
            session in any::<u32>(),
            seq in any::<u64>(),
            fin in any::<bool>(),
            len in prop_oneof![0usize..300, 16_000usize..16_500],
            fill in any::<u8>(),
        ) {
            let msg = Message::Data {
                key: StreamKey::new(session, StreamKind::Stderr),
                seq,
                fin,
                bytes: (0..len).map(|i| fill.wrapping_add(i as u8)).collect(),
            };
            let mut fast = Vec::new();
            write_message(&msg, &mut fast);
            let mut generic = Vec::new();
            encode_frame(&encode(&msg), &mut generic).unwrap();
            prop_assert_eq!(fast, generic);
        }
    }
}
