//! Docker's stream framing for attach, exec and logs: without a tty, each chunk is prefixed by an
//! 8-byte header `[stream, 0, 0, 0, len as u32 big-endian]` (stream 1 stdout, 2 stderr); with a
//! tty, bytes pass through raw.

use crate::store::logs::Stream;

pub fn frame(tty: bool, stream: Stream, bytes: &[u8], out: &mut Vec<u8>) {
    if tty {
        out.extend_from_slice(bytes);
        return;
    }
    let kind = match stream {
        Stream::Stdout => 1u8,
        Stream::Stderr => 2u8,
    };
    for chunk in bytes.chunks(u32::MAX as usize) {
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Splits a multiplexed stream back into (stream, bytes) pieces; returns what is left over.
pub fn demux(mut input: &[u8]) -> (Vec<(Stream, Vec<u8>)>, Vec<u8>) {
    let mut out = Vec::new();
    while input.len() >= 8 {
        let len = u32::from_be_bytes([input[4], input[5], input[6], input[7]]) as usize;
        if input.len() < 8 + len {
            break;
        }
        let stream = if input[0] == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        out.push((stream, input[8..8 + len].to_vec()));
        input = &input[8 + len..];
    }
    (out, input.to_vec())
}

/// Finds docker's detach sequence (default ctrl-p ctrl-q) in stdin; returns the bytes before it.
pub fn detach_at<'a>(data: &'a [u8], keys: &[u8]) -> Option<&'a [u8]> {
    if keys.is_empty() {
        return None;
    }
    data.windows(keys.len())
        .position(|w| w == keys)
        .map(|i| &data[..i])
}

/// Parses docker's `--detach-keys` form (`ctrl-p,ctrl-q`, letters, `ctrl-@`..`ctrl-_`).
pub fn parse_detach_keys(spec: &str) -> Option<Vec<u8>> {
    spec.split(',')
        .map(|k| {
            let k = k.trim();
            if let Some(c) = k.strip_prefix("ctrl-") {
                let c = c.chars().next()?.to_ascii_uppercase() as u8;
                (b'@'..=b'_').contains(&c).then_some(c - b'@')
            } else {
                (k.len() == 1).then(|| k.as_bytes()[0])
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_demuxes() {
        let mut out = Vec::new();
        frame(false, Stream::Stdout, b"hi", &mut out);
        frame(false, Stream::Stderr, b"err", &mut out);
        assert_eq!(&out[..8], &[1, 0, 0, 0, 0, 0, 0, 2]);
        let (pieces, rest) = demux(&out);
        assert_eq!(
            pieces,
            vec![
                (Stream::Stdout, b"hi".to_vec()),
                (Stream::Stderr, b"err".to_vec())
            ]
        );
        assert!(rest.is_empty());
        let mut raw = Vec::new();
        frame(true, Stream::Stdout, b"raw", &mut raw);
        assert_eq!(raw, b"raw");
    }

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q"), Some(vec![0x10, 0x11]));
        assert_eq!(parse_detach_keys("a,ctrl-a"), Some(vec![b'a', 1]));
        assert_eq!(parse_detach_keys("ctrl-ü"), None);
        assert_eq!(detach_at(b"ab\x10\x11cd", &[0x10, 0x11]), Some(&b"ab"[..]));
        assert_eq!(detach_at(b"abcd", &[0x10, 0x11]), None);
    }
}
