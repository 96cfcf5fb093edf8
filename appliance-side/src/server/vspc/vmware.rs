//! VMware's telnet extension (option 232), from VMware's "Using a Proxy with Virtual Serial
//! Ports": every command is `IAC SB 232 command parameters IAC SE`. The host (ESXi's VMX, the
//! telnet client) tells the proxy about itself and about vMotion; the proxy (this vSPC) answers.
//! Codes as VIC's lib/vspc lists them.

use super::telnet::{subnegotiation, OPT_VMWARE};

pub const KNOWN_SUBOPTIONS_1: u8 = 0;
pub const KNOWN_SUBOPTIONS_2: u8 = 1;
pub const UNKNOWN_SUBOPTION_RCVD_1: u8 = 2;
pub const UNKNOWN_SUBOPTION_RCVD_2: u8 = 3;
pub const VMOTION_BEGIN: u8 = 40;
pub const VMOTION_GOAHEAD: u8 = 41;
pub const VMOTION_NOTNOW: u8 = 43;
pub const VMOTION_PEER: u8 = 44;
pub const VMOTION_PEER_OK: u8 = 45;
pub const VMOTION_COMPLETE: u8 = 46;
pub const VMOTION_ABORT: u8 = 48;
pub const DO_PROXY: u8 = 70;
pub const WILL_PROXY: u8 = 71;
pub const WONT_PROXY: u8 = 73;
pub const VM_VC_UUID: u8 = 80;
pub const GET_VM_VC_UUID: u8 = 81;
pub const VM_NAME: u8 = 82;
pub const GET_VM_NAME: u8 = 83;

/// The suboptions this proxy sends or understands (its KNOWN-SUBOPTIONS-2).
pub const KNOWN: &[u8] = &[
    KNOWN_SUBOPTIONS_1,
    KNOWN_SUBOPTIONS_2,
    UNKNOWN_SUBOPTION_RCVD_1,
    UNKNOWN_SUBOPTION_RCVD_2,
    VMOTION_BEGIN,
    VMOTION_GOAHEAD,
    VMOTION_NOTNOW,
    VMOTION_PEER,
    VMOTION_PEER_OK,
    VMOTION_COMPLETE,
    VMOTION_ABORT,
    DO_PROXY,
    WILL_PROXY,
    WONT_PROXY,
    VM_VC_UUID,
    GET_VM_VC_UUID,
    VM_NAME,
    GET_VM_NAME,
];

/// The secret a GOAHEAD hands out, which the destination host's PEER must bring back.
pub const SECRET_LEN: usize = 8;

/// What the host says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    /// The suboptions the host knows.
    KnownSuboptions(Vec<u8>),
    /// The host did not know a suboption we sent.
    UnknownSuboptionReceived(u8),
    /// Forward this serial port: `direction` `C` (the VM is the client) or `S`, and the
    /// backing's service URI.
    DoProxy {
        direction: u8,
        service_uri: String,
    },
    /// The source host is about to stop the VM for a vMotion (`sequence` is opaque).
    VmotionBegin {
        sequence: Vec<u8>,
    },
    /// The destination host's new connection claims the VM by the sequence and our secret.
    /// The split between the two is known only to us (the secret is [`SECRET_LEN`] bytes).
    VmotionPeer {
        cookie: Vec<u8>,
    },
    /// On the destination's connection: use this connection from now on.
    VmotionComplete {
        sequence: Vec<u8>,
    },
    /// On the source's connection: the vMotion failed; this connection stays the VM's.
    VmotionAbort {
        sequence: Vec<u8>,
    },
    VmUuid(String),
    VmName(String),
    /// A suboption we do not know, by its code.
    Unknown(u8),
}

