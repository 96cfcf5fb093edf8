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

step "the sample image: Debian's busybox-static, imported and saved by podman (a peer tool)"
ROOTFS=$TETHER_HOME/sample-rootfs
mkdir -p "$ROOTFS"/{bin,etc,tmp,root}
cp /bin/busybox "$ROOTFS/bin/"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOTFS/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOTFS/etc/passwd"
echo "root:x:0:" > "$ROOTFS/etc/group"
tar -C "$ROOTFS" -cf "$TETHER_HOME/rootfs.tar" .
# podman keeps its own store under the demo's directory, never the system's.
PODMAN=(podman --root "$TETHER_HOME/podman/root" --runroot "$TETHER_HOME/podman/run"
        --storage-driver vfs --events-backend none)
HOME=$TETHER_HOME "${PODMAN[@]}" import -q --change 'CMD ["/bin/sh"]' \
    --change 'ENV GREETING="Hello from inside a containerVM"' \
    "$TETHER_HOME/rootfs.tar" tether-demo/busybox:latest >/dev/null
HOME=$TETHER_HOME "${PODMAN[@]}" save -q --format docker-archive \
    -o "$TETHER_HOME/busybox.tar" tether-demo/busybox:latest

step "starting the session server (the docker API is its user interface)"
$BIN/appliance serve --detach >/dev/null
DOCKER=(docker -H "unix://$TETHER_HOME/docker.sock")
echo "docker API: unix://$TETHER_HOME/docker.sock"

step "docker load"
"${DOCKER[@]}" load -i "$TETHER_HOME/busybox.tar"

step "docker run: a containerVM under QEMU (software emulation; a few seconds)"
set +e
"${DOCKER[@]}" run --rm --name demo localhost/tether-demo/busybox /bin/sh -c \
    'echo "$GREETING: tether is PID 1, this shell is the container."; uname -a; exit 3'
code=$?
set -e

step "docker run exited $code, the container's own code; --rm removed it"
"${DOCKER[@]}" ps -a
if [ "$code" != 3 ]; then
    echo "demo: expected the container's exit code 3, got $code" >&2
    exit 1
fi
