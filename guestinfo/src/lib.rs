//! A containerVM's configuration in VMware guestinfo form: VIC's extraconfig key encoding (with
//! escaping so values may contain `|`), the VMX `key = "value"` text that carries it (VMX files on
//! vSphere, fw_cfg under QEMU), and the typed container spec tether runs. Tether decodes it; the
//! toolchain and the appliance encode it. One codec, both directions.

#![forbid(unsafe_code)]

pub mod contract;
#[cfg(feature = "testing")]
pub mod fuzzing;
pub mod keys;
pub mod mounts;
pub mod network;
pub mod spec;
pub mod status;
pub mod vmx;

pub use keys::{KeyError, KeyPath, KeySet, KeySource, KeyWriter, LookupSource};
pub use mounts::{CopyMode, MountSource, MountSpec};
pub use network::{Cidr, NetworkEndpoint, PciSlot, TrustLevel};
pub use spec::{ContainerSpec, Rlimit, SessionSpec};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("config text: {0}")]
    Vmx(#[from] vmx::VmxError),
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// Parses VMX text and decodes the spec in it.
pub fn spec_from_vmx(text: &str) -> Result<ContainerSpec, ConfigError> {
    let keys = KeySet::from_pairs(vmx::parse(text)?);
    Ok(spec::decode(&keys)?)
}

/// Encodes a spec as VMX text (sorted keys: the same spec always gives the same bytes).
pub fn spec_to_vmx(spec: &ContainerSpec) -> String {
    let pairs = spec::encode(spec);
    vmx::write(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The container id and channel secret alone, for reporting a config that fails to decode as a
/// whole: if these two keys are readable, the appliance can still be told what went wrong.
pub fn identity_from_vmx(text: &str) -> Option<(String, Vec<u8>)> {
    let keys = KeySet::from_pairs(vmx::parse(text).ok()?);
    let r = KeyPath::read_only();
    let id = keys.required(r.field("common").field("id").as_str()).ok()?;
    let secret = keys
        .bytes(r.field("channel").field("secret").as_str())
        .ok()??;
    Some((id, secret))
}

/// One network endpoint as VMX text: the `networks|NAME` keys a whole config would carry for
/// it, alone. What the appliance sends when it hot-adds a NIC (`Control::NetworkAdd`), so tether
/// decodes a hot-added endpoint with the same code as a boot-time one.
pub fn endpoint_to_vmx(name: &str, endpoint: &NetworkEndpoint) -> String {
    let mut w = KeyWriter::new();
    let one = std::collections::BTreeMap::from([(name.to_string(), endpoint.clone())]);
    network::encode(&mut w, &KeyPath::read_only(), &one);
    let pairs = w.into_pairs();
    vmx::write(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The endpoint [`endpoint_to_vmx`] wrote: exactly one, else an error naming what is there.
pub fn endpoint_from_vmx(text: &str) -> Result<(String, NetworkEndpoint), ConfigError> {
    let keys = KeySet::from_pairs(vmx::parse(text)?);
    let mut all = network::decode(&keys, &KeyPath::read_only())?;
    let count = all.len();
    match all.pop_first() {
        Some(one) if count == 1 => Ok(one),
        _ => Err(ConfigError::Key(KeyError {
            key: KeyPath::read_only().field("networks").to_string(),
            problem: format!("one network endpoint expected, {count} given"),
        })),
    }
}