impl HostCommand {
    /// The command in a VMware-extension subnegotiation's payload; `None` for an empty one.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (&code, rest) = payload.split_first()?;
        let text = || String::from_utf8_lossy(rest).trim().to_string();
        Some(match code {
            KNOWN_SUBOPTIONS_1 => Self::KnownSuboptions(rest.to_vec()),
            UNKNOWN_SUBOPTION_RCVD_1 => Self::UnknownSuboptionReceived(*rest.first()?),
            DO_PROXY => {
                let (&direction, uri) = rest.split_first()?;
                Self::DoProxy {
                    direction,
                    service_uri: String::from_utf8_lossy(uri).into_owned(),
                }
            }
            VMOTION_BEGIN => Self::VmotionBegin {
                sequence: rest.to_vec(),
            },
            VMOTION_PEER => Self::VmotionPeer {
                cookie: rest.to_vec(),
            },
            VMOTION_COMPLETE => Self::VmotionComplete {
                sequence: rest.to_vec(),
            },
            VMOTION_ABORT => Self::VmotionAbort {
                sequence: rest.to_vec(),
            },
            VM_VC_UUID => Self::VmUuid(text()),
            VM_NAME => Self::VmName(text()),
            other => Self::Unknown(other),
        })
    }
}

/// `IAC SB 232 code params IAC SE`.
pub fn command(code: u8, params: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(params.len() + 1);
    payload.push(code);
    payload.extend_from_slice(params);
    subnegotiation(OPT_VMWARE, &payload)
}

/// KNOWN-SUBOPTIONS-2 with ours.
pub fn known_suboptions() -> Vec<u8> {
    command(KNOWN_SUBOPTIONS_2, KNOWN)
}

pub fn goahead(sequence: &[u8], secret: &[u8; SECRET_LEN]) -> Vec<u8> {
    command(VMOTION_GOAHEAD, &[sequence, secret].concat())
}

pub fn notnow(sequence: &[u8]) -> Vec<u8> {
    command(VMOTION_NOTNOW, sequence)
}

pub fn peer_ok(sequence: &[u8]) -> Vec<u8> {
    command(VMOTION_PEER_OK, sequence)
}

/// Splits a PEER cookie into the sequence and the secret.
pub fn split_cookie(cookie: &[u8]) -> Option<(&[u8], &[u8])> {
    cookie
        .len()
        .checked_sub(SECRET_LEN)
        .map(|at| cookie.split_at(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::vspc::telnet::{IAC, SB, SE};

    #[test]
    fn commands_are_the_byte_sequences_vmware_documents() {
        // "IAC SB VMWARE-TELNET-EXT WILL-PROXY IAC SE: 255 250 232 71 255 240".
        assert_eq!(command(WILL_PROXY, &[]), [255, 250, 232, 71, 255, 240]);
        // "VMOTION-GOAHEAD sequence secret: 255 250 232 41 sequence secret 255 240", with a
        // 0xFF in the secret doubled.
        let secret = [1, 2, 3, 0xFF, 5, 6, 7, 8];
        assert_eq!(
            goahead(&[9, 9], &secret),
            [
                &[IAC, SB, 232, 41, 9, 9, 1, 2, 3, 0xFF, 0xFF][..],
                &[5, 6, 7, 8, IAC, SE]
            ]
            .concat()
        );
        assert_eq!(notnow(b"s"), [255, 250, 232, 43, b's', 255, 240]);
        assert_eq!(peer_ok(b"s"), [255, 250, 232, 45, b's', 255, 240]);
    }

    #[test]
    fn host_commands_parse() {
        assert_eq!(
            HostCommand::parse(b"\x46Ctelnet://appliance:2377"),
            Some(HostCommand::DoProxy {
                direction: b'C',
                service_uri: "telnet://appliance:2377".into()
            })
        );
        assert_eq!(
            HostCommand::parse(&[VMOTION_BEGIN, 1, 2]),
            Some(HostCommand::VmotionBegin {
                sequence: vec![1, 2]
            })
        );
        assert_eq!(
            HostCommand::parse(b"\x5042 1c 3e 9b aa 01 02 03-04 05 06 07 08 09 0a 0b\n"),
            Some(HostCommand::VmUuid(
                "42 1c 3e 9b aa 01 02 03-04 05 06 07 08 09 0a 0b".into()
            ))
        );
        assert_eq!(HostCommand::parse(&[99, 1]), Some(HostCommand::Unknown(99)));
        assert_eq!(HostCommand::parse(&[]), None);
        assert_eq!(HostCommand::parse(&[DO_PROXY]), None);
        let cookie = [7u8, 7, 1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(
            split_cookie(&cookie),
            Some((&[7u8, 7][..], &[1u8, 2, 3, 4, 5, 6, 7, 8][..]))
        );
        assert_eq!(split_cookie(&[1, 2]), None);
    }
}
