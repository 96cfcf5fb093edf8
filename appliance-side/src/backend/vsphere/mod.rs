//! The vSphere backend: containerVMs as vSphere VMs, made and driven through the vSphere API
//! (`appliance serve --backend vsphere`). A VM is created from a ConfigSpec ([`spec`]) in the
//! configured folder and resource pool with its files on the configured datastore, powered on,
//! and tether inside dials the appliance's vSPC over its network serial port. A container's VM
//! is kept while the container exists (a restart reconfigures its guestinfo and powers it on
//! again) and destroyed with it.
//!
//! Nothing is left half-made: the inventory (folder, pool, datastore) and the login are checked
//! when the backend connects; a name clash is refused before anything is created; a VM that
//! cannot be powered on is destroyed again.

pub mod datastore;
pub mod soap;
pub mod spec;
pub mod vim;
pub mod volumes;

use std::path::Path;

use soap::{MoRef, Soap, SoapError};
use vim::Vim;

use crate::backend::{Backend, BackendError, LaunchRequest, Launched};

/// Where a container's VM is recorded (its managed object id), in the container's directory.
pub const VM_FILE: &str = "vsphere-vm";

/// What `serve --backend vsphere` was given.
#[derive(Debug, Clone)]
pub struct VsphereConfig {
    /// The SDK endpoint, `https://vcenter/sdk` (`http://` only for a simulator on loopback).
    pub url: String,
    pub user: String,
    pub password: String,
    /// The datastore's name; the VMs' files, the ISO and the images are on it.
    pub datastore: String,
    /// The VM folder's inventory path (`/DC0/vm`).
    pub folder: String,
    /// The resource pool's inventory path (`/DC0/host/Cluster/Resources`).
    pub pool: String,
    /// The bootstrap ISO on the datastore, relative to it (`tether/bootstrap.iso`).
    pub iso: String,
    /// Where image disks are on the datastore (`tether/images`): `<dir>/<image key>.vmdk`.
    pub image_dir: String,
    /// Where volume disks are on the datastore (`tether/volumes`): `<dir>/<volume>.vmdk`.
    pub volume_dir: String,
    /// Port groups (`--vsphere-network`): the first carries docker's default network (the
    /// containers' `bridge`); a docker network named like one of them is on that one.
    pub networks: Vec<String>,
    /// The vSPC's URI as the ESXi hosts reach it (`telnet://appliance:2377`).
    pub vspc_uri: String,
    /// A CA certificate file (PEM) to trust for the vCenter's TLS, besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    #[error("vSphere login as {user} at {url} failed: {source} (check the user and password)")]
    Login {
        user: String,
        url: String,
        #[source]
        source: SoapError,
    },
    #[error("the {what} {path:?} is not in the vSphere inventory (give its inventory path, e.g. {example})")]
    NotFound {
        what: &'static str,
        path: String,
        example: &'static str,
    },
    #[error("a VM named {name} already exists in {folder}; it is not this appliance's: rename or remove it")]
    NameClash { name: String, folder: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: SoapError,
    },
    #[error("the container mounts {count} volumes: a containerVM on vSphere can mount at most {max} (one SCSI controller)")]
    TooManyVolumes { count: usize, max: usize },
    #[error("the container is on docker network {network:?}, which has no vSphere port group (the port groups given with --vsphere-network: {known:?}; the first carries the default network, bridge)")]
    NoPortGroup { network: String, known: Vec<String> },
    #[error("--vsphere-ca {path}: {why} (give a PEM file of the CA that signed the vCenter's certificate)")]
    BadCa { path: String, why: String },
    #[error("{0}")]
    Setup(String),
}

