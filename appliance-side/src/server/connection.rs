//! One established channel: registered as its container's live link, then every decoded message
//! persisted before `flush` sends the acks, keepalive on a tick, until it breaks or a newer
//! channel for the same container replaces it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guestinfo::contract::MAIN_SESSION;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use wire::io::MessageStream;
use wire::keepalive::{DEAD_AFTER_MS, PING_INTERVAL_MS};
use wire::message::Hello;
use wire::{write_message, Control, Inbound, Keepalive, Liveness, Message, MessageReader};

use crate::server::container::Container;
use crate::server::{
    End, Lifecycle, Live, Server, HANDSHAKE_READ, HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES,
    READ_BUFFER, TICK,
};

/// How often an established channel's guest is sent the time again, besides after every
/// handshake: enough for tether to slew away drift.
pub const TIME_RESYNC: Duration = Duration::from_secs(60);

impl Server {
    /// Serves one channel until it breaks.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self: Arc<Self>, sock: S, peer: String) {
        self.serve_resyncing(sock, peer, None).await
    }

    /// [`Server::serve`], also sending the guest the time whenever `resync` is notified (the
    /// vSPC does at the end of a vMotion, which the channel itself never sees).
    pub async fn serve_resyncing<S: AsyncRead + AsyncWrite + Unpin>(
        self: Arc<Self>,
        sock: S,
        peer: String,
        resync: Option<Arc<Notify>>,
    ) {
        let pending = self.pending_handshakes.fetch_add(1, Ordering::Relaxed);
        if pending >= MAX_PENDING_HANDSHAKES {
            self.pending_handshakes.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                "channel closed at once: {MAX_PENDING_HANDSHAKES} others are still in their handshake"
            );
            return;
        }
        let (rd, mut wr) = tokio::io::split(sock);
        // Small until the peer has proved who it is: an unauthenticated connection costs little.
        let mut rd = MessageStream::with_read_size(rd, HANDSHAKE_READ);
        let mut first_hello = None;
        let mut counted = true;
        loop {
            let handshake = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                self.handshake(&mut rd, &mut wr, first_hello.take()),
            )
            .await;
            if std::mem::take(&mut counted) {
                self.pending_handshakes.fetch_sub(1, Ordering::Relaxed);
            }
            let (container, hello) = match handshake {
                Ok(Ok(done)) => done,
                Ok(Err(r)) => {
                    self.refuse(&peer, &r);
                    let mut out = Vec::new();
                    write_message(&Message::Refused(r), &mut out);
                    let _ = wr.write_all(&out).await;
                    return;
                }
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, "no handshake within 10 s; dropped");
                    return;
                }
            };
            rd.set_read_size(READ_BUFFER);
            let established =
                self.established(&container, &hello, &mut rd, &mut wr, resync.as_deref());
            match established.await {
                // The guest saw a break we did not (a serial line has no hangup): it starts over
                // on this same connection.
                End::Hello(h) => first_hello = Some(h),
                End::Error(why) => {
                    tracing::info!(container = %container.id, %peer, "channel closed: {why}");
                    return;
                }
            }
        }
    }

    /// Registers the authenticated channel as its container's live one and runs it.
    async fn established<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        container: &Arc<Container>,
        hello: &Hello,
        rd: &mut MessageStream<R>,
        wr: &mut W,
        resync: Option<&Notify>,
    ) -> End {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Notify::new());
        {
            let mut live = self.live.lock().expect("lock");
            if let Some(old) = live.insert(
                container.id.clone(),
                Live {
                    conn,
                    kick: kick.clone(),
                },
            ) {
                // The newest channel wins: the old one is a broken link not yet noticed.
                old.kick.notify_one();
            }
        }
        container.set_connected(true);
        self.announce(Lifecycle::Connected {
            id: container.id.clone(),
        });
        // The loop ends only by an error or a new Hello.
        let Err(end) = self
            .run_until_end(container, hello, rd, wr, &kick, resync)
            .await;
        let mut live = self.live.lock().expect("lock");
        if live.get(&container.id).is_some_and(|l| l.conn == conn) {
            live.remove(&container.id);
            container.set_connected(false);
        }
        end
    }

    async fn run_until_end<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        c: &Arc<Container>,
        hello: &Hello,
        rd: &mut MessageStream<R>,
        wr: &mut W,
        kick: &Notify,
        resync: Option<&Notify>,
    ) -> Result<std::convert::Infallible, End> {
        let start = Instant::now();
        let mut keepalive = Keepalive::new(0, PING_INTERVAL_MS, DEAD_AFTER_MS);
        let mut tick = tokio::time::interval(TICK);
        // Grows to what a burst needs; an idle channel holds nothing.
        let mut out = Vec::new();
        // The guest's clock follows ours from every handshake on (a boot, a reconnect, an
        // appliance back after a while): VIC's never did (vic#2527, exit times days off).
        write_time(&mut out);
        let mut last_time = Instant::now();
        // Messages already read past the handshake.
        self.absorb(c, hello, rd, &mut keepalive, 0)?;
        let mut meter = LinkMeter::default();
        loop {
            meter.update(c, rd.reader());
            flush(c, wr, &mut out).await.map_err(End::Error)?;
            tokio::select! {
                r = rd.fill() => {
                    let n = r.map_err(|e| End::Error(format!("read: {e}")))?;
                    if n == 0 {
                        return Err(End::Error("tether closed the channel".into()));
                    }
                    self.absorb(c, hello, rd, &mut keepalive, start.elapsed().as_millis() as u64)?;
                    // A channel with data always ready would otherwise keep its worker for up to
                    // tokio's whole budget (128 reads, 2 MiB here) per turn; with 100 such, an
                    // exec round trip on another channel waited ~300 ms (`make bench`).
                    tokio::task::yield_now().await;
                }
                _ = c.tx_wake.notified() => {}
                _ = notified(resync) => {
                    write_time(&mut out);
                    last_time = Instant::now();
                }
                _ = tick.tick() => {
                    if last_time.elapsed() >= TIME_RESYNC {
                        write_time(&mut out);
                        last_time = Instant::now();
                    }
                    let now = start.elapsed().as_millis() as u64;
                    let mut inner = c.inner.lock().expect("lock");
                    inner.streams.on_tick(now);
                    match keepalive.poll(now) {
                        Liveness::Alive => {}
                        Liveness::SendPing(token) => write_message(&Message::Ping { token }, &mut out),
                        Liveness::Dead => return Err(End::Error("no traffic from tether for 10 s".into())),
                    }
                }
                _ = kick.notified() => return Err(End::Error("replaced by a newer channel".into())),
            }
        }
    }

    /// Handles every decoded message: output and control are persisted before `flush` sends the
    /// acks. A protocol violation ends the connection (and only it).
    fn absorb<R: AsyncRead + Unpin>(
        &self,
        c: &Container,
        hello: &Hello,
        rd: &mut MessageStream<R>,
        keepalive: &mut Keepalive,
        now: u64,
    ) -> Result<(), End> {
        while let Some(msg) = rd.try_next() {
            keepalive.on_receive(now);
            match msg {
                // A late repeat of the Hello this channel was opened with.
                Message::Hello(h) if h == *hello => continue,
                Message::Hello(h) => return Err(End::Hello(h)),
                _ => {}
            }
            let inbound = c.inner.lock().expect("lock").streams.on_message(msg);
            if let Err(e) = inbound
                .as_ref()
                .map(|i| c.check_sessions(i))
                .unwrap_or(Ok(()))
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(End::Error(format!("protocol violation, disconnected: {e}")));
            }
            match inbound {
                // A store that cannot take the output (a full disk) rolled it back: it comes
                // again with tether's next retransmission. The channel stays up meanwhile.
                Ok(Inbound::Data { key, bytes, fin }) => {
                    let _ = c.on_output(key, &bytes, fin);
                }
                Ok(Inbound::Control(records)) => {
                    let main_exit = records.iter().find_map(|r| match r {
                        Control::Exited {
                            session: MAIN_SESSION,
                            exit_code,
                            ..
                        } => Some(*exit_code),
                        _ => None,
                    });
                    // Not stored (a full disk): rolled back, to come again, and announced then.
                    if c.on_control(records).is_err() {
                        continue;
                    }
                    if let Some(exit_code) = main_exit {
                        self.announce(Lifecycle::MainExited {
                            id: c.id.clone(),
                            exit_code,
                        });
                    }
                }
                Ok(Inbound::Goodbye(reason)) => {
                    return Err(End::Error(format!("tether said goodbye: {reason}")))
                }
                Ok(_) => {}
                Err(e) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(End::Error(format!("protocol violation, disconnected: {e}")));
                }
            }
        }
        Ok(())
    }
}

