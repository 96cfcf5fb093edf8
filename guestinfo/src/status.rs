//! What tether writes back into guestinfo on vSphere (`info-set`), where the appliance reads it
//! from the VM's extraConfig through the vSphere API without the channel: the container's state,
//! its exit code and signal, its assigned addresses. All of it is one value under one key, written
//! in one `info-set`, so a reader never sees a torn status (VIC wrote several keys one by one).
//!
//! The value is `key=value` words: `state=exited exitcode=137 signal=SIGKILL addrs=10.0.0.2/24`.
//! Unknown words are ignored on reading, so later fields can be added.

use thiserror::Error;

use crate::KeyPath;

/// Where a container's status lives: `guestinfo.vice..sessions|ID.status`, a read-write key.
pub fn status_key(container_id: &str) -> String {
    KeyPath::read_write()
        .field("sessions")
        .entry(container_id)
        .field("status")
        .as_str()
        .to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// The main process runs.
    Running,
    /// The main process ended (`exit_code` says how).
    Exited,
    /// The container could not start (its config, disk or process).
    Failed,
}

impl ContainerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Failed => "failed",
        }
    }
}

/// The container's status as tether reports it through guestinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestStatus {
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    /// The signal that ended the main process, by name (`SIGKILL`).
    pub signal: Option<String>,
    /// Addresses assigned to the container's interfaces, CIDR notation.
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatusError {
    #[error("guestinfo status {0:?} has no state")]
    NoState(String),
    #[error("guestinfo status: unknown state {0:?}")]
    UnknownState(String),
    #[error("guestinfo status: exit code {0:?} is not a number")]
    BadExitCode(String),
}

impl GuestStatus {
    pub fn running() -> Self {
        Self {
            state: ContainerState::Running,
            exit_code: None,
            signal: None,
            addresses: Vec::new(),
        }
    }

    pub fn exited(exit_code: i32, signal: Option<&str>) -> Self {
        Self {
            state: ContainerState::Exited,
            exit_code: Some(exit_code),
            signal: signal.filter(|s| !s.is_empty()).map(str::to_string),
            addresses: Vec::new(),
        }
    }

    /// The value written under [`status_key`]. Words hold no spaces: a signal name and CIDR
    /// addresses have none, and anything else is not written.
    pub fn encode(&self) -> String {
        let mut words = vec![format!("state={}", self.state.as_str())];
        if let Some(code) = self.exit_code {
            words.push(format!("exitcode={code}"));
        }
        if let Some(sig) = self.signal.as_deref().filter(|s| is_word(s)) {
            words.push(format!("signal={sig}"));
        }
        let addrs: Vec<&str> = self
            .addresses
            .iter()
            .map(String::as_str)
            .filter(|a| is_word(a) && !a.contains(','))
            .collect();
        if !addrs.is_empty() {
            words.push(format!("addrs={}", addrs.join(",")));
        }
        words.join(" ")
    }

    pub fn decode(value: &str) -> Result<Self, StatusError> {
        let mut state = None;
        let mut status = Self::running();
        for word in value.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "state" => {
                    state = Some(match v {
                        "running" => ContainerState::Running,
                        "exited" => ContainerState::Exited,
                        "failed" => ContainerState::Failed,
                        other => return Err(StatusError::UnknownState(other.into())),
                    })
                }
                "exitcode" => {
                    status.exit_code =
                        Some(v.parse().map_err(|_| StatusError::BadExitCode(v.into()))?)
                }
                "signal" if !v.is_empty() => status.signal = Some(v.into()),
                "addrs" => {
                    status.addresses = v
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(Into::into)
                        .collect()
                }
                _ => {}
            }
        }
        status.state = state.ok_or_else(|| StatusError::NoState(value.into()))?;
        Ok(status)
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_vics_read_write_layout_with_the_id_escaped() {
        assert_eq!(status_key("abc"), "guestinfo.vice..sessions|abc.status");
    }

    #[test]
    fn statuses_round_trip() {
        let mut s = GuestStatus::exited(137, Some("SIGKILL"));
        s.addresses = vec!["10.0.0.2/24".into(), "fd00::2/64".into()];
        assert_eq!(
            s.encode(),
            "state=exited exitcode=137 signal=SIGKILL addrs=10.0.0.2/24,fd00::2/64"
        );
        assert_eq!(GuestStatus::decode(&s.encode()), Ok(s));
        let r = GuestStatus::running();
        assert_eq!(r.encode(), "state=running");
        assert_eq!(GuestStatus::decode("state=running"), Ok(r));
        assert_eq!(
            GuestStatus::exited(0, Some("")).encode(),
            "state=exited exitcode=0"
        );
    }

    #[test]
    fn later_fields_are_ignored_and_bad_values_named() {
        assert_eq!(
            GuestStatus::decode("state=exited exitcode=3 future=thing"),
            Ok(GuestStatus::exited(3, None))
        );
        assert_eq!(
            GuestStatus::decode("exitcode=3"),
            Err(StatusError::NoState("exitcode=3".into()))
        );
        assert_eq!(
            GuestStatus::decode("state=gone"),
            Err(StatusError::UnknownState("gone".into()))
        );
        assert_eq!(
            GuestStatus::decode("state=exited exitcode=x"),
            Err(StatusError::BadExitCode("x".into()))
        );
    }
}
