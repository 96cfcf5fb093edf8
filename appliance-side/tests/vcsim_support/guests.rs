//! What the simulator does not do: run the guests. For every VM powered on in the folder, a
//! host-mode tether stands in for the guest: its config is the guestinfo read back from the
//! VM's extraConfig, and its channel goes, as the VM's network serial port would, through an
//! ESXi host's relay (`appliance::testing::vmotion::HostRelay`, telnet with VMware's extension)
//! to the appliance's vSPC. A VM powered off loses its guest (the tether is killed); a guest
//! that ends powers its VM off, as tether does inside a real VM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance::backend::vsphere::soap::{MoRef, Soap};
use appliance::backend::vsphere::vim::{Vim, VmInfo};
use appliance::testing::vmotion::{HostKind, HostRelay};

/// A logged-in API session on the simulator, as the tests' own client.
pub async fn client(url: &str) -> Vim {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let vim = Vim::connect(Soap::new(reqwest::Client::new(), url.to_string()))
        .await
        .unwrap();
    vim.login("tether", "s3cret").await.unwrap();
    vim
}

/// One boot of a VM that a guest ran for: the VM's name and the spec its tether read.
#[derive(Debug, Clone)]
pub struct Boot {
    pub vm: String,
    pub spec: guestinfo::ContainerSpec,
}

/// The guests, run on a thread of their own until dropped.
pub struct Guests {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub boots: Arc<Mutex<Vec<Boot>>>,
}

struct Guest {
    tether: Child,
    accept: tokio::task::JoinHandle<()>,
}

impl Guest {
    /// The guest goes as a powered-off VM's does: tether and every process under it.
    fn end(mut self) {
        for pid in descendants(self.tether.id()) {
            // SAFETY: kill takes plain integers; a pid gone meanwhile is ESRCH, nothing more.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.tether.kill();
        let _ = self.tether.wait();
        self.accept.abort();
    }
}

impl Guests {
    /// Runs guests for the VMs in `folder` of the simulator at `url`; their channels go to the
    /// vSPC at `vspc`; their files in `dir`.
    pub fn start(url: &str, folder: &str, vspc: SocketAddr, dir: &Path, tether: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let boots = Arc::new(Mutex::new(Vec::new()));
        let (url, folder, dir) = (url.to_string(), folder.to_string(), dir.to_path_buf());
        let (s, b) = (stop.clone(), boots.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run(url, folder, vspc, dir, tether, s, b));
        });
        Self {
            stop,
            thread: Some(thread),
            boots,
        }
    }
}

impl Drop for Guests {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    url: String,
    folder: String,
    vspc: SocketAddr,
    dir: PathBuf,
    tether: PathBuf,
    stop: Arc<AtomicBool>,
    boots: Arc<Mutex<Vec<Boot>>>,
) {
    let vim = client(&url).await;
    let folder = vim
        .find_by_path(&folder)
        .await
        .unwrap()
        .expect("the folder");
    let mut guests: HashMap<String, Guest> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let vms = vim.vms_in(&folder).await.unwrap_or_default();
        guests.retain(|id, _| vms.iter().any(|vm| &vm.id == id));
        for vm in vms {
            let on = vim.power_state(&vm).await.unwrap_or_default() == "poweredOn";
            let ended = match guests.get_mut(&vm.id) {
                Some(g) => g.tether.try_wait().ok().flatten().is_some(),
                None => false,
            };
            match (on, guests.contains_key(&vm.id)) {
                (true, false) => {
                    if let Some(g) = boot(&vim, &vm, vspc, &dir, &tether, &boots).await {
                        guests.insert(vm.id.clone(), g);
                    }
                }
                // The guest ended: tether powers its VM off.
                (true, true) if ended => {
                    if let Some(g) = guests.remove(&vm.id) {
                        g.end();
                    }
                    let _ = vim.power_off(&vm).await;
                }
                (false, true) => {
                    if let Some(g) = guests.remove(&vm.id) {
                        g.end();
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (_, g) in guests.drain() {
        g.end();
    }
}

/// The guestinfo a VM holds (as a `.vmx` text) and the container spec in it, decoded with the
/// guestinfo crate as tether decodes it; `None` for a VM without one (not the appliance's).
pub fn held_spec(info: &VmInfo) -> Option<(String, guestinfo::ContainerSpec)> {
    // vSphere keeps one value per key, an empty one removing it; the simulator appends a
    // reconfigure's keys to the list: the last value of a key is the one vSphere would hold.
    let mut held = std::collections::BTreeMap::new();
    for (k, v) in &info.extra_config {
        if k.starts_with("guestinfo.") {
            held.insert(k.clone(), v.clone());
        }
    }
    let pairs: Vec<(String, String)> = held.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let text = guestinfo::vmx::write(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match guestinfo::spec_from_vmx(&text) {
        Ok(spec) => Some((text, spec)),
        Err(e) => {
            eprintln!("guests: {} has no container spec: {e}", info.name);
            None
        }
    }
}

/// Starts the guest of a powered-on VM, or `None` if the VM has no container spec (not one
/// the appliance made).
async fn boot(
    vim: &Vim,
    vm: &MoRef,
    vspc: SocketAddr,
    dir: &Path,
    tether: &Path,
    boots: &Mutex<Vec<Boot>>,
) -> Option<Guest> {
    let info = match vim.vm_info(vm).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("guests: reading {}: {e}", vm.id);
            return None;
        }
    };
    let (text, spec) = held_spec(&info)?;
    let n = boots.lock().unwrap().len();
    let config = dir.join(format!("{}-{n}.vmx", vm.id));
    std::fs::write(&config, &text).unwrap();
    let sock = dir.join(format!("{}-{n}.sock", vm.id));
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    // Every connection tether makes is one the VMX makes to the vSPC.
    let accept = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let (rd, wr) = conn.into_split();
            let relay = Arc::new(HostRelay::new(vspc, HostKind::Esxi));
            tokio::spawn(async move { relay.attach(rd, wr).await });
        }
    });
    let log = std::fs::File::create(dir.join(format!("{}-{n}.log", vm.id))).unwrap();
    let tether = Command::new(tether)
        .arg("--config")
        .arg(&config)
        .arg("--channel")
        .arg(&sock)
        .args(["--drain-timeout", "5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    boots.lock().unwrap().push(Boot {
        vm: info.name,
        spec,
    });
    Some(Guest { tether, accept })
}

/// The processes under `pid` (tether is a subreaper: its sessions' orphans stay under it).
fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &(c, _) in parents.iter().filter(|(_, pp)| *pp == p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}
