//! Telnet (RFC 854/855) as far as a serial-port concentrator needs it: a streaming decoder that
//! splits a connection's bytes into data and commands (IAC sequences, split across reads at any
//! byte), the encoder that doubles IAC (0xFF) in data, and option negotiation (RFC 1143's rule
//! that an option's state changes only once per request, so two ends never loop).
//!
//! Binary transmission (RFC 856) is what a serial line needs. Until both directions have agreed
//! to it, the line is an NVT: a CR is sent as CR NUL and a received CR NUL is a CR.

/// Interpret As Command.
pub const IAC: u8 = 255;
pub const DONT: u8 = 254;
pub const DO: u8 = 253;
pub const WONT: u8 = 252;
pub const WILL: u8 = 251;
/// Subnegotiation begin.
pub const SB: u8 = 250;
/// Subnegotiation end.
pub const SE: u8 = 240;

/// RFC 856.
pub const OPT_BINARY: u8 = 0;
/// RFC 858.
pub const OPT_SGA: u8 = 3;
/// VMware's telnet extension ("VMWARE-TELNET-EXT"): vMotion notification and proxy commands.
pub const OPT_VMWARE: u8 = 232;

/// A subnegotiation longer than this is not one we understand: dropped whole.
pub const MAX_SUBNEGOTIATION: usize = 4096;

const CR: u8 = b'\r';
const NUL: u8 = 0;

/// One thing a telnet peer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Data bytes, unescaped.
    Data(Vec<u8>),
    /// WILL, WONT, DO or DONT an option.
    Negotiate { verb: u8, option: u8 },
    /// `IAC SB option payload IAC SE`, the payload unescaped.
    Subnegotiation { option: u8, payload: Vec<u8> },
    /// Any other two-byte command (NOP, BRK, AYT, GA, ...).
    Command(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    /// After a CR on a non-binary line: a NUL that follows is dropped.
    Cr,
    Iac,
    Verb(u8),
    /// After `IAC SB`: the option byte comes next.
    SbOption,
    SbData,
    SbIac,
}

/// Splits a telnet byte stream into [`Event`]s, in order.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    sb_option: u8,
    sb: Vec<u8>,
    sb_overflow: bool,
    /// Subnegotiations dropped for being too long.
    pub oversized: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            state: State::Data,
            sb_option: 0,
            sb: Vec::new(),
            sb_overflow: false,
            oversized: 0,
        }
    }
}

impl Decoder {
    /// Decodes `input`, appending what it held to `events` (consecutive data merged into one
    /// event). `binary`: whether the peer sends binary (else CR NUL is a CR).
    pub fn decode(&mut self, input: &[u8], binary: bool, events: &mut Vec<Event>) {
        let mut data: Vec<u8> = Vec::new();
        let flush = |data: &mut Vec<u8>, events: &mut Vec<Event>| {
            if !data.is_empty() {
                events.push(Event::Data(std::mem::take(data)));
            }
        };
        for &b in input {
            self.state = match self.state {
                State::Data | State::Cr if b == IAC => State::Iac,
                State::Cr if b == NUL => State::Data,
                State::Data | State::Cr => {
                    data.push(b);
                    if b == CR && !binary {
                        State::Cr
                    } else {
                        State::Data
                    }
                }
                State::Iac => match b {
                    IAC => {
                        data.push(IAC);
                        State::Data
                    }
                    WILL | WONT | DO | DONT => State::Verb(b),
                    SB => State::SbOption,
                    other => {
                        flush(&mut data, events);
                        events.push(Event::Command(other));
                        State::Data
                    }
                },
                State::Verb(verb) => {
                    flush(&mut data, events);
                    events.push(Event::Negotiate { verb, option: b });
                    State::Data
                }
                State::SbOption => {
                    self.sb_option = b;
                    self.sb.clear();
                    self.sb_overflow = false;
                    State::SbData
                }
                State::SbData if b == IAC => State::SbIac,
                State::SbData => {
                    self.sb_push(b);
                    State::SbData
                }
                State::SbIac => match b {
                    IAC => {
                        self.sb_push(IAC);
                        State::SbData
                    }
                    SE => {
                        flush(&mut data, events);
                        if self.sb_overflow {
                            self.oversized += 1;
                        } else {
                            events.push(Event::Subnegotiation {
                                option: self.sb_option,
                                payload: std::mem::take(&mut self.sb),
                            });
                        }
                        State::Data
                    }
                    // RFC 854 allows no other command inside a subnegotiation; a peer that sends
                    // one has ended it without SE. Take it as ended, the command as given.
                    other => {
                        flush(&mut data, events);
                        self.sb.clear();
                        events.push(Event::Command(other));
                        State::Data
                    }
                },
            };
        }
        flush(&mut data, events);
    }

