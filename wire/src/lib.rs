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

pub mod control;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod keepalive;
pub mod message;
pub mod mux;
pub mod stream;

pub use control::{encode_control, ControlDecoder, ControlError};
pub use frame::{encode_frame, DecoderStats, FrameDecoder, FrameError, MessageReader, MAX_PAYLOAD};
pub use handshake::{
    Authenticated, ClientHandshake, HandshakeError, Secret, ServerHandshake, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};
pub use keepalive::{Keepalive, Liveness};
pub use message::{
    decode, encode, BootId, Control, DecodeError, ExecSpec, LogLevel, Message, Nonce, Position,
    RefuseReason, Refused, SessionId, StreamKey, StreamKind, Welcome,
};
pub use mux::{Inbound, MuxError, Role, StreamConfig, Streams, INITIAL_CREDIT};
pub use stream::{Chunk, Delivery, InStream, OutStream, StreamError};

/// Encodes `msg` as one complete frame appended to `out`.
pub fn write_message(msg: &Message, out: &mut Vec<u8>) {
    let payload = encode(msg);
    // Data chunks and control records are bounded well below MAX_PAYLOAD by construction
    // (StreamConfig::max_chunk, MAX_CONTROL_RECORD); handshake messages are tiny.
    encode_frame(&payload, out).expect("messages are built within the frame limit");
}
