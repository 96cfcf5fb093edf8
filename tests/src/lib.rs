//! Shared harness for the QEMU tier: builds (or finds, cached) the kernel, the static tether, the
//! initramfs and a busybox image disk; runs the real session server and its docker API; boots
//! containerVMs under qemu-system-x86_64 (TCG: the /dev/kvm here is a nested PVM device that hangs
//! ordinary guests) with a hard timeout.

mod image;
pub mod netns;
pub mod registry;
pub mod tmux;

pub use image::{
    busybox_image_archive, busybox_rootfs, guest_program, layer_tar, save_archive,
    save_archive_with_config,
};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use appliance::home::Home;
use appliance::server::Server;
use appliance::store::records::{self, NewContainer};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn must(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Artifacts shared by every test in the process: built once.
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The bootstrap ISO: the same kernel and initramfs behind isolinux.
    pub iso: PathBuf,
    pub disk: PathBuf,
}

/// How the VM finds its kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads the kernel and initramfs directly (fastest).
    Direct,
    /// SeaBIOS boots the bootstrap ISO through isolinux, as on vSphere.
    Iso,
}

pub fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Artifacts> = OnceLock::new();
    A.get_or_init(|| {
        let ws = workspace();
        let dir = ws.join("target/e2e");
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = must(
            Command::new(ws.join("kernel-config/build.sh")).stderr(Stdio::inherit()),
            "kernel build (kernel-config/build.sh)",
        );
        let kernel = PathBuf::from(kernel.trim().lines().last().unwrap());
        must(
            Command::new(env!("CARGO"))
                .args([
                    "build",
                    "-q",
                    "-p",
                    "tether",
                    "--release",
                    "--target",
                    "x86_64-unknown-linux-musl",
                ])
                .current_dir(&ws),
            "building the static tether",
        );
        let tether =
            std::fs::read(ws.join("target/x86_64-unknown-linux-musl/release/tether")).unwrap();
        let initramfs = dir.join("initramfs.gz");
        std::fs::write(&initramfs, bootstrap::initramfs::build(&tether).unwrap()).unwrap();
        let rootfs = dir.join("rootfs");
        let _ = std::fs::remove_dir_all(&rootfs);
        busybox_rootfs(&rootfs);
        let disk = dir.join("busybox.raw");
        bootstrap::disk::ext4_from_dir(&rootfs, &disk, "containerfs", 0).unwrap();
        let iso = dir.join("bootstrap.iso");
        bootstrap::iso::build(&kernel, &initramfs, bootstrap::iso::DEFAULT_APPEND, &iso).unwrap();
        Artifacts {
            kernel,
            initramfs,
            iso,
            disk,
        }
    })
}

/// A change to a container's spec before its VM boots.
pub type SpecEdit = Box<dyn FnOnce(&mut guestinfo::ContainerSpec)>;

/// What a test adds to one containerVM (`Appliance::run_with`).
#[derive(Default)]
pub struct VmExtras {
    /// A change to the container's spec before it is written (its networks, ...).
    pub spec: Option<SpecEdit>,
    /// More QEMU arguments (NICs and their netdevs, ...).
    pub qemu_args: Vec<String>,
    /// A command QEMU runs under (`ip netns exec NS`), after the hard timeout.
    pub wrapper: Vec<String>,
}

/// A container running `script` with the busybox image's `sh`.
pub fn sh(script: &str) -> NewContainer {
    NewContainer {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..Default::default()
    }
}

/// [`sh`] in a container named `name`.
pub fn named_sh(name: &str, script: &str) -> NewContainer {
    NewContainer {
        name: Some(name.into()),
        ..sh(script)
    }
}

/// Command output as text, for assertions and messages.
pub use appliance::testing::process::{failed, host_script, succeeded, text};

/// A VM's writable disk: a qcow2 overlay at `overlay` on the shared raw image `base` (replaced
/// if it exists).
pub fn qcow2_overlay(base: &Path, overlay: &Path) {
    let _ = std::fs::remove_file(overlay);
    must(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(overlay),
        "qemu-img create",
    );
}

