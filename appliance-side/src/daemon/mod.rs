//! `appliance serve`: wires the session server, the engine and the docker API together and runs
//! them until SIGTERM or ctrl-c, in the foreground or detached into the background. The home
//! is claimed first (`claim`): one server per home, owner-only files and sockets.

mod backend;
mod claim;

pub use backend::{BackendChoice, VsphereArgs};

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::time::Duration;

use crate::api::tls::{TcpApi, TcpApiFlags};
use crate::api::{serve_api, Api};
use crate::engine::Engine;
use crate::home::Home;
use crate::logging::{self, LogFormat};
use crate::server::vspc::Vspc;
use crate::server::Server;

/// Where `serve` writes the vSPC's bound address (`--vspc`), as `channel.tcp` holds the
/// channel port's.
pub const VSPC_FILE: &str = "vspc.tcp";

/// What `appliance serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Return once a background server answers, leaving it running.
    pub detach: bool,
    /// The channel port (vSphere network serial, QEMU `-serial tcp:`).
    pub tcp: String,
    /// `--vspc`: the serial port concentrator's address, for vSphere's network serial ports.
    pub vspc: Option<String>,
    /// `--backend` and its flags.
    pub backend: BackendChoice,
    /// `--log-level`: a level or a RUST_LOG-style filter; `None` uses RUST_LOG, else info.
    pub log_level: Option<String>,
    pub log_format: LogFormat,
    /// `--api-tcp` and its TLS files: the docker API on TCP too (mutual TLS unless insecure).
    pub api_tcp: TcpApiFlags,
    /// `--unresponsive-after`: no channel for this long makes a running container unhealthy.
    pub unresponsive_after: std::time::Duration,
    /// `--insecure-registry`, `--registry-ca`, `--registry-timeout`: how `docker pull` reaches
    /// registries.
    pub registry: crate::registry::RegistryConfig,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            detach: false,
            tcp: "127.0.0.1:0".into(),
            vspc: None,
            backend: BackendChoice::Qemu,
            log_level: None,
            log_format: LogFormat::Text,
            api_tcp: TcpApiFlags::default(),
            unresponsive_after: crate::engine::health::DEFAULT_UNRESPONSIVE_AFTER,
            registry: crate::registry::RegistryConfig::default(),
        }
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("appliance: {msg}");
    ExitCode::from(125)
}

