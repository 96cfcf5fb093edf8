//! The command line's grammar (clap): docker's flag conventions. Value flags repeat (`-e A=1 -e
//! B=2` keeps both, in order), short flags bundle (`-it`, `-dit`), and everything from a verb's
//! command on is that command's own argv, flags included (`exec C ls -la` passes `-la` to `ls`);
//! a `--` before the command is optional. Unknown flags are errors that name the flag. Every verb
//! has `--help`.
//!
//! Only parsing lives here; the verbs are in the modules named after them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::records::{ContainerOptions, NewContainer};

/// The PATH an `appliance run` container gets unless `-e PATH=...` gives one (docker's default).
pub use guestinfo::contract::DEFAULT_PATH;

/// docker's detach keys, `attach`'s default.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// `appliance`: the tether session server and a docker-like command line for it.
#[derive(Debug, Parser)]
#[command(
    name = "appliance",
    version,
    about = "The tether session server, and docker's everyday verbs against it",
    long_about = "The tether session server, and docker's everyday verbs against it.\n\n\
        Everything lives under $TETHER_HOME (default ~/.local/share/tether); the verbs talk to \
        the server's docker Engine API at $TETHER_HOME/docker.sock.",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The server's log level (used by `serve`)
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// The server's log format (used by `serve`)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`: how the server writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people
    Text,
    /// One JSON object per line
    Json,
}

// Parsed once per process: the size of `serve`'s flags costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the session server (in the foreground unless --detach)
    Serve(ServeArgs),
    /// Make a container record; prints its id (and, on stderr, the config for tether)
    Create(CreateArgs),
    /// List containers
    Ps(PsArgs),
    /// Show a container's inspect document
    Inspect(ContainerArg),
    /// Print a container's logs
    Logs(LogsArgs),
    /// Send a signal to a container's main process
    Kill(KillArgs),
    /// Wait for a container to exit; prints its exit code
    Wait(ContainerArg),
    /// Attach to a container's main process, or back to a running exec (--exec)
    Attach(AttachArgs),
    /// Run a command in a running container
    Exec(ExecArgs),
    /// Build an image disk, create a container and boot it as a VM (QEMU); attach unless -d
    Run(RunCmd),
    /// Images of the image store, for vSphere
    #[command(subcommand)]
    Image(ImageCmd),
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Write an image's disk as a streamOptimized VMDK (what a vSphere datastore takes by OVF or
    /// NFC upload) into DIR; prints the file written
    ExportVmdk(ExportVmdkArgs),
}

#[derive(Debug, Args)]
pub struct ExportVmdkArgs {
    /// Image name or id
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The directory to write `<short id>.vmdk` into (created if missing)
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Start the server in the background and return once it answers; prints its pid
    #[arg(short, long)]
    pub detach: bool,
    /// The channel port for containerVMs that reach the server over TCP [default: 127.0.0.1:0]
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Also run the virtual serial port concentrator (vSPC) here: where vSphere's network
    /// serial ports connect (telnet with VMware's extension; vMotion-aware). VIC used port 2377
    #[arg(long, value_name = "ADDR")]
    pub vspc: Option<String>,
    /// Where containerVMs run: `qemu` on this host, or `vsphere` (needs --vsphere-url,
    /// --datastore, --folder, --pool and --vspc)
    #[arg(long, value_name = "BACKEND", default_value = "qemu")]
    pub backend: String,
    /// The vSphere SDK endpoint, `https://vcenter/sdk`
    #[arg(long, value_name = "URL")]
    pub vsphere_url: Option<String>,
    /// The vSphere user (the password comes from $TETHER_VSPHERE_PASSWORD)
    #[arg(long, value_name = "USER")]
    pub vsphere_user: Option<String>,
    /// The datastore for the VMs' files, the bootstrap ISO and the image disks
    #[arg(long, value_name = "NAME")]
    pub datastore: Option<String>,
    /// The VM folder's inventory path (`/DC0/vm`)
    #[arg(long, value_name = "PATH")]
    pub folder: Option<String>,
    /// The resource pool's inventory path (`/DC0/host/Cluster/Resources`)
    #[arg(long, value_name = "PATH")]
    pub pool: Option<String>,
    /// A port group for the containerVMs' NICs (repeatable) [default: VM Network]
    #[arg(long, value_name = "NAME")]
    pub vsphere_network: Vec<String>,
    /// A CA certificate file (PEM) to trust for the vCenter's TLS, besides the system's roots
    #[arg(long, value_name = "FILE")]
    pub vsphere_ca: Option<PathBuf>,
    /// How ESXi hosts reach the vSPC [default: telnet://<the --vspc address>]
    #[arg(long, value_name = "URI")]
    pub vspc_uri: Option<String>,
    /// Also serve the docker API on TCP (docker's 2376), with mutual TLS: needs --tls-cert,
    /// --tls-key and --tls-ca, and clients need a certificate signed by that CA
    #[arg(long, value_name = "ADDR")]
    pub api_tcp: Option<String>,
    /// The server's certificate chain (PEM), for --api-tcp
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM), for --api-tcp; must not be readable by group or others
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that --api-tcp clients' certificates must be signed by
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve --api-tcp without TLS, on a loopback address only: anyone who can connect is root
    #[arg(long)]
    pub api_insecure_tcp: bool,
    /// Report a running container unhealthy (inspect, ps) once its tether has had no channel
    /// for this many seconds [default: 30]
    #[arg(long, value_name = "SECS")]
    pub unresponsive_after: Option<u64>,
    /// A registry that may be plain HTTP (besides 127.0.0.0/8 and ::1, which always may)
    /// (repeatable)
    #[arg(long, value_name = "HOST:PORT")]
    pub insecure_registry: Vec<String>,
    /// A CA certificate file (PEM) to trust for registries, besides the system's and
    /// /etc/docker/certs.d/HOST:PORT/*.crt (repeatable)
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Vec<PathBuf>,
    /// Seconds a registry may take to connect, answer, or send the next bytes of a blob
    /// [default: 30]
    #[arg(long, value_name = "SECS")]
    pub registry_timeout: Option<f64>,
}

