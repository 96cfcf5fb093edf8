//! State shared by tether's tasks. The runtime is single-threaded, so it lives in an `Rc<RefCell>`
//! and no borrow is ever held across an await.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use tokio::sync::{mpsc, Notify};
use wire::{Control, Message, SessionId, Streams};

/// Bytes waiting to be written to a session's stdin (bounded by the stdin stream's credit).
#[derive(Default)]
pub struct StdinQueue {
    pub bytes: VecDeque<u8>,
    /// The stream ended or CloseStdin arrived: close (pipe) or send ^D (pty) once drained.
    pub closing: bool,
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
