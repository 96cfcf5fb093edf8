//! tether as PID 1: boot, run the container, power off. Nothing here may panic or return: a PID 1
//! that exits panics the kernel. Every failure is reported on the console and, when the config
//! says who we are, over the channel; then the VM powers off cleanly.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guestinfo::contract::{COM_DEVICE, VIRTIO_PORT_NAME};

use crate::agent::{self, AgentConfig, Failure};
use crate::boot::{self, BootError};
use crate::channel::{self, ChannelSpec};
use crate::log;
use crate::os::{Os, Power, Real};

/// How long to wait for the appliance to take the last output (and a boot failure report).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn main() -> ! {
    crate::timing::mark("pid1_entry");
    std::panic::set_hook(Box::new(|info| {
        log::error(&format!("internal error, powering off: {info}"));
        power_off(&Real, Power::Off);
    }));
    // Non-dumpable: the container's processes cannot open /proc/1/fd (the channel) or ptrace us.
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only; no memory is passed to the kernel.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let power = run(&Real);
    power_off(&Real, power)
}

fn power_off(os: &dyn Os, action: Power) -> ! {
    os.sync();
    if let Err(e) = os.remount_readonly(std::path::Path::new("/")) {
        log::debug(&format!("remount / read-only: {e}"));
    }
    os.sync();
    let e = os.power(action);
    log::error(&format!("power {action:?} failed: {e}; halting"));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The channel device: a path from the config, a virtio port by name, else the serial port.
fn channel_path(configured: Option<&str>) -> PathBuf {
    match configured {
        Some(p) if p.starts_with('/') => PathBuf::from(p),
        Some(name) => channel::find_virtio_port(Path::new("/sys"), name)
            .unwrap_or_else(|_| PathBuf::from(COM_DEVICE)),
        None => match channel::find_virtio_port(Path::new("/sys"), VIRTIO_PORT_NAME) {
            Ok(p) => p,
            Err(why) => {
                log::info(&format!("{why}; using the serial port {COM_DEVICE}"));
                PathBuf::from(COM_DEVICE)
            }
        },
    }
}

/// Opens the channel device, saying on the console why it could not be.
fn open_channel(path: &Path, consequence: &str) -> Option<OwnedFd> {
    channel::open_device(path)
        .map_err(|e| {
            log::error(&format!(
                "cannot open the channel {}: {e}; {consequence}",
                path.display()
            ))
        })
        .ok()
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            log::error(&format!("cannot start the runtime: {e}"));
            None
        }
    }
}

/// Reports a boot failure over the channel if we know who we are; the console has it already.
fn report(identity: Known, channel: PathBuf, message: String) -> Power {
    log::error(&message);
    let Some((id, secret)) = identity else {
        log::error(
            "the config does not say which container this is; the error is on the console only",
        );
        return Power::Off;
    };
    let Some(device) = open_channel(&channel, "the failure is on the console only") else {
        return Power::Off;
    };
    if let Some(rt) = runtime() {
        let failure = Failure {
            container_id: id,
            secret,
            message,
            exit_code: 125,
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(
            &rt,
            agent::report_failure(
                failure,
                ChannelSpec::Device(channel),
                Some(device),
                DRAIN_TIMEOUT,
            ),
        );
    }
    Power::Off
}

/// The container's id and secret, when the config yields that much: a failure can then be
/// reported over the channel.
type Known = Option<(String, Vec<u8>)>;

/// The spec from fw_cfg or `tether.config=` (QEMU, tests), else VMware guestinfo (vSphere); on
/// failure, who the container is if that much decodes.
fn load_spec(os: &dyn Os) -> Result<guestinfo::ContainerSpec, (Known, BootError)> {
    match boot::read_config(os) {
        Ok(text) => guestinfo::spec_from_vmx(&text).map_err(|e| {
            (
                guestinfo::identity_from_vmx(&text),
                BootError::ConfigInvalid(e),
            )
        }),
        Err(e) => match crate::vmware::load_spec() {
            Some(r) => r.map_err(|(identity, e)| (identity, e.into())),
            None => Err((None, e)),
        },
    }
}

fn run(os: &dyn Os) -> Power {
    if let Err(e) = boot::mount_base(os) {
        log::error(&format!("boot: {e}"));
        return Power::Off;
    }
    crate::timing::mark("base_mounted");
    let spec = match load_spec(os) {
        Ok(s) => s,
        Err((identity, e)) => return report(identity, channel_path(None), e.to_string()),
    };
    log::set_level(spec.debug);
    crate::timing::mark("config_loaded");
    let channel = channel_path(spec.channel_device.as_deref());
    let identity = Some((spec.id.clone(), spec.secret.clone()));
    // The channel is opened before the switch: the container's /dev never has its node.
    let Some(device) = open_channel(&channel, "nothing can attach to this container") else {
        return Power::Off;
    };
    crate::timing::mark("channel_open");
    let mut network = Vec::new();
    let root = boot::find_disk(
        os,
        &spec.disk_label,
        Duration::from_millis(spec.disk_wait_ms),
    )
    .and_then(|disk| {
        crate::timing::mark("disk_found");
        // A maintenance boot (hold) runs only built-ins: no network.
        if !spec.main_session().is_some_and(|s| s.is_hold()) {
            network = crate::net::bring_up(&crate::net::netlink::Real, &spec)?;
            crate::timing::mark("network_up");
        }
        boot::prepare_root(os, &disk, &spec, &network)
    })
    .and_then(|root| {
        crate::timing::mark("root_mounted");
        boot::switch_root(os, &root)
    });
    if let Err(e) = root {
        drop(device);
        return report(identity, channel, format!("boot: {e}"));
    }
    crate::timing::mark("root_ready");
    let Some(rt) = runtime() else {
        return Power::Off;
    };
    let cfg = AgentConfig {
        spec,
        root: PathBuf::from("/"),
        channel: ChannelSpec::Device(channel),
        device: Some(device),
        drain_timeout: DRAIN_TIMEOUT,
        network,
    };
    let container_id = cfg.spec.id.clone();
    let local = tokio::task::LocalSet::new();
    let outcome = local.block_on(&rt, agent::run(cfg));
    let signal = outcome
        .signal
        .and_then(wire::message::signal_name)
        .unwrap_or("");
    // One update with the whole state, so a reader never sees a torn status.
    crate::vmware::write_status(
        &container_id,
        &format!(
            "state=exited exitcode={} signal={signal}",
            outcome.exit_code
        ),
    );
    log::info(&format!(
        "main session exited {}; shutting down",
        outcome.exit_code
    ));
    if outcome.restart {
        Power::Restart
    } else {
        Power::Off
    }
}
