//! What `appliance serve` does to its home before it listens: the directory made (or tightened
//! to) 0700, the process's umask set to 0077 so every file and socket it creates afterwards is
//! its user's alone, the exclusive lock that makes it the home's one server, and, once the lock
//! is held, the removal of what a dead server left: its sockets, its address files, and the
//! work directories of builds and removals it did not finish.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::path_io::{io_err, PathIoError};

use crate::home::Home;

/// Why the home could not be claimed.
#[derive(Debug, Error)]
pub enum ClaimError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{} is not a directory; set TETHER_HOME to a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "{home} is already served by another appliance server ({holder}, which holds {lock}); \
         stop that one first{stop}, or give this one its own TETHER_HOME",
        home = home.display(),
        lock = lock.display(),
        holder = match pid { Some(p) => format!("pid {p}"), None => "pid unknown".into() },
        stop = match pid { Some(p) => format!(" (`kill {p}`)"), None => String::new() },
    )]
    Held {
        home: PathBuf,
        lock: PathBuf,
        pid: Option<u32>,
    },
}

/// The home's server lock (`appliance.lock`, flock'd exclusively, the holder's pid inside),
/// held until dropped: for `appliance serve`, the life of the process. The descriptor is
/// close-on-exec, so VMs the server starts do not inherit it.
#[derive(Debug)]
pub struct HomeLock {
    _lock: Flock<File>,
}

/// Makes the home directory if needed (its parents with the caller's umask, the home itself
/// 0700) and takes group and other bits off an existing one. Then sets this process's umask
/// to 0077. Call before any thread starts: the umask is per process.
pub fn prepare_home(home: &Home) -> Result<(), ClaimError> {
    let root = home.root();
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("creating", root)(e).into()),
    }
    let meta = std::fs::metadata(root).map_err(io_err("reading", root))?;
    if !meta.is_dir() {
        return Err(ClaimError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("making owner-only (0700)", root))?;
        if mode & 0o077 != 0 {
            eprintln!(
                "appliance: {} was mode {mode:04o}; made it 0700 (it holds the containers' \
                 channel secrets)",
                root.display()
            );
        }
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    Ok(())
}

fn open_lock(home: &Home) -> Result<(PathBuf, File), ClaimError> {
    let path = home.root().join("appliance.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))?;
    Ok((path, file))
}

fn try_lock(home: &Home) -> Result<Flock<File>, ClaimError> {
    let (path, file) = open_lock(home)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Err(ClaimError::Held {
                home: home.root().to_path_buf(),
                lock: path,
                pid: text.trim().parse().ok(),
            })
        }
        Err((_, errno)) => Err(io_err("locking", &path)(errno.into()).into()),
    }
}

/// The pid written in the home's lock file: the server that holds it, if that process is
/// alive (the holder writes it only once it has the lock). Read without locking, so a server
/// starting meanwhile never finds the lock taken by the reader.
pub fn recorded_pid(home: &Home) -> Option<u32> {
    std::fs::read_to_string(home.root().join("appliance.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Fails with [`ClaimError::Held`] if a server holds the home, without taking the lock.
pub fn check_free(home: &Home) -> Result<(), ClaimError> {
    try_lock(home).map(drop)
}

/// Takes the home's lock for this process (or fails naming the holder), writes this process's
/// pid into it, then removes what a dead server left: with the lock held nothing else can be
/// using it.
pub fn claim(home: &Home) -> Result<HomeLock, ClaimError> {
    let mut lock = try_lock(home)?;
    let path = home.root().join("appliance.lock");
    lock.set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|()| writeln!(lock, "{}", std::process::id()))
        .map_err(io_err("writing", &path))?;
    remove_leftovers(home);
    Ok(HomeLock { _lock: lock })
}

/// The sockets and address files of a server that is gone, and every temporary directory
/// under `images/` (image loads, image disk builds, image removals: `*.work`) and
/// `containers/` (removals cut short: `.removing-*`). Only the server writes these, and the
/// caller holds its lock, so none of them is in use.
fn remove_leftovers(home: &Home) {
    for stale in [
        home.docker_socket(),
        home.channel_socket(),
        home.channel_tcp_file(),
        home.root().join("api.tcp"),
    ] {
        match std::fs::remove_file(&stale) {
            Ok(()) => tracing::debug!(path = %stale.display(), "removed a dead server's file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("appliance: cannot remove {}: {e}", stale.display()),
        }
    }
    let sweep = |dir: PathBuf, doomed: &dyn Fn(&str) -> bool| {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if doomed(&e.file_name().to_string_lossy()) {
                let path = e.path();
                let gone = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
                if let Err(e) = gone {
                    eprintln!("appliance: cannot remove {}: {e}", path.display());
                }
            }
        }
    };
    sweep(home.root().join("images"), &|n| n.ends_with(".work"));
    sweep(home.containers(), &|n| n.starts_with(".removing-"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("claim-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Home::at(dir)
    }

    #[test]
    fn a_second_claim_names_the_first_holder_and_a_released_lock_is_free_again() {
        let home = temp("twice");
        std::fs::create_dir_all(home.root()).unwrap();
        let first = claim(&home).unwrap();
        assert_eq!(recorded_pid(&home), Some(std::process::id()));
        // flock locks belong to the open file: a second open in the same process conflicts.
        let e = claim(&home).unwrap_err();
        assert!(
            matches!(e, ClaimError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{e}"
        );
        assert!(e
            .to_string()
            .contains(&format!("kill {}", std::process::id())));
        drop(first);
        check_free(&home).unwrap();
        claim(&home).unwrap();
        let _ = std::fs::remove_dir_all(home.root());
    }
}