/// The channel transport a VM uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// virtio-serial port, QEMU `-chardev socket` to the server's Unix socket.
    Virtio,
    /// A 16550 COM port (ttyS1) bridged to the server's TCP port, as vSphere's network serial.
    SerialTcp,
    /// The COM port on TCP to `addr` (a vSPC, or a test's host relay), as a telnet client
    /// (`telnet=on`) or plain.
    ComTo {
        addr: std::net::SocketAddr,
        telnet: bool,
    },
}

/// The session server an `Appliance` runs: in this process, or the real `appliance serve`
/// process (which a test can SIGKILL and start again).
enum ServerHandle {
    InProcess {
        _rt: tokio::runtime::Runtime,
        server: Arc<Server>,
    },
    Process(Child),
}

pub struct Appliance {
    pub home: Home,
    pub tcp: std::net::SocketAddr,
    server: ServerHandle,
    vms: Vec<Child>,
    /// Hard limit on each VM's life (QEMU is killed after it), for VMs booted from now on.
    pub vm_timeout_secs: u64,
    /// What the next boot adds (set by `run_with`).
    extras: VmExtras,
    last_launch: Option<Instant>,
}

/// Most tests' VMs are done in well under a minute; this bounds a hung one.
const DEFAULT_VM_TIMEOUT_SECS: u64 = 300;

/// The `appliance` binary of this tree, built once per test process.
pub fn appliance_bin() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        must(
            Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "appliance-side", "--bin", "appliance"])
                .current_dir(workspace()),
            "building the appliance binary",
        );
    });
    workspace().join("target/debug/appliance")
}

