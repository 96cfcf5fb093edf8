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
    /// The docker CLI's configuration directory (`--config`), when not the user's own.
    pub docker_config: Option<PathBuf>,
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
            docker_config: None,
            tethers: Vec::new(),
        }
    }

    /// A home with a server started in it.
    pub fn started(tag: &str) -> Self {
        let d = Self::new(tag);
        d.serve_ok();
        d
    }

    /// The docker CLI gets a configuration directory of its own in the home (what
    /// `docker login` writes stays there).
    pub fn with_docker_config(mut self) -> Self {
        let dir = self.home.join("docker-config");
        std::fs::create_dir_all(&dir).unwrap();
        self.docker_config = Some(dir);
        self
    }

    /// `appliance serve --detach ARGS` in this home, not run yet.
    pub fn serve_command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance"));
        cmd.args(["serve", "--detach"])
            .args(args)
            .env("TETHER_HOME", &self.home);
        cmd
    }

    /// `appliance serve --detach ARGS`; it returns once the server is up, or has failed.
    pub fn serve<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.serve_command(args).output().unwrap()
    }

    /// `appliance serve --detach`, which must succeed.
    pub fn serve_ok(&self) {
        self.serve_ok_by(self.serve_command::<&str>(&[]));
    }

    /// Runs `serve` (a [`Detached::serve_command`]), which must succeed.
    pub fn serve_ok_by(&self, mut serve: Command) {
        succeeded(&serve.output().unwrap(), "serve --detach", "");
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
        if let Some(config) = &self.docker_config {
            cmd.arg("--config").arg(config);
        }
        cmd.arg("-H")
            .arg(format!(
                "unix://{}",
                self.home.join("docker.sock").display()
            ))
            .args(args);
        cmd
    }

    /// Runs docker, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let log = format!("server log:\n{}", self.log());
        succeeded(&self.docker(args), &format!("docker {args:?}"), &log)
    }

    /// Runs docker, which must fail with exit code 1; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        self.fails_stdin(args, None)
    }

    /// Runs docker with `stdin` written to it, which must fail with exit code 1; its stderr.
    pub fn fails_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.docker_stdin(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "docker {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stderr)
    }

    /// The detached server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("appliance.log")).unwrap_or_default()
    }

    /// `docker images EXTRA` as `id repo:tag` lines, sorted (the CLI prints an image's
    /// repositories in map order).
    pub fn images(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["images", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"];
        args.extend_from_slice(extra);
        let mut rows: Vec<String> = self.ok(&args).lines().map(String::from).collect();
        rows.sort();
        rows
    }

    /// `docker image inspect NAME`'s one object.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["image", "inspect", name])).unwrap();
        v[0].clone()
    }

    /// Creates a container and boots its tether (host mode) on the channel socket; its id.
    pub fn run(&mut self, create_args: &[&str]) -> String {
        let mut args = vec!["create"];
        args.extend_from_slice(create_args);
        let out = self.cli(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let id = text(&out.stdout).trim().to_string();
        self.attach_tether(&id);
        id
    }

    /// Boots a tether (host mode) for the existing container `id` on the channel socket.
    pub fn attach_tether(&mut self, id: &str) {
        let child = Command::new(super::tether_bin())
            .arg("--config")
            .arg(self.home.join("containers").join(id).join("config.vmx"))
            .arg("--channel")
            .arg(self.home.join("channel.sock"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.tethers.push(child);
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

pub use appliance::testing::process::{succeeded, text};
