//! A guest and an appliance, each a `Streams`, joined by a simulated byte link through the real
//! frame codec. The link is cut at arbitrary bytes (optionally with an appliance restart that
//! keeps only what it persisted) or corrupts frames; every stream must still arrive exactly once.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use wire::{
    decode, write_message, Control, FrameDecoder, Inbound, Message, Role, StreamConfig, StreamKey,
    StreamKind, Streams,
};

const STDOUT: StreamKey = StreamKey {
    session: 1,
    kind: StreamKind::Stdout,
};
const STDERR: StreamKey = StreamKey {
    session: 2,
    kind: StreamKind::Stderr,
};
const STDIN: StreamKey = StreamKey {
    session: 1,
    kind: StreamKind::Stdin,
};

fn config() -> StreamConfig {
    StreamConfig {
        out_capacity: 8 * 1024,
        in_window: 64 * 1024,
        max_chunk: 1500,
        rto_ms: 300,
        ..Default::default()
    }
}

/// What the appliance has persisted: survives its restart.
#[derive(Default)]
struct Store {
    logs: BTreeMap<StreamKey, Vec<u8>>,
    fins: BTreeMap<StreamKey, bool>,
    control: Vec<Control>,
    control_offset: u64,
}

/// One side's received stream bytes, delivered in order.
fn apply_inbound(
    side: &mut Streams,
    inbound: Inbound,
    logs: &mut BTreeMap<StreamKey, Vec<u8>>,
    fins: &mut BTreeMap<StreamKey, bool>,
    control: &mut Vec<Control>,
) {
    match inbound {
        Inbound::Data { key, bytes, fin } => {
            logs.entry(key).or_default().extend_from_slice(&bytes);
            if fin {
                let seen = fins.insert(key, true);
                assert_ne!(seen, Some(true), "fin of {key:?} delivered twice");
            }
            side.release(key, bytes.len() as u64);
        }
        Inbound::Control(records) => control.extend(records),
        _ => {}
    }
}

/// The messages in `bytes` a receiver decodes; frames the line corrupted are dropped, as the
/// CRC check drops them.
fn decoded(dec: &mut FrameDecoder, bytes: &[u8]) -> Vec<Message> {
    let mut msgs = Vec::new();
    dec.feed(bytes, |r| {
        if let Ok(p) = r {
            msgs.push(decode::<Message>(p).unwrap());
        }
    });
    msgs
}

/// A line fault: one byte of `bytes` (if any) flipped, chosen by `at`.
fn flip(bytes: &mut [u8], at: usize) {
    if !bytes.is_empty() {
        let i = at % bytes.len();
        bytes[i] ^= 0x41;
    }
}

struct Sim {
    guest: Streams,
    server: Streams,
    g2s: Vec<u8>,
    s2g: Vec<u8>,
    gdec: FrameDecoder,
    sdec: FrameDecoder,
    store: Store,
    /// What the guest received (stdin) and the control records it got.
    guest_logs: BTreeMap<StreamKey, Vec<u8>>,
    guest_fins: BTreeMap<StreamKey, bool>,
    guest_control: Vec<Control>,
    now: u64,
}

impl Sim {
    fn new() -> Self {
        let mut sim = Sim {
            guest: Streams::new(Role::Guest, config()),
            server: Streams::new(Role::Appliance, config()),
            g2s: Vec::new(),
            s2g: Vec::new(),
            gdec: FrameDecoder::new(),
            sdec: FrameDecoder::new(),
            store: Store::default(),
            guest_logs: BTreeMap::new(),
            guest_fins: BTreeMap::new(),
            guest_control: Vec::new(),
            now: 0,
        };
        sim.guest.open_out(STDOUT);
        sim.guest.open_out(STDERR);
        sim
    }

    fn transmit(&mut self) {
        while let Some(m) = self.guest.poll_transmit() {
            write_message(&m, &mut self.g2s);
        }
        while let Some(m) = self.server.poll_transmit() {
            write_message(&m, &mut self.s2g);
        }
    }

