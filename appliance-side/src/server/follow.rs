//! Following one session's events to its true end. Tether sends `Exited` after closing the
//! session's streams, but control is transmitted ahead of data, so the exit can arrive before
//! the last output. A follower therefore ends only once the session has exited *and* its output
//! streams have ended, or a short grace has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use wire::SessionId;

use crate::server::container::Container;
use crate::server::events::Event;

/// How long after a session's exit to wait for its last output. Tether closes a session's
/// streams before it reports the exit, so this only bounds a stream that never ends (a link
/// lost for good); generous, since a loaded machine can take seconds to deliver the tail.
const OUTPUT_GRACE: Duration = Duration::from_secs(10);

pub enum Next {
    Event(Event),
    /// This follower fell behind by this many events and must be dropped.
    Lagged(u64),
    /// The session has ended and all its output has been seen.
    Done,
}

pub struct SessionFollower {
    events: broadcast::Receiver<Event>,
    container: Arc<Container>,
    session: SessionId,
    tty: bool,
    exited_at: Option<Instant>,
}

impl SessionFollower {
    /// `events` must be subscribed before anything the caller wants to see can happen.
    pub fn new(
        container: Arc<Container>,
        events: broadcast::Receiver<Event>,
        session: SessionId,
        tty: bool,
    ) -> Self {
        // Following a session that has already exited (a follower resubscribing to catch up)
        // must not wait for an exit it will never see again.
        let exited = container
            .state()
            .sessions
            .get(&session)
            .is_some_and(|s| s.exit_code.is_some());
        Self {
            events,
            container,
            session,
            tty,
            exited_at: exited.then(Instant::now),
        }
    }

    /// This session's event, if it is one; an exit is noted, not returned.
    fn mine(&mut self, ev: Event) -> Option<Event> {
        let session = match &ev {
            Event::Output { session, .. }
            | Event::Exited { session, .. }
            | Event::Started { session }
            | Event::StartFailed { session, .. } => *session,
            Event::NetworkChanged { .. } => return None,
        };
        if session != self.session {
            return None;
        }
        if matches!(ev, Event::Exited { .. }) {
            self.exited_at.get_or_insert_with(Instant::now);
            return None;
        }
        Some(ev)
    }

    /// The next event of this session (others are skipped).
    pub async fn next(&mut self) -> Next {
        loop {
            if let Some(t) = self.exited_at {
                if self.container.session_output_done(self.session, self.tty)
                    || t.elapsed() >= OUTPUT_GRACE
                {
                    // Everything is broadcast by now, but maybe not yet read: drain first.
                    match self.events.try_recv() {
                        Ok(ev) => match self.mine(ev) {
                            Some(ev) => return Next::Event(ev),
                            None => continue,
                        },
                        Err(broadcast::error::TryRecvError::Lagged(n)) => return Next::Lagged(n),
                        Err(_) => return Next::Done,
                    }
                }
            }
            let ev = match self.exited_at {
                None => self.events.recv().await,
                Some(_) => {
                    match tokio::time::timeout(Duration::from_millis(50), self.events.recv()).await
                    {
                        Ok(ev) => ev,
                        Err(_) => continue,
                    }
                }
            };
            match ev {
                Ok(ev) => match self.mine(ev) {
                    Some(ev) => return Next::Event(ev),
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => return Next::Lagged(n),
                Err(broadcast::error::RecvError::Closed) => return Next::Done,
            }
        }
    }
}
