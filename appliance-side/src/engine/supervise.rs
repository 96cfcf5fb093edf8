//! The engine's own loop: what happens after a container's main process ends or its VM's
//! process goes away. Docker's `die` event, `--rm`, restart policies, and a VM that died under a
//! running container (QEMU killed or crashed) becoming exited instead of `Up` forever.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use guestinfo::contract::MAIN_SESSION;

use crate::engine::vms::{process_start_time, VmExit, VmRecord, VM_RECORD};
use crate::engine::Engine;
use crate::server::Lifecycle;
use crate::store::state::{ContainerStatus, State};

/// docker's code for a container whose process was killed without reporting an exit (SIGKILL).
pub const KILLED_EXIT_CODE: i32 = 137;

pub(super) fn spawn(engine: &Arc<Engine>, mut vm_exits: mpsc::UnboundedReceiver<VmExit>) {
    let mut news = engine.server.lifecycle();
    if engine.backend.is_some() {
        engine.adopt_vms();
        engine.restore_networks();
        let e = engine.clone();
        tokio::spawn(async move { e.republish().await });
    }
    let weak: Weak<Engine> = Arc::downgrade(engine);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                n = news.recv() => match n {
                    Ok(Lifecycle::MainExited { id, exit_code }) => {
                        let Some(engine) = weak.upgrade() else { return };
                        engine.on_main_exit(&id, exit_code);
                        if !engine.backend.as_ref().is_some_and(|b| b.runs_processes()) {
                            // No VM process to watch end: the VM's end follows the main's.
                            let e = engine.clone();
                            tokio::spawn(async move { e.after_unwatched_exit(&id).await });
                        }
                    }
                    Ok(Lifecycle::Connected { id }) => {
                        let Some(engine) = weak.upgrade() else { return };
                        if let Ok(rec) = engine.resolve(&id) {
                            engine.refresh_networks_of(&rec);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("the engine missed {n} lifecycle notices");
                    }
                    Err(_) => return,
                },
                exit = vm_exits.recv() => {
                    let (Some(exit), Some(engine)) = (exit, weak.upgrade()) else { return };
                    engine.on_vm_exit(exit).await;
                }
            }
        }
    });
}

