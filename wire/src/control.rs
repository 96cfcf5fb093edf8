//! Record framing inside the control stream: `u32 little-endian length || postcard(Control)`.
//!
//! The control stream is an ordinary reliable byte stream, so records may be split across `Data`
//! messages anywhere; the decoder reassembles them. Records are bounded so a hostile peer cannot
//! make the decoder buffer without limit.

use thiserror::Error;

use crate::message::{decode, encode, Control, DecodeError};

/// Largest encoded control record.
pub const MAX_CONTROL_RECORD: usize = 60 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("control record of {0} bytes exceeds the {MAX_CONTROL_RECORD}-byte limit")]
    TooLarge(usize),
    #[error("control record is malformed: {0}")]
    Malformed(#[from] DecodeError),
}

/// Encodes one record with its length prefix.
pub fn encode_control(record: &Control) -> Result<Vec<u8>, ControlError> {
    let body = encode(record);
    if body.len() > MAX_CONTROL_RECORD {
        return Err(ControlError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reassembles records from control-stream bytes.
#[derive(Debug, Default)]
pub struct ControlDecoder {
    buf: Vec<u8>,
}

impl ControlDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of an incomplete record held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends stream bytes; returns every record they completed. After an error the stream is
    /// unusable (the record boundary is lost) and the connection must be dropped.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Control>, ControlError> {
        self.buf.extend_from_slice(bytes);
        let mut records = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let mut len_bytes = [0u8; 4];
            len_bytes.copy_from_slice(&self.buf[at..at + 4]);
            let len = u32::from_le_bytes(len_bytes) as usize;
            if len > MAX_CONTROL_RECORD {
                self.buf.clear();
                return Err(ControlError::TooLarge(len));
            }
            if self.buf.len() - at - 4 < len {
                break;
            }
            let record = decode::<Control>(&self.buf[at + 4..at + 4 + len]);
            at += 4 + len;
            match record {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.buf.clear();
                    return Err(e.into());
                }
            }
        }
        self.buf.drain(..at);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_at_every_byte_reassemble() {
        let records = vec![
            Control::CloseStdin { session: 3 },
            Control::Signal {
                session: 9,
                signal: 10,
                group: true,
            },
        ];
        let bytes: Vec<u8> = records
            .iter()
            .flat_map(|r| encode_control(r).unwrap())
            .collect();
        for split in 0..=bytes.len() {
            let mut dec = ControlDecoder::new();
            let mut got = dec.push(&bytes[..split]).unwrap();
            got.extend(dec.push(&bytes[split..]).unwrap());
            assert_eq!(got, records);
        }
    }

    #[test]
    fn oversized_length_is_refused_without_buffering() {
        let mut dec = ControlDecoder::new();
        let err = dec.push(&u32::MAX.to_le_bytes()).unwrap_err();
        assert_eq!(err, ControlError::TooLarge(u32::MAX as usize));
        assert!(dec.buf.is_empty());
    }

    #[test]
    fn garbage_record_is_malformed() {
        let mut dec = ControlDecoder::new();
        let err = dec.push(&[2, 0, 0, 0, 250, 250]).unwrap_err();
        assert!(matches!(err, ControlError::Malformed(_)));
    }
}
