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

step "the containerVM kernel (built once, cached under ~/.cache/tether) and the initramfs"
make -s boot

export TETHER_HOME
TETHER_HOME=$(mktemp -d /tmp/tether-demo.XXXXXX)
cleanup() {
    [ -f "$TETHER_HOME/appliance.pid" ] && kill "$(cat "$TETHER_HOME/appliance.pid")" 2>/dev/null || true
    rm -rf "$TETHER_HOME"
}
trap cleanup EXIT

step "the sample image: Debian's busybox-static in a root filesystem"
ROOTFS=$TETHER_HOME/sample-rootfs
mkdir -p "$ROOTFS"/{bin,etc,tmp,root}
cp /bin/busybox "$ROOTFS/bin/"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOTFS/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
echo "root:x:0:" > "$ROOTFS/etc/group"

step "starting the session server"
$BIN/appliance serve --detach >/dev/null
echo "docker API: unix://$TETHER_HOME/docker.sock"

step "appliance run: a containerVM under QEMU (software emulation; a few seconds)"
set +e
$BIN/appliance run --name demo "$ROOTFS" -- /bin/sh -c \
    'echo "Hello from inside a containerVM: tether is PID 1, this shell is the container."; uname -a'
code=$?
set -e

step "the container exited $code; docker sees it too"
docker -H "unix://$TETHER_HOME/docker.sock" ps -a 2>/dev/null || $BIN/appliance ps -a
