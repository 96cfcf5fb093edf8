//! State shared by tether's tasks. The runtime is single-threaded, so it lives in an `Rc<RefCell>`
//! and no borrow is ever held across an await.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use tokio::sync::{mpsc, Notify};
use wire::{Control, Message, Role, SessionId, StreamConfig, Streams};

/// Bytes waiting to be written to a session's stdin (bounded by the stdin stream's credit).
#[derive(Default)]
pub struct StdinQueue {
    pub bytes: VecDeque<u8>,
    /// The stream ended or CloseStdin arrived: close (pipe) or send ^D (pty) once drained.
    pub closing: bool,
}

impl StdinQueue {
    /// Removes up to `max` bytes from the front, copied as (at most) two slices: collecting a
    /// drain byte by byte cost tether ~20 instructions per stdin byte.
    pub fn take_front(&mut self, max: usize) -> Vec<u8> {
        let n = self.bytes.len().min(max);
        let (a, b) = self.bytes.as_slices();
        let from_a = n.min(a.len());
        let mut chunk = Vec::with_capacity(n);
        chunk.extend_from_slice(&a[..from_a]);
        chunk.extend_from_slice(&b[..n - from_a]);
        self.bytes.drain(..n);
        chunk
    }
}

/// Events for the controller.
#[derive(Debug)]
pub enum Event {
    Control(Control),
    ChildExited {
        pid: u32,
        exit_code: i32,
        signal: Option<i32>,
    },
    PumpDone {
        session: SessionId,
    },
    ExitDeadline {
        session: SessionId,
    },
    /// The stop grace after the main session's end is over.
    StopGraceOver,
    ChannelUp,
    ChannelDown(String),
}

pub struct Shared {
    pub streams: Streams,
    pub stdin: BTreeMap<SessionId, StdinQueue>,
    /// Link messages (pings) to send ahead of stream traffic.
    pub link_out: VecDeque<Message>,
    pub connected: bool,
}

/// Handles every task holds.
#[derive(Clone)]
pub struct Ctx {
    pub shared: Rc<RefCell<Shared>>,
    /// Something is ready to transmit.
    pub tx_wake: Rc<Notify>,
    /// Acks arrived: outgoing streams may have room again (notify_waiters).
    pub space: Rc<Notify>,
    /// Stdin bytes arrived for some session (notify_waiters).
    pub stdin_wake: Rc<Notify>,
    pub events: mpsc::UnboundedSender<Event>,
}

impl Ctx {
    /// Fresh guest-side streams (nothing sent or received yet) and their wake-ups.
    pub fn new(events: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            shared: Rc::new(RefCell::new(Shared {
                streams: Streams::new(Role::Guest, StreamConfig::default()),
                stdin: BTreeMap::new(),
                link_out: VecDeque::new(),
                connected: false,
            })),
            tx_wake: Rc::new(Notify::new()),
            space: Rc::new(Notify::new()),
            stdin_wake: Rc::new(Notify::new()),
            events,
        }
    }

    pub fn send_control(&self, record: Control) {
        let result = self.shared.borrow_mut().streams.send_control(&record);
        if let Err(e) = result {
            // The control stream holds 1 MiB unacknowledged; losing a record here means the
            // appliance has been gone for very long. Say so on the console.
            crate::log::error(&format!("control record dropped ({e}): {record:?}"));
        }
        self.tx_wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_front_keeps_order_across_the_ring_wrap() {
        let mut q = StdinQueue::default();
        let mut expect = VecDeque::new();
        let mut next = 0u8;
        // Pushing at the back while taking from the front walks the ring past its end.
        for round in 0..50 {
            for _ in 0..(round * 7 % 23 + 5) {
                q.bytes.push_back(next);
                expect.push_back(next);
                next = next.wrapping_add(1);
            }
            let max = round % 9 + 1;
            let got = q.take_front(max);
            let want: Vec<u8> = (0..max.min(expect.len()))
                .filter_map(|_| expect.pop_front())
                .collect();
            assert_eq!(got, want, "round {round}");
        }
        assert_eq!(q.take_front(usize::MAX), Vec::from(expect));
        assert!(q.bytes.is_empty());
    }
}