fn temp_home(tag: &str) -> Home {
    let root = std::env::temp_dir().join(format!("e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let home = Home::at(&root);
    std::fs::create_dir_all(home.containers()).unwrap();
    home
}

impl Appliance {
    pub fn start(tag: &str) -> Self {
        let home = temp_home(tag);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, tcp) = rt.block_on(async {
            let s = Server::new(home.clone());
            s.listen_unix(&home.channel_socket()).await.unwrap();
            let tcp = s.listen_tcp("127.0.0.1:0").await.unwrap();
            // As `appliance serve` does: where the COM-port transport connects.
            std::fs::write(home.channel_tcp_file(), format!("{tcp}\n")).unwrap();
            appliance::api::serve_api(appliance::api::Api::new(s.clone()), &home.docker_socket())
                .await
                .unwrap();
            (s, tcp)
        });
        Self {
            home,
            tcp,
            server: ServerHandle::InProcess { _rt: rt, server },
            vms: Vec::new(),
            vm_timeout_secs: DEFAULT_VM_TIMEOUT_SECS,
            extras: VmExtras::default(),
            last_launch: None,
        }
    }

    /// Runs the server as the real `appliance serve` process.
    pub fn start_process(tag: &str) -> Self {
        let home = temp_home(tag);
        let mut app = Self {
            tcp: "127.0.0.1:0".parse().unwrap(),
            server: ServerHandle::Process(Self::spawn_server(&home)),
            home,
            vms: Vec::new(),
            vm_timeout_secs: DEFAULT_VM_TIMEOUT_SECS,
            extras: VmExtras::default(),
            last_launch: None,
        };
        app.tcp = app.wait_server_ready();
        app
    }

    fn spawn_server(home: &Home) -> Child {
        let a = artifacts();
        Command::new(appliance_bin())
            .arg("serve")
            .env("TETHER_HOME", home.root())
            // The engine boots containerVMs with this tree's kernel and tether, each under a
            // hard time limit.
            .env("TETHER_KERNEL", &a.kernel)
            .env("TETHER_INITRAMFS", &a.initramfs)
            .env(
                "TETHER_VM_TIMEOUT_SECS",
                DEFAULT_VM_TIMEOUT_SECS.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Appended: every incarnation's log stays, for diagnosing a restart test.
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(home.root().join("server.log"))
                    .unwrap(),
            )
            .spawn()
            .expect("appliance serve starts")
    }

    /// Waits until the server process answers on its API socket; returns its channel port.
    fn wait_server_ready(&self) -> std::net::SocketAddr {
        let start = Instant::now();
        loop {
            let up = std::os::unix::net::UnixStream::connect(self.home.docker_socket()).is_ok();
            let tcp = std::fs::read_to_string(self.home.channel_tcp_file()).ok();
            if let (true, Some(Ok(addr))) = (up, tcp.map(|t| t.trim().parse())) {
                return addr;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "appliance serve did not come up; its log:\n{}",
                std::fs::read_to_string(self.home.root().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server process: no shutdown, no flush, sockets cut mid-byte.
    pub fn kill_server(&mut self) {
        if let ServerHandle::Process(child) = &mut self.server {
            child.kill().expect("SIGKILL the server");
            child.wait().unwrap();
        } else {
            panic!("kill_server needs Appliance::start_process");
        }
    }

    /// Starts the server process again on the same home.
    pub fn restart_server(&mut self) {
        let _ = std::fs::remove_file(self.home.channel_tcp_file());
        self.server = ServerHandle::Process(Self::spawn_server(&self.home));
        self.tcp = self.wait_server_ready();
    }

    /// The server process's pid, when it runs as one.
    pub fn server_pid(&self) -> Option<u32> {
        match &self.server {
            ServerHandle::Process(c) => Some(c.id()),
            ServerHandle::InProcess { .. } => None,
        }
    }

    /// Runs the appliance CLI against this appliance.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(appliance_bin());
        c.env("TETHER_HOME", self.home.root());
        c
    }

    /// Creates a container and boots its containerVM over virtio-serial from the image disk;
    /// returns the id.
    pub fn run(&mut self, new: NewContainer) -> String {
        self.run_on(new, Transport::Virtio, "containerfs")
    }

    /// Like `run`, over `transport`, looking for the image disk labelled `disk_label`.
    pub fn run_on(&mut self, new: NewContainer, transport: Transport, disk_label: &str) -> String {
        self.boot(new, transport, disk_label, Boot::Direct, |vmx| vmx)
    }

    /// Like `run`, booting from the bootstrap ISO.
    pub fn run_from_iso(&mut self, new: NewContainer) -> String {
        self.boot(new, Transport::Virtio, "containerfs", Boot::Iso, |vmx| vmx)
    }

    /// Like `run`, with the config text passed through `edit` first (bad-input tests).
    pub fn run_with_config_edit(
        &mut self,
        new: NewContainer,
        edit: impl FnOnce(String) -> String,
    ) -> String {
        self.boot(new, Transport::Virtio, "containerfs", Boot::Direct, edit)
    }

    /// Like `run`, with `extras`: its spec changed, more QEMU arguments, QEMU run under a
    /// wrapper.
    pub fn run_with(&mut self, new: NewContainer, extras: VmExtras) -> String {
        self.extras = extras;
        self.boot(new, Transport::Virtio, "containerfs", Boot::Direct, |vmx| {
            vmx
        })
    }

    fn boot(
        &mut self,
        new: NewContainer,
        transport: Transport,
        disk_label: &str,
        boot: Boot,
        edit: impl FnOnce(String) -> String,
    ) -> String {
        let a = artifacts();
        let extras = std::mem::take(&mut self.extras);
        let (rec, mut spec) = records::create(&self.home, &new).unwrap();
        if let Some(change) = extras.spec {
            change(&mut spec);
        }
        spec.disk_wait_ms = 3000;
        spec.stop_grace_ms = 2000;
        if transport != Transport::Virtio {
            spec.channel_device = Some("/dev/ttyS1".into());
        }
        let dir = self.home.container(&rec.id);
        let config = dir.join("config.vmx");
        std::fs::write(&config, edit(guestinfo::spec_to_vmx(&spec))).unwrap();
        // The container's writable layer: a qcow2 overlay on the shared image.
        let overlay = dir.join("disk.qcow2");
        let label_disk = if disk_label == "containerfs" {
            a.disk.clone()
        } else {
            let other = dir.join("other.raw");
            bootstrap::disk::ext4_from_dir(&artifacts_rootfs(), &other, disk_label, 0).unwrap();
            other
        };
        qcow2_overlay(&label_disk, &overlay);
        use appliance::backend::qemu_args::{qemu_args, BootMedium, ChannelEnd, VmSpec};
        let mut cmd = Command::new("timeout");
        // The hard timeout: TERM after it, KILL 5 s later if QEMU ignores it.
        cmd.args(["-k", "5", &self.vm_timeout_secs.to_string()])
            .args(&extras.wrapper)
            .arg("qemu-system-x86_64")
            .args(qemu_args(&VmSpec {
                accel: "tcg",
                memory_mb: 256,
                cpus: 0,
                boot: match boot {
                    Boot::Direct => BootMedium::Direct {
                        kernel: a.kernel.clone(),
                        initramfs: a.initramfs.clone(),
                    },
                    Boot::Iso => BootMedium::Iso(a.iso.clone()),
                },
                disk: overlay,
                volumes: Vec::new(),
                config,
                console: dir.join("console.log"),
                channel: match transport {
                    Transport::Virtio => ChannelEnd::Unix(self.home.channel_socket()),
                    Transport::SerialTcp => ChannelEnd::Tcp(self.tcp.to_string()),
                    Transport::ComTo { addr, telnet: true } => ChannelEnd::Telnet(addr.to_string()),
                    Transport::ComTo {
                        addr,
                        telnet: false,
                    } => ChannelEnd::Tcp(addr.to_string()),
                },
                nics: Vec::new(),
                hotplug_slots: Vec::new(),
                qmp: None,
            }))
            .args(&extras.qemu_args);
        self.last_launch = Some(Instant::now());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.vms.push(child);
        rec.id
    }

    /// When the last VM's QEMU was started (benchmarks measure from here).
    pub fn last_launch(&self) -> Option<Instant> {
        self.last_launch
    }

    /// Runs `f` on the in-process server's runtime (its tasks keep running there).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.server {
            ServerHandle::InProcess { _rt, .. } => _rt.block_on(f),
            ServerHandle::Process(_) => panic!("block_on needs Appliance::start"),
        }
    }

    /// A vSPC on the in-process server, on a loopback port.
    pub fn start_vspc(&self) -> (Arc<appliance::server::vspc::Vspc>, std::net::SocketAddr) {
        let server = self
            .server()
            .expect("start_vspc needs Appliance::start")
            .clone();
        self.block_on(appliance::server::vspc::Vspc::listen(
            &server,
            "127.0.0.1:0",
        ))
        .expect("the vSPC listens")
    }

    /// The in-process server, if this appliance runs one.
    pub fn server(&self) -> Option<&Arc<Server>> {
        match &self.server {
            ServerHandle::InProcess { server, .. } => Some(server),
            ServerHandle::Process(_) => None,
        }
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_command(args)
            .stdin(Stdio::null())
            .output()
            .expect("the docker CLI is installed")
    }

    /// Runs docker, which must succeed (else the test fails with its output and the server
    /// log's tail); its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {}: exit {:?}\nstdout: {}\nstderr: {}\nserver log (tail):\n{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr),
            self.server_log_tail()
        );
        text(&out.stdout)
    }

    /// The last lines of the server process's log.
    pub fn server_log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.home.root().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The docker CLI against this appliance, to spawn (a client that runs for a while).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!("unix://{}", self.home.docker_socket().display()))
            .args(args);
        cmd
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        std::fs::read(self.home.container(id).join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds of the container's state; panics after `secs`.
    pub fn wait_for(&self, id: &str, secs: u64, pred: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if pred(&self.state(id)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "state never matched; last: {}\nconsole:\n{}",
            self.state(id),
            self.console(id)
        );
    }

    /// Waits until the container's status is `status`.
    pub fn wait_status(&self, id: &str, secs: u64, status: &str) {
        self.wait_for(id, secs, |s| s["status"] == status);
    }

    /// Waits until the container's main session (session 1) has exited with `code`.
    pub fn wait_exit(&self, id: &str, secs: u64, code: i64) {
        self.wait_for(id, secs, |s| s["sessions"]["1"]["exit_code"] == code);
    }

    /// `docker inspect -f FORMAT NAME`'s stdout, as text.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        text(&self.docker(&["inspect", "-f", format, name]).stdout)
    }

    /// `docker logs NAME`'s stdout, as text.
    pub fn logs(&self, name: &str) -> String {
        text(&self.docker(&["logs", name]).stdout)
    }

    /// The console of the container named `name` (its id looked up with docker inspect).
    pub fn console_of(&self, name: &str) -> String {
        let id = text(&self.docker(&["inspect", "-f", "{{.Id}}", name]).stdout);
        self.console(id.trim())
    }

    /// `docker exec NAME sh -c SCRIPT` until it succeeds within `secs`; its stdout.
    pub fn exec_until(&self, name: &str, script: &str, secs: u64) -> String {
        let start = Instant::now();
        loop {
            let out = self.docker(&["exec", name, "sh", "-c", script]);
            if out.status.success() {
                return text(&out.stdout);
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "docker exec {name} {script:?} never succeeded: {}{}\nconsole:\n{}",
                text(&out.stdout),
                text(&out.stderr),
                self.console_of(name)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn console(&self, id: &str) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.home.container(id).join("console.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// Waits for every VM to power off cleanly (exit 0) within `secs`; the container's console,
    /// which must show no kernel panic.
    pub fn powered_off_console(&mut self, id: &str, secs: u64) -> String {
        assert_eq!(self.wait_vms_off(secs), vec![0], "a clean power-off");
        let console = self.console(id);
        assert!(!console.contains("Kernel panic"), "{console}");
        console
    }

    /// Waits for every VM started so far to power off; panics if one is still up after `secs`.
    pub fn wait_vms_off(&mut self, secs: u64) -> Vec<i32> {
        let start = Instant::now();
        let mut codes = Vec::new();
        for vm in &mut self.vms {
            loop {
                if let Some(st) = vm.try_wait().unwrap() {
                    codes.push(st.code().unwrap_or(-1));
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(secs),
                    "a VM did not power off"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        codes
    }
}

fn artifacts_rootfs() -> PathBuf {
    workspace().join("target/e2e/rootfs")
}

/// Stops a VM started under `timeout`: SIGTERM to `timeout` is passed on to QEMU (a SIGKILL
/// would orphan QEMU, still running).
fn stop_vm(vm: &mut Child) {
    if let Ok(None) = vm.try_wait() {
        let _ = Command::new("kill")
            .args(["-TERM", &vm.id().to_string()])
            .status();
    }
    let _ = vm.wait();
}

impl Drop for Appliance {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            stop_vm(vm);
        }
        if let ServerHandle::Process(child) = &mut self.server {
            let _ = child.kill();
            let _ = child.wait();
        }
        // VMs the engine launched run in process groups of their own: stop each group.
        for entry in std::fs::read_dir(self.home.containers())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(pid) = std::fs::read_to_string(entry.path().join("qemu.pid")) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) on a process group id read from our own pid file; a
                    // stale id names no group (ESRCH) or one of this test's.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
        }
        // Networks the appliance made: their namespaces and dnsmasqs.
        appliance::backend::net::netns::teardown_all(&self.home);
        let _ = std::fs::remove_dir_all(self.home.root());
    }
}
