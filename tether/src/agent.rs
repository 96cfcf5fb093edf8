//! Running a container, as PID 1 or in host mode: the channel (link.rs), the reaper, and the
//! controller over real processes, until the main session's end; and, for a container that
//! cannot start at all, the report of why.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use guestinfo::contract::MAIN_SESSION;
use guestinfo::ContainerSpec;
use tokio::sync::mpsc;
use wire::{Control, GuestState};

use crate::channel::ChannelSpec;
use crate::controller::{Controller, Outcome};
use crate::link::{self, Identity};
use crate::process;
use crate::state::Ctx;

pub struct AgentConfig {
    pub spec: ContainerSpec,
    /// The container root: sessions are chrooted here (no chroot when it is `/`).
    pub root: PathBuf,
    pub channel: ChannelSpec,
    /// The channel device, opened once and held (devices only).
    pub device: Option<OwnedFd>,
    /// How long to wait at shutdown for the appliance to acknowledge all output.
    pub drain_timeout: Duration,
    /// The network endpoints boot brought up (none in host mode, or with only `lo`).
    pub network: Vec<crate::net::Endpoint>,
}

/// Runs the container to the end. Must be called inside a `LocalSet`.
pub async fn run(cfg: AgentConfig) -> Outcome {
    let (events_tx, events) = mpsc::unbounded_channel();
    let ctx = Ctx::new(events_tx);
    // The reaper registers for SIGCHLD before any child exists, so no exit goes unseen.
    let reaper_ready = crate::reaper::install(ctx.clone());
    let spec = cfg.spec;
    let identity = Identity {
        container_id: spec.id.clone(),
        secret: wire::Secret::new(spec.secret.clone()),
        boot_id: link::new_boot_id(),
    };
    tokio::task::spawn_local(link::run(ctx.clone(), cfg.channel, cfg.device, identity));
    if let Err(e) = reaper_ready {
        crate::log::error(&format!("cannot watch for child exits: {e}"));
    }
    let network = (!cfg.network.is_empty()).then(|| {
        crate::net::runtime::Network::new(
            std::rc::Rc::new(spec.clone()),
            std::rc::Rc::new(crate::net::netlink::Real),
            std::rc::Rc::new(NetSink { ctx: ctx.clone() }),
            cfg.network,
        )
    });
    if let Some(net) = &network {
        // The sessions start with their addresses (or after the wait, without).
        crate::net::dhcp::start(net, crate::net::runtime::FIRST_LEASE_WAIT).await;
        crate::timing::mark("network_ready");
    }
    let procs = process::Real { root: cfg.root };
    match Controller::new(ctx.clone(), procs, &spec, cfg.drain_timeout) {
        Some(mut controller) => {
            if let Some(net) = &network {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::task::spawn_local(network_changes(net.clone(), ctx, rx));
                controller = controller.with_network(tx);
            }
            let outcome = controller.run(events).await;
            if let Some(net) = &network {
                net.stop().await;
            }
            outcome
        }
        // Unreachable: decoding the spec guarantees a main session.
        None => {
            crate::log::error("the config has no main session");
            Outcome {
                exit_code: 125,
                signal: None,
                restart: false,
                undelivered: 0,
            }
        }
    }
}

/// The appliance's network changes, one at a time, each answered with `NetworkChanged` (after
/// the `Network` report it made).
async fn network_changes(
    net: std::rc::Rc<crate::net::runtime::Network>,
    ctx: Ctx,
    mut rx: mpsc::UnboundedReceiver<Control>,
) {
    while let Some(record) = rx.recv().await {
        let (request, result) = match record {
            Control::NetworkAdd {
                request,
                network,
                config,
            } => {
                let result = match guestinfo::endpoint_from_vmx(&config) {
                    Ok((name, _)) if name != network => Err(format!(
                        "the config names endpoint {name:?}, the record {network:?}"
                    )),
                    Ok((name, endpoint)) => {
                        let dhcp = endpoint.is_dhcp();
                        match net.add(&name, endpoint).await {
                            Ok(()) if dhcp => crate::net::dhcp::hot_added(&net, &name).await,
                            other => other,
                        }
                    }
                    Err(e) => Err(format!("network {network:?}: its config: {e}")),
                };
                (request, result)
            }
            Control::NetworkRemove { request, network } => (request, net.remove(&network).await),
            _ => continue,
        };
        if let Err(e) = &result {
            crate::log::error(e);
        }
        ctx.send_control(Control::NetworkChanged {
            request,
            error: result.err().unwrap_or_default(),
        });
    }
}

/// Where network changes go: the container's /etc (tether runs in its root by now) and the
/// appliance, over the channel and on vSphere in guestinfo.
struct NetSink {
    ctx: Ctx,
}

impl crate::net::runtime::Sink for NetSink {
    fn write_etc(&self, name: &str, contents: &[u8]) {
        use crate::os::Os;
        let path = std::path::Path::new("/etc").join(name);
        if let Err(e) = crate::os::Real.write_file(&path, contents) {
            crate::log::error(&format!("writing {}: {e}", path.display()));
        }
    }

