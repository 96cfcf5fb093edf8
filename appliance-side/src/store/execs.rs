//! Exec instances (`docker exec`): created, then started once. Each is persisted beside its
//! container (`containers/<id>/execs/<exec id>.json`) so a restarted appliance still knows its
//! execs: inspect reports them, and a client can re-attach to one that is still running.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use wire::{ExecSpec, SessionId};

use crate::home::Home;
use crate::store::atomic::write_atomic;

/// An exec created but perhaps not started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exec {
    pub id: String,
    pub container: String,
    pub spec: ExecSpec,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    /// The tether session running it, once started.
    pub session: Option<SessionId>,
}

pub enum Started {
    Fresh(SessionId),
    Already(SessionId),
}

pub struct ExecStore {
    home: Home,
    cache: Mutex<HashMap<String, Exec>>,
}

/// Exec ids are 64 hex digits; anything else never reaches the filesystem.
fn valid_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ExecStore {
    pub fn new(home: Home) -> Self {
        Self {
            home,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, container: &str, id: &str) -> PathBuf {
        self.home
            .container(container)
            .join("execs")
            .join(format!("{id}.json"))
    }

    /// Stores (creates or updates) an exec, on disk first.
    pub fn put(&self, exec: &Exec) -> std::io::Result<()> {
        let path = self.path(&exec.container, &exec.id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(&path, &serde_json::to_vec_pretty(exec)?)?;
        self.cache
            .lock()
            .expect("exec cache lock")
            .insert(exec.id.clone(), exec.clone());
        Ok(())
    }

    /// The exec with this id, from memory or, after a restart, from disk.
    pub fn get(&self, id: &str) -> Option<Exec> {
        if let Some(e) = self.cache.lock().expect("exec cache lock").get(id) {
            return Some(e.clone());
        }
        if !valid_id(id) {
            return None;
        }
        let dirs = std::fs::read_dir(self.home.containers()).ok()?;
        let exec = dirs.flatten().find_map(|d| {
            let bytes = std::fs::read(d.path().join("execs").join(format!("{id}.json"))).ok()?;
            serde_json::from_slice::<Exec>(&bytes).ok()
        })?;
        self.cache
            .lock()
            .expect("exec cache lock")
            .insert(id.to_string(), exec.clone());
        Some(exec)
    }

    /// Gives the exec its session, once: `Started::Fresh` with a session from `allocate` the
    /// first time, `Started::Already` with the existing one after that.
    pub fn claim_session(
        &self,
        id: &str,
        allocate: impl FnOnce() -> SessionId,
    ) -> std::io::Result<Option<Started>> {
        let Some(mut exec) = self.get(id) else {
            return Ok(None);
        };
        // One claim at a time: the cache lock is held from the check to the store.
        let mut cache = self.cache.lock().expect("exec cache lock");
        if let Some(s) = cache.get(id).and_then(|e| e.session) {
            return Ok(Some(Started::Already(s)));
        }
        let session = allocate();
        exec.session = Some(session);
        let path = self.path(&exec.container, &exec.id);
        write_atomic(&path, &serde_json::to_vec_pretty(&exec)?)?;
        cache.insert(id.to_string(), exec);
        Ok(Some(Started::Fresh(session)))
    }

    /// Every exec of a container, oldest id order not guaranteed.
    pub fn of_container(&self, container: &str) -> Vec<Exec> {
        let dir = self.home.container(container).join("execs");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|d| serde_json::from_slice(&std::fs::read(d.path()).ok()?).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    fn exec(id: &str) -> Exec {
        Exec {
            id: id.into(),
            container: "c1".into(),
            spec: ExecSpec::default(),
            attach_stdin: true,
            attach_stdout: true,
            attach_stderr: false,
            session: Some(4096),
        }
    }

    #[test]
    fn an_exec_outlives_the_store_that_created_it() {
        let dir = TestDir::new("execs");
        let home = Home::at(dir.path());
        let id = "ab".repeat(32);
        ExecStore::new(home.clone()).put(&exec(&id)).unwrap();
        // A new store (a restarted appliance) finds it on disk.
        let again = ExecStore::new(home.clone());
        let e = again.get(&id).expect("persisted");
        assert_eq!((e.container.as_str(), e.session), ("c1", Some(4096)));
        assert_eq!(again.of_container("c1").len(), 1);
        // Ids that are not exec ids never touch the filesystem.
        assert!(again.get("../../etc/passwd").is_none());
    }
}
