//! The names tether and the appliance must agree on, in one place. Each is a contract between a
//! guest built from one tree and an appliance built from another: changing one breaks every
//! containerVM booted from an older bootstrap ISO.

/// The virtio-serial port the appliance's QEMU launcher names the channel
/// (`-device virtserialport,name=...`); tether finds `/dev/vportNpM` by it.
pub const VIRTIO_PORT_NAME: &str = "org.tether.channel";

/// The fw_cfg file that carries the container's config (`-fw_cfg name=...,file=...`).
pub const FW_CFG_NAME: &str = "opt/org.tether/config";

/// Where the guest kernel exposes [`FW_CFG_NAME`]'s bytes.
pub const FW_CFG_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.tether/config/raw";

/// The COM port the channel uses when there is no virtio port: the second 16550 (the first is
/// the console), QEMU `-serial` or vSphere's network serial port.
pub const COM_DEVICE: &str = "/dev/ttyS1";

/// The ext4 label of the image disk, unless the config names another.
pub const DEFAULT_DISK_LABEL: &str = "containerfs";

/// PATH for a process whose image sets none (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities a docker container keeps by default (without the `CAP_` prefix): tether
/// drops every other one, and the engine refuses a `--cap-add` outside them.
pub const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The wire session id of the container's main process; execs and extra sessions follow it.
/// Session 0 is the control stream.
pub const MAIN_SESSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fw_cfg_path_is_the_name_under_by_name() {
        assert_eq!(
            FW_CFG_PATH,
            format!("/sys/firmware/qemu_fw_cfg/by_name/{FW_CFG_NAME}/raw")
        );
    }
}