    fn sb_push(&mut self, b: u8) {
        if self.sb.len() < MAX_SUBNEGOTIATION {
            self.sb.push(b);
        } else {
            self.sb_overflow = true;
        }
    }
}

/// Appends `data` to `out` as telnet data: IAC doubled, and on a non-binary line CR as CR NUL.
pub fn escape_into(data: &[u8], binary: bool, out: &mut Vec<u8>) {
    out.reserve(data.len() + data.len() / 64);
    for &b in data {
        out.push(b);
        if b == IAC {
            out.push(IAC);
        } else if b == CR && !binary {
            out.push(NUL);
        }
    }
}

/// `IAC verb option`.
pub fn negotiation(verb: u8, option: u8) -> [u8; 3] {
    [IAC, verb, option]
}

/// `IAC SB option payload IAC SE`, IAC in the payload doubled.
pub fn subnegotiation(option: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![IAC, SB, option];
    escape_into(payload, true, &mut out);
    out.extend_from_slice(&[IAC, SE]);
    out
}

/// One side's view of one option (RFC 1143's states, less the ones for asking to turn an option
/// off, which a concentrator never does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Side {
    #[default]
    No,
    Yes,
    /// We asked; the answer is pending.
    WantYes,
}

/// The options of one connection: which we want, and where each stands. `local` is what we do
/// (WILL/WONT), `remote` what the peer does (DO/DONT).
#[derive(Debug)]
pub struct Options {
    local: [Side; 256],
    remote: [Side; 256],
    want_local: [bool; 256],
    want_remote: [bool; 256],
}

impl Options {
    /// Options we offer to do (`local`) and ask the peer to do (`remote`); anything else
    /// is refused.
    pub fn new(local: &[u8], remote: &[u8]) -> Self {
        let mut o = Self {
            local: [Side::No; 256],
            remote: [Side::No; 256],
            want_local: [false; 256],
            want_remote: [false; 256],
        };
        for &opt in local {
            o.want_local[opt as usize] = true;
        }
        for &opt in remote {
            o.want_remote[opt as usize] = true;
        }
        o
    }

    /// A concentrator's options: binary both ways and no go-aheads both ways, and the peer may
    /// speak VMware's extension.
    pub fn for_concentrator() -> Self {
        Self::new(&[OPT_BINARY, OPT_SGA], &[OPT_BINARY, OPT_SGA, OPT_VMWARE])
    }

    /// The requests that open a negotiation: for each wanted option not yet on, WILL or DO.
    pub fn open(&mut self, out: &mut Vec<u8>) {
        for opt in 0..=255u8 {
            let i = opt as usize;
            if self.want_local[i] && self.local[i] == Side::No {
                self.local[i] = Side::WantYes;
                out.extend_from_slice(&negotiation(WILL, opt));
            }
            if self.want_remote[i] && self.remote[i] == Side::No {
                self.remote[i] = Side::WantYes;
                out.extend_from_slice(&negotiation(DO, opt));
            }
        }
    }

