//! The container engine: what a container is and where it stands, as the API asks it, and its
//! life: create, start, stop, kill, restart, rm, rename, wait. It joins the store (records,
//! state, execs), the session server (live channels) and the backend that runs the VMs.

pub mod builtins;
pub mod create;
pub mod endpoint_config;
pub mod endpoints;
pub mod events;
pub mod filters;
pub mod guest_networks;
pub mod health;
pub mod hotplug;
pub mod images;
pub mod json;
pub mod layers;
mod lifecycle;
pub mod maintenance;
pub mod mounts;
pub mod networks;
pub mod pull;
mod supervise;
pub mod vms;
pub mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::backend::Backend;
use crate::engine::events::EventLog;
use crate::engine::vms::Vms;
use crate::home::Home;
use crate::server::container::Container;
use crate::server::Server;
use crate::store::execs::{Exec, ExecStore};
use crate::store::images::ImageStore;
use crate::store::records::{self, Record, RecordError};
use crate::store::state::{ContainerStatus, State};

pub use lifecycle::{WaitCondition, DEFAULT_MEMORY_MB};

/// How long a request for a running container waits for its VM's channel to come back.
pub const RECONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Why the engine cannot do what was asked; the API maps each to docker's status and text.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    /// 404 with tether's words (a path missing in a container).
    #[error("{0}")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container is already in the state asked for (docker answers 304).
    #[error("container {0} is already {1}")]
    NotModified(String, &'static str),
    #[error("{0}")]
    Conflict(String),
    /// docker's 403: what may never be done (remove a predefined network, or one in use).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// The main process could not start; `exit_code` is 126 or 127 (or 125 for tether's own
    /// boot failures), and the message carries the words docker's CLI maps to that code.
    #[error("{message}")]
    StartFailed { message: String, exit_code: i32 },
    #[error("{0}")]
    Internal(String),
}

impl From<RecordError> for EngineError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::NameInUse { .. } => Self::Conflict(e.to_string()),
            RecordError::Io(_) => Self::Internal(e.to_string()),
            RecordError::NoCommand | RecordError::BadOption(_) | RecordError::BadName(_) => {
                Self::BadRequest(e.to_string())
            }
        }
    }
}

pub struct Engine {
    pub server: Arc<Server>,
    pub execs: ExecStore,
    pub images: ImageStore,
    /// Registries pulled from, and the blob cache the pulls share.
    pub registries: Arc<crate::registry::Registries>,
    pub events: EventLog,
    backend: Option<Box<dyn Backend>>,
    vms: Vms,
    /// Attach requests waiting for a container's VM: a container started while one waits runs
    /// its main process only after that attach, so it misses no output.
    pending_attach: Mutex<HashMap<String, usize>>,
    /// Serialises what must see a consistent set of names (create, rename).
    names: Mutex<()>,
    /// One lifecycle operation at a time per container (start, stop, restart, rm).
    ops: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    vm_exits: tokio::sync::mpsc::UnboundedSender<vms::VmExit>,
    /// See [`health::DEFAULT_UNRESPONSIVE_AFTER`].
    unresponsive_after_ms: std::sync::atomic::AtomicU64,
    /// Volumes (`volumes.rs`); `volume_refs` serialises what changes which container uses which
    /// volume (container create and rm, volume rm and prune), `volume_starts` a start's
    /// one-writer check with its launch.
    volumes: crate::store::volumes::VolumeStore,
    volume_refs: Mutex<()>,
    volume_starts: tokio::sync::Mutex<()>,
    /// Networks: their lock, the host's plumbing, published ports' proxies.
    pub(crate) net: networks::NetState,
}

impl Engine {
    /// An engine that can inspect and talk to containers but not launch VMs.
    pub fn new(server: Arc<Server>) -> Arc<Self> {
        Self::with_backend(server, None)
    }

