//! `serve --backend`: which backend runs the containerVMs, from the command line.

use crate::backend::qemu::QemuBackend;
use crate::backend::vsphere::{VsphereBackend, VsphereConfig};
use crate::backend::Backend;
use crate::home::Home;

/// The vSphere flags as given.
#[derive(Debug, Clone, Default)]
pub struct VsphereArgs {
    pub url: Option<String>,
    pub user: Option<String>,
    pub datastore: Option<String>,
    pub folder: Option<String>,
    pub pool: Option<String>,
    pub networks: Vec<String>,
    pub vspc_uri: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

impl VsphereArgs {
    /// The flags again, for a detached server's command line.
    pub fn serve_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, v) in [
            ("--vsphere-url", &self.url),
            ("--vsphere-user", &self.user),
            ("--datastore", &self.datastore),
            ("--folder", &self.folder),
            ("--pool", &self.pool),
            ("--vspc-uri", &self.vspc_uri),
        ] {
            if let Some(v) = v {
                a.extend([flag.to_string(), v.clone()]);
            }
        }
        if let Some(ca) = &self.ca_file {
            a.extend(["--vsphere-ca".to_string(), ca.display().to_string()]);
        }
        for n in &self.networks {
            a.extend(["--vsphere-network".to_string(), n.clone()]);
        }
        a
    }
}

#[derive(Debug, Clone, Default)]
pub enum BackendChoice {
    #[default]
    Qemu,
    Vsphere(VsphereArgs),
}

impl BackendChoice {
    /// `--backend NAME` and its flags; a missing flag is an error naming it.
    pub fn from_args(name: &str, v: VsphereArgs) -> Result<Self, String> {
        match name {
            "qemu" => Ok(Self::Qemu),
            "vsphere" => {
                for (flag, given) in [
                    ("--vsphere-url", v.url.is_some()),
                    ("--datastore", v.datastore.is_some()),
                    ("--folder", v.folder.is_some()),
                    ("--pool", v.pool.is_some()),
                ] {
                    if !given {
                        return Err(format!("--backend vsphere needs {flag}"));
                    }
                }
                Ok(Self::Vsphere(v))
            }
            other => Err(format!("unknown backend {other:?}: use qemu or vsphere")),
        }
    }

    pub fn serve_args(&self) -> Vec<String> {
        match self {
            Self::Qemu => vec![],
            Self::Vsphere(v) => {
                [vec!["--backend".into(), "vsphere".into()], v.serve_args()].concat()
            }
        }
    }

    /// The backend, connected; `vspc` is where the vSPC listens (vSphere needs one).
    pub async fn build(
        &self,
        home: &Home,
        vspc: Option<std::net::SocketAddr>,
    ) -> Result<Box<dyn Backend>, String> {
        let v = match self {
            Self::Qemu => return Ok(Box::new(QemuBackend::new(home.clone(), None, None))),
            Self::Vsphere(v) => v,
        };
        let vspc_uri = match (&v.vspc_uri, vspc) {
            (Some(u), _) => u.clone(),
            (None, Some(addr)) => format!("telnet://{addr}"),
            (None, None) => {
                return Err(
                    "--backend vsphere needs --vspc: the VMs' serial ports connect there".into(),
                )
            }
        };
        let mut url = v.url.clone().unwrap_or_default();
        // Credentials in the URL (https://user:pass@vcenter/sdk) or --vsphere-user and
        // $TETHER_VSPHERE_PASSWORD; the password never on the command line of a detached server.
        let (mut user, mut password) = (v.user.clone().unwrap_or_default(), String::new());
        if let Ok(mut parsed) = reqwest::Url::parse(&url) {
            if !parsed.username().is_empty() {
                user = parsed.username().to_string();
                password = parsed.password().unwrap_or_default().to_string();
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                url = parsed.to_string();
            }
        }
        if let Ok(p) = std::env::var("TETHER_VSPHERE_PASSWORD") {
            password = p;
        }
        let cfg = VsphereConfig {
            url,
            user,
            password,
            datastore: v.datastore.clone().unwrap_or_default(),
            folder: v.folder.clone().unwrap_or_default(),
            pool: v.pool.clone().unwrap_or_default(),
            iso: "tether/bootstrap.iso".into(),
            image_dir: "tether/images".into(),
            volume_dir: "tether/volumes".into(),
            networks: if v.networks.is_empty() {
                vec!["VM Network".into()]
            } else {
                v.networks.clone()
            },
            vspc_uri,
            ca_file: v.ca_file.clone(),
        };
        let b = VsphereBackend::connect(cfg)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(b))
    }
}
