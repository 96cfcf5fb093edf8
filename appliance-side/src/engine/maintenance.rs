//! `docker cp` on a container that is not running. A containerVM's files live on its disk, and
//! only tether can read them; so the engine boots the container's own disk in a maintenance VM
//! whose main session is tether's `hold` (no program of the image runs), runs the copy's
//! built-ins there, and powers it off. The maintenance VM has an identity of its own, so the
//! container's state, logs and events are untouched. Image layers are applied in the same kind
//! of VM (`layers.rs`): [`Engine::boot_hold`] and [`Engine::end_hold`] serve both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use guestinfo::contract::MAIN_SESSION;
use guestinfo::spec::BUILTIN_HOLD;
use guestinfo::{MountSource, MountSpec};
use tokio::time::Instant;
use wire::Control;

use crate::backend::{LaunchRequest, Transport};
use crate::engine::{Engine, EngineError};
use crate::store::records::{self, Record};
use crate::store::state::ContainerStatus;

/// A maintenance VM's boot, to the hold session running.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The maintenance identity of a container: never a listed container (not 64 hex digits).
pub fn maintenance_id(id: &str) -> String {
    format!("{id}.cp")
}

/// What a hold VM mounts besides its disk: the volumes of the container it stands in for
/// (none for a layer build).
#[derive(Default)]
pub(crate) struct HoldVolumes {
    pub mounts: BTreeMap<String, MountSpec>,
    pub disks: Vec<PathBuf>,
}

/// A maintenance VM for one stopped container; powered off and forgotten on [`Maintenance::end`].
pub struct Maintenance {
    pub record: Record,
    engine: Arc<Engine>,
    /// The container's operation lock, held to the end: while its disk is in the maintenance
    /// VM, the container cannot start (a disk has one writer), and one copy runs at a time.
    _op: tokio::sync::OwnedMutexGuard<()>,
}

impl Engine {
    /// Boots `rec`'s disk under a maintenance identity and returns once tether holds it.
    pub async fn maintenance(self: &Arc<Self>, rec: &Record) -> Result<Maintenance, EngineError> {
        let op = self.op_lock(&rec.id).lock_owned().await;
        if self.is_running(&rec.id) {
            return Err(EngineError::Conflict(format!(
                "container {} was started while the copy waited: copy again",
                rec.id
            )));
        }
        // The container's own writable layer, while the container is stopped (one writer).
        // A container never started has none yet: the backend layers it on the image's disk
        // through the maintenance VM's link to it, as the container's first start would.
        let disk = self.home().container(&rec.id).join("disk.qcow2");
        let mut m = rec.clone();
        m.id = maintenance_id(&rec.id);
        m.name = format!("{}-cp", rec.name);
        let image_disk = self.image_disk(rec)?;
        // Its volumes too, at their paths, so a copy under one reaches the volume as it would
        // in the running container. Not its tmpfs mounts: they exist only while it runs.
        let (mut mounts, disks) = self.boot_mounts(rec)?;
        mounts.retain(|_, spec| !matches!(spec.source, MountSource::Tmpfs));
        let volumes = HoldVolumes { mounts, disks };
        let m = self
            .boot_hold(m, &disk, image_disk, BUILTIN_HOLD, volumes, "docker cp")
            .await?;
        Ok(Maintenance {
            record: m,
            engine: self.clone(),
            _op: op,
        })
    }

    /// Boots `disk` as the writable disk of a VM under the identity `m` (a fresh secret given
    /// here), whose main session is tether's `builtin` (`hold`, or `hold-build` for a disk
    /// being built), with `volumes` mounted; returns the record once tether holds it.
    /// `image_disk` is what the backend layers `disk` on if it does not exist yet. `why` names
    /// the VM in messages.
    pub(crate) async fn boot_hold(
        self: &Arc<Self>,
        mut m: Record,
        disk: &Path,
        image_disk: PathBuf,
        builtin: &str,
        volumes: HoldVolumes,
        why: &str,
    ) -> Result<Record, EngineError> {
        let backend = self.backend.as_ref().ok_or_else(|| {
            EngineError::Internal("this appliance has no backend to run VMs".into())
        })?;
        let home = self.home();
        let id = m.id.clone();
        let _ = records::remove(home, &id);
        let dir = home.container(&id);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::Internal(e.to_string()))?;
        std::os::unix::fs::symlink(disk, dir.join("disk.qcow2"))
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        m.secret = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            crate::store::atomic::random::<32>(),
        );
        records::save(home, &m)?;
        let mut spec = records::spec_for(&m, false)?;
        if let Some(main) = spec.sessions.get_mut(&m.id) {
            main.builtin = builtin.into();
        }
        spec.mounts = volumes.mounts;
        records::write_config(&dir, &spec).map_err(|e| EngineError::Internal(e.to_string()))?;
        // One writer per volume disk, as for a start: checked and launched under one lock.
        let writers = self.volume_starts.lock().await;
        if let Err(e) = self.check_single_writer(&m) {
            drop(writers);
            let _ = records::remove(home, &id);
            return Err(e);
        }
        let launched = backend
            .launch(&LaunchRequest {
                container_dir: dir.clone(),
                image_disk,
                config: dir.join("config.vmx"),
                memory_mb: crate::engine::DEFAULT_MEMORY_MB,
                cpus: 0,
                transport: Transport::Virtio(home.channel_socket()),
                volumes: volumes.disks,
                // No network: nothing of the image runs.
                nics: Vec::new(),
                hotplug_slots: Vec::new(),
            })
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        if let Some(child) = launched.child {
            self.vms.watch(&id, child, self.vm_exits.clone());
        }
        drop(writers);
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let st = self.state(&id);
            if st.main().is_some_and(|s| s.pid.is_some()) && st.status == ContainerStatus::Running {
                return Ok(m);
            }
            if st.status.is_finished() || self.vms.pid(&id).is_none() || Instant::now() >= deadline
            {
                let reason = format!(
                    "the maintenance VM for {why} did not come up; its console: {}",
                    self.console_tail(&id)
                );
                self.end_hold(&id).await;
                return Err(EngineError::Internal(reason));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends a hold VM's session (tether syncs, remounts its root read-only and powers off),
    /// waits for the VM, and forgets it. True when the VM powered itself off (its disk is
    /// consistent); false when it had to be killed.
    pub(crate) async fn end_hold(&self, id: &str) -> bool {
        if let Some(c) = self.server.container(id) {
            let _ = c.send_control(Control::Signal {
                session: MAIN_SESSION,
                signal: libc::SIGTERM,
                group: false,
            });
        }
        self.vms.set_stopping(id);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.vms.pid(id).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let clean = self.vms.pid(id).is_none();
        self.vms.kill(id);
        self.server.forget(id);
        if let Err(e) = records::remove(self.home(), id) {
            tracing::warn!(container = %id, "removing the maintenance VM's files: {e}");
        }
        clean
    }
}

impl Maintenance {
    /// Ends the hold session (tether powers the VM off), waits for the VM, forgets it.
    pub async fn end(self) {
        self.engine.end_hold(&self.record.id).await;
    }
}
