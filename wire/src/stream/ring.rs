//! The byte queue behind an [`OutStream`](super::OutStream): fixed-size segments allocated as
//! bytes arrive and freed as soon as the peer has acknowledged them.
//!
//! A `VecDeque<u8>` keeps the largest capacity it ever reached: a stream that once held its full
//! 1 MiB kept that memory while ten others shared a smaller budget, so tether's memory was not
//! bounded by what it held. Here a stream holding `n` bytes owns at most `n / SEGMENT + 2`
//! segments, and a drained stream owns none.

use std::collections::VecDeque;

/// Bytes per segment: the default data chunk, so a chunk spans at most two segments.
pub const SEGMENT: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct Ring {
    /// Every segment is full (`SEGMENT` bytes) except the last.
    segs: VecDeque<Vec<u8>>,
    /// Bytes of `segs[0]` already consumed.
    head: usize,
    len: usize,
}

impl Ring {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Memory the queue holds in its segments.
    pub fn allocated(&self) -> usize {
        self.segs.len() * SEGMENT
    }

    pub fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.segs.back().is_none_or(|s| s.len() == SEGMENT) {
                self.segs.push_back(Vec::with_capacity(SEGMENT));
            }
            let back = self.segs.back_mut().expect("just ensured");
            let n = (SEGMENT - back.len()).min(data.len());
            back.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.len += n;
        }
    }

    /// Drops the first `n` bytes (clamped to what is held), freeing emptied segments.
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.len -= n;
        let mut skip = self.head + n;
        while let Some(front) = self.segs.front() {
            // Every segment but the last is full, so one consumed to its end is done with; the
            // last one consumed to its end leaves the queue empty, and is freed too.
            if skip < front.len() {
                break;
            }
            skip -= front.len();
            self.segs.pop_front();
        }
        if self.segs.is_empty() {
            skip = 0;
        }
        self.head = skip;
    }

    /// How many bytes from `from` on can be lent as two slices (the rest of one segment and
    /// the whole next one), at most what is held.
    pub fn two_slice_span(&self, from: usize) -> usize {
        let at = (self.head + from) % SEGMENT;
        (2 * SEGMENT - at).min(self.len.saturating_sub(from))
    }

    /// Bytes `from..from + n` as the (up to) two slices they lie in, lent out whole; `n` must be
    /// at most [`two_slice_span`](Self::two_slice_span)`(from)`.
    pub fn slices(&self, from: usize, n: usize) -> [&[u8]; 2] {
        debug_assert!(n <= self.two_slice_span(from));
        if n == 0 {
            return [&[], &[]];
        }
        let pos = self.head + from;
        let (i, at) = (pos / SEGMENT, pos % SEGMENT);
        let first = &self.segs[i][at..(at + n).min(self.segs[i].len())];
        let rest = n - first.len();
        let second = if rest > 0 {
            &self.segs[i + 1][..rest]
        } else {
            &[][..]
        };
        [first, second]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model `Vec` beside the ring, through writes and drains of every size around the
    /// segment boundary: the slices always hold the model's bytes, and memory follows `len`.
    #[test]
    fn slices_match_a_plain_queue_and_memory_follows_what_is_held() {
        let mut ring = Ring::default();
        let mut model: Vec<u8> = Vec::new();
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = 0u8;
        for round in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let sizes = [1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 100];
            let w = (x as usize % sizes[round % sizes.len()]) + usize::from(round % 3 == 0);
            let data: Vec<u8> = (0..w)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            ring.extend(&data);
            model.extend_from_slice(&data);
            assert_eq!(ring.len(), model.len());
            for from in [0, 1, SEGMENT - 1, SEGMENT, model.len() / 2] {
                if from > model.len() {
                    continue;
                }
                let n = ring
                    .two_slice_span(from)
                    .min((x >> 20) as usize % (SEGMENT + 7));
                let [a, b] = ring.slices(from, n);
                assert_eq!([a, b].concat(), &model[from..from + n], "round {round}");
            }
            let d = ((x >> 32) as usize) % (model.len() + 1);
            let d = if round % 5 == 0 { model.len() } else { d };
            ring.drain_front(d);
            model.drain(..d);
            assert_eq!(ring.len(), model.len());
            assert!(
                ring.allocated() <= (model.len() / SEGMENT + 2) * SEGMENT,
                "{} bytes held in {} segments",
                model.len(),
                ring.allocated() / SEGMENT
            );
            if model.is_empty() {
                assert_eq!(ring.allocated(), 0);
            }
        }
    }
}
