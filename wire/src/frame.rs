//! Byte-level framing: `0x00 COBS(payload || crc32_le(payload)) 0x00`.
//!
//! COBS removes every zero byte from the frame body, so 0x00 is a pure delimiter: a receiver that
//! joins mid-stream, or sees line noise, drops bytes up to the next 0x00 and is in sync again.
//! Each frame is written with a delimiter on *both* sides so that garbage in front of a frame is
//! cut off as its own (rejected) piece instead of corrupting the frame that follows it. Empty
//! pieces between two delimiters are legal and ignored.

use thiserror::Error;

/// Largest payload (a postcard-encoded message) a frame may carry.
pub const MAX_PAYLOAD: usize = 64 * 1024;
const CRC_LEN: usize = 4;
/// Largest COBS body (without delimiters) a valid frame can have.
pub const MAX_ENCODED_BODY: usize = cobs::max_encoding_length(MAX_PAYLOAD + CRC_LEN);

/// Why a piece of the byte stream between two delimiters was not accepted as a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error(
        "frame body exceeds {MAX_ENCODED_BODY} bytes without a delimiter; dropped to the next 0x00"
    )]
    Oversized,
    #[error("frame is not valid COBS")]
    BadCobs,
    #[error("frame of {0} bytes is too short to hold a CRC-32")]
    TooShort(usize),
    #[error("CRC-32 mismatch: frame says {expected:#010x}, payload hashes to {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
}

/// Error returned when asked to encode a payload larger than [`MAX_PAYLOAD`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte frame limit")]
pub struct PayloadTooLarge(pub usize);

/// Appends one complete frame carrying `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), PayloadTooLarge> {
    encode_frame_parts(&[payload], out)
}

/// Appends one frame whose payload is the concatenation of `parts`, without first joining them:
/// a data message's header and its bytes go straight from where they are into the frame.
pub fn encode_frame_parts(parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), PayloadTooLarge> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_PAYLOAD {
        return Err(PayloadTooLarge(len));
    }
    let mut crc = crc32fast::Hasher::new();
    for p in parts {
        crc.update(p);
    }
    let crc = crc.finalize().to_le_bytes();
    out.reserve(cobs::max_encoding_length(len + CRC_LEN) + 2);
    out.push(0);
    let mut cobs = CobsWriter::new(out);
    for p in parts {
        cobs.write(p);
    }
    cobs.write(&crc);
    cobs.finish();
    out.push(0);
    Ok(())
}

/// COBS-encodes what is written to it onto a buffer, byte for byte what `cobs::encode` produces
/// for the concatenation. Each run up to the next zero (at most 254 bytes) is found with
/// `memchr` and copied whole: the crate's byte-at-a-time encoder was half of tether's
/// instructions per streamed byte, which a TCG guest pays dearly.
struct CobsWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Where the current block's code byte goes.
    code_at: usize,
    /// Bytes in the current block so far.
    run: usize,
    /// The previous block was full (code 0xFF): it stands for no zero, so if the input ends
    /// here, the empty block just opened is not written.
    after_full: bool,
}

impl<'a> CobsWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        let code_at = out.len();
        out.push(0);
        Self {
            out,
            code_at,
            run: 0,
            after_full: false,
        }
    }

    fn close_block(&mut self, full: bool) {
        self.out[self.code_at] = self.run as u8 + 1;
        self.code_at = self.out.len();
        self.out.push(0);
        self.run = 0;
        self.after_full = full;
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let window = &data[..data.len().min(254 - self.run)];
            match memchr::memchr(0, window) {
                Some(i) => {
                    self.out.extend_from_slice(&window[..i]);
                    self.run += i;
                    self.close_block(false);
                    data = &data[i + 1..];
                }
                None => {
                    self.out.extend_from_slice(window);
                    self.run += window.len();
                    data = &data[window.len()..];
                    if self.run == 254 {
                        self.close_block(true);
                    }
                }
            }
        }
    }

    fn finish(self) {
        if self.run == 0 && self.after_full {
            self.out.truncate(self.code_at);
        } else {
            self.out[self.code_at] = self.run as u8 + 1;
        }
    }
}