    fn report(&self, endpoints: Vec<wire::EndpointStatus>) {
        crate::vmware::write_network(&endpoints);
        self.ctx.send_control(Control::Network { endpoints });
    }
}

/// A container that could not be started, and who it is.
pub struct Failure {
    pub container_id: String,
    pub secret: Vec<u8>,
    pub message: String,
    pub exit_code: i32,
}

/// Tells the appliance why the container cannot run (as the main session's start failure), and
/// waits up to `drain` for it to acknowledge. Must be called inside a `LocalSet`.
pub async fn report_failure(
    f: Failure,
    channel: ChannelSpec,
    device: Option<OwnedFd>,
    drain: Duration,
) {
    let (events_tx, _events) = mpsc::unbounded_channel();
    let ctx = Ctx::new(events_tx);
    let identity = Identity {
        container_id: f.container_id,
        secret: wire::Secret::new(f.secret),
        boot_id: link::new_boot_id(),
    };
    tokio::task::spawn_local(link::run(ctx.clone(), channel, device, identity));
    for record in [
        Control::State {
            state: GuestState::Failed,
            detail: f.message.clone(),
        },
        Control::Log {
            level: wire::LogLevel::Error,
            message: f.message.clone(),
        },
        Control::StartFailed {
            session: MAIN_SESSION,
            exit_code: f.exit_code,
            errno: 0,
            message: f.message,
        },
        Control::Exited {
            session: MAIN_SESSION,
            exit_code: f.exit_code,
            signal: None,
        },
    ] {
        ctx.send_control(record);
    }
    let deadline = tokio::time::Instant::now() + drain;
    while ctx.shared.borrow().streams.unacknowledged() > 0 {
        let space = ctx.space.clone();
        tokio::select! {
            _ = space.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                crate::log::warn("the appliance did not acknowledge the failure report");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDir;
    use tokio::io::AsyncWriteExt;
    use wire::io::MessageStream;
    use wire::{Inbound, Message, Role, Secret, ServerHandshake, StreamConfig, Streams, Welcome};

    #[test]
    fn a_failure_is_reported_as_failed_then_as_the_main_sessions_start_failure() {
        let dir = TestDir::new("agent");
        let sock = dir.path().join("ch.sock");
        let _ = std::fs::remove_file(&sock);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let records = local.block_on(&rt, async {
            let listener = tokio::net::UnixListener::bind(&sock).unwrap();
            let failure = Failure {
                container_id: "c1".into(),
                secret: b"s".to_vec(),
                message: "no disk labelled \"containerfs\"".into(),
                exit_code: 125,
            };
            let report = report_failure(
                failure,
                ChannelSpec::Socket(sock.clone()),
                None,
                Duration::from_secs(20),
            );
            // The appliance: handshake, then take and acknowledge everything.
            let appliance = async {
                let (conn, _) = listener.accept().await.unwrap();
                let (rd, mut wr) = tokio::io::split(conn);
                let mut rd = MessageStream::new(rd);
                let frame = |m: Message| {
                    let mut buf = Vec::new();
                    wire::write_message(&m, &mut buf);
                    buf
                };
                let Some(Message::Hello(hello)) = rd.next().await.unwrap() else {
                    panic!("expected Hello");
                };
                let (server, challenge) =
                    ServerHandshake::on_hello(hello, [1; 32], |_| Some(Secret::new(b"s".to_vec())))
                        .unwrap();
                wr.write_all(&frame(Message::Challenge(challenge)))
                    .await
                    .unwrap();
                let proof = loop {
                    if let Some(Message::Proof(p)) = rd.next().await.unwrap() {
                        break p;
                    }
                };
                server.on_proof(proof).unwrap();
                wr.write_all(&frame(Message::Welcome(Welcome { received: vec![] })))
                    .await
                    .unwrap();
                let mut streams = Streams::new(Role::Appliance, StreamConfig::default());
                let mut records = Vec::new();
                while !records.iter().any(|r| matches!(r, Control::Exited { .. })) {
                    let Some(m) = rd.next().await.unwrap() else {
                        break;
                    };
                    if let Ok(Inbound::Control(r)) = streams.on_message(m) {
                        records.extend(r);
                    }
                    let mut out = Vec::new();
                    streams.write_batch(&mut out);
                    wr.write_all(&out).await.unwrap();
                }
                records
            };
            let ((), records) = tokio::join!(report, appliance);
            records
        });
        let message = "no disk labelled \"containerfs\"".to_string();
        assert_eq!(
            records,
            [
                Control::State {
                    state: GuestState::Failed,
                    detail: message.clone()
                },
                Control::Log {
                    level: wire::LogLevel::Error,
                    message: message.clone()
                },
                Control::StartFailed {
                    session: MAIN_SESSION,
                    exit_code: 125,
                    errno: 0,
                    message
                },
                Control::Exited {
                    session: MAIN_SESSION,
                    exit_code: 125,
                    signal: None
                },
            ]
        );
    }
}