    /// Answers the peer's `verb option`, appending any reply to `out`.
    pub fn on_negotiate(&mut self, verb: u8, option: u8, out: &mut Vec<u8>) {
        let i = option as usize;
        let (side, wanted, yes, no) = match verb {
            WILL | WONT => (&mut self.remote[i], self.want_remote[i], DO, DONT),
            DO | DONT => (&mut self.local[i], self.want_local[i], WILL, WONT),
            _ => return,
        };
        let offer = matches!(verb, WILL | DO);
        let reply = match (offer, *side) {
            // An offer of what is already on, or the answer to our request: no reply.
            (true, Side::Yes) => None,
            (true, Side::WantYes) => {
                *side = Side::Yes;
                None
            }
            (true, Side::No) if wanted => {
                *side = Side::Yes;
                Some(yes)
            }
            (true, Side::No) => Some(no),
            (false, Side::No) => None,
            (false, Side::WantYes) => {
                *side = Side::No;
                None
            }
            (false, Side::Yes) => {
                *side = Side::No;
                Some(no)
            }
        };
        if let Some(r) = reply {
            out.extend_from_slice(&negotiation(r, option));
        }
    }

    /// Whether the peer does `option` (sends binary, speaks VMware's extension, ...).
    pub fn remote_on(&self, option: u8) -> bool {
        self.remote[option as usize] == Side::Yes
    }

    /// Whether we do `option`.
    pub fn local_on(&self, option: u8) -> bool {
        self.local[option as usize] == Side::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(chunks: &[&[u8]], binary: bool) -> Vec<Event> {
        let mut d = Decoder::default();
        let mut events = Vec::new();
        for c in chunks {
            d.decode(c, binary, &mut events);
        }
        merge_data(events)
    }

    /// Adjacent data events joined (chunking splits them; meaning does not change).
    fn merge_data(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            match (out.last_mut(), e) {
                (Some(Event::Data(a)), Event::Data(b)) => a.extend_from_slice(&b),
                (_, e) => out.push(e),
            }
        }
        out
    }

    #[test]
    fn iac_doubling_and_commands_in_data() {
        let input = [
            b'a', IAC, IAC, b'b', IAC, WILL, OPT_BINARY, b'c', IAC, 241, b'd',
        ];
        assert_eq!(
            decode_all(&[&input], true),
            vec![
                Event::Data(vec![b'a', 0xFF, b'b']),
                Event::Negotiate {
                    verb: WILL,
                    option: OPT_BINARY
                },
                Event::Data(vec![b'c']),
                Event::Command(241),
                Event::Data(vec![b'd']),
            ]
        );
    }

    #[test]
    fn a_vmware_subnegotiation_split_at_every_byte() {
        // VMOTION-BEGIN with a sequence holding 0xFF (doubled on the wire), from VMware's
        // "Using a Proxy with Virtual Serial Ports": 255 250 232 40 sequence 255 240.
        let wire = [IAC, SB, OPT_VMWARE, 40, 1, IAC, IAC, 2, IAC, SE, b'x'];
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(
            decode_all(&chunks, true),
            vec![
                Event::Subnegotiation {
                    option: OPT_VMWARE,
                    payload: vec![40, 1, 0xFF, 2]
                },
                Event::Data(vec![b'x']),
            ]
        );
        assert_eq!(subnegotiation(OPT_VMWARE, &[40, 1, 0xFF, 2]), &wire[..10]);
    }

    #[test]
    fn an_oversized_subnegotiation_is_dropped_whole_and_counted() {
        let mut wire = vec![IAC, SB, OPT_VMWARE];
        wire.extend(std::iter::repeat_n(7u8, MAX_SUBNEGOTIATION + 10));
        wire.extend_from_slice(&[IAC, SE, b'z']);
        let mut d = Decoder::default();
        let mut events = Vec::new();
        d.decode(&wire, true, &mut events);
        assert_eq!(events, vec![Event::Data(vec![b'z'])]);
        assert_eq!(d.oversized, 1);
    }

