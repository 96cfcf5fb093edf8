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
    let procs = process::Real { root: cfg.root };
    match Controller::new(ctx, procs, &spec, cfg.drain_timeout) {
        Some(controller) => controller.run(events).await,
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