/// The process flags `create`, `exec` and `run` share.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcessFlags {
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// Keep stdin open
    #[arg(short, long)]
    pub interactive: bool,
    /// Set an environment variable (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (name or uid[:gid]) to run as
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The container's name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Start the main process at the first attach, so none of its output is missed
    #[arg(short = 'a', long)]
    pub wait_for_attach: bool,
    #[command(flatten)]
    pub process: ProcessFlags,
    /// The command and its arguments: everything from here on is its own
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true)]
    pub command: Vec<String>,
}

impl CreateArgs {
    /// The record `appliance create` asks the store for.
    pub fn into_new_container(self) -> NewContainer {
        let p = self.process;
        NewContainer {
            name: self.name,
            args: self.command,
            env: p.env,
            dir: p.workdir.unwrap_or_default(),
            user: p.user.unwrap_or_default(),
            tty: p.tty,
            open_stdin: p.interactive,
            attach: self.wait_for_attach,
            image: String::new(),
            options: ContainerOptions {
                stdin_once: p.interactive,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running)
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ContainerArg {
    /// Container name or id
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output (across appliance restarts) until the container exits
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end ("all" for every line)
    #[arg(long, value_name = "N")]
    pub tail: Option<String>,
    /// Only logs since this time: Unix seconds or RFC 3339
    #[arg(long, value_name = "TIME", value_parser = unix_time)]
    pub since: Option<String>,
    /// Only logs before this time: Unix seconds or RFC 3339
    #[arg(long, value_name = "TIME", value_parser = unix_time)]
    pub until: Option<String>,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Container name or id
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send (name or number)
    #[arg(short, long, value_name = "SIGNAL", default_value = "KILL")]
    pub signal: String,
    /// Container name or id
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Do not attach stdin
    #[arg(long)]
    pub no_stdin: bool,
    /// The key sequence that detaches and leaves the container running
    #[arg(long, value_name = "KEYS", default_value = DEFAULT_DETACH_KEYS)]
    pub detach_keys: String,
    /// Re-attach to a running exec instead (after an appliance restart cut its client off)
    #[arg(long, value_name = "EXEC_ID", conflicts_with = "container")]
    pub exec: Option<String>,
    /// Container name or id
    #[arg(value_name = "CONTAINER", required_unless_present = "exec")]
    pub container: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Detached: start the command and return
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub process: ProcessFlags,
    /// Container name or id
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// The command and its arguments: everything from here on is its own
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// `--transport`: how the containerVM's channel reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Transport {
    /// A virtio-serial port on the channel's Unix socket
    #[default]
    Virtio,
    /// A second serial port (ttyS1) over the server's TCP channel port
    Serial,
}

#[derive(Debug, Args)]
#[command(
    after_help = "IMAGE is anything `bootstrap-iso disk` takes: a `docker save` tarball, an \
    OCI layout, a rootfs directory or tarball.\nThe server boots the VM with the kernel and \
    initramfs from $TETHER_KERNEL and $TETHER_INITRAMFS (as `appliance serve` sees them), else \
    ~/.cache/tether/boot/."
)]
pub struct RunCmd {
    /// Run in the background and print the container's id
    #[arg(short, long)]
    pub detach: bool,
    /// The container's name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub process: ProcessFlags,
    /// The VM's memory in MiB ("512" or "512m")
    #[arg(short, long, value_name = "MiB", default_value = "256", value_parser = mebibytes)]
    pub memory: u32,
    /// How the containerVM's channel reaches the server
    #[arg(long, value_enum, default_value_t = Transport::Virtio)]
    pub transport: Transport,
    /// The image: a `docker save` tarball, an OCI layout, a rootfs directory or tarball
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The command and its arguments: everything from here on is its own
    #[arg(value_name = "CMD", required = true, trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// What `appliance run` does, from its command line.
#[derive(Debug, Default)]
pub struct RunArgs {
    pub detach: bool,
    pub new: NewContainer,
    pub transport_serial: bool,
    pub image: PathBuf,
    pub memory_mb: u32,
}

impl From<RunCmd> for RunArgs {
    /// The container gets docker's PATH unless one is given, and, unless detached, its main
    /// process waits for the attach `run` makes, so none of its output is missed.
    fn from(c: RunCmd) -> Self {
        let p = c.process;
        let mut env = p.env;
        if env.iter().all(|e| !e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        RunArgs {
            detach: c.detach,
            new: NewContainer {
                name: c.name,
                args: c.command,
                env,
                dir: p.workdir.unwrap_or_default(),
                user: p.user.unwrap_or_default(),
                tty: p.tty,
                open_stdin: p.interactive,
                attach: !c.detach,
                image: c.image.display().to_string(),
                options: ContainerOptions {
                    stdin_once: p.interactive && !c.detach,
                    ..Default::default()
                },
            },
            transport_serial: c.transport == Transport::Serial,
            image: c.image,
            memory_mb: c.memory,
        }
    }
}

/// `-m`: MiB, with or without a trailing `m`.
fn mebibytes(v: &str) -> Result<u32, String> {
    v.trim_end_matches(['m', 'M'])
        .parse()
        .map_err(|_| format!("{v:?}: give MiB, e.g. 512m"))
}

/// docker accepts RFC 3339 or Unix seconds for --since/--until; the API wants Unix seconds.
pub fn unix_time(t: &str) -> Result<String, String> {
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Ok(t.to_string());
    }
    let parsed = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{t:?} is neither Unix seconds nor an RFC 3339 time"))?;
    let nanos = parsed.unix_timestamp_nanos();
    Ok(format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("appliance").chain(args.iter().copied()))
    }

