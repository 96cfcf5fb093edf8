//! A container's state (`containers/<id>/state.json`): its status, its sessions, where its
//! control stream resumes, and what the channel lost and repaired. This is the one reader and
//! writer of that file.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use wire::SessionId;

use crate::store::atomic::write_atomic;

pub const STATE_FILE: &str = "state.json";

/// First session id the server gives an exec (config sessions number from 1).
pub const FIRST_EXEC_SESSION: SessionId = 4096;

/// Where a container is in its life, as the appliance records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Made, not yet booted (or its VM has not connected yet).
    #[default]
    Created,
    /// Its VM is connected (the main process may still wait for its first attach).
    Running,
    /// The main process ended.
    Exited,
    /// The container could not run: tether reported a start failure or a boot error.
    Failed,
}

impl ContainerStatus {
    /// Docker's `State.Status` word.
    pub fn docker_word(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Exited | Self::Failed => "exited",
        }
    }

    /// Whether the main process has ended, one way or another.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Exited | Self::Failed)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub name: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

/// What the channel lost and repaired, summed over every connection of this boot: corrupt
/// frames the decoder threw away, gaps seen in incoming streams, chunks this side resent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    pub connections: u64,
    pub frames_rejected: u64,
    pub bytes_dropped: u64,
    pub messages_undecodable: u64,
    pub gaps: u64,
    pub retransmits: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Hex of the current boot id.
    pub boot: String,
    pub status: ContainerStatus,
    pub detail: String,
    pub sessions: BTreeMap<SessionId, SessionState>,
    /// Control-stream offset persisted (a record boundary): where tether resumes it.
    pub control_offset: u64,
    pub next_exec: SessionId,
    pub connected: bool,
    #[serde(default)]
    pub link: LinkStats,
    /// Tether's boot stages (nanoseconds on the guest's CLOCK_BOOTTIME), for benchmarks.
    #[serde(default)]
    pub timings: BTreeMap<String, u64>,
    /// The network endpoints as tether last reported them (`Control::Network`): interface,
    /// MAC, addresses, gateway, nameservers, lease. Empty until it reports (and for a
    /// container with only `lo`).
    #[serde(default)]
    pub network: Vec<wire::EndpointStatus>,
}

impl State {
    /// A fresh state for a new boot of the VM.
    pub fn for_boot(boot: &str) -> Self {
        Self {
            boot: boot.to_string(),
            next_exec: FIRST_EXEC_SESSION,
            ..Default::default()
        }
    }

    pub fn main(&self) -> Option<&SessionState> {
        self.sessions.get(&guestinfo::contract::MAIN_SESSION)
    }

    /// The main process's exit code once it has ended.
    pub fn main_exit_code(&self) -> Option<i32> {
        self.main()
            .and_then(|m| m.exit_code)
            .filter(|_| self.status.is_finished())
    }

    /// The state stored in the container directory `dir`; the default (created, nothing known)
    /// when there is none yet or it does not parse.
    pub fn load(dir: &Path) -> Self {
        std::fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Replaces the stored state atomically.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        write_atomic(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(self)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn status_is_stored_as_the_lowercase_word() {
        let dir = TestDir::new("state");
        let mut st = State::for_boot("ab");
        st.status = ContainerStatus::Failed;
        st.save(dir.path()).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(raw["status"], "failed");
        assert_eq!(raw["next_exec"], FIRST_EXEC_SESSION);
        assert_eq!(State::load(dir.path()), st);
        assert_eq!(State::load(&dir.path().join("missing")), State::default());
    }

    #[test]
    fn network_endpoints_are_stored_and_older_files_load_without_them() {
        let dir = TestDir::new("state-net");
        let mut st = State::for_boot("ab");
        st.network = vec![wire::EndpointStatus {
            network: "bridge".into(),
            interface: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
            ipv4: vec!["10.0.2.15/24".into()],
            gateway: Some("10.0.2.2".into()),
            ..Default::default()
        }];
        st.save(dir.path()).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(raw["network"][0]["ipv4"][0], "10.0.2.15/24");
        assert_eq!(State::load(dir.path()), st);
        let mut old = raw.clone();
        old.as_object_mut().unwrap().remove("network");
        std::fs::write(dir.path().join(STATE_FILE), old.to_string()).unwrap();
        assert!(State::load(dir.path()).network.is_empty());
        assert_eq!(State::load(dir.path()).boot, "ab");
    }

    #[test]
    fn docker_sees_failed_as_exited() {
        assert_eq!(ContainerStatus::Failed.docker_word(), "exited");
        assert_eq!(ContainerStatus::Created.docker_word(), "created");
        assert!(!ContainerStatus::Running.is_finished());
    }
}