impl From<VsphereError> for BackendError {
    fn from(e: VsphereError) -> Self {
        BackendError::Failed(e.to_string())
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(SoapError) -> VsphereError {
    let what = what.into();
    move |source| VsphereError::Api { what, source }
}

/// The backend, logged in, with its inventory found.
pub struct VsphereBackend {
    cfg: VsphereConfig,
    vim: Vim,
    folder: MoRef,
    pool: MoRef,
    datacenter: String,
    datacenter_ref: MoRef,
    /// Image keys whose disks are known to be on the datastore (held while one uploads).
    uploaded: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl VsphereBackend {
    /// Logs in and finds the folder, pool and datastore; any of them wrong is an error naming it.
    pub async fn connect(cfg: VsphereConfig) -> Result<Self, VsphereError> {
        // reqwest's TLS is rustls with the process's provider: ring, as the registry client's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(path) = &cfg.ca_file {
            for cert in trusted_cas(path)? {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| VsphereError::Setup(format!("HTTP client: {e}")))?;
        let vim = Vim::connect(Soap::new(http, cfg.url.clone()))
            .await
            .map_err(api(format!("connecting to {}", cfg.url)))?;
        vim.login(&cfg.user, &cfg.password)
            .await
            .map_err(|source| VsphereError::Login {
                user: cfg.user.clone(),
                url: cfg.url.clone(),
                source,
            })?;
        let datacenter = cfg
            .folder
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let lookup = |what, path: String, example| {
            let vim = &vim;
            async move {
                vim.find_by_path(&path)
                    .await
                    .map_err(api(format!("looking up {path}")))?
                    .ok_or(VsphereError::NotFound {
                        what,
                        path,
                        example,
                    })
            }
        };
        let datacenter_ref = lookup("datacenter", format!("/{datacenter}"), "/DC0").await?;
        let folder = lookup("VM folder", cfg.folder.clone(), "/DC0/vm").await?;
        let pool = lookup(
            "resource pool",
            cfg.pool.clone(),
            "/DC0/host/Cluster/Resources",
        )
        .await?;
        lookup(
            "datastore",
            format!("/{datacenter}/datastore/{}", cfg.datastore),
            "LocalDS_0, in the folder's datacenter",
        )
        .await?;
        Ok(Self {
            cfg,
            vim,
            folder,
            pool,
            datacenter,
            datacenter_ref,
            uploaded: Default::default(),
        })
    }

    fn ds_path(&self, rel: &str) -> String {
        format!("[{}] {rel}", self.cfg.datastore)
    }

    /// The VM's name: `tether-` and the container's id (its directory's name), 12 characters.
    pub fn vm_name(container_dir: &Path) -> String {
        let id = container_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("tether-{}", &id[..id.len().min(12)])
    }

    /// The datastore path of the image a container runs: `<image_dir>/<key>.vmdk`, the key
    /// being the image disk's directory in the image store (its image or layer id).
    pub fn image_on_datastore(&self, image_disk: &Path) -> String {
        let key = Self::image_key(image_disk);
        self.ds_path(&format!("{}/{key}.vmdk", self.cfg.image_dir))
    }

    /// The port group a container's NIC on docker network `network` is on.
    fn port_group(&self, network: &str) -> Result<String, VsphereError> {
        let known = &self.cfg.networks;
        let found = if network == crate::store::networks::DEFAULT_NETWORK {
            known.first()
        } else {
            known.iter().find(|pg| *pg == network)
        };
        found.cloned().ok_or_else(|| VsphereError::NoPortGroup {
            network: network.to_string(),
            known: known.clone(),
        })
    }

    /// The VM's NICs: the container's, each at the slot the engine gave it (the one in its
    /// guestinfo) on its network's port group.
    fn vm_nics(&self, req: &LaunchRequest) -> Result<Vec<spec::VmNic>, VsphereError> {
        req.nics
            .iter()
            .map(|nic| {
                Ok(spec::VmNic {
                    port_group: self.port_group(&nic.network)?,
                    slot: nic.slot,
                })
            })
            .collect()
    }

    fn recorded_vm(container_dir: &Path) -> Option<MoRef> {
        let id = std::fs::read_to_string(container_dir.join(VM_FILE)).ok()?;
        Some(MoRef::new("VirtualMachine", id.trim()))
    }

    pub async fn launch_async(&self, req: &LaunchRequest) -> Result<MoRef, VsphereError> {
        if req.volumes.len() > spec::MAX_VOLUMES {
            return Err(VsphereError::TooManyVolumes {
                count: req.volumes.len(),
                max: spec::MAX_VOLUMES,
            });
        }
        let text = std::fs::read_to_string(&req.config)
            .map_err(|e| VsphereError::Setup(format!("{}: {e}", req.config.display())))?;
        let extra_config: Vec<(String, String)> = guestinfo::vmx::parse(&text)
            .map_err(|e| VsphereError::Setup(format!("the container's guestinfo: {e}")))?
            .into_iter()
            .collect();
        let name = Self::vm_name(&req.container_dir);
        let nics = self.vm_nics(req)?;
        if let Some(vm) = Self::recorded_vm(&req.container_dir) {
            // A restart: the same VM with this boot's guestinfo and NICs. The last boot's keys
            // that this one has not (its execs, its status) are set empty, which vSphere takes
            // as removed.
            let before = self
                .vim
                .vm_info(&vm)
                .await
                .map_err(api(format!("reading {name}")))?;
            let mut pairs = extra_config.clone();
            for (key, _) in before.extra_config {
                if key.starts_with("guestinfo.") && !pairs.iter().any(|(k, _)| *k == key) {
                    pairs.push((key, String::new()));
                }
            }
            let held: Vec<spec::HeldNic> = before
                .devices
                .iter()
                .filter(|d| d.kind == "VirtualVmxnet3")
                .map(|d| spec::HeldNic {
                    key: d.key,
                    nic: spec::VmNic {
                        port_group: d.backing.clone(),
                        slot: d.pci_slot.unwrap_or_default(),
                    },
                })
                .collect();
            self.vim
                .reconfigure(&vm, &spec::reconfigure(&pairs, &held, &nics))
                .await
                .map_err(api(format!("reconfiguring {name}")))?;
            self.vim
                .power_on(&vm)
                .await
                .map_err(api(format!("powering on {name}")))?;
            return Ok(vm);
        }
        let clash = self
            .vim
            .find_child(&self.folder, &name)
            .await
            .map_err(api(format!("looking for {name}")))?;
        if clash.is_some() {
            return Err(VsphereError::NameClash {
                name,
                folder: self.cfg.folder.clone(),
            });
        }
        // The datastore may have gone since `serve` found it: say so before creating anything.
        let ds_path = format!("/{}/datastore/{}", self.datacenter, self.cfg.datastore);
        let ds = self
            .vim
            .find_by_path(&ds_path)
            .await
            .map_err(api(format!("looking up {ds_path}")))?;
        if ds.is_none() {
            return Err(VsphereError::NotFound {
                what: "datastore",
                path: ds_path,
                example: "LocalDS_0, in the folder's datacenter",
            });
        }
        let image_disk = self
            .ensure_image(&req.image_disk, &req.container_dir)
            .await?;
        let mut volumes = Vec::new();
        for disk in &req.volumes {
            volumes.push(self.ensure_volume(disk, &req.container_dir).await?);
        }
        let vm_spec = spec::VmSpec {
            name: name.clone(),
            datastore: self.cfg.datastore.clone(),
            memory_mb: req.memory_mb,
            cpus: req.cpus,
            iso: self.ds_path(&self.cfg.iso),
            image_disk,
            delta_disk: self.ds_path(&format!("{name}/{name}.vmdk")),
            volumes,
            nics,
            vspc_uri: self.cfg.vspc_uri.clone(),
            service_uri: format!("tether://{name}"),
            extra_config,
        };
        let vm = self
            .vim
            .create_vm(&self.folder, &self.pool, &spec::config_spec(&vm_spec))
            .await
            .map_err(api(format!("creating {name}")))?;
        if let Err(e) = self.vim.power_on(&vm).await {
            // Nothing half-made: the VM that cannot run goes again.
            let _ = self.vim.destroy(&vm).await;
            return Err(api(format!("powering on {name}"))(e));
        }
        std::fs::write(req.container_dir.join(VM_FILE), format!("{}\n", vm.id))
            .map_err(|e| VsphereError::Setup(format!("recording the VM: {e}")))?;
        tracing::info!(vm = %vm.id, %name, datacenter = %self.datacenter, "vSphere VM created and powered on");
        Ok(vm)
    }

    async fn power_off_async(&self, container_dir: &Path) -> Result<(), VsphereError> {
        let Some(vm) = Self::recorded_vm(container_dir) else {
            return Ok(());
        };
        let state = self
            .vim
            .power_state(&vm)
            .await
            .map_err(api("reading the VM's power state"))?;
        if state == "poweredOn" {
            if let Err(e) = self.vim.power_off(&vm).await {
                // The guest may have powered itself off meanwhile (tether does at its end).
                let now = self.vim.power_state(&vm).await.unwrap_or_default();
                if now != "poweredOff" {
                    return Err(api("powering the VM off")(e));
                }
            }
        }
        Ok(())
    }

    async fn vm_on_async(&self, container_dir: &Path) -> Result<bool, VsphereError> {
        let Some(vm) = Self::recorded_vm(container_dir) else {
            return Ok(false);
        };
        let state = self
            .vim
            .power_state(&vm)
            .await
            .map_err(api("reading the VM's power state"))?;
        Ok(state == "poweredOn")
    }

    async fn destroy_async(&self, container_dir: &Path) -> Result<(), VsphereError> {
        let Some(vm) = Self::recorded_vm(container_dir) else {
            return Ok(());
        };
        self.power_off_async(container_dir).await?;
        // The volumes outlive the VM: off it before vSphere deletes its disks with it.
        self.detach_volumes(&vm).await?;
        self.vim
            .destroy(&vm)
            .await
            .map_err(api("destroying the VM"))?;
        let _ = std::fs::remove_file(container_dir.join(VM_FILE));
        Ok(())
    }

    /// The API session, for reading VMs back (tests, diagnostics).
    pub fn vim(&self) -> &Vim {
        &self.vim
    }

    /// The configured VM folder.
    pub fn folder(&self) -> &MoRef {
        &self.folder
    }
}

/// The certificates of a PEM file, for `--vsphere-ca`.
fn trusted_cas(path: &Path) -> Result<Vec<reqwest::Certificate>, VsphereError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| VsphereError::BadCa {
        path: path.display().to_string(),
        why,
    };
    let ders = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if ders.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    ders.iter()
        .map(|d| reqwest::Certificate::from_der(d).map_err(|e| bad(e.to_string())))
        .collect()
}

/// Runs an API future from the engine's synchronous backend calls (on a worker thread of the
/// multi-threaded runtime the appliance runs).
fn blocking<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl Backend for VsphereBackend {
    fn nic_slot(&self, index: usize) -> u32 {
        spec::nic_slot(index)
    }

    fn launch(&self, req: &LaunchRequest) -> Result<Launched, BackendError> {
        blocking(self.launch_async(req))?;
        // No process here: the VM's life is vSphere's (power state), its channel the vSPC's.
        Ok(Launched {
            pid: 0,
            child: None,
        })
    }

    fn can_boot(&self) -> Result<(), BackendError> {
        Err(BackendError::Failed(
            "image layers are built on this host's QEMU, not on vSphere".into(),
        ))
    }

    fn runs_processes(&self) -> bool {
        false
    }

    fn serial_channel(&self) -> bool {
        true
    }

    fn vm_on(&self, container_dir: &Path) -> Result<bool, BackendError> {
        Ok(blocking(self.vm_on_async(container_dir))?)
    }

    fn power_off(&self, container_dir: &Path) -> Result<(), BackendError> {
        Ok(blocking(self.power_off_async(container_dir))?)
    }

    fn destroy(&self, container_dir: &Path) -> Result<(), BackendError> {
        Ok(blocking(self.destroy_async(container_dir))?)
    }

    fn remove_volume(&self, disk: &Path) -> Result<(), BackendError> {
        Ok(blocking(self.remove_volume_async(disk))?)
    }
}

/// A container directory's recorded VM, for tests.
pub fn recorded_vm_id(container_dir: &Path) -> Option<String> {
    VsphereBackend::recorded_vm(container_dir).map(|m| m.id)
}