    /// An engine that launches VMs through `backend`. Must be called inside a tokio runtime:
    /// it starts the supervisor that handles exits.
    pub fn with_backend(server: Arc<Server>, backend: Option<Box<dyn Backend>>) -> Arc<Self> {
        let (vm_exits, exits_rx) = tokio::sync::mpsc::unbounded_channel();
        let plumbing = backend.as_ref().and_then(|b| b.network_plumbing());
        let engine = Arc::new(Self {
            execs: ExecStore::new(server.home.clone()),
            images: ImageStore::new(server.home.clone()),
            registries: crate::registry::Registries::new(&server.home),
            events: EventLog::default(),
            backend,
            vms: Vms::default(),
            pending_attach: Mutex::new(HashMap::new()),
            names: Mutex::new(()),
            ops: Mutex::new(HashMap::new()),
            vm_exits,
            unresponsive_after_ms: std::sync::atomic::AtomicU64::new(
                health::DEFAULT_UNRESPONSIVE_AFTER.as_millis() as u64,
            ),
            volumes: crate::store::volumes::VolumeStore::new(server.home.clone()),
            volume_refs: Mutex::new(()),
            volume_starts: tokio::sync::Mutex::new(()),
            net: networks::NetState::new(plumbing),
            server,
        });
        engine.ensure_predefined_networks();
        supervise::spawn(&engine, exits_rx);
        engine
    }

    pub fn home(&self) -> &Home {
        &self.server.home
    }

    /// A container by full id, unique id prefix or name, as docker resolves references.
    pub fn resolve(&self, reference: &str) -> Result<Record, EngineError> {
        let reference = reference.strip_prefix('/').unwrap_or(reference);
        records::resolve(self.home(), reference)
            .ok_or_else(|| EngineError::NoSuchContainer(reference.to_string()))
    }

    /// Every container, oldest first.
    pub fn containers(&self) -> Vec<Record> {
        records::list(self.home())
    }

    /// The container's state: live if it connected since the server started, else from disk.
    pub fn state(&self, id: &str) -> State {
        match self.server.container(id) {
            Some(c) => c.state(),
            None => State::load(&self.home().container(id)),
        }
    }

    /// The live runtime of a running container, waiting up to [`RECONNECT_GRACE`] for the
    /// channel of one whose state says running (after an appliance restart its VM reconnects
    /// within seconds; docker's clients should not see it as stopped meanwhile).
    pub async fn running_soon(&self, rec: &Record) -> Result<Arc<Container>, EngineError> {
        let deadline = tokio::time::Instant::now() + RECONNECT_GRACE;
        loop {
            match self.running(rec) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let still_up = self.state(&rec.id).status == ContainerStatus::Running;
                    if !still_up || tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The live runtime of a running container, now.
    pub fn running(&self, rec: &Record) -> Result<Arc<Container>, EngineError> {
        let not_running = || EngineError::NotRunning(rec.id.clone());
        let c = self.server.container(&rec.id).ok_or_else(not_running)?;
        if c.state().status != ContainerStatus::Running {
            return Err(not_running());
        }
        Ok(c)
    }

    pub fn exec(&self, id: &str) -> Result<Exec, EngineError> {
        self.execs
            .get(id)
            .ok_or_else(|| EngineError::NoSuchExec(id.to_string()))
    }

    /// Registers an attach that waits for the container's VM; the guard withdraws it.
    pub fn attach_pending(self: &Arc<Self>, id: &str) -> PendingAttach {
        *self
            .pending_attach
            .lock()
            .expect("pending lock")
            .entry(id.to_string())
            .or_default() += 1;
        PendingAttach {
            engine: self.clone(),
            id: id.to_string(),
        }
    }

    fn has_pending_attach(&self, id: &str) -> bool {
        self.pending_attach
            .lock()
            .expect("pending lock")
            .get(id)
            .is_some_and(|n| *n > 0)
    }

    fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.ops
            .lock()
            .expect("ops lock")
            .entry(id.to_string())
            .or_default()
            .clone()
    }
}

/// An attach waiting for a container to come up (see [`Engine::attach_pending`]).
pub struct PendingAttach {
    engine: Arc<Engine>,
    id: String,
}

impl Drop for PendingAttach {
    fn drop(&mut self) {
        let mut map = self.engine.pending_attach.lock().expect("pending lock");
        if let Some(n) = map.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}
