//! All streams of one containerVM's channel, on one side: routes incoming link messages to the
//! right stream, decides what to transmit next, and carries the streams across reconnects.
//!
//! Transmission order: acks and rewinds first (they are small and unblock the peer), then the
//! control stream, then data streams in round-robin, one chunk each, so a flooding session cannot
//! starve another.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use thiserror::Error;

use crate::control::{encode_control, ControlDecoder, ControlError};
use crate::message::{Control, Message, Position, StreamKey, StreamKind};
use crate::stream::{InStream, OutStream, StreamError};

/// Credit a sender may use on a new stream before the receiver's first ack. Every receiver
/// window must be at least this large.
pub const INITIAL_CREDIT: u64 = 64 * 1024;

/// Largest data chunk that, with its `Data` header, still fits in one frame.
pub const MAX_DATA_CHUNK: usize = crate::frame::MAX_PAYLOAD - 64;

/// Which end of the channel this is; it decides which stream kinds may arrive unannounced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Tether: sends stdout/stderr, receives stdin.
    Guest,
    /// The session server: sends stdin, receives stdout/stderr.
    Appliance,
}

impl Role {
    fn receives(self, kind: StreamKind) -> bool {
        match self {
            Role::Guest => kind == StreamKind::Stdin,
            Role::Appliance => matches!(kind, StreamKind::Stdout | StreamKind::Stderr),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Unacked bytes an outgoing data stream may hold before the writer is told to wait.
    pub out_capacity: usize,
    /// Unacked bytes all outgoing data streams of the channel may hold together (see
    /// [`Streams::writable`]): the bound on the sender's memory however many sessions stream.
    pub out_total: usize,
    /// The same for the control stream.
    pub control_capacity: usize,
    /// Credit window granted on each incoming stream (>= INITIAL_CREDIT).
    pub in_window: u64,
    /// Largest data chunk per `Data` message.
    pub max_chunk: usize,
    /// Retransmission timeout.
    pub rto_ms: u64,
    /// Most incoming streams accepted on this channel (each session has up to three).
    pub max_in_streams: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            out_capacity: 1 << 20,
            // One stream alone may still fill its whole buffer (the stream rate wants a 1 MiB
            // window under TCG); ten streaming sessions share it instead of taking 1 MiB each.
            out_total: 1 << 20,
            control_capacity: 1 << 20,
            in_window: 256 * 1024,
            max_chunk: 16 * 1024,
            rto_ms: 1000,
            max_in_streams: 3 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MuxError {
    #[error("stream {key:?}: {source}")]
    Stream { key: StreamKey, source: StreamError },
    #[error("control stream: {0}")]
    Control(#[from] ControlError),
    #[error("peer sent {kind:?} data, which this side never receives")]
    WrongDirection { kind: StreamKind },
    #[error("peer referred to stream {key:?}, which does not exist here")]
    UnknownStream { key: StreamKey },
    #[error("peer opened more than {0} streams on one channel")]
    TooManyStreams(usize),
    #[error("peer lost stream {key:?}: it holds nothing but had acknowledged {acked} bytes")]
    PeerLostStream { key: StreamKey, acked: u64 },
    #[error("control stream is full ({0} bytes unacknowledged); the peer is not reading")]
    ControlFull(usize),
    #[error("handshake message {0} arrived on an established channel")]
    UnexpectedHandshake(&'static str),
}

/// What an incoming message meant for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    Nothing,
    /// New bytes of a data stream. The application must `release` them once it has taken them.
    Data {
        key: StreamKey,
        bytes: Vec<u8>,
        fin: bool,
    },
    /// Control records, already released: make them durable before the next `poll_transmit`.
    Control(Vec<Control>),
    /// Peer asked for a Pong with this token (queued already).
    Ping(u64),
    Pong(u64),
    Goodbye(String),
    /// The peer's wall clock ([`Message::Time`]).
    Time(u64),
}

/// How many bytes [`Streams::write_batch`] frames before it hands them to one write: large
/// enough that a write costs little per byte, small enough that control is not held up.
pub const WRITE_BATCH: usize = 256 * 1024;

pub struct Streams {
    role: Role,
    cfg: StreamConfig,
    out: BTreeMap<StreamKey, OutStream>,
    inp: BTreeMap<StreamKey, InStream>,
    /// Incoming streams with an ack or rewind to send.
    dirty: BTreeSet<StreamKey>,
    control_in: ControlDecoder,
    pending_pongs: Vec<u64>,
    /// Last data stream served, for round-robin.
    cursor: Option<StreamKey>,
}

impl Streams {
    /// Out-of-range settings are clamped to what the protocol allows.
    pub fn new(role: Role, mut cfg: StreamConfig) -> Self {
        cfg.in_window = cfg.in_window.max(INITIAL_CREDIT);
        cfg.max_chunk = cfg.max_chunk.clamp(1, MAX_DATA_CHUNK);
        let mut out = BTreeMap::new();
        out.insert(
            StreamKey::CONTROL,
            OutStream::new(cfg.control_capacity, INITIAL_CREDIT, cfg.rto_ms),
        );
        let mut inp = BTreeMap::new();
        inp.insert(
            StreamKey::CONTROL,
            InStream::new(StreamKey::CONTROL, cfg.in_window),
        );
        Self {
            role,
            cfg,
            out,
            inp,
            dirty: BTreeSet::new(),
            control_in: ControlDecoder::new(),
            pending_pongs: Vec::new(),
            cursor: None,
        }
    }

    /// Restores an incoming stream of which everything below `offset` data bytes is already held
    /// (and its end, with `fin`). For the control stream, `offset` must be a record boundary.
    pub fn restore_in(&mut self, key: StreamKey, offset: u64, fin: bool) {
        let mut s = InStream::starting_at(key, offset, self.cfg.in_window);
        if fin {
            s.mark_finished();
        }
        self.inp.insert(key, s);
    }

    /// Restores an outgoing stream the peer already holds `offset` bytes of.
    pub fn restore_out(&mut self, key: StreamKey, offset: u64) {
        let capacity = self.capacity_for(key);
        self.out.insert(
            key,
            OutStream::starting_at(offset, capacity, offset + INITIAL_CREDIT, self.cfg.rto_ms),
        );
    }

    fn capacity_for(&self, key: StreamKey) -> usize {
        if key == StreamKey::CONTROL {
            self.cfg.control_capacity
        } else {
            self.cfg.out_capacity
        }
    }

    /// Opens an outgoing data stream (idempotent).
    pub fn open_out(&mut self, key: StreamKey) -> &mut OutStream {
        let capacity = self.capacity_for(key);
        let rto = self.cfg.rto_ms;
        self.out
            .entry(key)
            .or_insert_with(|| OutStream::new(capacity, INITIAL_CREDIT, rto))
    }

    /// Bytes the writer of outgoing stream `key` may add now; zero means wait for acks.
    ///
    /// The control stream has its own capacity. A data stream gets at most its own capacity,
    /// at most what is left of `out_total` over all data streams (a hard bound), and at most a
    /// fair share of `out_total`, split between it and the other streams holding bytes, so a
    /// stream whose peer stopped acknowledging cannot take the whole budget from the others.
    pub fn writable(&self, key: StreamKey) -> usize {
        let Some(stream) = self.out.get(&key) else {
            return 0;
        };
        if key == StreamKey::CONTROL {
            return stream.writable();
        }
        let (mut total, mut others) = (0usize, 0usize);
        for (k, s) in &self.out {
            if *k != StreamKey::CONTROL {
                total += s.buffered();
                others += usize::from(*k != key && s.buffered() > 0);
            }
        }
        let share = (self.cfg.out_total / (others + 1)).max(self.cfg.max_chunk);
        stream
            .writable()
            .min(share.saturating_sub(stream.buffered()))
            .min(self.cfg.out_total.saturating_sub(total))
    }

    /// Writes as much of `data` to outgoing stream `key` as [`writable`](Self::writable)
    /// allows; returns how much that was.
    pub fn write_out(&mut self, key: StreamKey, data: &[u8]) -> usize {
        let n = data.len().min(self.writable(key));
        self.out.get_mut(&key).map_or(0, |s| s.write(&data[..n]))
    }

    /// Unacknowledged bytes held by the outgoing data streams, and the memory their buffers
    /// take (whole segments).
    pub fn out_data_held(&self) -> (usize, usize) {
        self.out
            .iter()
            .filter(|(k, _)| **k != StreamKey::CONTROL)
            .fold((0, 0), |(b, a), (_, s)| {
                (b + s.buffered(), a + s.allocated())
            })
    }

    pub fn out(&self, key: StreamKey) -> Option<&OutStream> {
        self.out.get(&key)
    }

    pub fn out_mut(&mut self, key: StreamKey) -> Option<&mut OutStream> {
        self.out.get_mut(&key)
    }

    pub fn in_stream(&self, key: StreamKey) -> Option<&InStream> {
        self.inp.get(&key)
    }

    /// Queues a control record for reliable delivery.
    pub fn send_control(&mut self, record: &Control) -> Result<(), MuxError> {
        let bytes = encode_control(record)?;
        let control = self
            .out
            .get_mut(&StreamKey::CONTROL)
            .expect("control stream always exists");
        if control.writable() < bytes.len() {
            return Err(MuxError::ControlFull(control.buffered()));
        }
        control.write(&bytes);
        Ok(())
    }

    /// The application has durably taken `n` bytes of `key`.
    pub fn release(&mut self, key: StreamKey, n: u64) {
        if let Some(s) = self.inp.get_mut(&key) {
            s.release(n);
            self.dirty.insert(key);
        }
    }

    /// The application could not store what `key` delivered from offset `to` on (for the
    /// control stream, a record boundary it has stored): it is received again later, when the
    /// peer retransmits. See [`InStream::roll_back`].
    pub fn roll_back(&mut self, key: StreamKey, to: u64) {
        if let Some(s) = self.inp.get_mut(&key) {
            s.roll_back(to);
            if key == StreamKey::CONTROL {
                // Bytes of a record not yet complete lie past every stored boundary.
                self.control_in = ControlDecoder::new();
            }
        }
    }

    /// Forgets outgoing streams whose every byte and fin the peer has acknowledged.
    pub fn remove_finished_out(&mut self) -> Vec<StreamKey> {
        let done: Vec<StreamKey> = self
            .out
            .iter()
            .filter(|(k, s)| **k != StreamKey::CONTROL && s.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for k in &done {
            self.out.remove(k);
        }
        done
    }

    /// What this side holds of every incoming stream: sent in the handshake.
    pub fn positions(&self) -> Vec<Position> {
        self.inp.values().map(InStream::position).collect()
    }

    /// Applies the peer's positions after a reconnect: every outgoing stream continues from what
    /// the peer holds. A stream the peer does not mention starts over, which is only possible if
    /// it never had an acked byte.
    pub fn resume(&mut self, peer: &[Position]) -> Result<(), MuxError> {
        let peer: BTreeMap<StreamKey, &Position> = peer.iter().map(|p| (p.key, p)).collect();
        // The appliance is the side that restarts. Streams the guest still holds positions for
        // (its stdin) are recreated here at that offset, so later input continues the stream
        // instead of being dropped as a duplicate of offsets the guest already has.
        if self.role == Role::Appliance {
            for (key, p) in &peer {
                if key.kind == StreamKind::Stdin && !self.out.contains_key(key) {
                    self.restore_out(*key, p.received);
                }
            }
        }
        for (key, stream) in self.out.iter_mut() {
            let (received, limit) = match peer.get(key) {
                Some(p) => (p.received, p.limit),
                None if stream.acked() == 0 => (0, INITIAL_CREDIT),
                None => {
                    return Err(MuxError::PeerLostStream {
                        key: *key,
                        acked: stream.acked(),
                    })
                }
            };
            stream
                .resume(received, limit)
                .map_err(|source| MuxError::Stream { key: *key, source })?;
        }
        for (key, s) in self.inp.iter_mut() {
            s.reset_link();
            self.dirty.insert(*key);
        }
        self.pending_pongs.clear();
        Ok(())
    }

    pub fn on_tick(&mut self, now_ms: u64) {
        for s in self.out.values_mut() {
            s.on_tick(now_ms);
        }
    }

    /// Handles one message of an established channel.
    pub fn on_message(&mut self, msg: Message) -> Result<Inbound, MuxError> {
        match msg {
            Message::Data {
                key,
                seq,
                fin,
                bytes,
            } => self.on_data(key, seq, fin, &bytes),
            // An ack or rewind for a stream this side does not have is ignored, not fatal: the
            // stream may have finished and been forgotten, or a peer restored from its store
            // may know of streams this side never opened. It creates no state either way.
            Message::Ack { key, .. } | Message::Rewind { key, .. }
                if !self.out.contains_key(&key) =>
            {
                Ok(Inbound::Nothing)
            }
            Message::Ack { key, upto, limit } => {
                let s = self
                    .out
                    .get_mut(&key)
                    .ok_or(MuxError::UnknownStream { key })?;
                s.on_ack(upto, limit)
                    .map_err(|source| MuxError::Stream { key, source })?;
                Ok(Inbound::Nothing)
            }
            Message::Rewind { key, from } => {
                let s = self
                    .out
                    .get_mut(&key)
                    .ok_or(MuxError::UnknownStream { key })?;
                s.on_rewind(from)
                    .map_err(|source| MuxError::Stream { key, source })?;
                Ok(Inbound::Nothing)
            }
            Message::Ping { token } => {
                // Bounded: a peer pinging faster than we transmit loses its oldest pongs.
                if self.pending_pongs.len() < 16 {
                    self.pending_pongs.push(token);
                }
                Ok(Inbound::Ping(token))
            }
            Message::Pong { token } => Ok(Inbound::Pong(token)),
            Message::Goodbye { reason } => Ok(Inbound::Goodbye(reason)),
            Message::Time { unix_nanos } => Ok(Inbound::Time(unix_nanos)),
            Message::Hello(_) => Err(MuxError::UnexpectedHandshake("Hello")),
            Message::Challenge(_) => Err(MuxError::UnexpectedHandshake("Challenge")),
            Message::Proof(_) => Err(MuxError::UnexpectedHandshake("Proof")),
            Message::Welcome(_) => Err(MuxError::UnexpectedHandshake("Welcome")),
            Message::Refused(_) => Err(MuxError::UnexpectedHandshake("Refused")),
        }
    }

    fn on_data(
        &mut self,
        key: StreamKey,
        seq: u64,
        fin: bool,
        bytes: &[u8],
    ) -> Result<Inbound, MuxError> {
        let is_control = key == StreamKey::CONTROL;
        if !is_control && !self.inp.contains_key(&key) {
            if !self.role.receives(key.kind) {
                return Err(MuxError::WrongDirection { kind: key.kind });
            }
            // New streams start at offset 0. A first frame at a later offset means the earlier
            // frames were lost: the gap logic of the new stream asks for a rewind to 0.
            if self.inp.len() > self.cfg.max_in_streams {
                return Err(MuxError::TooManyStreams(self.cfg.max_in_streams));
            }
            self.inp.insert(key, InStream::new(key, self.cfg.in_window));
        }
        let stream = self
            .inp
            .get_mut(&key)
            .ok_or(MuxError::UnknownStream { key })?;
        let delivery = stream
            .on_data(seq, bytes, fin)
            .map_err(|source| MuxError::Stream { key, source })?;
        self.dirty.insert(key);
        if is_control {
            // Release (ack) only complete records: after a restart the receiver resumes at a
            // record boundary, so a half-received record must not have been acked.
            let before = self.control_in.buffered() + delivery.bytes.len();
            let records = self.control_in.push(delivery.bytes)?;
            stream.release((before - self.control_in.buffered()) as u64);
            return Ok(if records.is_empty() {
                Inbound::Nothing
            } else {
                Inbound::Control(records)
            });
        }
        if delivery.bytes.is_empty() && !delivery.fin {
            return Ok(Inbound::Nothing);
        }
        Ok(Inbound::Data {
            key,
            bytes: delivery.bytes.to_vec(),
            fin: delivery.fin,
        })
    }

    /// The next message to put on the line, or None when there is nothing (credit permitting).
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit_with(
            |key, seq, parts, fin| Message::Data {
                key,
                seq,
                fin,
                bytes: crate::stream::joined(parts),
            },
            |m| m,
        )
    }

    /// Appends the next message to `out` as a frame, exactly as `write_message` of
    /// [`poll_transmit`](Self::poll_transmit)'s message would, but framing a data chunk straight
    /// from the stream's buffer. False when there is nothing to send.
    pub fn write_next(&mut self, out: &mut Vec<u8>) -> bool {
        // A data chunk is framed in place; any other message is handed back to be framed.
        let next = self.transmit_with(
            |key, seq, parts, fin| {
                crate::write_data(key, seq, fin, parts, out);
                None
            },
            Some,
        );
        if let Some(Some(m)) = &next {
            crate::write_message(m, out);
        }
        next.is_some()
    }

    /// Frames messages into `out` while there are any and `out` holds less than
    /// [`WRITE_BATCH`] bytes: one batch for one write to the line. True if it framed anything.
    pub fn write_batch(&mut self, out: &mut Vec<u8>) -> bool {
        let before = out.len();
        while out.len() < WRITE_BATCH && self.write_next(out) {}
        out.len() > before
    }

    /// Picks what goes on the line next: pongs, then acks and rewinds (small, and they unblock
    /// the peer), then control records, then data streams round-robin. A data chunk goes to
    /// `data` (key, offset, its bytes as two slices, fin); anything else to `message`.
    fn transmit_with<R>(
        &mut self,
        data: impl FnOnce(StreamKey, u64, [&[u8]; 2], bool) -> R,
        message: impl FnOnce(Message) -> R,
    ) -> Option<R> {
        if let Some(token) = self.pending_pongs.pop() {
            return Some(message(Message::Pong { token }));
        }
        while let Some(key) = self.dirty.pop_first() {
            if let Some(msg) = self.inp.get_mut(&key).and_then(InStream::poll_control) {
                // The stream may have an ack queued behind this rewind.
                self.dirty.insert(key);
                return Some(message(msg));
            }
        }
        let max_chunk = self.cfg.max_chunk;
        // `data` is called at most once: a stream calls it only when it has a chunk.
        let mut data = Some(data);
        let mut chunk_of = |stream: &mut OutStream, key: StreamKey| {
            stream.poll_chunk_with(max_chunk, |seq, parts, fin| {
                data.take().expect("one chunk per call")(key, seq, parts, fin)
            })
        };
        if let Some(control) = self.out.get_mut(&StreamKey::CONTROL) {
            if let Some(r) = chunk_of(control, StreamKey::CONTROL) {
                return Some(r);
            }
        }
        let after = match self.cursor {
            Some(k) => (Bound::Excluded(k), Bound::Unbounded),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let key = self
            .out
            .range(after)
            .chain(self.out.range(..))
            .filter(|(k, s)| **k != StreamKey::CONTROL && s.has_ready())
            .map(|(k, _)| *k)
            .next()?;
        self.cursor = Some(key);
        chunk_of(self.out.get_mut(&key)?, key)
    }

    /// Offsets produced but not yet acknowledged by the peer, over every outgoing stream (the
    /// end-of-stream marks included): zero means the peer holds everything.
    pub fn unacknowledged(&self) -> u64 {
        self.out.values().map(|s| s.end() - s.acked()).sum()
    }

    /// Totals for diagnostics: (gaps seen on incoming streams, retransmissions by this side).
    pub fn loss_counters(&self) -> (u64, u64) {
        let gaps = self.inp.values().map(InStream::gaps).sum();
        let retransmits = self.out.values().map(OutStream::retransmits).sum();
        (gaps, retransmits)
    }
}

#[cfg(test)]
mod tests;
