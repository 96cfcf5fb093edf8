//! The physical limit: the same kernel and QEMU command line booting `bench-init`, a static init
//! that finds the virtio port and moves bytes over it, relays a child's pipe or pty, or does
//! tether's boot work without tether (tether/src/bin/bench-init/).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use appliance::backend::qemu_args::{qemu_args, BootMedium, ChannelEnd, VmSpec};

use crate::util::release_binary;

pub struct Baseline {
    initramfs: PathBuf,
    dir: PathBuf,
}

/// The host end of bench-init's channel: a Unix socket (virtio-serial) or TCP (COM port).
trait Port: Read + Write {}
impl<T: Read + Write> Port for T {}

/// Which guest device bench-init talks over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Virtio,
    Com,
}

/// One booted bench-init, its port accepted and its first line read.
struct Booted {
    vm: Child,
    port: Box<dyn Port>,
    /// QEMU launch -> its first line at the host, ms.
    first_line_ms: f64,
    /// Bytes that arrived after the first line in the same read.
    extra: Vec<u8>,
}

impl Baseline {
    /// bench-init, static, as /init of its own initramfs.
    pub fn build(dir: &Path) -> Self {
        let init = release_binary("tether", "bench-init", Some("x86_64-unknown-linux-musl"));
        let init = std::fs::read(init).unwrap();
        let initramfs = dir.join("bench-initramfs.gz");
        std::fs::write(&initramfs, bootstrap::initramfs::build(&init).unwrap()).unwrap();
        Self {
            initramfs,
            dir: dir.to_path_buf(),
        }
    }

