//! A simulated guest for tests and benchmarks: the guest side of the handshake over any byte
//! stream, as tether does it, without a VM.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{
    write_message, ClientHandshake, Message, MessageReader, Role, Secret, StreamConfig, Streams,
};

use crate::records;

/// Runs the guest side of the handshake on `s`; returns the reader (holding anything read past
/// the Welcome) and the guest's streams, resumed.
pub async fn handshake_as<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    id: String,
    secret: Vec<u8>,
) -> (MessageReader, Streams) {
    let (hs, hello) = ClientHandshake::start(
        id,
        records::random(),
        Secret::new(secret),
        records::random(),
    );
    let mut out = Vec::new();
    write_message(&Message::Hello(hello), &mut out);
    s.write_all(&out).await.unwrap();
    let mut reader = MessageReader::new();
    let mut buf = vec![0u8; 65536];
    let mut streams = Streams::new(Role::Guest, StreamConfig::default());
    let challenge = loop {
        if let Some(m) = reader.next_message() {
            match m {
                Message::Challenge(c) => break c,
                other => panic!("expected Challenge, got {other:?}"),
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        reader.feed(&buf[..n]);
    };
    let (_, proof) = hs.on_challenge(&challenge, streams.positions()).unwrap();
    out.clear();
    write_message(&Message::Proof(proof), &mut out);
    s.write_all(&out).await.unwrap();
    let welcome = loop {
        if let Some(m) = reader.next_message() {
            break wire::handshake::client_finish(m).unwrap();
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        reader.feed(&buf[..n]);
    };
    streams.resume(&welcome.received).unwrap();
    (reader, streams)
}
