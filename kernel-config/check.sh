#!/usr/bin/env bash
# check.sh FRAGMENT CONFIG: fails, naming each one, if CONFIG lacks an option FRAGMENT requires
# (or has one FRAGMENT sets `=n`).
set -euo pipefail
fragment=$1 config=$2
missing=0
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) ;; *) continue ;; esac
    name=${line%%=*}
    # `=n`: the option must be off (kconfig writes "# NAME is not set", or omits it).
    if [ "${line#*=}" = n ]; then
        if grep -qE "^$name=" "$config"; then
            echo "kernel-config: $name: fragment wants it off, built config has: $(grep -E "^$name=" "$config")" >&2
            missing=$((missing + 1))
        fi
        continue
    fi
    if ! grep -qxF "$line" "$config"; then
        have=$(grep -E "^$name=|^# $name is not set" "$config" || echo "absent")
        echo "kernel-config: $name: fragment wants '${line#*=}', built config has: $have" >&2
        missing=$((missing + 1))
    fi
done < "$fragment"
if [ "$missing" -gt 0 ]; then
    echo "kernel-config: $missing required option(s) missing; a dependency of each is not enabled" >&2
    echo "kernel-config: add the dependency to $fragment (see 'make menuconfig' help for the option)" >&2
    exit 1
fi
echo "kernel-config: all $(grep -c '^CONFIG_' "$fragment") required options present"
