//! Docker's event stream (`docker events`): what happened to which container, when. Kept in a
//! bounded ring in memory (as dockerd does) and broadcast to followers; an event is built once
//! and a follower that falls behind is told so by its receiver, never slowing the engine.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::broadcast;

/// How many past events `--since` can reach.
const RING: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    /// "container" or "image".
    pub kind: &'static str,
    /// "create", "start", "die", "destroy", "kill", "stop", "restart", "rename", ...
    pub action: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub time_nano: i128,
}

impl EngineEvent {
    pub fn container(action: &str, id: &str, attributes: BTreeMap<String, String>) -> Self {
        Self {
            kind: "container",
            action: action.to_string(),
            id: id.to_string(),
            attributes,
            time_nano: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        }
    }

    /// The JSON object docker's API sends for it (both the old and the new field names, as
    /// dockerd does, so every CLI version formats it).
    pub fn to_docker_json(&self) -> Value {
        let mut v = json!({
            "Type": self.kind,
            "Action": self.action,
            "Actor": {"ID": self.id, "Attributes": self.attributes},
            "scope": "local",
            "time": self.time_nano.div_euclid(1_000_000_000) as i64,
            "timeNano": self.time_nano as i64,
        });
        if self.kind == "container" {
            v["status"] = json!(self.action);
            v["id"] = json!(self.id);
            v["from"] = json!(self.attributes.get("image").cloned().unwrap_or_default());
        }
        v
    }
}

pub struct EventLog {
    ring: Mutex<VecDeque<EngineEvent>>,
    tx: broadcast::Sender<EngineEvent>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            tx: broadcast::channel(RING).0,
        }
    }
}

impl EventLog {
    pub fn emit(&self, event: EngineEvent) {
        tracing::debug!(container = %event.id, action = %event.action, "event");
        let mut ring = self.ring.lock().expect("event ring lock");
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(event.clone());
        // Sent under the lock, so a follower that subscribed and then read the ring sees each
        // event exactly once.
        let _ = self.tx.send(event);
    }

    /// The events kept from `since` (ns) on, and a receiver for the ones after them.
    pub fn replay_and_follow(
        &self,
        since: i128,
    ) -> (Vec<EngineEvent>, broadcast::Receiver<EngineEvent>) {
        let ring = self.ring.lock().expect("event ring lock");
        let rx = self.tx.subscribe();
        let past = ring
            .iter()
            .filter(|e| e.time_nano >= since)
            .cloned()
            .collect();
        (past, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_then_follow_sees_each_event_once() {
        let log = EventLog::default();
        log.emit(EngineEvent::container("create", "a", BTreeMap::new()));
        let (past, mut rx) = log.replay_and_follow(0);
        log.emit(EngineEvent::container("start", "a", BTreeMap::new()));
        assert_eq!(past.len(), 1);
        assert_eq!(past[0].action, "create");
        assert_eq!(rx.try_recv().unwrap().action, "start");
        assert!(rx.try_recv().is_err());
        let v = past[0].to_docker_json();
        assert_eq!(v["status"], "create");
        assert_eq!(v["Actor"]["ID"], "a");
    }
}
