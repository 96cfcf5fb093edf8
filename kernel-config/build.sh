#!/usr/bin/env bash
# build.sh [OUT]: builds bzImage from Debian's linux-source package, tinyconfig + fragment.config.
# The result is cached under ${XDG_CACHE_HOME:-~/.cache}/tether/kernel/<key>/, where <key> hashes
# the fragment, this script and the source package version; a cache hit takes no time. Prints
# the bzImage path (and copies it to OUT if given).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src_tar=/usr/src/linux-source-6.1.tar.xz
if [ ! -f "$src_tar" ]; then
    echo "kernel-config: $src_tar missing; run 'make deps' (installs linux-source-6.1)" >&2
    exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$(cat "$here/fragment.config" "$here/build.sh" "$here/check.sh" <(echo "$src_version") |
    sha256sum | cut -c1-16)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tether/kernel
out_dir=$cache/$key
mkdir -p "$cache"
# One build at a time: test binaries and parallel checkouts share the cache, and a second
# build would delete the first one's work tree under it.
exec 9>"$cache/build-$key.lock"
flock 9
if [ ! -f "$out_dir/bzImage" ]; then
    work=$cache/build-$key
    rm -rf "$work"
    mkdir -p "$work"
    echo "kernel-config: extracting linux-source $src_version (cache key $key)" >&2
    tar -xJf "$src_tar" -C "$work" --strip-components=1
    cd "$work"
    # KBUILD_BUILD_* pin the version banner so two builds from the same inputs are identical.
    export KBUILD_BUILD_USER=tether KBUILD_BUILD_HOST=tether KBUILD_BUILD_TIMESTAMP="2024-01-01"
    make -s tinyconfig
    ./scripts/kconfig/merge_config.sh -m .config "$here/fragment.config" >/dev/null
    make -s olddefconfig
    "$here/check.sh" "$here/fragment.config" .config
    echo "kernel-config: building bzImage on $(nproc) cores (about 10 minutes, once)" >&2
    make -s -j"$(nproc)" bzImage
    mkdir -p "$out_dir.tmp"
    cp arch/x86/boot/bzImage .config "$out_dir.tmp/"
    rm -rf "$out_dir"
    mv "$out_dir.tmp" "$out_dir"
    cd /
    rm -rf "$work"
fi
if [ $# -ge 1 ]; then
    install -D -m 0644 "$out_dir/bzImage" "$1"
fi
echo "$out_dir/bzImage"
