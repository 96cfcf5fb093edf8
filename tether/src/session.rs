//! Turning a session's spec (from the config, or an Exec over the channel) into a process:
//! environment defaults as docker sets them, user and group from the image, rlimits, docker's
//! default capability set minus the session's drops, and a pty or pipes for stdio.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::str::FromStr;

use guestinfo::contract::DEFAULT_PATH;
use guestinfo::contract::DOCKER_DEFAULT_CAPS;
use guestinfo::{Rlimit as RlimitSpec, SessionSpec};
use wire::ExecSpec;

use crate::spawn::{self, ChildStdio, Rlimit, SpawnError, SpawnRequest};
use crate::users;

/// What to run, whichever way it was asked for: the process as an exec describes it, and what
/// the container adds to it.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub name: String,
    pub process: ExecSpec,
    pub rlimits: Vec<RlimitSpec>,
    pub cap_drop: Vec<String>,
    pub hostname: String,
    /// Runs no program: the session holds until it gets a signal (the `hold` built-in).
    pub hold: bool,
}

impl Plan {
    /// A session from the container's config, with its initial terminal size (0: the default).
    pub fn from_spec(s: &SessionSpec, hostname: &str) -> Self {
        Self {
            name: s.id.clone(),
            process: ExecSpec {
                path: s.path.clone(),
                args: s.args.clone(),
                env: s.env.clone(),
                dir: s.dir.clone(),
                user: s.user.clone(),
                group: s.group.clone(),
                tty: s.tty,
                open_stdin: s.open_stdin,
                rows: s.rows,
                cols: s.cols,
            },
            rlimits: s.rlimits.clone(),
            cap_drop: s.cap_drop.clone(),
            hostname: hostname.to_string(),
            hold: s.is_hold(),
        }
    }

    /// An exec from the appliance: its own command, user and stdio; the rlimits, capability
    /// drops and hostname of `main`, as docker exec inherits them from the container.
    pub fn for_exec(name: String, process: ExecSpec, main: &Plan) -> Self {
        Self {
            name,
            process,
            rlimits: main.rlimits.clone(),
            cap_drop: main.cap_drop.clone(),
            hostname: main.hostname.clone(),
            hold: false,
        }
    }
}

/// The parent's ends of the child's stdio.
pub enum ParentStdio {
    Pty {
        master: OwnedFd,
    },
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
}

pub struct Started {
    pub pid: u32,
    pub stdio: ParentStdio,
}

fn setup_error(message: String) -> SpawnError {
    SpawnError {
        exit_code: 126,
        errno: 0,
        message,
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| setup_error(format!("{what} {s:?} contains a NUL byte")))
}

fn env_get<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
}

/// The environment the process gets: the session's, plus PATH, HOME, HOSTNAME and (with a tty)
/// TERM where the session does not set them, as docker does.
pub fn effective_env(plan: &Plan, home: &str) -> Vec<String> {
    let mut env = plan.process.env.clone();
    let mut add = |k: &str, v: &str| {
        if env_get(&env, k).is_none() {
            env.push(format!("{k}={v}"));
        }
    };
    add("PATH", DEFAULT_PATH);
    if !plan.hostname.is_empty() {
        add("HOSTNAME", &plan.hostname);
    }
    if plan.process.tty {
        add("TERM", "xterm");
    }
    add("HOME", home);
    env
}

fn rlimit_resource(name: &str) -> Option<i32> {
    Some(match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    } as i32)
}

fn parse_cap(name: &str) -> Result<caps::Capability, SpawnError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    caps::Capability::from_str(&full)
        .map_err(|_| setup_error(format!("unknown capability {name:?} in capdrop")))
}

/// Docker's default set, minus the session's drops (`ALL` drops every one): returns what to drop.
pub fn capabilities_to_drop(cap_drop: &[String]) -> Result<Vec<caps::Capability>, SpawnError> {
    let keep: Vec<caps::Capability> = if cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        let dropped = cap_drop
            .iter()
            .map(|c| parse_cap(c))
            .collect::<Result<Vec<_>, _>>()?;
        DOCKER_DEFAULT_CAPS
            .iter()
            .map(|c| parse_cap(c).expect("table holds valid names"))
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    let mut all: Vec<caps::Capability> = caps::all().into_iter().collect();
    all.sort_by_key(|c| c.index());
    Ok(all.into_iter().filter(|c| !keep.contains(c)).collect())
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| setup_error(format!("cannot create a pipe: {e}")))
}

fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let size = nix::pty::Winsize {
        ws_row: if rows == 0 { 24 } else { rows },
        ws_col: if cols == 0 { 80 } else { cols },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None)
        .map_err(|e| setup_error(format!("cannot allocate a pty: {e}")))?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| setup_error(format!("pty: {e}")))?;
    }
    Ok((pty.master, pty.slave))
}

