//! Property tests of framing + message encoding: chunking, garbage between frames, corruption.

use proptest::collection::vec;
use proptest::prelude::*;
use wire::{decode, encode_frame, write_message, FrameDecoder, Message, StreamKey, StreamKind};

fn stream_key() -> impl Strategy<Value = StreamKey> {
    (
        0u32..5,
        prop_oneof![
            Just(StreamKind::Control),
            Just(StreamKind::Stdin),
            Just(StreamKind::Stdout),
            Just(StreamKind::Stderr)
        ],
    )
        .prop_map(|(s, k)| StreamKey::new(s, k))
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            stream_key(),
            any::<u64>(),
            any::<bool>(),
            vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(key, seq, fin, bytes)| Message::Data {
                key,
                seq,
                fin,
                bytes
            }),
        (stream_key(), any::<u64>(), any::<u64>()).prop_map(|(key, upto, limit)| Message::Ack {
            key,
            upto,
            limit
        }),
        (stream_key(), any::<u64>()).prop_map(|(key, from)| Message::Rewind { key, from }),
        any::<u64>().prop_map(|token| Message::Ping { token }),
        any::<u64>().prop_map(|token| Message::Pong { token }),
        ".{0,40}".prop_map(|reason| Message::Goodbye { reason }),
    ]
}

/// Decodes `chunks` fed one after another; returns the messages and the count of rejected pieces.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Message>, u64) {
    let mut dec = FrameDecoder::new();
    let mut out = Vec::new();
    for chunk in chunks {
        dec.feed(chunk, |r| {
            if let Ok(payload) = r {
                out.push(decode::<Message>(payload).expect("a CRC-valid frame decodes"));
            }
        });
    }
    (out, dec.stats().rejected_frames)
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn split_at_points(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut last = 0;
    for p in points {
        pieces.push(bytes[last..p].to_vec());
        last = p;
    }
    pieces.push(bytes[last..].to_vec());
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_messages_survive_arbitrary_chunking(
        msgs in vec(message(), 0..40),
        cuts in vec(any::<usize>(), 0..64),
    ) {
        let mut wire_bytes = Vec::new();
        for m in &msgs {
            write_message(m, &mut wire_bytes);
        }
        let pieces = split_at_points(&wire_bytes, &cuts);
        let (got, rejected) = decode_chunks(pieces.iter().map(Vec::as_slice));
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(rejected, 0);
    }

    #[test]
    fn garbage_between_frames_loses_nothing(
        msgs in vec(message(), 1..30),
        garbage in vec(vec(any::<u8>(), 0..300), 1..30),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut wire_bytes = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            wire_bytes.extend_from_slice(&garbage[i % garbage.len()]);
            write_message(m, &mut wire_bytes);
        }
        let pieces = split_at_points(&wire_bytes, &cuts);
        let (got, _) = decode_chunks(pieces.iter().map(Vec::as_slice));
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn corruption_loses_only_the_corrupted_frames(
        msgs in vec(message(), 1..30),
        hits in vec((any::<usize>(), any::<usize>(), 1u8..=255), 1..10),
    ) {
        let frames: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| {
                let mut f = Vec::new();
                write_message(m, &mut f);
                f
            })
            .collect();
        // Hits on the same byte accumulate; two equal XORs there cancel and leave the frame
        // intact, so a frame counts as corrupted only if some byte of it really changed.
        let mut flips: std::collections::BTreeMap<(usize, usize), u8> = Default::default();
        for (frame_pick, byte_pick, xor) in hits {
            let fi = frame_pick % frames.len();
            // Corrupt the body, not the delimiters (a corrupted delimiter is a body byte too,
            // but then the neighbouring frame's delimiter still bounds the damage).
            let bi = 1 + byte_pick % (frames[fi].len() - 2);
            *flips.entry((fi, bi)).or_insert(0) ^= xor;
        }
        let mut corrupted = frames.clone();
        let mut hit_frames = std::collections::BTreeSet::new();
        for ((fi, bi), xor) in flips {
            if xor != 0 {
                corrupted[fi][bi] ^= xor;
                hit_frames.insert(fi);
            }
        }
        let expected: Vec<Message> = msgs
            .iter()
            .enumerate()
            .filter(|(i, _)| !hit_frames.contains(i))
            .map(|(_, m)| m.clone())
            .collect();
        let joined: Vec<u8> = corrupted.concat();
        let (got, rejected) = decode_chunks([joined.as_slice()]);
        prop_assert_eq!(got, expected);
        prop_assert!(rejected as usize >= hit_frames.len());
    }

    #[test]
    fn decoder_never_panics_and_stays_bounded(
        chunks in vec(vec(any::<u8>(), 0..5000), 0..20),
    ) {
        let mut dec = FrameDecoder::new();
        let mut total = 0u64;
        for c in &chunks {
            total += c.len() as u64;
            dec.feed(c, |r| {
                if let Ok(p) = r {
                    let _ = decode::<Message>(p);
                }
            });
        }
        let s = dec.stats();
        prop_assert!(s.dropped_bytes <= total);
    }

    #[test]
    fn oversized_payloads_are_refused_by_the_encoder(extra in 1usize..1000) {
        let mut out = Vec::new();
        prop_assert!(encode_frame(&vec![0u8; wire::MAX_PAYLOAD + extra], &mut out).is_err());
        prop_assert!(out.is_empty());
    }
}
