//! One direction of one reliable byte stream, as two I/O-free halves.
//!
//! Offsets: data byte `i` of the stream has offset `i`; the end-of-stream mark (fin) takes the
//! one offset after the last byte, as in TCP. Every position below is such an offset.
//!
//! * [`OutStream`] (sender) keeps every byte from the peer's last ack up to what the writer gave
//!   it, in a buffer of fixed capacity. A full buffer is the backpressure signal: the caller stops
//!   reading the process's pipe. It transmits only within the peer's credit.
//! * [`InStream`] (receiver) delivers each byte once, in order, drops duplicates, asks for a
//!   rewind when it sees a gap, and acks what the application has *released* (persisted or
//!   written to the process), granting credit `released + window`.
//!
//! After a reconnect the receiver states its [`Position`]; the sender continues from there.

use thiserror::Error;

use ring::Ring;

use crate::message::{Message, Position, StreamKey};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    #[error("peer acknowledged offset {upto} but only {sent} was ever sent")]
    AckBeyondSent { upto: u64, sent: u64 },
    #[error("peer asked to rewind to {from} but only {sent} was ever sent")]
    RewindBeyondSent { from: u64, sent: u64 },
    #[error("peer holds offset {received}, beyond the {end} this side ever produced")]
    PeerAhead { received: u64, end: u64 },
    #[error(
        "peer holds only offset {received} but had acknowledged {acked}: it lost data it confirmed"
    )]
    PeerBehind { received: u64, acked: u64 },
    #[error("peer sent up to offset {end}, beyond the credit limit {limit} it was granted")]
    CreditExceeded { end: u64, limit: u64 },
    #[error("peer sent data up to offset {end} after ending the stream at {fin}")]
    DataAfterFin { end: u64, fin: u64 },
    #[error("offset arithmetic overflowed")]
    OffsetOverflow,
}

/// A chunk lent as two slices, copied into one buffer (slice copies, not a byte iterator).
pub(crate) fn joined([a, b]: [&[u8]; 2]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(a.len() + b.len());
    bytes.extend_from_slice(a);
    bytes.extend_from_slice(b);
    bytes
}

/// Sending half.
#[derive(Debug)]
pub struct OutStream {
    /// Offset of `buf[0]`: every byte below it is acknowledged.
    base: u64,
    buf: Ring,
    capacity: usize,
    closed: bool,
    fin_acked: bool,
    /// Next offset to transmit.
    sent: u64,
    /// Highest offset ever transmitted on this connection; `sent` drops below it on a rewind.
    sent_max: u64,
    limit: u64,
    rto_ms: u64,
    /// When the oldest unacked transmission was first seen unacked by `on_tick`.
    waiting_since: Option<u64>,
    retransmits: u64,
    /// Nothing of this stream has been on any connection yet, so its offsets are not fixed.
    untouched: bool,
    /// Blocked on credit since this time (the peer's credit-carrying ack may have been lost).
    blocked_since: Option<u64>,
    /// Send an empty `Data` at `sent` so the peer re-announces its ack and credit.
    probe_due: bool,
}

impl OutStream {
    /// `initial_limit` is the credit the peer grants before its first ack (protocol constant).
    pub fn new(capacity: usize, initial_limit: u64, rto_ms: u64) -> Self {
        Self::starting_at(0, capacity, initial_limit, rto_ms)
    }

    /// A stream whose first `offset` bytes the peer already holds (restored after a restart).
    pub fn starting_at(offset: u64, capacity: usize, limit: u64, rto_ms: u64) -> Self {
        Self {
            base: offset,
            buf: Ring::default(),
            capacity,
            closed: false,
            fin_acked: false,
            sent: offset,
            sent_max: offset,
            limit,
            rto_ms,
            waiting_since: None,
            retransmits: 0,
            untouched: true,
            blocked_since: None,
            probe_due: false,
        }
    }

    fn data_end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// One past the last offset this side has produced (fin included).
    pub fn end(&self) -> u64 {
        self.data_end() + u64::from(self.closed)
    }

    pub fn acked(&self) -> u64 {
        self.base + u64::from(self.fin_acked)
    }

    /// Bytes the writer may add now. Zero means: stop reading the source until acks arrive.
    pub fn writable(&self) -> usize {
        if self.closed {
            0
        } else {
            self.capacity - self.buf.len()
        }
    }

