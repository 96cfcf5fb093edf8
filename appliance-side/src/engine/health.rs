//! What the engine knows of a running container beyond its status: whether its tether answers
//! (no channel for longer than the configured time while the container is up: unhealthy, not
//! silently `Up`) and whether the log store refuses its output (a full disk).

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::engine::Engine;
use crate::store::state::{ContainerStatus, State};

/// How long a running container may be without a channel before it is reported unhealthy
/// (`appliance serve --unresponsive-after`). Tether reconnects within seconds after a break,
/// and the keepalive declares a silent channel dead after 10 s.
pub const DEFAULT_UNRESPONSIVE_AFTER: Duration = Duration::from_secs(30);

/// A running container's health as inspect and ps show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// No channel from its tether for this long (at least the configured time).
    pub unresponsive_for: Option<Duration>,
    /// Why the log store refuses its output, while it does.
    pub store_error: Option<String>,
}

impl Health {
    pub fn is_unhealthy(&self) -> bool {
        self.unresponsive_for.is_some()
    }

    /// What docker's `Health.Log` entry says.
    pub fn describe(&self, threshold: Duration) -> String {
        match self.unresponsive_for {
            Some(d) => format!(
                "no channel from tether for {} s while the container runs (unhealthy after {} s): its VM is hung, paused, or its serial line is broken",
                d.as_secs(),
                threshold.as_secs()
            ),
            None => "tether's channel is up".into(),
        }
    }
}

impl Engine {
    /// Sets how long a running container may be without a channel before it is unhealthy.
    pub fn set_unresponsive_after(&self, after: Duration) {
        self.unresponsive_after_ms
            .store(after.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn unresponsive_after(&self) -> Duration {
        Duration::from_millis(self.unresponsive_after_ms.load(Ordering::Relaxed))
    }

    /// The health of a running container (None for any other status).
    pub fn health(&self, id: &str, st: &State) -> Option<Health> {
        if st.status != ContainerStatus::Running {
            return None;
        }
        let (disconnected, store_error) = match self.server.container(id) {
            Some(c) => (c.disconnected_for(), c.store_error()),
            // Not connected since this server started (it was restarted, its VM has not
            // come back).
            None => (Some(self.server.started.elapsed()), None),
        };
        let threshold = self.unresponsive_after();
        Some(Health {
            unresponsive_for: disconnected.filter(|d| *d >= threshold),
            store_error,
        })
    }

    /// The host pid that stands for the container: its VM's process (the VM's process group
    /// leader) when this engine launched it, else what tether reported (a host-mode tether
    /// runs on the host itself).
    pub fn host_pid(&self, id: &str, st: &State) -> u32 {
        if st.status != ContainerStatus::Running {
            return 0;
        }
        self.vms
            .pid(id)
            .or_else(|| st.main().and_then(|m| m.pid))
            .unwrap_or(0)
    }
}