#[cfg(test)]
fn cobs_encode(input: &[u8], out: &mut Vec<u8>) {
    let mut w = CobsWriter::new(out);
    w.write(input);
    w.finish();
}

/// Counters of what the decoder accepted and what it threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    pub frames: u64,
    /// Pieces between delimiters that were rejected (bad COBS, bad CRC, too long, too short).
    pub rejected_frames: u64,
    /// Bytes belonging to rejected pieces.
    pub dropped_bytes: u64,
}

/// Incremental frame decoder. Feed it any chunks of the byte stream; it yields payloads.
///
/// Memory is bounded: it never buffers more than [`MAX_ENCODED_BODY`] bytes, whatever it is fed.
#[derive(Debug)]
pub struct FrameDecoder {
    body: Vec<u8>,
    /// The decoded payload of the current piece, reused from frame to frame.
    decoded: Vec<u8>,
    /// Set once the current piece has grown past the limit; we discard until the next 0x00.
    overflowed: bool,
    overflow_len: u64,
    stats: DecoderStats,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self {
            body: Vec::new(),
            decoded: Vec::new(),
            overflowed: false,
            overflow_len: 0,
            stats: DecoderStats::default(),
        }
    }

    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Consumes `input`, calling `sink` with each complete frame's payload or with the error that
    /// made a piece unacceptable. Returns nothing: every input byte is either buffered or handled.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(Result<&[u8], FrameError>)) {
        let mut rest = input;
        while !rest.is_empty() {
            match memchr::memchr(0, rest) {
                None => {
                    self.buffer(rest);
                    return;
                }
                Some(end) => {
                    self.buffer(&rest[..end]);
                    self.finish_piece(&mut sink);
                    rest = &rest[end + 1..];
                }
            }
        }
    }

    fn buffer(&mut self, bytes: &[u8]) {
        if self.overflowed {
            self.overflow_len += bytes.len() as u64;
            return;
        }
        if self.body.len() + bytes.len() > MAX_ENCODED_BODY {
            self.overflowed = true;
            self.overflow_len = (self.body.len() + bytes.len()) as u64;
            self.body.clear();
            self.body.shrink_to(MAX_ENCODED_BODY);
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn finish_piece(&mut self, sink: &mut impl FnMut(Result<&[u8], FrameError>)) {
        if self.overflowed {
            self.overflowed = false;
            self.reject(self.overflow_len, FrameError::Oversized, sink);
            return;
        }
        if self.body.is_empty() {
            return; // back-to-back delimiters: not a frame, not an error
        }
        let piece_len = self.body.len() as u64;
        match decode_body(&self.body, &mut self.decoded) {
            Ok(()) => {
                self.stats.frames += 1;
                self.body.clear();
                sink(Ok(&self.decoded));
            }
            Err(e) => {
                self.body.clear();
                self.reject(piece_len, e, sink);
            }
        }
    }

    fn reject(
        &mut self,
        len: u64,
        err: FrameError,
        sink: &mut impl FnMut(Result<&[u8], FrameError>),
    ) {
        self.stats.rejected_frames += 1;
        self.stats.dropped_bytes += len;
        sink(Err(err));
    }
}

/// Frames in, decoded messages out: the frame decoder plus message decoding, with a count of
/// frames that passed their CRC but did not decode (a newer peer, or a bug on its side).
#[derive(Debug, Default)]
pub struct MessageReader {
    frames: FrameDecoder,
    pending: std::collections::VecDeque<crate::Message>,
    undecodable: u64,
}

impl MessageReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        let (pending, undecodable) = (&mut self.pending, &mut self.undecodable);
        self.frames.feed(bytes, |frame| {
            if let Ok(payload) = frame {
                match crate::decode::<crate::Message>(payload) {
                    Ok(m) => pending.push_back(m),
                    Err(_) => *undecodable += 1,
                }
            }
        });
    }

    pub fn next_message(&mut self) -> Option<crate::Message> {
        self.pending.pop_front()
    }

    /// Frame-level counters, plus frames that did not decode as messages.
    pub fn stats(&self) -> (DecoderStats, u64) {
        (self.frames.stats(), self.undecodable)
    }
}

