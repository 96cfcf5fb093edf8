//! The ESXi host's part for tests: what a VMX does with a VM's network serial port. It takes
//! the VM's raw serial bytes (a QEMU COM port on TCP, or a simulated guest) and speaks telnet to
//! the vSPC as the VMX does: binary both ways, VMware's extension (KNOWN-SUBOPTIONS, DO-PROXY,
//! the VM's UUID), and on request a vMotion: BEGIN on the source connection, a second
//! (destination) connection with PEER, then COMPLETE on it, or ABORT on the source.
//!
//! While a vMotion is in flight the VM is "stunned": the relay stops reading the VM's output,
//! as a VM that is not running writes nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

use crate::server::vspc::telnet::{self, Decoder, Event, Options, OPT_BINARY, OPT_SGA, OPT_VMWARE};
use crate::server::vspc::vmware;

const STEP: Duration = Duration::from_secs(10);

/// How the host speaks to the vSPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// An ESXi VMX: VMware's extension, vMotion.
    Esxi,
    /// A plain telnet client: binary mode, no extension (refuses the vSPC's DO 232).
    PlainTelnet,
}

/// How a simulated vMotion ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Complete,
    Abort,
}

/// The vSPC's side of one host connection, as the relay sees it: what it sent that was not
/// data.
struct HostConn {
    write: Arc<Mutex<OwnedWriteHalf>>,
    options: Arc<std::sync::Mutex<Options>>,
    replies: mpsc::UnboundedReceiver<Vec<u8>>,
}

/// The relay between one VM and the vSPC.
pub struct HostRelay {
    vspc: SocketAddr,
    kind: HostKind,
    /// Where the VM's bytes go: the current host connection. Locked for a whole vMotion.
    up: Mutex<Option<HostConn>>,
    vm_write: Arc<Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>>,
    sequence: std::sync::atomic::AtomicU8,
    /// VM bytes relayed to the vSPC so far.
    pub relayed: std::sync::atomic::AtomicU64,
}

impl HostRelay {
    /// Listens for one VM's raw serial connection on 127.0.0.1 (returned), and connects it to
    /// the vSPC at `vspc` once it arrives.
    pub async fn listen(vspc: SocketAddr, kind: HostKind) -> (Arc<Self>, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relay = Arc::new(Self::new(vspc, kind));
        let r = relay.clone();
        tokio::spawn(async move {
            if let Ok((vm, _)) = listener.accept().await {
                let (rd, wr) = vm.into_split();
                r.attach(rd, wr).await;
            }
        });
        (relay, addr)
    }

