//! Reaps every child: sessions' processes and orphans reparented to us (PID 1, or a subreaper in
//! host mode). Exit status: the code, or 128 + the signal that killed the process.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use crate::state::{Ctx, Event};

/// Registers for SIGCHLD now (before any child exists) and reaps in a task from then on.
pub fn install(ctx: Ctx) -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::task::spawn_local(async move {
        loop {
            reap_all(&ctx);
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}

fn reap_all(ctx: &Ctx) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some(ev) = exit_event(status) {
                    let _ = ctx.events.send(ev);
                }
            }
        }
    }
}

/// The exit a wait status reports, if it is one (a stop or continue is not): the code, or
/// 128 + the signal that killed the process, as a shell reports it.
fn exit_event(status: WaitStatus) -> Option<Event> {
    let (pid, exit_code, signal) = match status {
        WaitStatus::Exited(pid, code) => (pid, code, None),
        WaitStatus::Signaled(pid, sig, _core) => (pid, 128 + sig as i32, Some(sig as i32)),
        _ => return None,
    };
    Some(Event::ChildExited {
        pid: pid.as_raw() as u32,
        exit_code,
        signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    fn exit(status: WaitStatus) -> Option<(u32, i32, Option<i32>)> {
        match exit_event(status)? {
            Event::ChildExited {
                pid,
                exit_code,
                signal,
            } => Some((pid, exit_code, signal)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_exit_is_its_code_or_128_plus_the_signal() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit(WaitStatus::Exited(pid, 0)), Some((42, 0, None)));
        assert_eq!(exit(WaitStatus::Exited(pid, 3)), Some((42, 3, None)));
        assert_eq!(
            exit(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some((42, 137, Some(9)))
        );
        assert_eq!(
            exit(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            Some((42, 143, Some(15)))
        );
        assert_eq!(exit(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
        assert_eq!(exit(WaitStatus::Continued(pid)), None);
    }
}