    /// Delivers `g2s[..g_upto]` and `s2g[..s_upto]`, optionally flipping one byte of each.
    fn deliver(&mut self, g_upto: usize, s_upto: usize, corrupt: Option<usize>) {
        let mut g: Vec<u8> = self.g2s.drain(..g_upto).collect();
        let mut s: Vec<u8> = self.s2g.drain(..s_upto).collect();
        if let Some(at) = corrupt {
            flip(&mut g, at);
            flip(&mut s, at);
        }
        for m in decoded(&mut self.sdec, &g) {
            let inbound = self
                .server
                .on_message(m)
                .expect("guest speaks the protocol");
            let st = &mut self.store;
            apply_inbound(
                &mut self.server,
                inbound,
                &mut st.logs,
                &mut st.fins,
                &mut st.control,
            );
        }
        self.store.control_offset = self
            .server
            .in_stream(StreamKey::CONTROL)
            .unwrap()
            .released();
        for m in decoded(&mut self.gdec, &s) {
            let inbound = self
                .guest
                .on_message(m)
                .expect("server speaks the protocol");
            apply_inbound(
                &mut self.guest,
                inbound,
                &mut self.guest_logs,
                &mut self.guest_fins,
                &mut self.guest_control,
            );
        }
    }

    /// The connection breaks; bytes in flight are lost. With `restart`, the appliance process
    /// is replaced by a new one that knows only its store.
    fn reconnect(&mut self, restart: bool) {
        self.g2s.clear();
        self.s2g.clear();
        self.gdec = FrameDecoder::new();
        self.sdec = FrameDecoder::new();
        if restart {
            let mut server = Streams::new(Role::Appliance, config());
            for (key, log) in &self.store.logs {
                let fin = self.store.fins.get(key).copied().unwrap_or(false);
                server.restore_in(*key, log.len() as u64, fin);
            }
            server.restore_in(StreamKey::CONTROL, self.store.control_offset, false);
            self.server = server;
        }
        // The handshake carries each side's positions.
        let server_pos = self.server.positions();
        let guest_pos = self.guest.positions();
        self.guest.resume(&server_pos).expect("guest resumes");
        self.server.resume(&guest_pos).expect("server resumes");
    }

    fn tick(&mut self) {
        self.now += 100;
        self.guest.on_tick(self.now);
        self.server.on_tick(self.now);
    }
}

/// Feeds `src` into the stream as capacity allows; closes it when done.
fn feed(side: &mut Streams, key: StreamKey, src: &[u8], pos: &mut usize) {
    let s = side.out_mut(key).unwrap();
    *pos += s.write(&src[*pos..]);
    if *pos == src.len() && !s.is_closed() {
        s.close();
    }
}

#[derive(Debug, Clone)]
struct Cut {
    step: usize,
    /// Where in the bytes in flight the line breaks, as a fraction in 1/1000ths.
    at_permille: u16,
    restart: bool,
}

fn cut() -> impl Strategy<Value = Cut> {
    (0usize..400, 0u16..1000, any::<bool>()).prop_map(|(step, at_permille, restart)| Cut {
        step,
        at_permille,
        restart,
    })
}

struct Outcome {
    store: Store,
    /// Retransmissions (timer or rewind) by either side: zero when resume alone was exact.
    retransmits: u64,
    guest_logs: BTreeMap<StreamKey, Vec<u8>>,
    guest_control: Vec<Control>,
}