    pub fn new(vspc: SocketAddr, kind: HostKind) -> Self {
        Self {
            vspc,
            kind,
            up: Mutex::new(None),
            vm_write: Arc::new(Mutex::new(None)),
            sequence: std::sync::atomic::AtomicU8::new(1),
            relayed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Relays the VM at `rd`/`wr` through a host connection to the vSPC, until the VM's side
    /// closes.
    pub async fn attach<R, W>(self: &Arc<Self>, mut rd: R, wr: W)
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        *self.vm_write.lock().await = Some(Box::new(wr));
        let conn = self
            .connect(None)
            .await
            .expect("the host connects to the vSPC");
        *self.up.lock().await = Some(conn);
        let relay = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = rd.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let mut up = relay.up.lock().await;
                let Some(c) = up.as_mut() else { break };
                let binary = c.options.lock().unwrap().local_on(OPT_BINARY);
                let mut out = Vec::new();
                telnet::escape_into(&buf[..n], binary, &mut out);
                if c.send(&out).await.is_err() {
                    break;
                }
                relay
                    .relayed
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(c) = relay.up.lock().await.take() {
                c.close().await;
            }
        });
    }

    /// A new host connection, negotiated; with `peer`, the cookie it claims its port with.
    async fn connect(&self, peer: Option<Vec<u8>>) -> Result<HostConn, String> {
        let sock = TcpStream::connect(self.vspc)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = sock.set_nodelay(true);
        let (rd, write) = sock.into_split();
        let write = Arc::new(Mutex::new(write));
        let local: &[u8] = match self.kind {
            HostKind::Esxi => &[OPT_BINARY, OPT_SGA, OPT_VMWARE],
            HostKind::PlainTelnet => &[OPT_BINARY, OPT_SGA],
        };
        let options = Arc::new(std::sync::Mutex::new(Options::new(
            local,
            &[OPT_BINARY, OPT_SGA],
        )));
        let mut out = Vec::new();
        options.lock().unwrap().open(&mut out);
        write
            .lock()
            .await
            .write_all(&out)
            .await
            .map_err(|e| e.to_string())?;
        let (tx, mut replies) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(
            rd,
            write.clone(),
            options.clone(),
            tx,
            self.vm_write.clone(),
        ));
        // The vSPC's options must be settled before data flows (CR NUL until binary is on).
        let settled = |o: &Options| o.local_on(OPT_BINARY) && o.remote_on(OPT_BINARY);
        let mut conn = HostConn {
            write,
            options,
            replies: mpsc::unbounded_channel().1,
        };
        if self.kind == HostKind::Esxi {
            let known = [
                vmware::KNOWN_SUBOPTIONS_1,
                vmware::KNOWN_SUBOPTIONS_2,
                vmware::VMOTION_BEGIN,
                vmware::VMOTION_GOAHEAD,
                vmware::VMOTION_NOTNOW,
                vmware::VMOTION_PEER,
                vmware::VMOTION_PEER_OK,
                vmware::VMOTION_COMPLETE,
                vmware::VMOTION_ABORT,
                vmware::DO_PROXY,
                vmware::WILL_PROXY,
                vmware::VM_VC_UUID,
                vmware::GET_VM_VC_UUID,
            ];
            conn.send(&vmware::command(vmware::KNOWN_SUBOPTIONS_1, &known))
                .await?;
            expect(&mut replies, vmware::KNOWN_SUBOPTIONS_2).await?;
            conn.send(&vmware::command(vmware::DO_PROXY, b"Ctether://vm"))
                .await?;
            expect(&mut replies, vmware::WILL_PROXY).await?;
            if let Some(cookie) = peer {
                conn.send(&vmware::command(vmware::VMOTION_PEER, &cookie))
                    .await?;
                expect(&mut replies, vmware::VMOTION_PEER_OK).await?;
            }
        }
        let start = tokio::time::Instant::now();
        while !settled(&conn.options.lock().unwrap()) {
            if start.elapsed() > STEP {
                return Err("telnet options never settled".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        conn.replies = replies;
        Ok(conn)
    }

    /// Moves the VM to a new host connection (or tries to and aborts), stunning it meanwhile.
    pub async fn vmotion(&self, outcome: Outcome) -> Result<(), String> {
        let mut up = self.up.lock().await;
        let source = up.as_mut().ok_or("no VM attached")?;
        let seq = self
            .sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sequence = vec![0xFF, seq, 0x00, b's'];
        source
            .send(&vmware::command(vmware::VMOTION_BEGIN, &sequence))
            .await?;
        let goahead = expect(&mut source.replies, vmware::VMOTION_GOAHEAD).await?;
        let cookie = goahead[1..].to_vec();
        if !cookie.starts_with(&sequence) || cookie.len() != sequence.len() + vmware::SECRET_LEN {
            return Err(format!(
                "GOAHEAD's cookie {cookie:?} is not sequence + secret"
            ));
        }
        let mut dest = self.connect(Some(cookie)).await?;
        match outcome {
            Outcome::Complete => {
                dest.send(&vmware::command(vmware::VMOTION_COMPLETE, &sequence))
                    .await?;
                let source = up.replace(dest).expect("source");
                source.close().await;
            }
            Outcome::Abort => {
                source
                    .send(&vmware::command(vmware::VMOTION_ABORT, &sequence))
                    .await?;
                dest.close().await;
            }
        }
        Ok(())
    }

    /// Asks for a vMotion while one may not start: the answer's code (NOTNOW expected).
    pub async fn begin_refused(&self) -> Result<u8, String> {
        let mut up = self.up.lock().await;
        let c = up.as_mut().ok_or("no VM attached")?;
        c.send(&vmware::command(vmware::VMOTION_BEGIN, b"x"))
            .await?;
        let r = next_reply(&mut c.replies).await?;
        Ok(r[0])
    }
}

impl HostConn {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.write
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(|e| format!("writing to the vSPC: {e}"))
    }

    async fn close(self) {
        let _ = self.write.lock().await.shutdown().await;
    }
}

async fn next_reply(replies: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(STEP, replies.recv()).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err("the vSPC closed the connection".into()),
        Err(_) => Err("the vSPC did not answer".into()),
    }
}

/// The next extension command from the vSPC, which must be `code` (others the host would
/// not wait for, such as GET-VM-VC-UUID, are skipped).
async fn expect(
    replies: &mut mpsc::UnboundedReceiver<Vec<u8>>,
    code: u8,
) -> Result<Vec<u8>, String> {
    loop {
        let r = next_reply(replies).await?;
        match r.first() {
            Some(&c) if c == code => return Ok(r),
            Some(&vmware::GET_VM_VC_UUID) => continue,
            _ => return Err(format!("expected suboption {code}, the vSPC sent {r:?}")),
        }
    }
}

/// Reads one host connection: data to the VM, negotiation answered, extension commands to
/// `replies` (GET-VM-VC-UUID answered here).
async fn read_loop(
    mut rd: OwnedReadHalf,
    write: Arc<Mutex<OwnedWriteHalf>>,
    options: Arc<std::sync::Mutex<Options>>,
    replies: mpsc::UnboundedSender<Vec<u8>>,
    vm: Arc<Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>>,
) {
    let mut decoder = Decoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = rd.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        let mut events = Vec::new();
        let binary = options.lock().unwrap().remote_on(OPT_BINARY);
        decoder.decode(&buf[..n], binary, &mut events);
        let mut answer = Vec::new();
        for e in events {
            match e {
                Event::Data(d) => {
                    if let Some(w) = vm.lock().await.as_mut() {
                        let _ = w.write_all(&d).await;
                    }
                }
                Event::Negotiate { verb, option } => {
                    options
                        .lock()
                        .unwrap()
                        .on_negotiate(verb, option, &mut answer)
                }
                Event::Subnegotiation {
                    option: OPT_VMWARE,
                    payload,
                } => {
                    if payload.first() == Some(&vmware::GET_VM_VC_UUID) {
                        answer.extend(vmware::command(
                            vmware::VM_VC_UUID,
                            b"42 1c 3e 9b aa 01 02 03-04 05 06 07 08 09 0a 0b",
                        ));
                    }
                    let _ = replies.send(payload);
                }
                _ => {}
            }
        }
        if !answer.is_empty() && write.lock().await.write_all(&answer).await.is_err() {
            return;
        }
    }
}