    /// Buffers as much of `data` as fits; returns how much that was.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.writable());
        self.buf.extend(&data[..n]);
        n
    }

    /// Marks the end of the stream after everything written so far.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Everything, fin included, is acknowledged: the stream can be forgotten.
    pub fn is_finished(&self) -> bool {
        self.closed && self.fin_acked
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Memory the buffer holds (whole segments): at most `buffered() / SEGMENT + 2` of them.
    pub fn allocated(&self) -> usize {
        self.buf.allocated()
    }

    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// Something is ready and the credit allows sending it.
    pub fn has_ready(&self) -> bool {
        let d_end = self.data_end();
        self.probe_due
            || (self.sent < d_end && self.sent < self.limit)
            || (self.closed && self.sent == d_end)
    }

    fn blocked_on_credit(&self) -> bool {
        self.sent < self.data_end() && self.sent >= self.limit
    }

    /// The next chunk to transmit, at most `max_len` bytes, within the peer's credit: its offset,
    /// its bytes where they lie in the buffer (two slices: it is a ring), and whether the stream
    /// ends with it, lent to `f`, which can frame them without a copy in between.
    pub fn poll_chunk_with<R>(
        &mut self,
        max_len: usize,
        f: impl FnOnce(u64, [&[u8]; 2], bool) -> R,
    ) -> Option<R> {
        let d_end = self.data_end();
        if self.probe_due && self.blocked_on_credit() {
            self.probe_due = false;
            return Some(f(self.sent, [&[], &[]], false));
        }
        self.probe_due = false;
        if self.sent < d_end {
            let allowed = self.limit.saturating_sub(self.sent).min(d_end - self.sent);
            let from = (self.sent - self.base) as usize;
            let n = (max_len as u64)
                .min(allowed)
                .min(self.buf.two_slice_span(from) as u64) as usize;
            if n == 0 {
                return None;
            }
            let seq = self.sent;
            let fin = self.closed && seq + n as u64 == d_end;
            self.advance_sent(seq + n as u64 + u64::from(fin));
            return Some(f(seq, self.buf.slices(from, n), fin));
        }
        if self.closed && self.sent == d_end {
            self.advance_sent(d_end + 1);
            return Some(f(d_end, [&[], &[]], true));
        }
        None
    }

    fn advance_sent(&mut self, to: u64) {
        self.untouched = false;
        self.sent = to;
        self.sent_max = self.sent_max.max(to);
    }

    pub fn on_ack(&mut self, upto: u64, limit: u64) -> Result<(), StreamError> {
        if upto > self.sent_max {
            return Err(StreamError::AckBeyondSent {
                upto,
                sent: self.sent_max,
            });
        }
        self.limit = self.limit.max(limit);
        if upto > self.acked() {
            let d_end = self.data_end();
            let freed = (upto.min(d_end) - self.base) as usize;
            self.buf.drain_front(freed);
            self.base += freed as u64;
            if self.closed && upto == d_end + 1 {
                self.fin_acked = true;
            }
            // A late ack may cover bytes a rewind had queued again: skip them.
            self.sent = self.sent.max(upto);
            self.waiting_since = None;
        }
        Ok(())
    }

    pub fn on_rewind(&mut self, from: u64) -> Result<(), StreamError> {
        if from > self.sent_max {
            return Err(StreamError::RewindBeyondSent {
                from,
                sent: self.sent_max,
            });
        }
        // A rewind below the ack point is stale (the peer acked since); nothing to resend there.
        if from >= self.acked() {
            self.sent = from;
            self.retransmits += 1;
        }
        Ok(())
    }

    /// A new connection: the peer holds everything below `received`.
    ///
    /// A stream that never reached any connection (this side restarted and recreated it) adopts
    /// the peer's offset: what it buffered so far continues the peer's copy of the stream.
    /// The persist timer: while blocked on credit, probe once per timeout so a lost credit
    /// update cannot stall the stream forever (TCP's zero-window probe).
    fn tick_persist(&mut self, now_ms: u64) {
        if !self.blocked_on_credit() {
            self.blocked_since = None;
            return;
        }
        match self.blocked_since {
            None => self.blocked_since = Some(now_ms),
            Some(since) if now_ms.saturating_sub(since) >= self.rto_ms => {
                self.probe_due = true;
                self.blocked_since = Some(now_ms);
            }
            Some(_) => {}
        }
    }

    pub fn resume(&mut self, received: u64, limit: u64) -> Result<(), StreamError> {
        if self.untouched && self.base == 0 && !self.closed {
            self.base = received;
            self.sent = received;
            self.sent_max = received;
            self.limit = limit;
            self.untouched = false;
            return Ok(());
        }
        if received > self.end() {
            return Err(StreamError::PeerAhead {
                received,
                end: self.end(),
            });
        }
        if received < self.acked() {
            return Err(StreamError::PeerBehind {
                received,
                acked: self.acked(),
            });
        }
        self.sent = received;
        self.sent_max = received;
        // The peer's limit is authoritative on a new connection: it may have restarted its
        // receiver, whose credit starts over.
        self.limit = limit;
        self.untouched = false;
        self.waiting_since = None;
        Ok(())
    }

    /// Drives the retransmission timer with the caller's monotonic clock (milliseconds).
    /// Unacked data older than the timeout is sent again from the last ack.
    pub fn on_tick(&mut self, now_ms: u64) {
        self.tick_persist(now_ms);
        if self.sent_max <= self.acked() {
            self.waiting_since = None;
            return;
        }
        match self.waiting_since {
            None => self.waiting_since = Some(now_ms),
            Some(since) if now_ms.saturating_sub(since) >= self.rto_ms => {
                self.sent = self.acked();
                self.retransmits += 1;
                self.waiting_since = Some(now_ms);
            }
            Some(_) => {}
        }
    }
}

