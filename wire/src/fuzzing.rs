//! Bodies of the fuzz targets, shared by `wire/fuzz` (libFuzzer) and the regression test that
//! replays saved inputs in `make test`. Each panics only on a real bug.

use crate::frame::{FrameDecoder, MAX_PAYLOAD};
use crate::message::{decode, encode, Control, Message};
use crate::mux::{Role, StreamConfig, Streams};
use crate::ControlDecoder;

/// Arbitrary bytes, in arbitrary chunks, through the frame decoder.
pub fn frame_decoder(data: &[u8]) {
    // The first byte picks the chunk size, so splits at every position get explored.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new();
    let mut payload_bytes = 0u64;
    for piece in rest.chunks(chunk) {
        dec.feed(piece, |r| {
            if let Ok(p) = r {
                assert!(
                    p.len() <= MAX_PAYLOAD,
                    "decoder produced an oversized payload"
                );
                payload_bytes += p.len() as u64;
            }
        });
    }
    assert!(
        dec.stats().dropped_bytes <= rest.len() as u64,
        "dropped more than was fed"
    );
    assert!(
        payload_bytes <= rest.len() as u64,
        "produced more than was fed"
    );
}

/// Arbitrary bytes as a link message, a control record and control-stream bytes. Whatever
/// decodes must re-encode losslessly, and an established channel must absorb or reject it.
pub fn message_decode(data: &[u8]) {
    if let Ok(msg) = decode::<Message>(data) {
        let again = encode(&msg);
        assert_eq!(
            decode::<Message>(&again).as_ref(),
            Ok(&msg),
            "lossy round trip"
        );
        for role in [Role::Guest, Role::Appliance] {
            let mut streams = Streams::new(role, StreamConfig::default());
            let _ = streams.on_message(msg.clone());
            // Bounded: the reply to one message is a handful of acks, pongs and rewinds.
            for _ in 0..64 {
                if streams.poll_transmit().is_none() {
                    break;
                }
            }
        }
    }
    if let Ok(rec) = decode::<Control>(data) {
        assert_eq!(
            decode::<Control>(&encode(&rec)).as_ref(),
            Ok(&rec),
            "lossy round trip"
        );
    }
    let _ = ControlDecoder::new().push(data);
}

/// Splits fuzz input into messages: each is one length byte and that many bytes of postcard.
fn messages(data: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&len, r)) = rest.split_first() {
        let n = usize::from(len).min(r.len());
        if let Ok(m) = decode::<Message>(&r[..n]) {
            out.push(m);
        }
        rest = &r[n..];
    }
    out
}

/// Arbitrary handshake messages against both ends. Nothing panics, and no proof the fuzzer can
/// make is accepted: a MAC over this run's nonces cannot be forged without the secret. (The
/// seed inputs hold a genuine exchange made with other nonces: a replayed proof is refused.)
pub fn handshake(data: &[u8]) {
    use crate::handshake::{client_finish, ClientHandshake, Secret, ServerHandshake};
    let secret = Secret::new(b"fuzz-secret".to_vec());
    let msgs = messages(data);
    for hello in msgs.iter().filter_map(|m| match m {
        Message::Hello(h) => Some(h.clone()),
        _ => None,
    }) {
        let Ok((server, _challenge)) =
            ServerHandshake::on_hello(hello, [8; 32], |id| (id == "c1").then(|| secret.clone()))
        else {
            continue;
        };
        if let Some(Message::Proof(p)) = msgs.iter().find(|m| matches!(m, Message::Proof(_))) {
            assert!(
                server.on_proof(p.clone()).is_err(),
                "a proof made without the secret was accepted"
            );
        }
    }
    let (client, _hello) = ClientHandshake::start("c1".to_string(), [1; 16], secret, [3; 32]);
    for m in &msgs {
        if let Message::Challenge(c) = m {
            assert!(
                client.on_challenge(c, Vec::new()).is_err(),
                "a server proof made without the secret was accepted"
            );
        }
        let _ = client_finish(m.clone());
    }
}

/// Replays every saved input of a fuzz target (`fuzz/regressions/<target>/*`) through `run`;
/// returns how many there were. The regression tests of each crate call this.
pub fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        run(&data);
        count += 1;
    }
    count
}
