//! The fan-out of a container's output and lifecycle events to attached clients.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use wire::SessionId;

use crate::store::logs::Stream;

/// Output and lifecycle events for attached clients. Bounded: a client that falls behind gets
/// `Lagged` from its receiver and is dropped, never slowing the container or other clients.
#[derive(Debug, Clone)]
pub enum Event {
    Output {
        session: SessionId,
        stream: Stream,
        /// Offset of the first byte in the stream (lets a follower dedupe against the file).
        offset: u64,
        bytes: Arc<Vec<u8>>,
    },
    Exited {
        session: SessionId,
        exit_code: i32,
    },
    Started {
        session: SessionId,
    },
    /// The session could not start; `message` says why (shown to the attached client).
    StartFailed {
        session: SessionId,
        message: String,
    },
    /// Tether's answer to a `NetworkAdd`/`NetworkRemove`: empty `error` when applied.
    NetworkChanged {
        request: u32,
        error: String,
    },
}

pub const EVENT_BUFFER: usize = 1024;

/// The fan-out of a container's events to attached clients. The ring of `EVENT_BUFFER` slots
/// exists only while someone listens: allocated up front it was most of the server's memory per
/// idle channel (`make bench`), and with no one listening an event is not even built.
#[derive(Default)]
pub struct EventHub {
    tx: Mutex<Option<broadcast::Sender<Event>>>,
}

impl EventHub {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        let mut tx = self.tx.lock().expect("event hub lock");
        tx.get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    /// Sends the event `make` builds, if anyone listens; frees the ring once no one does.
    pub fn send(&self, make: impl FnOnce() -> Event) {
        let mut tx = self.tx.lock().expect("event hub lock");
        match tx.as_ref() {
            Some(t) if t.receiver_count() > 0 => {
                let _ = t.send(make());
            }
            Some(_) => *tx = None,
            None => {}
        }
    }

    /// Whether the ring is allocated (someone listened since the last send).
    #[cfg(test)]
    fn is_live(&self) -> bool {
        self.tx.lock().expect("event hub lock").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_ring_lives_only_while_someone_listens() {
        let hub = EventHub::default();
        let mut built = 0;
        hub.send(|| {
            built += 1;
            Event::Started { session: 1 }
        });
        assert_eq!(built, 0, "no listener: the event is not even built");
        assert!(!hub.is_live());

        let mut rx = hub.subscribe();
        assert!(hub.is_live());
        hub.send(|| Event::Exited {
            session: 1,
            exit_code: 3,
        });
        match rx.try_recv() {
            Ok(Event::Exited { session, exit_code }) => assert_eq!((session, exit_code), (1, 3)),
            other => panic!("expected the exit event, got {other:?}"),
        }
        drop(rx);
        hub.send(|| Event::Started { session: 2 });
        assert!(!hub.is_live(), "the last listener left: the ring is freed");
        // A new listener gets a new ring and what is sent after it subscribed.
        let mut rx = hub.subscribe();
        hub.send(|| Event::Started { session: 4 });
        assert!(matches!(rx.try_recv(), Ok(Event::Started { session: 4 })));
    }
}
