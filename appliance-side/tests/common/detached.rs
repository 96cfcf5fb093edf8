//! `appliance serve --detach` in a temporary TETHER_HOME, driven through the appliance's CLI and
//! the stock docker CLI, with real host-mode tether processes as its containers.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A TETHER_HOME for a detached server. On drop, also when the test fails: kills the tethers it
/// booted, stops the server (by its pid file) and removes the home.
pub struct Detached {
    pub home: PathBuf,
    tethers: Vec<Child>,
}

impl Detached {
    /// An empty home; no server yet.
    pub fn new(tag: &str) -> Self {
        let home = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        Self {
            home,
            tethers: Vec::new(),
        }
    }

    /// A home with a server started in it.
    pub fn started(tag: &str) -> Self {
        let d = Self::new(tag);
        d.serve_ok();
        d
    }

    /// `appliance serve --detach ARGS`; it returns once the server is up, or has failed.
    pub fn serve<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_appliance"))
            .args(["serve", "--detach"])
            .args(args)
            .env("TETHER_HOME", &self.home)
            .output()
            .unwrap()
    }

    /// `appliance serve --detach`, which must succeed.
    pub fn serve_ok(&self) {
        let out = self.serve::<&str>(&[]);
        assert!(
            out.status.success(),
            "serve --detach: {}",
            text(&out.stderr)
        );
        assert!(self.home.join("appliance.pid").exists());
    }

    /// `appliance ARGS` with `stdin` written to it (or /dev/null).
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance"));
        cmd.args(args).env("TETHER_HOME", &self.home);
        output_with_stdin(cmd, stdin)
    }

    /// The stock docker CLI on this home's docker.sock, `stdin` written to it (or /dev/null).
    pub fn docker_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        output_with_stdin(self.docker_command(args), stdin)
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_stdin(args, None)
    }

    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!(
                "unix://{}",
                self.home.join("docker.sock").display()
            ))
            .args(args);
        cmd
    }

    /// Creates a container and boots its tether (host mode) on the channel socket; its id.
    pub fn run(&mut self, create_args: &[&str]) -> String {
        let mut args = vec!["create"];
        args.extend_from_slice(create_args);
        let out = self.cli(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id = text(&out.stdout).trim().to_string();
        let child = Command::new(super::tether_bin())
            .arg("--config")
            .arg(self.home.join("containers").join(&id).join("config.vmx"))
            .arg("--channel")
            .arg(self.home.join("channel.sock"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.tethers.push(child);
        id
    }

    /// Polls `docker inspect` until the container's status is `want`.
    pub fn wait_state(&self, name: &str, want: &str) {
        for _ in 0..200 {
            let out = self.docker(&["inspect", "-f", "{{.State.Status}}", name]);
            if text(&out.stdout).trim() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never reached state {want}");
    }

    /// Stops the server by its pid file and waits until the process is gone.
    pub fn stop(&self) {
        if let Some(pid) = self.kill_server() {
            panic!("the server (pid {pid}) did not stop");
        }
    }

    /// Signals the server named by the pid file; the pid if it is still there after 10 s.
    fn kill_server(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.home.join("appliance.pid")).ok()?;
        let pid = pid.trim().to_string();
        let _ = Command::new("kill").arg(&pid).status();
        for _ in 0..200 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie its new parent has not reaped yet.
            if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(pid)
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        for t in &mut self.tethers {
            let _ = t.kill();
            let _ = t.wait();
        }
        self.kill_server();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// Runs `cmd` with `stdin` written to it (or /dev/null) and collects its output.
pub fn output_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command is installed");
    if let Some(data) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
