//! A container's life: start, stop, kill, restart, rm, rename, wait, with docker's semantics:
//! `start` returns once the main process runs (or says why it could not), `stop` sends the stop
//! signal and SIGKILL after the timeout, and powers the VM off if tether does not answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use guestinfo::contract::{COM_DEVICE, MAIN_SESSION};
use tokio::time::Instant;
use wire::Control;

use crate::backend::{LaunchRequest, Transport};
use crate::engine::events::EngineEvent;
use crate::engine::{Engine, EngineError};
use crate::store::records::{self, Record};
use crate::store::state::{ContainerStatus, State};

/// How long a VM may take from launch to its main process running (TCG boots take seconds).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// After SIGKILL, how long tether has to report the exit before the VM is powered off.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// After the main process exited, how long the VM has to power itself off.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);
/// How often a VM that is no process here is asked for its power state (an API call each).
const UNWATCHED_POLL: Duration = Duration::from_millis(250);
/// How long a start waits for the attaches made before it to listen to the new boot.
const ATTACH_GRACE: Duration = Duration::from_secs(10);
/// How long a start whose VM has ended waits for the server to read the channel to its end.
const CHANNEL_DRAIN: Duration = Duration::from_secs(2);

/// `docker wait --condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(text: &str) -> Result<Self, EngineError> {
        match text {
            "" | "not-running" => Ok(Self::NotRunning),
            "next-exit" => Ok(Self::NextExit),
            "removed" => Ok(Self::Removed),
            other => Err(EngineError::BadRequest(format!(
                "invalid condition: {other:?} (use not-running, next-exit or removed)"
            ))),
        }
    }
}

impl Engine {
    /// The attributes docker puts on a container's events.
    pub(crate) fn event_attributes(&self, rec: &Record) -> BTreeMap<String, String> {
        let mut a = rec.options.labels.clone();
        a.insert("image".into(), rec.image.clone());
        a.insert("name".into(), rec.name.clone());
        a
    }

    pub(crate) fn emit(&self, action: &str, rec: &Record, extra: &[(&str, String)]) {
        let mut attributes = self.event_attributes(rec);
        for (k, v) in extra {
            attributes.insert((*k).to_string(), v.clone());
        }
        self.events
            .emit(EngineEvent::container(action, &rec.id, attributes));
    }

    /// The pid of the container's VM process, if this engine watches it.
    pub fn vm_pid(&self, id: &str) -> Option<u32> {
        self.vms.pid(id)
    }

    /// Whether the container's main process is running (its VM connected and not finished).
    pub fn is_running(&self, id: &str) -> bool {
        self.state(id).status == ContainerStatus::Running
    }

    /// Boots the container's VM and returns once its main process runs; with an attach
    /// waiting, once the VM is connected (the process starts at that attach).
    pub async fn start(self: &Arc<Self>, reference: &str) -> Result<(), EngineError> {
        let mut rec = self.resolve(reference)?;
        let lock = self.op_lock(&rec.id);
        let _op = lock.lock().await;
        // Started by hand: the restart policy's retries count from here.
        if rec.restart_count != 0 {
            rec.restart_count = 0;
            records::save(self.home(), &rec)?;
        }
        self.start_locked(&rec).await
    }

    /// Starts a container again by its restart policy, if it still wants one: it may have been
    /// removed or started by hand meanwhile, and on-failure stops after MaximumRetryCount.
    /// `id` is the container's full id (the supervisor has its record).
    pub(super) async fn restart_by_policy(self: &Arc<Self>, id: &str, code: i32) {
        let lock = self.op_lock(id);
        let _op = lock.lock().await;
        // Read under the lock: an rm, a rename or a manual start may have come first.
        let Ok(mut rec) = self.resolve(id) else {
            return;
        };
        if self.is_running(&rec.id) {
            return;
        }
        let o = &rec.options;
        if !super::supervise::restart_wanted(
            &o.restart_policy,
            o.restart_max,
            rec.restart_count,
            code,
        ) {
            tracing::info!(
                container = %rec.id,
                policy = %o.restart_policy,
                retries = rec.restart_count,
                "not restarting: the policy's retries are used up"
            );
            return;
        }
        rec.restart_count += 1;
        if let Err(e) = records::save(self.home(), &rec) {
            tracing::warn!(container = %rec.id, "restart policy: {e}");
            return;
        }
        tracing::info!(container = %rec.id, policy = %rec.options.restart_policy, count = rec.restart_count, "restarting");
        if let Err(e) = self.start_locked(&rec).await {
            tracing::warn!(container = %rec.id, "restart policy: {e}");
        }
    }

