//! The VMs the engine launched: their processes, watched until they end. A VM whose process
//! ends while its main process was still running died (QEMU crashed or was killed): the
//! container becomes exited with docker's code for a killed process, and waiters are released.

use std::collections::{HashMap, HashSet};
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
    /// Containers whose VM is no process here (vSphere) that `docker stop` is ending: their
    /// main's exit is no reason for the restart policy.
    stopping_unwatched: Mutex<HashSet<String>>,
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
        self.track(id, pid);
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

    /// Watches a VM this process did not start (it was running before an appliance restart):
    /// its pid is polled, and checked against the start time recorded at launch, so a reused
    /// pid is never taken for the VM.
    pub fn adopt(&self, id: &str, pid: u32, start_time: u64, exits: mpsc::UnboundedSender<VmExit>) {
        self.track(id, pid);
        let id = id.to_string();
        tokio::spawn(async move {
            while process_start_time(pid) == Some(start_time) {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            let how = "ended (re-adopted after an appliance restart: its exit status is unknown)";
            let _ = exits.send(VmExit {
                id,
                pid,
                how: how.into(),
            });
        });
    }

    fn track(&self, id: &str, pid: u32) {
        let vm = Vm {
            pid,
            stopping: false,
        };
        self.running
            .lock()
            .expect("vms lock")
            .insert(id.to_string(), vm);
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
        match self.running.lock().expect("vms lock").get_mut(id) {
            Some(vm) => vm.stopping = true,
            None => {
                self.stopping_unwatched
                    .lock()
                    .expect("vms lock")
                    .insert(id.to_string());
            }
        }
    }

    /// Whether the container, whose VM is no process here, was being stopped on purpose; the
    /// mark is used up.
    pub fn take_stopping_unwatched(&self, id: &str) -> bool {
        self.stopping_unwatched.lock().expect("vms lock").remove(id)
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

/// What the engine records of a VM it launched (`containers/<id>/vm.json`), to know it again
/// after a restart: the pid, and the process's start time, which a reused pid does not share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmRecord {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
}

pub const VM_RECORD: &str = "vm.json";

/// When the process started, in clock ticks after boot; `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_stable_and_absent_for_no_process() {
        let me = std::process::id();
        let t = process_start_time(me).expect("this process has a start time");
        assert_eq!(process_start_time(me), Some(t));
        assert_eq!(process_start_time(u32::MAX - 1), None);
    }
}
