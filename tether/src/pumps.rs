//! The pumps between a session's stdio and its streams: an output pump per pipe (or the pty
//! master) into its outgoing stream, and a stdin writer from the stdin queue into the process.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use wire::{SessionId, StreamKey, StreamKind};

use crate::fdio::FdStream;
use crate::session::ParentStdio;
use crate::state::{Ctx, Event};

/// What one read or write moves at most.
const CHUNK: usize = 64 * 1024;

/// A started session's stdio, connected.
pub struct Attached {
    /// The pty master, for resizing (tty sessions only).
    pub tty: Option<OwnedFd>,
    /// Output pumps running; each sends `Event::PumpDone` when its fd reaches end of file.
    pub pumps: u8,
}

/// Opens the session's outgoing streams and starts its pumps: stdout (and stderr, with pipes)
/// into the streams, and the stdin queue into the process when `open_stdin`.
pub fn attach(ctx: &Ctx, session: SessionId, stdio: ParentStdio, open_stdin: bool) -> Attached {
    let stdout = StreamKey::new(session, StreamKind::Stdout);
    let stderr = StreamKey::new(session, StreamKind::Stderr);
    match stdio {
        ParentStdio::Pty { master } => {
            ctx.shared.borrow_mut().streams.open_out(stdout);
            spawn_pump(ctx, stdout, master.try_clone());
            if open_stdin {
                spawn_stdin_writer(ctx, session, master.try_clone(), true);
            }
            Attached {
                tty: Some(master),
                pumps: 1,
            }
        }
        ParentStdio::Pipes {
            stdin,
            stdout: out,
            stderr: err,
        } => {
            {
                let mut sh = ctx.shared.borrow_mut();
                sh.streams.open_out(stdout);
                sh.streams.open_out(stderr);
            }
            spawn_pump(ctx, stdout, Ok(out));
            spawn_pump(ctx, stderr, Ok(err));
            if let Some(fd) = stdin {
                spawn_stdin_writer(ctx, session, Ok(fd), false);
            }
            Attached {
                tty: None,
                pumps: 2,
            }
        }
    }
}

/// A session without a process (the `hold` built-in): its output streams are opened and stay
/// empty until [`end_hold`]; its stdin is discarded (the queue removed and its bytes' credit
/// released; later bytes are released as they arrive, as for a session that has ended).
pub fn hold(ctx: &Ctx, session: SessionId, tty: bool) {
    let mut sh = ctx.shared.borrow_mut();
    sh.streams
        .open_out(StreamKey::new(session, StreamKind::Stdout));
    if !tty {
        sh.streams
            .open_out(StreamKey::new(session, StreamKind::Stderr));
    }
    if let Some(q) = sh.stdin.remove(&session) {
        let left = q.bytes.len() as u64;
        sh.streams
            .release(StreamKey::new(session, StreamKind::Stdin), left);
    }
    drop(sh);
    ctx.tx_wake.notify_one();
}

/// A held session ends: its output streams reach end of file.
pub fn end_hold(ctx: &Ctx, session: SessionId) {
    let mut sh = ctx.shared.borrow_mut();
    for kind in [StreamKind::Stdout, StreamKind::Stderr] {
        if let Some(s) = sh.streams.out_mut(StreamKey::new(session, kind)) {
            s.close();
        }
    }
    drop(sh);
    ctx.tx_wake.notify_one();
}

/// Copies a session's output fd into its outgoing stream, never holding more than the streams
/// have room for (see `Streams::writable`: per stream and over all of them): when the appliance
/// is slow or absent, the process blocks on its pipe.
fn spawn_pump(ctx: &Ctx, key: StreamKey, fd: std::io::Result<OwnedFd>) {
    let ctx = ctx.clone();
    tokio::task::spawn_local(async move {
        if let Ok(fd) = fd {
            if let Ok(mut stream) = FdStream::new(fd) {
                loop {
                    wait_for_room(&ctx, key).await;
                    match poll_fn(|cx| read_into_stream(&ctx, key, &mut stream, cx)).await {
                        Ok(Some(0)) | Err(_) => break,
                        // No room after all: another pump took it while this one waited.
                        Ok(None) => continue,
                        Ok(Some(_)) => ctx.tx_wake.notify_one(),
                    }
                }
            }
        }
        if let Some(s) = ctx.shared.borrow_mut().streams.out_mut(key) {
            s.close();
        }
        ctx.tx_wake.notify_one();
        let _ = ctx.events.send(Event::PumpDone {
            session: key.session,
        });
    });
}

thread_local! {
    /// One read buffer for every pump (ten sessions' twenty pumps held 1.25 MiB in buffers of
    /// their own). The runtime is single-threaded, and a pump reads and copies the bytes into
    /// its stream within one poll, so no two pumps use it at once.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// One read of the fd into the stream, with the room measured at the moment of the read (it
/// may have shrunk since `wait_for_room`, the budget being shared): `None` if there is none,
/// `Some(0)` at end of file.
fn read_into_stream(
    ctx: &Ctx,
    key: StreamKey,
    stream: &mut FdStream,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<Option<usize>>> {
    let room = ctx.shared.borrow().streams.writable(key);
    if room == 0 {
        return Poll::Ready(Ok(None));
    }
    READ_BUF.with_borrow_mut(|buf| {
        let want = room.min(buf.len());
        let mut rb = ReadBuf::new(&mut buf[..want]);
        ready!(Pin::new(stream).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        let wrote = ctx.shared.borrow_mut().streams.write_out(key, got);
        debug_assert_eq!(wrote, got.len(), "room was measured in this poll");
        Poll::Ready(Ok(Some(got.len())))
    })
}

async fn wait_for_room(ctx: &Ctx, key: StreamKey) {
    loop {
        let notified = ctx.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ctx.shared.borrow().streams.writable(key) > 0 {
            return;
        }
        notified.await;
    }
}

/// Writes stdin bytes from the appliance to the process, releasing credit as they are taken.
fn spawn_stdin_writer(ctx: &Ctx, session: SessionId, fd: std::io::Result<OwnedFd>, pty: bool) {
    let ctx = ctx.clone();
    let key = StreamKey::new(session, StreamKind::Stdin);
    tokio::task::spawn_local(async move {
        let Ok(Ok(mut out)) = fd.map(FdStream::new) else {
            return;
        };
        loop {
            let notified = ctx.stdin_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (chunk, closing) = {
                let mut sh = ctx.shared.borrow_mut();
                let Some(q) = sh.stdin.get_mut(&session) else {
                    return;
                };
                (q.take_front(CHUNK), q.closing)
            };
            if chunk.is_empty() {
                if closing {
                    if pty {
                        // ^D at the start of a line is end of file for a terminal reader.
                        let _ = out.write_all(&[4]).await;
                    }
                    break;
                }
                notified.await;
                continue;
            }
            let ok = out.write_all(&chunk).await.is_ok();
            ctx.shared
                .borrow_mut()
                .streams
                .release(key, chunk.len() as u64);
            ctx.tx_wake.notify_one();
            if !ok {
                break; // the process closed its stdin; later bytes are released on arrival
            }
        }
        let mut sh = ctx.shared.borrow_mut();
        if let Some(q) = sh.stdin.remove(&session) {
            let left = q.bytes.len() as u64;
            sh.streams.release(key, left);
        }
        drop(sh);
        ctx.tx_wake.notify_one();
    });
}
