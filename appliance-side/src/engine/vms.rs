//! The VMs the engine launched: their processes, watched until they end. A VM whose process
//! ends while its main process was still running died (QEMU crashed or was killed): the
//! container becomes exited with docker's code for a killed process, and waiters are released.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

/// A VM process that ended, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    pub id: String,
    pub pid: u32,
    /// What ended it, in words (for State.Error): "exit status 1", "signal 9 (SIGKILL)".
    pub how: String,
}

#[derive(Debug, Clone, Copy)]
struct Vm {
    pid: u32,
    /// `docker stop`/`rm -f` asked for this end: no restart policy applies.
    stopping: bool,
}

#[derive(Default)]
pub struct Vms {
    running: Mutex<HashMap<String, Vm>>,
}

impl Vms {
    /// Watches `child` (the VM of container `id`) until it ends, then reports on `exits`.
    pub fn watch(
        &self,
        id: &str,
        mut child: std::process::Child,
        exits: mpsc::UnboundedSender<VmExit>,
    ) {
        let pid = child.id();
        self.running.lock().expect("vms lock").insert(
            id.to_string(),
            Vm {
                pid,
                stopping: false,
            },
        );
        let id = id.to_string();
        // A blocking wait reaps the child the moment it ends; one parked thread per VM.
        std::thread::spawn(move || {
            let how = match child.wait() {
                Ok(st) => describe(st),
                Err(e) => format!("lost track of the VM process: {e}"),
            };
            let _ = exits.send(VmExit { id, pid, how });
        });
    }

    /// Forgets the VM once its exit is handled; whether it was being stopped on purpose.
    pub fn finished(&self, id: &str, pid: u32) -> bool {
        let mut map = self.running.lock().expect("vms lock");
        match map.get(id) {
            Some(vm) if vm.pid == pid => map.remove(id).is_some_and(|vm| vm.stopping),
            _ => false,
        }
    }

    pub fn pid(&self, id: &str) -> Option<u32> {
        self.running
            .lock()
            .expect("vms lock")
            .get(id)
            .map(|vm| vm.pid)
    }

    /// Marks the VM as being stopped on purpose.
    pub fn set_stopping(&self, id: &str) {
        if let Some(vm) = self.running.lock().expect("vms lock").get_mut(id) {
            vm.stopping = true;
        }
    }

    /// Kills the VM's processes outright (tether did not answer, or `rm -f`): its whole
    /// process group, which the backend gave it, so a wrapper never leaves QEMU behind.
    pub fn kill(&self, id: &str) -> bool {
        let Some(pid) = self.pid(id) else {
            return false;
        };
        self.set_stopping(id);
        tracing::warn!(container = %id, pid, "killing the VM process");
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .is_ok()
    }
}

fn describe(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => match wire::message::signal_name(sig) {
            Some(name) => format!("signal {sig} ({name})"),
            None => format!("signal {sig}"),
        },
        _ => "ended".into(),
    }
}
