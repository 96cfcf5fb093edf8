//! The container engine: what a container is and where it stands, as the API asks it. It joins
//! the store (records, state, execs) and the session server (live channels); [engine] grows the
//! lifecycle here (create, start, stop, rm) on top of the backend that runs the VMs.

pub mod images;

use std::sync::Arc;

use thiserror::Error;

use crate::home::Home;
use crate::server::container::Container;
use crate::server::Server;
use crate::store::execs::{Exec, ExecStore};
use crate::store::images::ImageStore;
use crate::store::records::{self, Record};
use crate::store::state::{ContainerStatus, State};

/// Why the engine cannot do what was asked; the API maps each to docker's status and text.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("No such exec instance: {0}")]
    NoSuchExec(String),
    #[error("container {0} is not running")]
    NotRunning(String),
}

pub struct Engine {
    pub server: Arc<Server>,
    pub execs: ExecStore,
    pub images: ImageStore,
}

impl Engine {
    pub fn new(server: Arc<Server>) -> Self {
        Self {
            execs: ExecStore::new(server.home.clone()),
            images: ImageStore::new(server.home.clone()),
            server,
        }
    }

    pub fn home(&self) -> &Home {
        &self.server.home
    }

    /// A container by full id, unique id prefix or name, as docker resolves references.
    pub fn resolve(&self, reference: &str) -> Result<Record, EngineError> {
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

    /// The live runtime of a running container.
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
}
