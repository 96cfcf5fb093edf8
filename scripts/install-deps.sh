#!/usr/bin/env bash
# Installs what the build and tests need, idempotently: a second run changes nothing.
#   install-deps.sh rust     the musl target (static tether) and cargo-fuzz's prerequisites
#   install-deps.sh system   Debian packages: QEMU, kernel source, ISO and ext4 tools, busybox
#   install-deps.sh all      both
set -euo pipefail

want=${1:-all}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then echo sudo; else
            echo "install-deps: must run as root (or have sudo) to install Debian packages" >&2
            exit 1
        fi
    fi
}

install_rust() {
    if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        echo "install-deps: adding rust target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl
    fi
}

# Debian package -> a file it installs, to skip apt entirely when all are present.
SYSTEM_PACKAGES=(
    "qemu-system-x86:/usr/bin/qemu-system-x86_64"
    "qemu-utils:/usr/bin/qemu-img"
    "linux-source-6.1:/usr/src/linux-source-6.1.tar.xz"
    "xorriso:/usr/bin/xorriso"
    "isolinux:/usr/lib/ISOLINUX/isolinux.bin"
    "syslinux-common:/usr/lib/syslinux/modules/bios/ldlinux.c32"
    "busybox-static:/bin/busybox"
    "e2fsprogs:/sbin/mkfs.ext4"
    "flex:/usr/bin/flex"
    "bison:/usr/bin/bison"
    "bc:/usr/bin/bc"
    "libelf-dev:/usr/include/libelf.h"
    "libssl-dev:/usr/include/openssl/ssl.h"
    "cpio:/bin/cpio"
    "musl-tools:/usr/bin/musl-gcc"
    "tmux:/usr/bin/tmux"
    # appliance-side/tests/images.rs builds docker and OCI archives with podman (FROM scratch,
    # --isolation=chroot, its own vfs store) to load through the docker CLI.
    "podman:/usr/bin/podman"
    # appliance-side/tests/pull*.rs and tests/tests/pull.rs: `docker pull` from the CNCF
    # distribution registry on 127.0.0.1 (plain HTTP, TLS, htpasswd made with apache2-utils'
    # htpasswd -B), images pushed into it with skopeo.
    "docker-registry:/usr/bin/docker-registry"
    "apache2-utils:/usr/bin/htpasswd"
    "skopeo:/usr/bin/skopeo"
    # appliance-side/tests/vsphere.rs: govmomi's vSphere simulator (tests/vcsim/main.go), built
    # offline against Debian's govmomi sources with Debian's Go.
    "golang-go:/usr/bin/go"
    "golang-github-vmware-govmomi-dev:/usr/share/gocode/src/github.com/vmware/govmomi/simulator/model.go"
    # User networks (docker network create): a network namespace with a bridge per network, made
    # with iproute2's ip, and a dnsmasq in it for DHCP and the containers' names; the tests
    # fetch published ports with curl.
    "iproute2:/usr/sbin/ip"
    "dnsmasq-base:/usr/sbin/dnsmasq"
    "curl:/usr/bin/curl"
)

install_system() {
    local missing=()
    for entry in "${SYSTEM_PACKAGES[@]}"; do
        [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
    done
    # The tests drive the stock docker CLI (as a client only; no daemon is started).
    command -v docker >/dev/null || missing+=("docker.io")
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo
    sudo=$(need_root)
    # qemu-system-x86 from Debian's main suite depends on the qemu-utils of the same version;
    # a machine with a newer qemu-utils must take both in one call, downgrading qemu-utils.
    local qemu_version
    case " ${missing[*]} " in
        *" qemu-system-x86 "*)
            $sudo apt-get update -qq
            qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
            missing+=("qemu-utils=$qemu_version")
            ;;
    esac
    echo "install-deps: apt-get install ${missing[*]}"
    [ -n "${qemu_version:-}" ] || $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --allow-downgrades \
        --no-install-recommends "${missing[@]}"
}

case "$want" in
    rust) install_rust ;;
    system) install_system ;;
    all) install_rust; install_system ;;
    *) echo "usage: $0 [rust|system|all]" >&2; exit 2 ;;
esac