    async fn start_locked(self: &Arc<Self>, rec: &Record) -> Result<(), EngineError> {
        if self.is_running(&rec.id) {
            return Err(EngineError::NotModified(rec.id.clone(), "started"));
        }
        // The last boot's VM may still be powering off: it must be gone before the next boot.
        self.stop_vm_after(rec, POWEROFF_GRACE).await;
        // A stop that found no exit to take its mark (the boot had died) leaves none for this one.
        self.vms.take_stopping_unwatched(&rec.id);
        let backend = self.backend.as_ref().ok_or_else(|| {
            EngineError::Internal("this appliance has no backend to run VMs".into())
        })?;
        let image_disk = self.image_disk(rec)?;
        let mut rec = self.bind_endpoints(rec)?;
        // Made under another backend (or an older appliance), its slots may not be this
        // backend's: each NIC at the backend's slot for its place, for the guestinfo and the VM.
        self.slots_by_place(&mut rec);
        let rec = &rec;
        let attach = self.has_pending_attach(&rec.id);
        let dir = self.home().container(&rec.id);
        let mut spec = records::spec_for(rec, attach)?;
        let (mounts, volume_disks) = self
            .boot_mounts(rec)
            .map_err(|e| self.start_refused(rec, e))?;
        spec.mounts = mounts;
        spec.networks = self.guest_networks(rec)?;
        let transport = if backend.serial_channel() {
            // vSphere: the COM port is the VM's network serial port, which the vSPC takes.
            spec.channel_device = Some(COM_DEVICE.into());
            Transport::Serial(String::new())
        } else if rec.options.transport == "serial" {
            spec.channel_device = Some(COM_DEVICE.into());
            let tcp = std::fs::read_to_string(self.home().channel_tcp_file()).map_err(|e| {
                EngineError::Internal(format!("the server's TCP channel address: {e}"))
            })?;
            Transport::Serial(tcp.trim().to_string())
        } else {
            Transport::Virtio(self.home().channel_socket())
        };
        records::write_config(&dir, &spec).map_err(|e| EngineError::Internal(e.to_string()))?;
        let before = self.state(&rec.id);
        // What `ps` shows until the new boot connects: not the last boot's exit.
        let mut fresh = State::for_boot("");
        fresh.link = before.link;
        fresh
            .save(&dir)
            .map_err(|e| EngineError::Internal(format!("container state: {e}")))?;
        // One writer per volume disk: checked and launched under one lock.
        let writers = self.volume_starts.lock().await;
        self.check_single_writer(rec)
            .map_err(|e| self.start_refused(rec, e))?;
        let crate::engine::endpoints::Plugged {
            nics,
            proxies,
            published,
        } = self.plug(rec).await?;
        let launched = backend
            .launch(&LaunchRequest {
                container_dir: dir.clone(),
                image_disk,
                config: dir.join("config.vmx"),
                memory_mb: if rec.options.memory_mb == 0 {
                    DEFAULT_MEMORY_MB
                } else {
                    rec.options.memory_mb
                },
                cpus: rec.options.cpus,
                transport,
                volumes: volume_disks,
                hotplug_slots: crate::engine::hotplug::hotplug_slots(&rec.options, |i| {
                    self.nic_slot(i)
                }),
                nics,
            })
            .map_err(|e| self.start_refused(rec, EngineError::Internal(e.to_string())))?;
        self.plugged(rec, proxies, published);
        if let Some(start_time) = crate::engine::vms::process_start_time(launched.pid) {
            let vm = crate::engine::vms::VmRecord {
                pid: launched.pid,
                start_time,
            };
            let path = dir.join(crate::engine::vms::VM_RECORD);
            if let Err(e) = crate::store::atomic::write_atomic(
                &path,
                &serde_json::to_vec(&vm).unwrap_or_default(),
            ) {
                tracing::warn!(container = %rec.id, "cannot record the VM's pid: {e}");
            }
        }
        if let Some(child) = launched.child {
            self.vms.watch(&rec.id, child, self.vm_exits.clone());
        }
        drop(writers);
        tracing::info!(container = %rec.id, pid = launched.pid, attach, "VM launched");
        let outcome = self.await_start(rec, &before.boot, attach).await;
        match &outcome {
            Ok(()) => self.emit("start", rec, &[]),
            Err(e) => {
                tracing::warn!(container = %rec.id, "start failed: {e}");
                // A VM whose process could not start powers itself off; make sure.
                self.stop_vm_after(rec, POWEROFF_GRACE).await;
                if !self.backend_tracks_pids() && rec.options.auto_remove {
                    // No VM process whose end removes it: as dockerd, --rm removes it now.
                    if let Err(rm) = self.remove_now(rec, true) {
                        tracing::warn!(container = %rec.id, "--rm after a failed start: {rm}");
                    }
                }
            }
        }
        outcome
    }

