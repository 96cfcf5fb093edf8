//! The vSphere API calls the backend makes, typed: the service content, login, inventory
//! lookups, the VM tasks (create, power on/off, reconfigure, destroy) waited on to their end,
//! and a VM's properties read back.

use std::time::Duration;

use super::soap::{child_text, el, find, moref, parse, MoRef, Soap, SoapError};

const TASK_POLL: Duration = Duration::from_millis(100);
/// A VM task that runs longer than this is reported as stuck (its VM is left as vSphere has it).
const TASK_LIMIT: Duration = Duration::from_secs(300);

/// The service content's references the backend uses.
#[derive(Debug, Clone)]
pub struct Content {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub search_index: MoRef,
    pub session_manager: MoRef,
    pub file_manager: MoRef,
}

/// One device of a VM, as read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    /// The device's type (`VirtualDisk`, `VirtualVmxnet3`, ...).
    pub kind: String,
    pub key: i32,
    /// Its backing's file (disks, CD-ROM), network (NICs) or proxy URI (serial port).
    pub backing: String,
    /// A disk's parent disk.
    pub parent: String,
    pub pci_slot: Option<u32>,
    /// Its unit on its controller (a disk's SCSI unit).
    pub unit: Option<u32>,
}

/// A VM as vSphere has it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmInfo {
    pub name: String,
    pub power_state: String,
    pub memory_mb: u32,
    pub cpus: u32,
    pub devices: Vec<Device>,
    pub extra_config: Vec<(String, String)>,
}

pub struct Vim {
    pub soap: Soap,
    pub content: Content,
}

impl Vim {
    /// Connects and reads the service content.
    pub async fn connect(soap: Soap) -> Result<Self, SoapError> {
        let body = soap
            .call(
                "RetrieveServiceContent",
                &MoRef::new("ServiceInstance", "ServiceInstance").xml("_this"),
            )
            .await?;
        let doc = parse(&body)?;
        let get = |name: &str| {
            find(&doc, name)
                .and_then(moref)
                .ok_or_else(|| SoapError::Missing {
                    call: "RetrieveServiceContent",
                    what: name.into(),
                })
        };
        let content = Content {
            root_folder: get("rootFolder")?,
            property_collector: get("propertyCollector")?,
            search_index: get("searchIndex")?,
            session_manager: get("sessionManager")?,
            file_manager: get("fileManager")?,
        };
        Ok(Self { soap, content })
    }

    pub async fn login(&self, user: &str, password: &str) -> Result<(), SoapError> {
        let inner = format!(
            "{}{}{}",
            self.content.session_manager.xml("_this"),
            el("userName", user),
            el("password", password)
        );
        self.soap.call("Login", &inner).await.map(|_| ())
    }

    pub async fn logout(&self) {
        let _ = self
            .soap
            .call("Logout", &self.content.session_manager.xml("_this"))
            .await;
    }

    /// The object at an inventory path (`/DC0/vm`, `/DC0/datastore/LocalDS_0`), if any.
    pub async fn find_by_path(&self, path: &str) -> Result<Option<MoRef>, SoapError> {
        let inner = format!(
            "{}{}",
            self.content.search_index.xml("_this"),
            el("inventoryPath", path)
        );
        let body = self.soap.call("FindByInventoryPath", &inner).await?;
        Ok(find(&parse(&body)?, "returnval").and_then(moref))
    }

    /// The child of `parent` named `name`, if any.
    pub async fn find_child(&self, parent: &MoRef, name: &str) -> Result<Option<MoRef>, SoapError> {
        let inner = format!(
            "{}{}{}",
            self.content.search_index.xml("_this"),
            parent.xml("entity"),
            el("name", name)
        );
        let body = self.soap.call("FindChild", &inner).await?;
        Ok(find(&parse(&body)?, "returnval").and_then(moref))
    }