    #[test]
    fn a_non_binary_line_carries_cr_as_cr_nul() {
        let mut out = Vec::new();
        escape_into(b"a\rb\r\n", false, &mut out);
        assert_eq!(out, b"a\r\0b\r\0\n");
        assert_eq!(
            decode_all(&[b"a\r", b"\0b\r\0\n"], false),
            vec![Event::Data(b"a\rb\r\n".to_vec())]
        );
        // Binary: CR is only a byte.
        out.clear();
        escape_into(b"\r\0", true, &mut out);
        assert_eq!(out, b"\r\0");
        assert_eq!(
            decode_all(&[b"\r\0"], true),
            vec![Event::Data(b"\r\0".to_vec())]
        );
    }

    #[test]
    fn negotiation_agrees_once_and_never_loops() {
        let mut o = Options::for_concentrator();
        let mut out = Vec::new();
        o.open(&mut out);
        assert_eq!(
            out,
            [
                [IAC, WILL, OPT_BINARY],
                [IAC, DO, OPT_BINARY],
                [IAC, WILL, OPT_SGA],
                [IAC, DO, OPT_SGA],
                [IAC, DO, OPT_VMWARE]
            ]
            .concat()
        );
        out.clear();
        // Answers to our requests: no replies.
        for (v, opt) in [(DO, OPT_BINARY), (WILL, OPT_BINARY), (WILL, OPT_VMWARE)] {
            o.on_negotiate(v, opt, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert!(o.remote_on(OPT_BINARY) && o.local_on(OPT_BINARY) && o.remote_on(OPT_VMWARE));
        // A repeated offer of what is on: no reply (this is what stops loops).
        o.on_negotiate(WILL, OPT_BINARY, &mut out);
        assert!(out.is_empty());
        // An option we do not want: refused, once per offer.
        o.on_negotiate(WILL, 24, &mut out);
        o.on_negotiate(DO, 1, &mut out);
        assert_eq!(out, [[IAC, DONT, 24], [IAC, WONT, 1]].concat());
        out.clear();
        // The peer refuses SGA: no reply to a refusal of a request; turning binary off is acked.
        o.on_negotiate(WONT, OPT_SGA, &mut out);
        assert!(out.is_empty());
        o.on_negotiate(WONT, OPT_BINARY, &mut out);
        assert_eq!(out, [IAC, DONT, OPT_BINARY]);
        assert!(!o.remote_on(OPT_BINARY));
    }

    proptest! {
        /// Any data, escaped and cut into any pieces, decodes to itself, on binary and
        /// non-binary lines alike.
        #[test]
        fn arbitrary_data_round_trips(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            binary in any::<bool>(),
        ) {
            let mut wire = Vec::new();
            escape_into(&data, binary, &mut wire);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut last = 0;
            for a in at {
                chunks.push(&wire[last..a]);
                last = a;
            }
            chunks.push(&wire[last..]);
            let events = decode_all(&chunks, binary);
            let back: Vec<u8> = events
                .into_iter()
                .flat_map(|e| match e {
                    Event::Data(d) => d,
                    other => panic!("data decoded as {other:?}"),
                })
                .collect();
            prop_assert_eq!(back, data);
        }

        /// Data interleaved with subnegotiations keeps both, in order.
        #[test]
        fn data_and_subnegotiations_interleave(
            parts in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..64), proptest::collection::vec(any::<u8>(), 0..32)),
                0..8,
            ),
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (data, payload) in &parts {
                escape_into(data, true, &mut wire);
                wire.extend(subnegotiation(OPT_VMWARE, payload));
                if !data.is_empty() {
                    want.push(Event::Data(data.clone()));
                }
                want.push(Event::Subnegotiation { option: OPT_VMWARE, payload: payload.clone() });
            }
            prop_assert_eq!(decode_all(&[&wire], true), merge_data(want));
        }
    }
}