    /// Waits for the new boot's main process to run, fail, or end.
    async fn await_start(
        &self,
        rec: &Record,
        old_boot: &str,
        attach: bool,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut held = attach;
        let mut vm_gone = false;
        loop {
            let st = self.state(&rec.id);
            let new_boot = !st.boot.is_empty() && st.boot != old_boot;
            if new_boot {
                let main = st.main().cloned().unwrap_or_default();
                if !main.error.is_empty() || st.status == ContainerStatus::Failed {
                    let message = if main.error.is_empty() {
                        st.detail.clone()
                    } else {
                        main.error.clone()
                    };
                    return Err(start_failed(message, main.exit_code.unwrap_or(125)));
                }
                if main.pid.is_some() || st.status.is_finished() {
                    return Ok(());
                }
                if held && st.connected {
                    // The process waits for its first attach: once every attach that came
                    // before this start listens to the new boot, let it go.
                    let listening = Instant::now() + ATTACH_GRACE;
                    while self.has_pending_attach(&rec.id) && Instant::now() < listening {
                        tokio::time::sleep(POLL).await;
                    }
                    if let Some(c) = self.server.container(&rec.id) {
                        let _ = c.send_control(Control::Release {
                            session: MAIN_SESSION,
                        });
                    }
                    held = false;
                }
            }
            if self.vms.pid(&rec.id).is_none() && self.backend_tracks_pids() {
                if !vm_gone {
                    // What the boot reported before its power-off may still be in the
                    // channel: look again once the server has read it to the end.
                    vm_gone = true;
                    let drained = Instant::now() + CHANNEL_DRAIN;
                    while self.state(&rec.id).connected && Instant::now() < drained {
                        tokio::time::sleep(POLL).await;
                    }
                    continue;
                }
                let st = self.state(&rec.id);
                if st.status.is_finished() && new_boot {
                    return Ok(());
                }
                return Err(EngineError::Internal(format!(
                    "the containerVM exited before its process started; its console: {}",
                    self.console_tail(&rec.id)
                )));
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Internal(format!(
                    "the containerVM did not start its process within {} s; its console: {}",
                    START_TIMEOUT.as_secs(),
                    self.console_tail(&rec.id)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn backend_tracks_pids(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.runs_processes())
    }

    /// The last lines the VM printed on its console, for error messages.
    pub(crate) fn console_tail(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.home().container(id).join("console.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            "(empty)".into()
        } else {
            tail
        }
    }

    pub(crate) fn image_disk(&self, rec: &Record) -> Result<std::path::PathBuf, EngineError> {
        if !rec.options.image_id.is_empty() {
            return self.image_disk_by_id(&rec.options.image_id);
        }
        // A container made from a path (`appliance run`): the disk cache keyed by the input.
        crate::backend::disk_cache::image_disk(self.home(), std::path::Path::new(&rec.image))
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// The built disk of an image in the image store.
    fn image_disk_by_id(&self, image_id: &str) -> Result<std::path::PathBuf, EngineError> {
        let image = self
            .images
            .resolve(image_id)
            .ok_or_else(|| EngineError::NoSuchImage(image_id.to_string()))?;
        Ok(self.images.disk(&image))
    }

    /// Sends `signal` to the main process. SIGKILL and the container's stop signal end it on
    /// purpose, as dockerd has it: its restart policy does not restart it (until it is started
    /// again); another signal (SIGUSR1, SIGHUP, ...) leaves the policy in force.
    pub async fn kill(&self, reference: &str, signal: i32) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let c = self.running_soon(&rec).await?;
        if signal == libc::SIGKILL || signal == rec.stop_signal() {
            self.vms.set_stopping(&rec.id);
        }
        c.send_control(Control::Signal {
            session: MAIN_SESSION,
            signal,
            group: false,
        })
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.emit("kill", &rec, &[("signal", signal.to_string())]);
        Ok(())
    }

    /// docker stop: the stop signal, SIGKILL after `timeout` (the container's own when `None`),
    /// the VM powered off if tether does not report the exit.
    pub async fn stop(&self, reference: &str, timeout: Option<u32>) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.op_lock(&rec.id);
        let _op = lock.lock().await;
        self.stop_locked(&rec, timeout).await
    }

    async fn stop_locked(&self, rec: &Record, timeout: Option<u32>) -> Result<(), EngineError> {
        if !self.is_running(&rec.id) {
            // The process has ended; its VM may still be powering off.
            self.stop_vm_after(rec, POWEROFF_GRACE).await;
            return Err(EngineError::NotModified(rec.id.clone(), "stopped"));
        }
        self.vms.set_stopping(&rec.id);
        let timeout = Duration::from_secs(u64::from(timeout.unwrap_or_else(|| rec.stop_timeout())));
        if let Ok(c) = self.running_soon(rec).await {
            let signal = rec.stop_signal();
            let _ = c.send_control(Control::Signal {
                session: MAIN_SESSION,
                signal,
                group: false,
            });
            self.emit("kill", rec, &[("signal", signal.to_string())]);
            if !self.main_ends_within(&rec.id, timeout).await {
                let _ = c.send_control(Control::Signal {
                    session: MAIN_SESSION,
                    signal: libc::SIGKILL,
                    group: false,
                });
                self.emit("kill", rec, &[("signal", libc::SIGKILL.to_string())]);
                if !self.main_ends_within(&rec.id, KILL_GRACE).await {
                    tracing::warn!(container = %rec.id, "tether did not report the exit after SIGKILL");
                    self.vms.kill(&rec.id);
                }
            }
        }
        self.stop_vm_after(rec, POWEROFF_GRACE).await;
        self.emit("stop", rec, &[]);
        Ok(())
    }

    async fn main_ends_within(&self, id: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_running(id) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// After the main process exited: the VM's grace to power itself off, then powered off.
    pub(super) async fn power_off_after_main_exit(&self, rec: &Record) {
        self.stop_vm_after(rec, POWEROFF_GRACE).await;
    }

    /// Waits up to `grace` for the VM's process to end on its own, then kills it; returns once
    /// the supervisor has handled its exit.
    pub(super) async fn stop_vm_after(&self, rec: &Record, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.vms.pid(&rec.id).is_some() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        if self.vms.kill(&rec.id) {
            let deadline = Instant::now() + KILL_GRACE;
            while self.vms.pid(&rec.id).is_some() && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        self.power_off_unwatched(rec, grace).await;
    }

    /// A VM that is no process here (vSphere): `grace` to power itself off (tether does at its
    /// end, after syncing its disks), then powered off through its backend.
    async fn power_off_unwatched(&self, rec: &Record, grace: Duration) {
        let Some(b) = self.backend.as_ref().filter(|b| !b.runs_processes()) else {
            return;
        };
        let dir = self.home().container(&rec.id);
        let deadline = Instant::now() + grace;
        loop {
            match b.vm_on(&dir) {
                Ok(false) => return,
                Ok(true) if Instant::now() < deadline => tokio::time::sleep(UNWATCHED_POLL).await,
                Ok(true) => break,
                Err(e) => {
                    tracing::warn!(container = %rec.id, "the VM's power state: {e}");
                    break;
                }
            }
        }
        if let Err(e) = b.power_off(&dir) {
            tracing::warn!(container = %rec.id, "powering the VM off: {e}");
        }
    }

    /// docker restart: stop (if running), then start.
    pub async fn restart(
        self: &Arc<Self>,
        reference: &str,
        timeout: Option<u32>,
    ) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.op_lock(&rec.id);
        let _op = lock.lock().await;
        match self.stop_locked(&rec, timeout).await {
            Ok(()) | Err(EngineError::NotModified(..)) => {}
            Err(e) => return Err(e),
        }
        self.start_locked(&rec).await?;
        self.emit("restart", &rec, &[]);
        Ok(())
    }

    /// docker rm: refuses a running container unless `force` (which kills it first); with
    /// `volumes` (`-v`), its anonymous volumes go too.
    pub async fn remove(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
    ) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let lock = self.op_lock(&rec.id);
        let _op = lock.lock().await;
        let running = self.is_running(&rec.id);
        if running && !force {
            return Err(EngineError::Conflict(format!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                rec.id
            )));
        }
        if !running {
            // Exited, its VM perhaps still powering off.
            self.stop_vm_after(&rec, POWEROFF_GRACE).await;
        } else {
            self.vms.kill(&rec.id);
            if let Ok(c) = self.running(&rec) {
                let _ = c.send_control(Control::Signal {
                    session: MAIN_SESSION,
                    signal: libc::SIGKILL,
                    group: false,
                });
            }
            let deadline = Instant::now() + KILL_GRACE;
            while self.vms.pid(&rec.id).is_some() && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
        }
        self.remove_now(&rec, volumes)
    }

    /// Deletes a stopped container's record, state, logs and disk (and, with `volumes`, its
    /// anonymous volumes).
    pub(crate) fn remove_now(&self, rec: &Record, volumes: bool) -> Result<(), EngineError> {
        // The VM goes first: a record without its VM is better than a VM nobody knows of.
        if let Some(b) = &self.backend {
            b.destroy(&self.home().container(&rec.id))
                .map_err(|e| EngineError::Internal(format!("removing the container's VM: {e}")))?;
        }
        self.unplug(rec);
        self.server.forget(&rec.id);
        records::remove(self.home(), &rec.id)?;
        if volumes {
            self.remove_anonymous_volumes(rec);
        }
        self.ops.lock().expect("ops lock").remove(&rec.id);
        self.emit("destroy", rec, &[]);
        Ok(())
    }

    /// docker rename.
    pub fn rename(&self, reference: &str, new_name: &str) -> Result<(), EngineError> {
        let rec = self.resolve(reference)?;
        let _names = self.names.lock().expect("names lock");
        let renamed = records::rename(self.home(), &rec.id, new_name)?;
        self.emit("rename", &renamed, &[("oldName", format!("/{}", rec.name))]);
        Ok(())
    }

    /// docker wait: the main process's exit code once `condition` holds.
    pub async fn wait(
        &self,
        reference: &str,
        condition: WaitCondition,
    ) -> Result<i32, EngineError> {
        let rec = self.resolve(reference)?;
        // Subscribed before looking, so an exit between the look and the wait is not missed.
        let (_, mut events) = self.events.replay_and_follow(i128::MAX);
        let st = self.state(&rec.id);
        let code_now = |st: &State| st.main().and_then(|m| m.exit_code).unwrap_or(0);
        let running = st.status == ContainerStatus::Running;
        match condition {
            WaitCondition::NotRunning if !running => return Ok(code_now(&st)),
            WaitCondition::Removed if !self.home().container(&rec.id).exists() => {
                return Ok(code_now(&st))
            }
            _ => {}
        }
        let mut code = code_now(&st);
        loop {
            match events.recv().await {
                Ok(e) if e.id == rec.id && e.action == "die" => {
                    code = e
                        .attributes
                        .get("exitCode")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(code);
                    if condition != WaitCondition::Removed {
                        return Ok(code);
                    }
                }
                Ok(e) if e.id == rec.id && e.action == "destroy" => return Ok(code),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let st = self.state(&rec.id);
                    if condition != WaitCondition::Removed && st.status.is_finished() {
                        return Ok(code_now(&st));
                    }
                }
                Err(_) => return Err(EngineError::Internal("the engine is shutting down".into())),
            }
        }
    }
}

/// The VM size when the container does not ask for one.
pub const DEFAULT_MEMORY_MB: u32 = 256;

/// A start failure in the words docker's CLI maps to its exit codes (127 "executable file not
/// found" / "no such file or directory", 126 "permission denied", else 125).
fn start_failed(message: String, exit_code: i32) -> EngineError {
    let message = if exit_code == 126 && !message.contains("permission denied") {
        format!(
            "{}: permission denied",
            message.replace("Permission denied", "permission denied")
        )
    } else {
        message
    };
    EngineError::StartFailed { message, exit_code }
}