/// Runs the server (or starts it in the background with `detach`).
pub fn serve(home: &Home, opts: &ServeOptions) -> ExitCode {
    // The TCP flags and TLS files are checked first: before anything is made, listens or detaches.
    let tcp_api = match TcpApi::prepare(&opts.api_tcp) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if let Err(e) = logging::filter(opts.log_level.as_deref()) {
        return fail(e);
    }
    // Before any thread: the umask it sets is the process's.
    if let Err(e) = claim::prepare_home(home) {
        return fail(e);
    }
    if opts.detach {
        // Refused here, before anything of the running server's is touched; the child
        // takes the lock itself.
        if let Err(e) = claim::check_free(home) {
            return fail(e);
        }
        return detach_server(home, opts);
    }
    // Held until the process ends. Stale sockets are removed only once it is held.
    let _lock = match claim::claim(home) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Err(e) = std::fs::create_dir_all(home.containers()) {
        return fail(format!(
            "cannot create {}: {e}",
            home.containers().display()
        ));
    }
    if let Err(e) = logging::init(opts.log_level.as_deref(), opts.log_format) {
        return fail(e);
    }
    let tcp = opts.tcp.clone();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let server = Server::new(home.clone());
        let vspc_file = home.root().join(VSPC_FILE);
        let _ = std::fs::remove_file(&vspc_file);
        let vspc = match &opts.vspc {
            Some(at) => match Vspc::listen(&server, at).await {
                Ok((_, local)) => {
                    let _ = std::fs::write(&vspc_file, format!("{local}\n"));
                    Some(local)
                }
                Err(e) => return fail(format!("vSPC port {at}: {e}")),
            },
            None => None,
        };
        let backend = match opts.backend.build(home, vspc).await {
            Ok(b) => b,
            Err(e) => return fail(e),
        };
        let engine = Engine::with_backend(server.clone(), Some(backend));
        engine.set_unresponsive_after(opts.unresponsive_after);
        if let Err(e) = engine.sweep_images() {
            tracing::warn!("collecting unused image layers: {e}");
        }
        engine.registries.configure(opts.registry.clone());
        let api = Api::with_engine(engine.clone());
        // Owner-only from the bind on (the umask), 0600 exactly before the API answers.
        let channel = home.channel_socket();
        if let Err(e) = server.listen_unix(&channel).await.and_then(|()| {
            std::fs::set_permissions(&channel, std::fs::Permissions::from_mode(0o600))
        }) {
            return fail(format!("channel socket {}: {e}", channel.display()));
        }
        let addr = match server.listen_tcp(&tcp).await {
            Ok(a) => a,
            Err(e) => return fail(format!("channel port {tcp}: {e}")),
        };
        let _ = std::fs::write(home.channel_tcp_file(), format!("{addr}\n"));
        // Bound and written before docker.sock answers, which is what --detach waits for.
        let api_tcp_file = home.root().join("api.tcp");
        let _ = std::fs::remove_file(&api_tcp_file);
        let api_tcp = match tcp_api {
            Some(t) => match t.bind().await {
                Ok(l) => Some(l),
                Err(e) => return fail(e),
            },
            None => None,
        };
        let api_tcp_banner = api_tcp.map(|l| {
            let local = l.local_addr();
            let _ = std::fs::write(&api_tcp_file, format!("{local}\n"));
            let banner = match l.is_tls() {
                true => {
                    format!("  docker API (tls):  tcp://{local} (client certificates required)")
                }
                false => format!("  docker API (tcp):  tcp://{local} (no TLS: loopback only)"),
            };
            l.spawn(api.clone());
            banner
        });
        if let Err(e) = serve_api(api, &home.docker_socket()).await {
            return fail(format!(
                "API socket {}: {e}",
                home.docker_socket().display()
            ));
        }
        println!("appliance: serving");
        println!(
            "  docker API:        unix://{}",
            home.docker_socket().display()
        );
        if let Some(banner) = api_tcp_banner {
            println!("{banner}");
        }
        println!("  channels (unix):   {}", home.channel_socket().display());
        println!("  channels (tcp):    {addr}");
        if let Some(v) = vspc {
            println!("  vSPC (telnet):     {v}");
        }
        println!("  data:              {}", home.root().display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        engine.shutdown_networks();
        ExitCode::SUCCESS
    })
}

/// Starts the server in the background, waits until its API answers, writes the pid file.
fn detach_server(home: &Home, opts: &ServeOptions) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let log = home.root().join("appliance.log");
    let out = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open {}: {e}", log.display())),
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    // The child removes a dead server's sockets once it holds the lock; nothing is removed
    // here, where a racing server could own them.
    let child = std::process::Command::new(exe)
        .args([
            "serve",
            "--tcp",
            &opts.tcp,
            "--log-format",
            opts.log_format.as_str(),
            "--unresponsive-after",
            &opts.unresponsive_after.as_secs().to_string(),
        ])
        .args(
            opts.log_level
                .iter()
                .flat_map(|l| ["--log-level", l.as_str()]),
        )
        .args(opts.vspc.iter().flat_map(|v| ["--vspc", v.as_str()]))
        .args(opts.backend.serve_args())
        .args(opts.api_tcp.serve_args())
        .args(opts.registry.serve_args())
        .env("TETHER_HOME", home.root())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the server: {e}")),
    };
    for _ in 0..200 {
        // Ready when the API answers and the lock is the child's (not a racing server's):
        // the child writes its pid there once it holds it, and it is still running.
        if claim::recorded_pid(home) == Some(child.id())
            && std::os::unix::net::UnixStream::connect(home.docker_socket()).is_ok()
        {
            let _ = std::fs::write(home.pid_file(), format!("{}\n", child.id()));
            println!("{}", child.id());
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return fail(format!("the server exited ({st}); see {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    fail(format!(
        "the server did not become ready in 10 s; see {}",
        log.display()
    ))
}