    /// Runs a task-returning method and waits for it; the task's result, if it has one.
    async fn task(&self, method: &'static str, inner: &str) -> Result<Option<MoRef>, SoapError> {
        let body = self.soap.call(method, inner).await?;
        let task = find(&parse(&body)?, "returnval")
            .and_then(moref)
            .ok_or(SoapError::Missing {
                call: method,
                what: "task".into(),
            })?;
        let start = tokio::time::Instant::now();
        loop {
            let body = self.properties(&task, &["info"]).await?;
            let doc = parse(&body)?;
            let info = find(&doc, "val").ok_or(SoapError::Missing {
                call: method,
                what: "task info".into(),
            })?;
            match child_text(info, "state").as_deref() {
                Some("success") => {
                    return Ok(info
                        .children()
                        .find(|n| n.tag_name().name() == "result")
                        .and_then(moref))
                }
                Some("error") => {
                    let err = info.children().find(|n| n.tag_name().name() == "error");
                    let message = err
                        .and_then(|e| child_text(e, "localizedMessage"))
                        .unwrap_or_default();
                    let kind = err
                        .and_then(|e| e.children().find(|n| n.tag_name().name() == "fault"))
                        .and_then(super::soap::xsi_type)
                        .unwrap_or_else(|| "Fault".into());
                    return Err(SoapError::Fault(super::soap::Fault { kind, message }));
                }
                _ if start.elapsed() > TASK_LIMIT => {
                    return Err(SoapError::Missing {
                        call: method,
                        what: format!("end within {} s", TASK_LIMIT.as_secs()),
                    })
                }
                _ => tokio::time::sleep(TASK_POLL).await,
            }
        }
    }

    /// RetrieveProperties of one object; the answer's text.
    pub async fn properties(&self, obj: &MoRef, paths: &[&str]) -> Result<String, SoapError> {
        let paths: String = paths.iter().map(|p| el("pathSet", p)).collect();
        let inner = format!(
            "{}<specSet><propSet>{}{paths}</propSet><objectSet>{}<skip>false</skip></objectSet></specSet>",
            self.content.property_collector.xml("_this"),
            el("type", &obj.kind),
            obj.xml("obj"),
        );
        self.soap.call("RetrieveProperties", &inner).await
    }

    pub async fn create_vm(
        &self,
        folder: &MoRef,
        pool: &MoRef,
        config: &str,
    ) -> Result<MoRef, SoapError> {
        let inner = format!("{}{config}{}", folder.xml("_this"), pool.xml("pool"));
        self.task("CreateVM_Task", &inner)
            .await?
            .ok_or(SoapError::Missing {
                call: "CreateVM_Task",
                what: "the new VM".into(),
            })
    }

    pub async fn power_on(&self, vm: &MoRef) -> Result<(), SoapError> {
        self.task("PowerOnVM_Task", &vm.xml("_this"))
            .await
            .map(|_| ())
    }

    pub async fn power_off(&self, vm: &MoRef) -> Result<(), SoapError> {
        self.task("PowerOffVM_Task", &vm.xml("_this"))
            .await
            .map(|_| ())
    }

    pub async fn reconfigure(&self, vm: &MoRef, spec: &str) -> Result<(), SoapError> {
        let inner = format!("{}{spec}", vm.xml("_this"));
        self.task("ReconfigVM_Task", &inner).await.map(|_| ())
    }

    pub async fn destroy(&self, vm: &MoRef) -> Result<(), SoapError> {
        self.task("Destroy_Task", &vm.xml("_this"))
            .await
            .map(|_| ())
    }

    /// Renames a datastore file (`[ds] dir/a` to `[ds] dir/b`); an existing `to` is an error.
    pub async fn move_file(
        &self,
        datacenter: &MoRef,
        from: &str,
        to: &str,
    ) -> Result<(), SoapError> {
        let inner = format!(
            "{}{}{}{}{}<force>false</force>",
            self.content.file_manager.xml("_this"),
            el("sourceName", from),
            datacenter.xml("sourceDatacenter"),
            el("destinationName", to),
            datacenter.xml("destinationDatacenter"),
        );
        self.task("MoveDatastoreFile_Task", &inner)
            .await
            .map(|_| ())
    }