/// The time, as a link message (sent as soon as it is written: never stale).
fn write_time(out: &mut Vec<u8>) {
    let unix_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    write_message(&Message::Time { unix_nanos }, out);
}

/// Resolves when `n` is notified; never without one.
async fn notified(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Moves this connection's loss counters into the container's totals as they grow.
#[derive(Default)]
struct LinkMeter {
    rejected: u64,
    dropped: u64,
    undecodable: u64,
    gaps: u64,
    retransmits: u64,
}

impl LinkMeter {
    fn update(&mut self, c: &Container, reader: &MessageReader) {
        let (frames, undecodable) = reader.stats();
        let (gaps, retransmits) = c.inner.lock().expect("lock").streams.loss_counters();
        let now = [
            frames.rejected_frames,
            frames.dropped_bytes,
            undecodable,
            gaps,
            retransmits,
        ];
        let last = [
            self.rejected,
            self.dropped,
            self.undecodable,
            self.gaps,
            self.retransmits,
        ];
        if now == last {
            return;
        }
        // Finished streams are forgotten with their counts: a total can shrink; never subtract.
        let d: Vec<u64> = now
            .iter()
            .zip(last)
            .map(|(n, l)| n.saturating_sub(l))
            .collect();
        c.add_link(|l| {
            l.frames_rejected += d[0];
            l.bytes_dropped += d[1];
            l.messages_undecodable += d[2];
            l.gaps += d[3];
            l.retransmits += d[4];
        });
        [
            self.rejected,
            self.dropped,
            self.undecodable,
            self.gaps,
            self.retransmits,
        ] = now;
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    c: &Container,
    wr: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    c.inner.lock().expect("lock").streams.write_batch(out);
    if !out.is_empty() {
        wr.write_all(out).await.map_err(|e| format!("write: {e}"))?;
        out.clear();
    }
    Ok(())
}
