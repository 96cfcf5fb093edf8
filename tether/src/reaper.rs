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
            Ok(WaitStatus::Exited(pid, code)) => {
                let _ = ctx.events.send(Event::ChildExited {
                    pid: pid.as_raw() as u32,
                    exit_code: code,
                    signal: None,
                });
            }
            Ok(WaitStatus::Signaled(pid, sig, _core)) => {
                let _ = ctx.events.send(Event::ChildExited {
                    pid: pid.as_raw() as u32,
                    exit_code: 128 + sig as i32,
                    signal: Some(sig as i32),
                });
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue, // stopped or continued: not an exit
        }
    }
}