    /// Deletes a datastore file.
    pub async fn delete_file(&self, datacenter: &MoRef, name: &str) -> Result<(), SoapError> {
        let inner = format!(
            "{}{}{}",
            self.content.file_manager.xml("_this"),
            el("name", name),
            datacenter.xml("datacenter"),
        );
        self.task("DeleteDatastoreFile_Task", &inner)
            .await
            .map(|_| ())
    }

    /// The VMs directly in `folder`.
    pub async fn vms_in(&self, folder: &MoRef) -> Result<Vec<MoRef>, SoapError> {
        let body = self.properties(folder, &["childEntity"]).await?;
        let doc = parse(&body)?;
        Ok(doc
            .descendants()
            .filter(|n| n.tag_name().name() == "ManagedObjectReference")
            .filter_map(moref)
            .filter(|m| m.kind == "VirtualMachine")
            .collect())
    }

    pub async fn power_state(&self, vm: &MoRef) -> Result<String, SoapError> {
        let body = self.properties(vm, &["runtime.powerState"]).await?;
        let doc = parse(&body)?;
        Ok(find(&doc, "val")
            .and_then(|n| n.text())
            .unwrap_or_default()
            .to_string())
    }

    /// The VM's name, power state, size, devices and extraConfig.
    pub async fn vm_info(&self, vm: &MoRef) -> Result<VmInfo, SoapError> {
        let body = self
            .properties(
                vm,
                &[
                    "name",
                    "runtime.powerState",
                    "config.hardware.memoryMB",
                    "config.hardware.numCPU",
                    "config.hardware.device",
                    "config.extraConfig",
                ],
            )
            .await?;
        let doc = parse(&body)?;
        let mut info = VmInfo::default();
        for prop in doc
            .descendants()
            .filter(|n| n.tag_name().name() == "propSet")
        {
            let name = child_text(prop, "name").unwrap_or_default();
            let Some(val) = prop.children().find(|n| n.tag_name().name() == "val") else {
                continue;
            };
            let text = val.text().unwrap_or_default().to_string();
            match name.as_str() {
                "name" => info.name = text,
                "runtime.powerState" => info.power_state = text,
                "config.hardware.memoryMB" => info.memory_mb = text.parse().unwrap_or(0),
                "config.hardware.numCPU" => info.cpus = text.parse().unwrap_or(0),
                "config.hardware.device" => {
                    info.devices = val
                        .children()
                        .filter(|n| n.is_element())
                        .map(device)
                        .collect()
                }
                "config.extraConfig" => {
                    info.extra_config = val
                        .children()
                        .filter(|n| n.is_element())
                        .map(|o| {
                            (
                                child_text(o, "key").unwrap_or_default(),
                                child_text(o, "value").unwrap_or_default(),
                            )
                        })
                        .collect()
                }
                _ => {}
            }
        }
        Ok(info)
    }
}

fn device(n: roxmltree::Node<'_, '_>) -> Device {
    let backing = n.children().find(|c| c.tag_name().name() == "backing");
    let backing_text = backing
        .and_then(|b| {
            child_text(b, "fileName")
                .or_else(|| child_text(b, "deviceName"))
                .or_else(|| child_text(b, "proxyURI"))
        })
        .unwrap_or_default();
    let parent = backing
        .and_then(|b| b.children().find(|c| c.tag_name().name() == "parent"))
        .and_then(|p| child_text(p, "fileName"))
        .unwrap_or_default();
    let pci_slot = n
        .children()
        .find(|c| c.tag_name().name() == "slotInfo")
        .and_then(|s| child_text(s, "pciSlotNumber"))
        .and_then(|t| t.parse().ok());
    Device {
        kind: super::soap::xsi_type(n).unwrap_or_default(),
        key: child_text(n, "key")
            .and_then(|k| k.parse().ok())
            .unwrap_or(0),
        backing: backing_text,
        parent,
        pci_slot,
        unit: child_text(n, "unitNumber").and_then(|t| t.parse().ok()),
    }
}
