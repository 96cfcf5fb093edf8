#!/usr/bin/env bash
# make demo: build what is needed, start the session server, boot one containerVM from the
# busybox sample image under QEMU, show what it printed, and clean up.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing what is missing (apt packages, rust musl target)"
./scripts/install-deps.sh all

step "building tether (static), the appliance and the toolchain"
cargo build -q --release -p tether --target x86_64-unknown-linux-musl
cargo build -q --release -p appliance-side -p bootstrap-iso
BIN=target/release

step "the containerVM kernel (built once, then cached under ~/.cache/tether/kernel)"
KERNEL=$(./kernel-config/build.sh | tail -n 1)
echo "$KERNEL"

export TETHER_HOME
TETHER_HOME=$(mktemp -d /tmp/tether-demo.XXXXXX)
cleanup() {
    [ -f "$TETHER_HOME/appliance.pid" ] && kill "$(cat "$TETHER_HOME/appliance.pid")" 2>/dev/null || true
    rm -rf "$TETHER_HOME"
}
trap cleanup EXIT

step "initramfs (tether as /init) and the sample image disk (Debian's busybox-static)"
$BIN/bootstrap-iso initramfs --tether target/x86_64-unknown-linux-musl/release/tether \
    -o "$TETHER_HOME/initramfs.gz"
ROOTFS=$TETHER_HOME/rootfs
mkdir -p "$ROOTFS"/{bin,etc,tmp,root}
cp /bin/busybox "$ROOTFS/bin/"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOTFS/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
echo "root:x:0:" > "$ROOTFS/etc/group"
$BIN/bootstrap-iso disk --rootfs "$ROOTFS" --format qcow2 -o "$TETHER_HOME/busybox.qcow2"

step "starting the session server"
$BIN/appliance serve --detach >/dev/null
echo "docker API: unix://$TETHER_HOME/docker.sock"

ID=$($BIN/appliance create --name demo -- /bin/sh -c \
    'echo "Hello from inside a containerVM: tether is PID 1, this shell is the container."; uname -a' \
    2>/dev/null)

step "booting containerVM ${ID:0:12} under QEMU (software emulation; a few seconds)"
qemu-img create -q -f qcow2 -F qcow2 -b "$TETHER_HOME/busybox.qcow2" "$TETHER_HOME/demo.qcow2"
timeout 120 qemu-system-x86_64 -machine q35 -m 256 -display none -no-reboot \
    -kernel "$KERNEL" -initrd "$TETHER_HOME/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet" \
    -drive "file=$TETHER_HOME/demo.qcow2,format=qcow2,if=virtio" \
    -device virtio-serial-pci \
    -chardev "socket,id=ch0,path=$TETHER_HOME/channel.sock,server=off,reconnect=1" \
    -device virtserialport,chardev=ch0,name=org.tether.channel \
    -fw_cfg "name=opt/org.tether/config,file=$TETHER_HOME/containers/$ID/config.vmx" \
    -serial "file:$TETHER_HOME/console.log" &
QEMU=$!

code=$($BIN/appliance wait demo)
step "what the container printed (appliance logs demo; docker -H unix://... logs works too)"
$BIN/appliance logs demo
step "the container exited $code; the VM powers itself off"
wait "$QEMU" && echo "QEMU exited cleanly"
