//! Link messages over a tokio byte stream (feature `tokio`). The protocol itself stays free of
//! I/O; this is the one read loop tether, the session server and the simulated guest share.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Message, MessageReader};

/// How much one read asks for: a whole maximal frame fits.
const READ_CHUNK: usize = 64 * 1024;

/// Decoded messages from a byte stream.
pub struct MessageStream<R> {
    rd: R,
    reader: MessageReader,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> MessageStream<R> {
    pub fn new(rd: R) -> Self {
        Self::with_reader(rd, MessageReader::new())
    }

    /// Continues with a decoder that may already hold bytes read past an earlier message.
    pub fn with_reader(rd: R, reader: MessageReader) -> Self {
        Self {
            rd,
            reader,
            buf: vec![0; READ_CHUNK],
        }
    }

    /// A stream whose reads ask for `read_size` bytes.
    pub fn with_read_size(rd: R, read_size: usize) -> Self {
        Self {
            rd,
            reader: MessageReader::new(),
            buf: vec![0; read_size.max(1)],
        }
    }

    /// The next message; `None` at end of stream. Cancel-safe: a message decoded but not yet
    /// returned stays in the decoder.
    pub async fn next(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(m) = self.reader.next_message() {
                return Ok(Some(m));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A message already decoded from bytes read so far, without reading.
    pub fn try_next(&mut self) -> Option<Message> {
        self.reader.next_message()
    }

    /// Reads once and feeds the decoder; the byte count, 0 at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        let n = self.rd.read(&mut self.buf).await?;
        self.reader.feed(&self.buf[..n]);
        Ok(n)
    }

    /// Changes how much one read asks for (a server keeps it small until a peer has proved
    /// who it is: an idle or unauthenticated connection then costs little memory).
    pub fn set_read_size(&mut self, bytes: usize) {
        self.buf.resize(bytes.max(1), 0);
        self.buf.shrink_to_fit();
    }

    /// The decoder, for its loss counters.
    pub fn reader(&self) -> &MessageReader {
        &self.reader
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.rd
    }

    /// The stream and the decoder (with any bytes it holds).
    pub fn into_parts(self) -> (R, MessageReader) {
        (self.rd, self.reader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write_message;

    #[tokio::test]
    async fn messages_split_across_reads_arrive_whole_then_end() {
        let mut bytes = Vec::new();
        for token in 0..3 {
            write_message(&Message::Ping { token }, &mut bytes);
        }
        let (mut tx, rx) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&bytes).await.unwrap();
        });
        let mut stream = MessageStream::new(rx);
        for token in 0..3 {
            assert_eq!(stream.next().await.unwrap(), Some(Message::Ping { token }));
        }
        writer.await.unwrap();
        assert_eq!(stream.next().await.unwrap(), None);
    }
}
