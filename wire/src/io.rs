//! Link messages over a tokio byte stream (feature `tokio`). The protocol itself stays free of
//! I/O; this is the one read loop tether, the session server and the simulated guest share.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::{Message, MessageReader};

/// How much one read asks for at most: a whole maximal frame fits.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One read buffer per thread, shared by every stream: a read and the decoding of what it
    /// brought happen within one poll, so the buffer is never held across an await, and an
    /// idle connection owns no read buffer (a 16 KiB one each was most of the session server's
    /// memory per idle channel).
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Decoded messages from a byte stream.
pub struct MessageStream<R> {
    rd: R,
    reader: MessageReader,
    /// Bytes one read asks for (at most `READ_CHUNK`).
    read_size: usize,
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
            read_size: READ_CHUNK,
        }
    }

    /// A stream whose reads ask for `read_size` bytes.
    pub fn with_read_size(rd: R, read_size: usize) -> Self {
        Self {
            rd,
            reader: MessageReader::new(),
            read_size: read_size.clamp(1, READ_CHUNK),
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
        poll_fn(|cx| {
            let (rd, reader) = (&mut self.rd, &mut self.reader);
            READ_BUF.with_borrow_mut(|buf| {
                let mut rb = ReadBuf::new(&mut buf[..self.read_size]);
                ready!(Pin::new(&mut *rd).poll_read(cx, &mut rb))?;
                reader.feed(rb.filled());
                Poll::Ready(Ok(rb.filled().len()))
            })
        })
        .await
    }

    /// Changes how much one read asks for (a server reads little before a peer has proved who
    /// it is).
    pub fn set_read_size(&mut self, bytes: usize) {
        self.read_size = bytes.clamp(1, READ_CHUNK);
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

    /// Two streams reading at once on one thread share the read buffer: each still gets its
    /// own bytes, whole, with frames split across many small reads of both.
    #[tokio::test]
    async fn streams_sharing_the_read_buffer_keep_their_own_bytes() {
        let mut streams = Vec::new();
        let mut writers = Vec::new();
        for base in [0u64, 1000] {
            let mut bytes = Vec::new();
            for token in base..base + 50 {
                write_message(&Message::Ping { token }, &mut bytes);
            }
            let (mut tx, rx) = tokio::io::duplex(5);
            writers.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                tx.write_all(&bytes).await.unwrap();
            }));
            streams.push((base, MessageStream::new(rx)));
        }
        let [(a_base, a), (b_base, b)] = <[_; 2]>::try_from(streams).ok().unwrap();
        let read_all = |base: u64, mut s: MessageStream<tokio::io::DuplexStream>| async move {
            for token in base..base + 50 {
                assert_eq!(s.next().await.unwrap(), Some(Message::Ping { token }));
            }
            assert_eq!(s.next().await.unwrap(), None);
        };
        tokio::join!(read_all(a_base, a), read_all(b_base, b));
        for w in writers {
            w.await.unwrap();
        }
    }
}