impl Engine {
    /// After an appliance restart: every VM still running from before is watched again; a
    /// container whose VM ended while the appliance was down becomes exited.
    fn adopt_vms(&self) {
        for rec in self.containers() {
            let dir = self.home().container(&rec.id);
            let vm: Option<VmRecord> = std::fs::read(dir.join(VM_RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let st = State::load(&dir);
            match vm {
                Some(vm) if process_start_time(vm.pid) == Some(vm.start_time) => {
                    tracing::info!(container = %rec.id, pid = vm.pid, "re-adopting a running VM");
                    self.vms
                        .adopt(&rec.id, vm.pid, vm.start_time, self.vm_exits.clone());
                }
                // Only a VM this engine launched (it has a vm.json) is known to be gone; one
                // started by other means (by hand, an older appliance) reconnects on its own.
                Some(_) if st.status == ContainerStatus::Running => {
                    let mut st = st;
                    let why = format!(
                        "the containerVM ended while the appliance was down; console: {}",
                        self.console_tail(&rec.id)
                    );
                    let main = st.sessions.entry(MAIN_SESSION).or_default();
                    main.running = false;
                    main.exit_code = Some(KILLED_EXIT_CODE);
                    main.error = why.clone();
                    st.status = ContainerStatus::Exited;
                    st.connected = false;
                    tracing::warn!(container = %rec.id, "{why}");
                    if let Err(e) = st.save(&dir) {
                        tracing::warn!(container = %rec.id, "cannot record its end: {e}");
                    }
                    self.emit("die", &rec, &[("exitCode", KILLED_EXIT_CODE.to_string())]);
                }
                _ => {}
            }
        }
    }

    fn on_main_exit(&self, id: &str, exit_code: i32) {
        if let Ok(rec) = self.resolve(id) {
            self.refresh_networks_of(&rec);
            self.emit("die", &rec, &[("exitCode", exit_code.to_string())]);
        }
    }

    /// After the main process of a container whose VM is no process here (vSphere) ended:
    /// the VM powers itself off (or is powered off after a grace), then `--rm` removes the
    /// container, or its restart policy starts it again (not after a `docker stop`), as a VM
    /// process's end does under QEMU.
    async fn after_unwatched_exit(self: &Arc<Self>, id: &str) {
        if self.backend.is_none() {
            return;
        }
        let lock = self.op_lock(id);
        let _op = lock.lock().await;
        // Under the lock: a stop, rm or start may have come first.
        let Ok(rec) = self.resolve(id) else {
            return;
        };
        if self.is_running(&rec.id) {
            return;
        }
        let on_purpose = self.vms.take_stopping_unwatched(&rec.id);
        self.power_off_after_main_exit(&rec).await;
        self.unplug(&rec);
        if rec.options.auto_remove {
            if let Err(e) = self.remove_now(&rec, true) {
                tracing::warn!(container = %rec.id, "--rm: {e}");
            }
            return;
        }
        if !on_purpose && !rec.options.restart_policy.is_empty() {
            let code = self
                .state(&rec.id)
                .main()
                .and_then(|m| m.exit_code)
                .unwrap_or(KILLED_EXIT_CODE);
            // Its own task: the restart takes this container's lock, held here.
            let engine = self.clone();
            tokio::spawn(async move { engine.restart_by_policy(&rec.id, code).await });
        }
    }

    /// `--rm` after the VM's end, under the container's lock: a start still waiting for this
    /// boot reads its outcome (the state this removes) first. In a task of its own, so the
    /// supervisor goes on noting other VMs' ends meanwhile.
    async fn auto_remove_after_vm_exit(self: &Arc<Self>, id: &str) {
        let lock = self.op_lock(id);
        let _op = lock.lock().await;
        let Ok(rec) = self.resolve(id) else {
            return;
        };
        // A newer boot (a start that came first under the lock) is not this exit's to remove.
        if self.vms.pid(&rec.id).is_some() || self.is_running(&rec.id) {
            return;
        }
        if let Err(e) = self.remove_now(&rec, true) {
            tracing::warn!(container = %rec.id, "--rm: {e}");
        }
    }

    async fn on_vm_exit(self: &Arc<Self>, exit: VmExit) {
        let on_purpose = self.vms.finished(&exit.id, exit.pid);
        tracing::info!(container = %exit.id, pid = exit.pid, how = %exit.how, "VM process ended");
        // The VM went away under running sessions: nobody will report their exits. Ended here
        // for every VM, also a hold VM (a layer being applied, a copy), which is no container
        // `resolve` knows, so that whoever waits on its sessions is released.
        let why = format!(
            "the containerVM ended without its process exiting ({}); console: {}",
            exit.how,
            self.console_tail(&exit.id)
        );
        let died = match self.server.container(&exit.id) {
            Some(c) => c.mark_vm_gone(KILLED_EXIT_CODE, &why).unwrap_or(false),
            None => false,
        };
        let Ok(rec) = self.resolve(&exit.id) else {
            return;
        };
        self.unplug(&rec);
        if died {
            tracing::warn!(container = %rec.id, "{why}");
            self.emit("die", &rec, &[("exitCode", KILLED_EXIT_CODE.to_string())]);
        }
        let code = self
            .state(&rec.id)
            .main()
            .and_then(|m| m.exit_code)
            .unwrap_or(KILLED_EXIT_CODE);
        if rec.options.auto_remove {
            let engine = self.clone();
            tokio::spawn(async move { engine.auto_remove_after_vm_exit(&rec.id).await });
            return;
        }
        if !on_purpose && !rec.options.restart_policy.is_empty() {
            let engine = self.clone();
            tokio::spawn(async move { engine.restart_by_policy(&rec.id, code).await });
        }
    }
}

/// Whether docker's restart policy restarts a container that exited with `code` on its own,
/// after `restarts` restarts by the policy; on-failure's `max_retries` 0 is unlimited.
pub(super) fn restart_wanted(policy: &str, max_retries: u32, restarts: u32, code: i32) -> bool {
    match policy {
        "always" | "unless-stopped" => true,
        "on-failure" => code != 0 && (max_retries == 0 || restarts < max_retries),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_as_docker() {
        assert!(restart_wanted("always", 0, 7, 0));
        assert!(restart_wanted("unless-stopped", 0, 7, 3));
        assert!(restart_wanted("on-failure", 0, 7, 1), "0 retries: no limit");
        assert!(!restart_wanted("on-failure", 0, 0, 0));
        assert!(restart_wanted("on-failure", 2, 1, 1));
        assert!(
            !restart_wanted("on-failure", 2, 2, 1),
            "MaximumRetryCount reached"
        );
        assert!(!restart_wanted("no", 0, 0, 1));
        assert!(!restart_wanted("", 0, 0, 1));
    }
}