fn run(
    out: &[u8],
    err: &[u8],
    stdin: &[u8],
    records: &[Control],
    cuts: &[Cut],
    corrupt_steps: &[usize],
) -> Outcome {
    let mut sim = Sim::new();
    let (mut po, mut pe, mut pi, mut pr) = (0, 0, 0, 0);
    let with_stdin = !stdin.is_empty();
    if with_stdin {
        sim.server.open_out(STDIN);
    }
    for step in 0..20_000 {
        feed(&mut sim.guest, STDOUT, out, &mut po);
        feed(&mut sim.guest, STDERR, err, &mut pe);
        if with_stdin {
            feed(&mut sim.server, STDIN, stdin, &mut pi);
        }
        // Control records trickle out, one every few steps.
        if pr < records.len() && step % 3 == 0 {
            sim.guest.send_control(&records[pr]).unwrap();
            pr += 1;
        }
        sim.transmit();
        let cut = cuts.iter().find(|c| c.step == step);
        let corrupt = corrupt_steps.contains(&step).then_some(step * 7919);
        match cut {
            Some(c) => {
                let g = sim.g2s.len() * c.at_permille as usize / 1000;
                let s = sim.s2g.len() * c.at_permille as usize / 1000;
                sim.deliver(g, s, corrupt);
                sim.reconnect(c.restart);
            }
            None => {
                let (g, s) = (sim.g2s.len(), sim.s2g.len());
                sim.deliver(g, s, corrupt);
            }
        }
        sim.tick();
        let done = |side: &Streams, key| side.out(key).is_none_or(|s| s.is_finished());
        if pr == records.len()
            && done(&sim.guest, STDOUT)
            && done(&sim.guest, STDERR)
            && (!with_stdin || done(&sim.server, STDIN))
            && sim.store.control.len() == records.len()
        {
            return Outcome {
                retransmits: sim.guest.loss_counters().1 + sim.server.loss_counters().1,
                store: sim.store,
                guest_logs: sim.guest_logs,
                guest_control: sim.guest_control,
            };
        }
    }
    panic!("streams did not finish within the step bound");
}

fn exited(session: u32) -> Control {
    Control::Exited {
        session,
        exit_code: (session % 256) as i32,
        signal: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn interrupted_streams_resume_exactly_once(
        out in vec(any::<u8>(), 0..60_000),
        err in vec(any::<u8>(), 0..5_000),
        n_records in 0u32..20,
        cuts in vec(cut(), 0..8),
    ) {
        let records: Vec<Control> = (1..=n_records).map(exited).collect();
        let r = run(&out, &err, &[], &records, &cuts, &[]);
        prop_assert_eq!(r.store.logs.get(&STDOUT).map_or(&[][..], |v| v), &out[..]);
        prop_assert_eq!(r.store.logs.get(&STDERR).map_or(&[][..], |v| v), &err[..]);
        prop_assert_eq!(r.store.fins.get(&STDOUT), Some(&true));
        prop_assert_eq!(r.store.control, records);
        prop_assert_eq!(r.retransmits, 0, "resume alone must be exact, without timer repair");
    }

    #[test]
    fn stdin_resumes_exactly_once_across_reconnects(
        stdin in vec(any::<u8>(), 1..40_000),
        cuts in vec(cut().prop_map(|c| Cut { restart: false, ..c }), 0..8),
    ) {
        let r = run(b"ok", b"", &stdin, &[], &cuts, &[]);
        prop_assert_eq!(r.guest_logs.get(&STDIN).map_or(&[][..], |v| v), &stdin[..]);
        prop_assert!(r.guest_control.is_empty());
        prop_assert_eq!(r.retransmits, 0);
    }

    #[test]
    fn corrupted_frames_are_repaired(
        out in vec(any::<u8>(), 1..40_000),
        stdin in vec(any::<u8>(), 1..10_000),
        corrupt_steps in vec(0usize..200, 1..20),
        n_records in 1u32..10,
    ) {
        let records: Vec<Control> = (1..=n_records).map(exited).collect();
        let r = run(&out, b"", &stdin, &records, &[], &corrupt_steps);
        prop_assert_eq!(r.store.logs.get(&STDOUT).map_or(&[][..], |v| v), &out[..]);
        prop_assert_eq!(r.guest_logs.get(&STDIN).map_or(&[][..], |v| v), &stdin[..]);
        prop_assert_eq!(r.store.control, records);
    }
}

#[test]
fn restart_at_every_step_of_a_small_stream() {
    // Deterministic sweep: break (and restart the appliance) at each of the first 60 steps, at
    // several byte positions within what was in flight.
    let out: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let records: Vec<Control> = (1..=5).map(exited).collect();
    for step in 0..60 {
        for at_permille in [0, 1, 333, 500, 999] {
            let cuts = [Cut {
                step,
                at_permille,
                restart: step % 2 == 0,
            }];
            let r = run(&out, b"tail", &[], &records, &cuts, &[]);
            assert_eq!(r.store.logs[&STDOUT], out, "step {step} at {at_permille}");
            assert_eq!(r.store.control, records, "step {step} at {at_permille}");
        }
    }
}