    fn boot(&self, task: &str, accel: &'static str) -> Booted {
        self.try_boot(task, accel, 300, Via::Virtio)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// QEMU launch -> bench-init's first line over the COM port, booting `kernel` (ours, or
    /// Debian's stock kernel, whose virtio drivers are modules), ms.
    pub fn com_boot_ms(&self, kernel: &Path) -> Result<f64, String> {
        let mut b = self.try_boot_kernel("out 0", "tcg", 120, Via::Com, kernel)?;
        let _ = b.vm.wait();
        Ok(b.first_line_ms)
    }

    /// Boots bench-init, giving up (and killing QEMU) after `limit_secs`.
    fn try_boot(
        &self,
        task: &str,
        accel: &'static str,
        limit_secs: u64,
        via: Via,
    ) -> Result<Booted, String> {
        self.try_boot_kernel(task, accel, limit_secs, via, &e2e::artifacts().kernel)
    }

    fn try_boot_kernel(
        &self,
        task: &str,
        accel: &'static str,
        limit_secs: u64,
        via: Via,
        kernel: &Path,
    ) -> Result<Booted, String> {
        let a = e2e::artifacts();
        let sock = self.dir.join("baseline.sock");
        let _ = std::fs::remove_file(&sock);
        let unix = UnixListener::bind(&sock).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let channel = match via {
            Via::Virtio => ChannelEnd::Unix(sock),
            Via::Com => ChannelEnd::Tcp(tcp.local_addr().unwrap().to_string()),
        };
        let config = self.dir.join("baseline.cfg");
        std::fs::write(&config, task).unwrap();
        let overlay = self.dir.join("baseline.qcow2");
        e2e::qcow2_overlay(&a.disk, &overlay);
        let args = qemu_args(&VmSpec {
            accel,
            memory_mb: 256,
            cpus: 0,
            boot: BootMedium::Direct {
                kernel: kernel.to_path_buf(),
                initramfs: self.initramfs.clone(),
            },
            disk: overlay,
            volumes: Vec::new(),
            config,
            console: self.dir.join("baseline-console.log"),
            channel,
            nics: Vec::new(),
            hotplug_slots: Vec::new(),
            qmp: None,
        });
        let launch = Instant::now();
        let mut vm = Command::new("timeout")
            .args(["-k", "2", &limit_secs.to_string(), "qemu-system-x86_64"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut port: Box<dyn Port> = match via {
            Via::Virtio => Box::new(unix.accept().unwrap().0),
            Via::Com => Box::new(tcp.accept().unwrap().0),
        };
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        let first_line = loop {
            let n = port.read(&mut buf).unwrap_or(0);
            if n == 0 {
                let _ = vm.wait();
                return Err(format!(
                    "bench-init ({accel}) wrote no line within {limit_secs} s; console: {}",
                    self.dir.join("baseline-console.log").display()
                ));
            }
            seen.extend_from_slice(&buf[..n]);
            if let Some(i) = seen.iter().position(|b| *b == b'\n') {
                let t = launch.elapsed();
                seen.drain(..=i);
                break t;
            }
        };
        Ok(Booted {
            vm,
            port,
            first_line_ms: first_line.as_secs_f64() * 1000.0,
            extra: seen,
        })
    }

    /// Whether KVM boots a guest here: bench-init under `-accel kvm` must write its line within
    /// 20 s (this machine's nested /dev/kvm hangs ordinary guests). Ok(launch -> line, ms).
    pub fn probe_kvm(&self) -> Result<f64, String> {
        if !Path::new("/dev/kvm").exists() {
            return Err("no /dev/kvm".into());
        }
        let mut b = self.try_boot("out 0", "kvm", 20, Via::Virtio)?;
        let _ = b.vm.wait();
        Ok(b.first_line_ms)
    }

    /// QEMU launch -> bench-init's first line at the host, ms.
    pub fn boot_ms(&self, accel: &'static str) -> f64 {
        let mut b = self.boot("out 0", accel);
        let _ = b.vm.wait();
        b.first_line_ms
    }

    /// bench-init's same-work boot (tether's mounts, disk, container root, switch and spawn,
    /// nothing else): PID 1 entry -> the image is `/` and the main process is spawned (one
    /// instant there: nothing lies between), guest ms.
    pub fn same_work_ms(&self) -> f64 {
        let mut b = self.boot("same-work", "tcg");
        let mut text = b.extra.clone();
        let mut buf = [0u8; 256];
        while !text.ends_with(b"\n") {
            let n = b.port.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "bench-init closed the port before its same-work line"
            );
            text.extend_from_slice(&buf[..n]);
        }
        let _ = b.vm.wait();
        let text = String::from_utf8_lossy(&text);
        let marks: Vec<u64> = text
            .strip_prefix("same-work ")
            .unwrap_or_else(|| panic!("bench-init: {text}"))
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        let [entry, ready, status] = marks[..] else {
            panic!("bench-init: {text}")
        };
        assert_eq!(
            status, 0,
            "the image's /bin/true failed in the same-work boot"
        );
        (ready - entry) as f64 / 1e6
    }

    /// bench-init `cat`s `bytes` to the port; the host only reads. Bytes/s from its first line to
    /// the last byte.
    pub fn stdout_rate(&self, bytes: u64, via: Via) -> f64 {
        self.read_rate("out", bytes, via)
    }

    /// The same bytes through bench-init's pipe relay (a child `cat`s them into a pipe, the
    /// relay reads it and writes the port).
    pub fn relay_stdout_rate(&self, bytes: u64) -> f64 {
        self.read_rate("relay-out", bytes, Via::Virtio)
    }

    fn read_rate(&self, verb: &str, bytes: u64, via: Via) -> f64 {
        let mut b = self
            .try_boot(&format!("{verb} {bytes}"), "tcg", 300, via)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut got = b.extra.len() as u64;
        let start = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        while got < bytes {
            let n = b.port.read(&mut buf).unwrap();
            assert!(n > 0, "bench-init closed the port after {got} bytes");
            got += n as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = b.vm.wait();
        bytes as f64 / secs
    }

    /// The host writes `bytes` to the port; bench-init reads them and answers `done`. Bytes/s
    /// from the first write to that answer.
    pub fn stdin_rate(&self, bytes: u64) -> f64 {
        self.write_rate("in", bytes)
    }

    /// The same through bench-init's relay: port -> relay -> pipe -> a reading child; `done`
    /// once the child has read everything.
    pub fn relay_stdin_rate(&self, bytes: u64) -> f64 {
        self.write_rate("relay-in", bytes)
    }

    fn write_rate(&self, verb: &str, bytes: u64) -> f64 {
        let mut b = self.boot(&format!("{verb} {bytes}"), "tcg");
        let block = vec![b'0'; 64 * 1024];
        let start = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            b.port.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        let mut answer = b.extra.clone();
        let mut buf = [0u8; 64];
        while !answer.ends_with(b"done\n") {
            let n = b.port.read(&mut buf).unwrap();
            assert!(n > 0, "bench-init closed the port before `done`");
            answer.extend_from_slice(&buf[..n]);
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = b.vm.wait();
        bytes as f64 / secs
    }

    /// `n` one-byte round trips through bench-init's echo loop; each in ms.
    pub fn echo_ms(&self, n: usize) -> Vec<f64> {
        self.echo_task_ms("echo", n)
    }

    /// `n` one-byte round trips through bench-init's pty relay (the terminal echoes); each in ms.
    pub fn pty_echo_ms(&self, n: usize) -> Vec<f64> {
        self.echo_task_ms("pty-echo", n)
    }

    fn echo_task_ms(&self, verb: &str, n: usize) -> Vec<f64> {
        let mut b = self.boot(&format!("{verb} {n}"), "tcg");
        let mut out = Vec::with_capacity(n);
        let mut byte = [0u8; 1];
        for _ in 0..n {
            let t = Instant::now();
            b.port.write_all(b"x").unwrap();
            b.port.read_exact(&mut byte).unwrap();
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let _ = b.vm.wait();
        out
    }
}