/// Decodes one frame body into `decoded` (cleared first): COBS, then the CRC-32 check.
fn decode_body(body: &[u8], decoded: &mut Vec<u8>) -> Result<(), FrameError> {
    decoded.clear();
    cobs_decode(body, decoded)?;
    if decoded.len() < CRC_LEN {
        return Err(FrameError::TooShort(decoded.len()));
    }
    let split = decoded.len() - CRC_LEN;
    let mut crc_bytes = [0u8; CRC_LEN];
    crc_bytes.copy_from_slice(&decoded[split..]);
    let expected = u32::from_le_bytes(crc_bytes);
    decoded.truncate(split);
    let actual = crc32fast::hash(decoded);
    if expected != actual {
        return Err(FrameError::BadCrc { expected, actual });
    }
    Ok(())
}

/// COBS-decodes a body (the bytes between two delimiters) onto `out`, a block at a time: each
/// code byte says how many bytes to copy whole. A body is valid only if its blocks end exactly
/// at its end. The byte-at-a-time decoder of the `cobs` crate was a fifth of the server's
/// instructions per streamed byte; the crate remains the reference this is tested against.
fn cobs_decode(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.reserve(body.len());
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        let run = usize::from(code)
            .checked_sub(1)
            .ok_or(FrameError::BadCobs)?;
        let block = tail.get(..run).ok_or(FrameError::BadCobs)?;
        out.extend_from_slice(block);
        rest = &tail[run..];
        // Every block but a full one stands for a zero after it, except at the very end.
        if code != 0xff && !rest.is_empty() {
            out.push(0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(input: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; cobs::max_encoding_length(input.len())];
        let n = cobs::encode(input, &mut buf);
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_fast_cobs_encoder_matches_the_cobs_crate() {
        let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![1], vec![1, 0]];
        // Runs around the 254-byte block boundary, with and without zeros after them.
        for len in [253usize, 254, 255, 508, 509, 1000] {
            inputs.push(vec![7; len]);
            let mut z = vec![7; len];
            z.push(0);
            inputs.push(z);
            let mut zz = vec![0];
            zz.extend(vec![9; len]);
            inputs.push(zz);
        }
        // Pseudo-random bytes with zeros at every density.
        let mut x = 0x2545f4914f6cdd1du64;
        for density in [2u64, 16, 255, 4096] {
            let v: Vec<u8> = (0..5000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x % density == 0 {
                        0
                    } else {
                        (x >> 8) as u8 | 1
                    }
                })
                .collect();
            inputs.push(v);
        }
        for input in inputs {
            let mut fast = Vec::new();
            cobs_encode(&input, &mut fast);
            assert_eq!(fast, reference(&input), "input of {} bytes", input.len());
        }
    }

    /// What the `cobs` crate makes of a body: its output if it accepts the body whole.
    fn reference_decode(body: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; body.len()];
        let report = cobs::decode(body, &mut out).ok()?;
        (report.parsed_size() == body.len()).then(|| {
            out.truncate(report.frame_size());
            out
        })
    }

    fn fast_decode(body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        cobs_decode(body, &mut out).ok().map(|()| out)
    }

    proptest::proptest! {
        /// However the input is cut into parts, the writer's output is the crate's encoding of
        /// the whole.
        #[test]
        fn the_cobs_writer_matches_the_crate_across_parts(
            input in proptest::collection::vec(
                proptest::prop_oneof![1 => proptest::prelude::Just(0u8), 9 => proptest::prelude::any::<u8>()],
                0..1200,
            ),
            cuts in proptest::collection::vec(0usize..1200, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut w = CobsWriter::new(&mut out);
            let mut from = 0;
            for c in cuts.into_iter().chain([input.len()]) {
                w.write(&input[from..c]);
                from = c;
            }
            w.finish();
            proptest::prop_assert_eq!(out, reference(&input));
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_cobs_decoder_inverts_the_encoder(input in proptest::collection::vec(
            proptest::prop_oneof![3 => proptest::prelude::Just(0u8), 7 => proptest::prelude::any::<u8>()],
            0..2000,
        )) {
            let encoded = reference(&input);
            proptest::prop_assert_eq!(fast_decode(&encoded), Some(input));
        }

        /// On any body (no zeros: the delimiter split them off), valid or not, the fast decoder
        /// accepts exactly what the crate accepts, with the same bytes. (An empty body never reaches
        /// the decoder: two delimiters in a row are skipped.)
        #[test]
        fn the_fast_cobs_decoder_agrees_with_the_crate_on_any_body(
            body in proptest::collection::vec(1u8..=255, 1..600)
        ) {
            proptest::prop_assert_eq!(fast_decode(&body), reference_decode(&body));
        }
    }

    fn decode_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Vec<FrameError>, DecoderStats) {
        let mut dec = FrameDecoder::new();
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        dec.feed(bytes, |r| match r {
            Ok(p) => ok.push(p.to_vec()),
            Err(e) => bad.push(e),
        });
        (ok, bad, dec.stats())
    }

    #[test]
    fn round_trips_payloads_with_zeros() {
        let mut wire = Vec::new();
        for p in [&b""[..], b"\0\0\0", b"hello\0world", &[0xff; 300]] {
            encode_frame(p, &mut wire).unwrap();
        }
        let (ok, bad, stats) = decode_all(&wire);
        assert_eq!(
            ok,
            vec![
                b"".to_vec(),
                b"\0\0\0".to_vec(),
                b"hello\0world".to_vec(),
                vec![0xff; 300]
            ]
        );
        assert!(bad.is_empty());
        assert_eq!(stats.frames, 4);
    }

    #[test]
    fn refuses_to_encode_oversized_payload() {
        let mut wire = Vec::new();
        assert_eq!(
            encode_frame(&vec![1; MAX_PAYLOAD + 1], &mut wire),
            Err(PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        assert!(wire.is_empty());
        encode_frame(&vec![1; MAX_PAYLOAD], &mut wire).unwrap();
        assert_eq!(decode_all(&wire).0, vec![vec![1; MAX_PAYLOAD]]);
    }

    #[test]
    fn flipped_bit_is_rejected_and_next_frame_survives() {
        let mut wire = Vec::new();
        encode_frame(b"first frame", &mut wire).unwrap();
        let second_start = wire.len();
        encode_frame(b"second frame", &mut wire).unwrap();
        wire[3] ^= 0x10;
        let (ok, bad, stats) = decode_all(&wire);
        assert_eq!(ok, vec![b"second frame".to_vec()]);
        assert_eq!(bad.len(), 1);
        assert_eq!(stats.rejected_frames, 1);
        assert_eq!(stats.dropped_bytes, (second_start - 2) as u64);
    }

    #[test]
    fn endless_garbage_is_bounded_and_counted() {
        let mut dec = FrameDecoder::new();
        let junk = vec![0x55u8; 4096];
        for _ in 0..100 {
            dec.feed(&junk, |_| panic!("no piece ends without a delimiter"));
            assert!(dec.body.capacity() <= MAX_ENCODED_BODY);
        }
        let mut errors = Vec::new();
        dec.feed(&[0], |r| errors.push(r.map(|p| p.to_vec())));
        assert_eq!(errors, vec![Err(FrameError::Oversized)]);
        assert_eq!(dec.stats().dropped_bytes, 409_600);
        let mut wire = Vec::new();
        encode_frame(b"after the storm", &mut wire).unwrap();
        let mut got = Vec::new();
        dec.feed(&wire, |r| got.push(r.unwrap().to_vec()));
        assert_eq!(got, vec![b"after the storm".to_vec()]);
    }

    #[test]
    fn short_piece_is_rejected() {
        let (ok, bad, _) = decode_all(&[0, 0x02, 0x07, 0]);
        assert!(ok.is_empty());
        assert_eq!(bad, vec![FrameError::TooShort(1)]);
    }
}
