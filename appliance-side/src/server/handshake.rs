//! The server's side of a channel's handshake: skip stale bytes to a Hello, challenge, check the
//! proof against the container's secret, resume its streams from the store, welcome.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wire::io::MessageStream;
use wire::message::Hello;
use wire::{write_message, Message, RefuseReason, Refused, Secret, ServerHandshake, Welcome};

use crate::server::container::Container;
use crate::server::Server;
use crate::store::atomic::{hex, random};
use crate::store::records;

fn violation(detail: &str) -> Refused {
    Refused {
        reason: RefuseReason::ProtocolViolation,
        detail: detail.to_string(),
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, msg: &Message, what: &str) -> Result<(), Refused> {
    let mut out = Vec::new();
    write_message(msg, &mut out);
    wr.write_all(&out)
        .await
        .map_err(|e| violation(&format!("writing {what}: {e}")))
}

impl Server {
    /// Runs the handshake; the authenticated container and the Hello it opened with.
    pub(super) async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        rd: &mut MessageStream<R>,
        wr: &mut W,
        first_hello: Option<Hello>,
    ) -> Result<(Arc<Container>, Hello), Refused> {
        // A serial line has no connection boundaries: bytes from before a break (old data, an
        // earlier handshake) may arrive first. Skip to a Hello; while waiting for the Proof,
        // answer a repeated Hello with the same Challenge and a new one with a new Challenge.
        let mut hello = match first_hello {
            Some(h) => h,
            None => loop {
                match rd.next().await.ok().flatten() {
                    Some(Message::Hello(h)) => break h,
                    Some(_) => continue,
                    None => return Err(violation("closed before Hello")),
                }
            },
        };
        let home = &self.home;
        let lookup = |id: &str| records::load(home, id).map(|r| Secret::new(r.secret_bytes()));
        let (mut hs, mut challenge) = ServerHandshake::on_hello(hello.clone(), random(), lookup)?;
        let proof = loop {
            send(wr, &Message::Challenge(challenge.clone()), "Challenge").await?;
            let next = loop {
                match rd.next().await.ok().flatten() {
                    Some(Message::Proof(p)) => break Ok(p),
                    Some(Message::Hello(h)) => break Err(h),
                    Some(_) => continue,
                    None => return Err(violation("closed before Proof")),
                }
            };
            match next {
                Ok(p) => break p,
                // The guest repeated its Hello (our Challenge may have been lost): same answer.
                Err(h) if h == hello => continue,
                // The guest started over.
                Err(h) => {
                    hello = h;
                    (hs, challenge) = ServerHandshake::on_hello(hello.clone(), random(), lookup)?;
                }
            }
        };
        let auth = hs.on_proof(proof)?;
        let boot = hex(&auth.boot_id);
        let container = self
            .open_container(&auth.container_id, &boot)
            .map_err(|e| violation(&format!("the server cannot open its store: {e}")))?;
        let positions = {
            let mut inner = container.inner.lock().expect("container lock");
            inner
                .streams
                .resume(&auth.peer_received)
                .map_err(|e| violation(&format!("resume: {e}")))?;
            inner.streams.positions()
        };
        let welcome = Message::Welcome(Welcome {
            received: positions,
        });
        send(wr, &welcome, "Welcome").await?;
        Ok((container, hello))
    }
}