/// Prepares and starts the session's process inside `root` (chrooted unless `root` is `/`).
pub fn start(plan: &Plan, root: &Path) -> Result<Started, SpawnError> {
    let process = &plan.process;
    let identity = users::resolve(root, &process.user, &process.group)
        .map_err(|e| setup_error(e.to_string()))?;
    let env = effective_env(plan, &identity.home);
    let search_path = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
    let candidates = spawn::candidates(&process.path, &search_path)
        .iter()
        .map(|c| cstring("program path", c))
        .collect::<Result<Vec<_>, _>>()?;
    let args = if process.args.is_empty() {
        vec![process.path.clone()]
    } else {
        process.args.clone()
    };
    let rlimits = plan
        .rlimits
        .iter()
        .map(|r| {
            let resource = rlimit_resource(&r.name)
                .ok_or_else(|| setup_error(format!("unknown rlimit {:?}", r.name)))?;
            Ok(Rlimit {
                resource,
                soft: r.soft.unwrap_or(libc::RLIM_INFINITY),
                hard: r.hard.unwrap_or(libc::RLIM_INFINITY),
            })
        })
        .collect::<Result<Vec<_>, SpawnError>>()?;
    let (child_stdio, parent) = if process.tty {
        let (master, tty) = open_pty(process.rows, process.cols)?;
        (ChildStdio::Pty { tty }, ParentStdio::Pty { master })
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        (
            ChildStdio::Pipes {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
            ParentStdio::Pipes {
                // Without open stdin the writer is dropped now: the process reads end of file.
                stdin: process.open_stdin.then_some(in_w),
                stdout: out_r,
                stderr: err_r,
            },
        )
    };
    let chroot = root != Path::new("/");
    let req = SpawnRequest {
        root: if chroot {
            Some(cstring("root", &root.to_string_lossy())?)
        } else {
            None
        },
        program: process.path.clone(),
        candidates,
        search_path,
        argv: args
            .iter()
            .map(|a| cstring("argument", a))
            .collect::<Result<_, _>>()?,
        env: env
            .iter()
            .map(|e| cstring("environment entry", e))
            .collect::<Result<_, _>>()?,
        dir: cstring(
            "working directory",
            if process.dir.is_empty() {
                "/"
            } else {
                &process.dir
            },
        )?,
        uid: identity.uid,
        gid: identity.gid,
        groups: identity.groups,
        rlimits,
        cap_drop: capabilities_to_drop(&plan.cap_drop)?,
        stdio: child_stdio,
    };
    let pid = spawn::spawn(&req)?;
    // `req` (holding the child's stdio ends) drops here, so EOF reaches us when the child exits.
    Ok(Started { pid, stdio: parent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults_do_not_override_the_session() {
        let plan = Plan {
            process: ExecSpec {
                env: vec!["PATH=/custom".into(), "A=b|c".into()],
                tty: true,
                ..Default::default()
            },
            hostname: "box".into(),
            ..Default::default()
        };
        let env = effective_env(&plan, "/home/u");
        assert_eq!(
            env,
            [
                "PATH=/custom",
                "A=b|c",
                "HOSTNAME=box",
                "TERM=xterm",
                "HOME=/home/u"
            ]
        );
    }

    #[test]
    fn an_exec_inherits_limits_caps_and_hostname_from_main() {
        let main = Plan::from_spec(
            &SessionSpec {
                id: "main".into(),
                path: "/bin/app".into(),
                tty: true,
                rlimits: vec![RlimitSpec {
                    name: "nofile".into(),
                    soft: Some(10),
                    hard: Some(20),
                }],
                cap_drop: vec!["NET_RAW".into()],
                ..Default::default()
            },
            "box",
        );
        assert_eq!(
            (main.name.as_str(), main.process.tty, main.hostname.as_str()),
            ("main", true, "box")
        );
        let exec = Plan::for_exec(
            "e1".into(),
            ExecSpec {
                path: "/bin/sh".into(),
                user: "nobody".into(),
                rows: 30,
                cols: 90,
                ..Default::default()
            },
            &main,
        );
        assert_eq!(
            (
                exec.name.as_str(),
                exec.process.path.as_str(),
                exec.process.user.as_str()
            ),
            ("e1", "/bin/sh", "nobody")
        );
        assert_eq!(
            (exec.process.tty, exec.process.rows, exec.process.cols),
            (false, 30, 90)
        );
        assert_eq!(exec.rlimits, main.rlimits);
        assert_eq!(exec.cap_drop, ["NET_RAW"]);
        assert_eq!(exec.hostname, "box");
    }

    #[test]
    fn capability_drops_follow_docker_defaults() {
        let drop = capabilities_to_drop(&[]).unwrap();
        assert!(drop.contains(&caps::Capability::CAP_SYS_ADMIN));
        assert!(drop.contains(&caps::Capability::CAP_SYS_PTRACE));
        assert!(!drop.contains(&caps::Capability::CAP_CHOWN));
        let drop = capabilities_to_drop(&["net_raw".into()]).unwrap();
        assert!(drop.contains(&caps::Capability::CAP_NET_RAW));
        assert_eq!(
            capabilities_to_drop(&["ALL".into()]).unwrap().len(),
            caps::all().len()
        );
        let err = capabilities_to_drop(&["CAP_BOGUS".into()]).unwrap_err();
        assert!(err.message.contains("CAP_BOGUS"));
    }
}