/// What `InStream::on_data` hands to the application.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// Bytes never delivered before, in order. Possibly empty (a duplicate or a gap).
    pub bytes: &'a [u8],
    /// The stream ended with these bytes.
    pub fin: bool,
}

/// Receiving half.
#[derive(Debug)]
pub struct InStream {
    key: StreamKey,
    next: u64,
    fin_received: bool,
    released: u64,
    window: u64,
    granted: u64,
    last_ack: Option<(u64, u64)>,
    pending_rewind: Option<u64>,
    /// The gap offset a rewind was last requested for; one request per gap, the sender's timer
    /// covers a lost request.
    rewound_at: Option<u64>,
    gaps: u64,
}

impl InStream {
    pub fn new(key: StreamKey, window: u64) -> Self {
        Self::starting_at(key, 0, window)
    }

    /// A stream of which everything below `offset` is already held (restored from storage).
    pub fn starting_at(key: StreamKey, offset: u64, window: u64) -> Self {
        Self {
            key,
            next: offset,
            fin_received: false,
            released: offset,
            window,
            granted: offset + window,
            last_ack: None,
            pending_rewind: None,
            rewound_at: None,
            gaps: 0,
        }
    }

    /// Restoration only: the stream's end was already received before a restart.
    pub fn mark_finished(&mut self) {
        self.fin_received = true;
    }

    /// Data offset the application has released (for the control stream: a record boundary).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Everything delivered, the fin mark counted.
    pub fn received(&self) -> u64 {
        self.next + u64::from(self.fin_received)
    }

    pub fn is_finished(&self) -> bool {
        self.fin_received
    }

    /// Gaps seen (frames lost on the line).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }

    pub fn position(&self) -> Position {
        Position {
            key: self.key,
            received: self.received(),
            limit: self.granted,
        }
    }

    pub fn on_data<'a>(
        &mut self,
        seq: u64,
        bytes: &'a [u8],
        fin: bool,
    ) -> Result<Delivery<'a>, StreamError> {
        let end = seq
            .checked_add(bytes.len() as u64)
            .ok_or(StreamError::OffsetOverflow)?;
        if end > self.granted {
            return Err(StreamError::CreditExceeded {
                end,
                limit: self.granted,
            });
        }
        if self.fin_received && (end > self.next || (fin && end != self.next)) {
            return Err(StreamError::DataAfterFin {
                end,
                fin: self.next,
            });
        }
        if seq > self.next {
            self.gaps += 1;
            if self.rewound_at != Some(self.next) {
                self.pending_rewind = Some(self.next);
                self.rewound_at = Some(self.next);
            }
            return Ok(Delivery {
                bytes: &[],
                fin: false,
            });
        }
        let fresh = if end > self.next {
            &bytes[(self.next - seq) as usize..]
        } else {
            // A duplicate or a probe: our last ack may have been lost, so send it again.
            self.last_ack = None;
            &[][..]
        };
        self.next += fresh.len() as u64;
        let newly_finished = fin && end == self.next && !self.fin_received;
        if newly_finished {
            self.fin_received = true;
        }
        Ok(Delivery {
            bytes: fresh,
            fin: newly_finished,
        })
    }

    /// The application has durably taken `n` more bytes: ack them and extend the credit.
    /// Releasing more than was delivered is a caller bug and is clamped.
    pub fn release(&mut self, n: u64) {
        debug_assert!(
            self.released + n <= self.next,
            "released more than delivered"
        );
        self.released = (self.released + n).min(self.next);
        self.granted = self.granted.max(self.released + self.window);
    }

    /// The application could not keep what was delivered from `to` on (its store is full):
    /// forget it, so it is received again. No rewind is asked for: the sender would resend at
    /// once, and again, as fast as the line goes. Its retransmission timer brings the bytes back
    /// once per timeout instead, which is the retry. Nothing from `to` on was acknowledged, so
    /// the sender still holds it; gaps behind `to` ask for no rewind either.
    pub fn roll_back(&mut self, to: u64) {
        let to = to.min(self.next);
        // The control stream releases whole records before they are stored: it may roll back
        // below its release point (no ack has gone out for that part yet).
        self.released = self.released.min(to);
        self.next = to;
        self.fin_received = false;
        self.rewound_at = Some(to);
        self.pending_rewind = None;
    }

    /// A new connection: forget what was sent on the old one so the ack goes out again.
    pub fn reset_link(&mut self) {
        self.last_ack = None;
        self.pending_rewind = None;
        self.rewound_at = None;
    }

    /// The next control message this stream wants to send (rewind first, then ack), if any.
    pub fn poll_control(&mut self) -> Option<Message> {
        if let Some(from) = self.pending_rewind.take() {
            return Some(Message::Rewind {
                key: self.key,
                from,
            });
        }
        let upto = self.released + u64::from(self.fin_received && self.released == self.next);
        let ack = (upto, self.granted);
        if self.last_ack != Some(ack) {
            self.last_ack = Some(ack);
            return Some(Message::Ack {
                key: self.key,
                upto,
                limit: self.granted,
            });
        }
        None
    }
}

mod ring;

pub use ring::SEGMENT;

#[cfg(test)]
mod tests;
