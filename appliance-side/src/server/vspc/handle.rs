//! The port's hold on one vSPC connection: where to write, and how to end it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// What is written to a connection.
#[derive(Debug)]
pub(super) enum Outbound {
    /// Serial data: escaped as telnet data on a telnet connection.
    Data(Vec<u8>),
    /// Telnet commands, already encoded.
    Command(Vec<u8>),
}

/// The port's hold on a connection: where to write, and how to end it.
#[derive(Debug, Clone)]
pub(super) struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    tx: mpsc::Sender<Outbound>,
    end: Arc<watch::Sender<bool>>,
}

impl ConnHandle {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        tx: mpsc::Sender<Outbound>,
        end: Arc<watch::Sender<bool>>,
    ) -> Self {
        Self { id, peer, tx, end }
    }

    /// Queues data for the VM; false when the connection is gone.
    pub async fn data(&self, bytes: Vec<u8>) -> bool {
        self.tx.send(Outbound::Data(bytes)).await.is_ok()
    }

    pub async fn command(&self, bytes: Vec<u8>) -> bool {
        self.tx.send(Outbound::Command(bytes)).await.is_ok()
    }

    /// Closes the connection (after what is queued is written).
    pub fn close(&self) {
        self.end.send_replace(true);
    }
}