    fn command(args: &[&str]) -> Command {
        parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn repeated_env_keeps_every_value_in_order() {
        let Command::Exec(e) =
            command(&["exec", "-e", "A=1", "-e", "B=2", "--env", "C=3", "c", "env"])
        else {
            panic!("not exec")
        };
        assert_eq!(e.process.env, ["A=1", "B=2", "C=3"]);
        assert_eq!(
            (e.container.as_str(), e.command),
            ("c", vec!["env".to_string()])
        );
    }

    #[test]
    fn the_command_keeps_its_own_flags() {
        let Command::Exec(e) = command(&["exec", "c", "ls", "-la", "--help", "--", "-x"]) else {
            panic!("not exec")
        };
        assert_eq!(e.command, ["ls", "-la", "--help", "--", "-x"]);
        let Command::Create(c) = command(&["create", "-t", "--", "sh", "-c", "echo -n x"]) else {
            panic!("not create")
        };
        assert!(c.process.tty);
        assert_eq!(c.command, ["sh", "-c", "echo -n x"]);
        let Command::Create(c) = command(&["create", "--", "-weird", "-t"]) else {
            panic!("not create")
        };
        assert!(!c.process.tty);
        assert_eq!(c.command, ["-weird", "-t"]);
    }

    #[test]
    fn short_flags_bundle() {
        let Command::Exec(e) = command(&["exec", "-dit", "c", "sh"]) else {
            panic!("not exec")
        };
        assert!(e.detach && e.process.interactive && e.process.tty);
        let Command::Create(c) = command(&["create", "-ita", "-eK=V", "sh"]) else {
            panic!("not create")
        };
        assert!(c.process.interactive && c.process.tty && c.wait_for_attach);
        assert_eq!(c.process.env, ["K=V"]);
    }

    #[test]
    fn unknown_flags_are_named() {
        for args in [
            &["exec", "--bogus", "c", "sh"][..],
            &["create", "--bogus", "sh"],
            &["ps", "--bogus"],
            &["serve", "--bogus"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
            assert!(e.to_string().contains("'--bogus'"), "{e}");
        }
    }

    #[test]
    fn create_makes_the_record_it_was_asked_for() {
        let Command::Create(c) = command(&[
            "create", "--name", "web", "-e", "A=1", "-e", "B=2", "-w", "/srv", "-u", "1000",
            "/bin/sh", "-c", "x",
        ]) else {
            panic!("not create")
        };
        let n = c.into_new_container();
        assert_eq!(n.name.as_deref(), Some("web"));
        assert_eq!(n.env, ["A=1", "B=2"]);
        assert_eq!((n.dir.as_str(), n.user.as_str()), ("/srv", "1000"));
        assert_eq!(n.args, ["/bin/sh", "-c", "x"]);
        assert!(!n.tty && !n.open_stdin && !n.attach);
    }

    #[test]
    fn attach_takes_a_container_or_an_exec() {
        let Command::Attach(a) = command(&["attach", "c"]) else {
            panic!("not attach")
        };
        assert_eq!((a.container.as_deref(), a.exec), (Some("c"), None));
        assert_eq!(a.detach_keys, DEFAULT_DETACH_KEYS);
        let Command::Attach(a) = command(&["attach", "--exec", "e1", "--no-stdin"]) else {
            panic!("not attach")
        };
        assert_eq!(
            (a.container, a.exec.as_deref(), a.no_stdin),
            (None, Some("e1"), true)
        );
        assert!(parse(&["attach"]).is_err());
        assert!(parse(&["attach", "--exec", "e1", "c"]).is_err());
    }

    #[test]
    fn log_options_are_global() {
        let cli = parse(&[
            "serve",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "-d",
        ])
        .unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = parse(&["--log-format=json", "serve"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(parse(&["serve"]).unwrap().log_format, LogFormat::Text);
        assert!(parse(&["serve", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn logs_times_become_unix_seconds() {
        let Command::Logs(l) = command(&[
            "logs",
            "-ft",
            "--tail",
            "2",
            "--since",
            "2026-01-01T00:00:00.5Z",
            "--until",
            "17",
            "c",
        ]) else {
            panic!("not logs")
        };
        assert!(l.follow && l.timestamps);
        assert_eq!(l.tail.as_deref(), Some("2"));
        assert_eq!(l.since.as_deref(), Some("1767225600.500000000"));
        assert_eq!(l.until.as_deref(), Some("17"));
        assert!(parse(&["logs", "--since", "yesterday", "c"]).is_err());
    }

    #[test]
    fn run_defaults_path_and_waits_for_its_attach() {
        let Command::Run(r) = command(&["run", "-e", "A=1", "-e", "B=2", "img.tar", "--", "env"])
        else {
            panic!("not run")
        };
        let r = RunArgs::from(r);
        assert_eq!(r.new.env, ["A=1", "B=2", &format!("PATH={DEFAULT_PATH}")]);
        assert!(!r.detach && r.new.attach);
        assert_eq!((r.memory_mb, r.transport_serial), (256, false));
        assert_eq!(r.new.image, "img.tar");
        assert_eq!(r.new.args, ["env"]);

        let Command::Run(r) = command(&[
            "run",
            "-dit",
            "-e",
            "PATH=/bin",
            "-m",
            "512m",
            "--transport",
            "serial",
            "--name",
            "n",
            "rootfs",
            "sh",
            "-c",
            "x",
        ]) else {
            panic!("not run")
        };
        let r = RunArgs::from(r);
        assert_eq!(r.new.env, ["PATH=/bin"]);
        assert!(r.detach && !r.new.attach && r.new.tty && r.new.open_stdin);
        assert_eq!((r.memory_mb, r.transport_serial), (512, true));
        assert_eq!(r.new.name.as_deref(), Some("n"));
        assert_eq!(r.new.args, ["sh", "-c", "x"]);
        assert!(parse(&["run", "-m", "lots", "img", "sh"]).is_err());
        assert!(parse(&["run", "img"]).is_err(), "a command is required");
    }
}
