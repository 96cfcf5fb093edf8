use super::*;
use crate::message::StreamKind;

/// A chunk copied out whole, which is what the tests look at.
#[derive(Debug)]
struct Chunk {
    seq: u64,
    bytes: Vec<u8>,
    fin: bool,
}

trait PollChunk {
    fn poll_chunk(&mut self, max_len: usize) -> Option<Chunk>;
}

impl PollChunk for OutStream {
    fn poll_chunk(&mut self, max_len: usize) -> Option<Chunk> {
        self.poll_chunk_with(max_len, |seq, parts, fin| Chunk {
            seq,
            bytes: joined(parts),
            fin,
        })
    }
}

const KEY: StreamKey = StreamKey {
    session: 1,
    kind: StreamKind::Stdout,
};

#[test]
fn buffer_full_is_backpressure_and_acks_free_it() {
    let mut out = OutStream::new(10, 100, 1000);
    assert_eq!(out.write(b"0123456789abc"), 10);
    assert_eq!(out.writable(), 0);
    let c = out.poll_chunk(4).unwrap();
    assert_eq!((c.seq, c.bytes.as_slice(), c.fin), (0, &b"0123"[..], false));
    out.on_ack(4, 100).unwrap();
    assert_eq!(out.writable(), 4);
    assert_eq!(
        out.on_ack(9, 100),
        Err(StreamError::AckBeyondSent { upto: 9, sent: 4 })
    );
}

#[test]
fn credit_limits_transmission() {
    let mut out = OutStream::new(100, 3, 1000);
    out.write(b"abcdef");
    assert_eq!(out.poll_chunk(10).unwrap().bytes, b"abc");
    assert!(out.poll_chunk(10).is_none());
    assert!(!out.has_ready());
    out.on_ack(0, 6).unwrap();
    assert_eq!(out.poll_chunk(10).unwrap().bytes, b"def");
}

#[test]
fn fin_takes_one_offset_and_must_be_acked() {
    let mut out = OutStream::new(100, 100, 1000);
    out.write(b"xy");
    out.close();
    let c = out.poll_chunk(10).unwrap();
    assert!(c.fin);
    assert_eq!(out.end(), 3);
    let mut inp = InStream::new(KEY, 100);
    let d = inp.on_data(c.seq, &c.bytes, c.fin).unwrap();
    assert_eq!((d.bytes, d.fin), (&b"xy"[..], true));
    inp.release(2);
    let Some(Message::Ack { upto, limit, .. }) = inp.poll_control() else {
        panic!("expected an ack")
    };
    assert_eq!(upto, 3);
    out.on_ack(upto, limit).unwrap();
    assert!(out.is_finished());
}

#[test]
fn gap_requests_one_rewind_and_duplicates_are_dropped() {
    let mut inp = InStream::new(KEY, 100);
    assert_eq!(inp.on_data(0, b"ab", false).unwrap().bytes, b"ab");
    assert_eq!(inp.on_data(4, b"ef", false).unwrap().bytes, b"");
    assert_eq!(inp.on_data(6, b"gh", false).unwrap().bytes, b"");
    assert_eq!(
        inp.poll_control(),
        Some(Message::Rewind { key: KEY, from: 2 })
    );
    assert!(matches!(inp.poll_control(), Some(Message::Ack { .. })));
    assert_eq!(inp.poll_control(), None, "one rewind per gap");
    assert_eq!(inp.on_data(0, b"abcd", false).unwrap().bytes, b"cd");
    assert_eq!(inp.on_data(1, b"bc", false).unwrap().bytes, b"");
    assert_eq!(inp.gaps(), 2);
}

#[test]
fn receiver_enforces_credit_and_fin() {
    let mut inp = InStream::new(KEY, 4);
    assert_eq!(
        inp.on_data(0, b"12345", false),
        Err(StreamError::CreditExceeded { end: 5, limit: 4 })
    );
    inp.on_data(0, b"12", true).unwrap();
    assert_eq!(
        inp.on_data(2, b"3", false),
        Err(StreamError::DataAfterFin { end: 3, fin: 2 })
    );
    assert_eq!(
        inp.on_data(u64::MAX, b"3", false),
        Err(StreamError::OffsetOverflow)
    );
}

#[test]
fn retransmit_timer_rewinds_to_last_ack() {
    let mut out = OutStream::new(100, 100, 50);
    out.write(b"hello");
    out.poll_chunk(100).unwrap();
    out.on_tick(1000);
    assert!(!out.has_ready());
    out.on_tick(1049);
    assert!(!out.has_ready());
    out.on_tick(1050);
    assert_eq!(out.poll_chunk(100).unwrap().seq, 0);
    assert_eq!(out.retransmits(), 1);
}

#[test]
fn lost_credit_update_is_recovered_by_a_probe() {
    let mut out = OutStream::new(100, 4, 50);
    out.write(b"abcdefgh");
    assert_eq!(out.poll_chunk(100).unwrap().bytes, b"abcd");
    let mut inp = InStream::new(KEY, 4);
    inp.on_data(0, b"abcd", false).unwrap();
    inp.release(4);
    let ack = inp.poll_control().unwrap(); // lost on the line
    assert!(matches!(
        ack,
        Message::Ack {
            upto: 4,
            limit: 8,
            ..
        }
    ));
    // The ack for 0..4 came back but its credit update did not; the sender is blocked.
    out.on_ack(4, 4).unwrap();
    out.on_tick(0);
    assert!(out.poll_chunk(100).is_none());
    out.on_tick(50);
    let probe = out.poll_chunk(100).unwrap();
    assert_eq!((probe.seq, probe.bytes.len()), (4, 0));
    inp.on_data(probe.seq, &probe.bytes, false).unwrap();
    let Some(Message::Ack { upto, limit, .. }) = inp.poll_control() else {
        panic!("probe must be answered with an ack")
    };
    out.on_ack(upto, limit).unwrap();
    assert_eq!(out.poll_chunk(100).unwrap().bytes, b"efgh");
}

#[test]
fn untouched_stream_adopts_peer_offset() {
    let mut out = OutStream::new(100, 100, 50);
    out.write(b"late");
    out.resume(1000, 1100).unwrap();
    let c = out.poll_chunk(100).unwrap();
    assert_eq!((c.seq, c.bytes.as_slice()), (1000, &b"late"[..]));
}

#[test]
fn resume_validates_peer_position() {
    let mut out = OutStream::new(100, 100, 50);
    out.write(b"hello");
    out.poll_chunk(100);
    out.on_ack(2, 100).unwrap();
    assert_eq!(
        out.resume(9, 100),
        Err(StreamError::PeerAhead {
            received: 9,
            end: 5
        })
    );
    assert_eq!(
        out.resume(1, 100),
        Err(StreamError::PeerBehind {
            received: 1,
            acked: 2
        })
    );
    out.resume(4, 100).unwrap();
    assert_eq!(out.poll_chunk(100).unwrap().bytes, b"o");
}
