#!/bin/bash
# Print the path of a clean Debian root file system made with debootstrap, building it on first use.
#
# The tree is cached under $PDAGENT_TEST_CACHE (default /var/cache/pdagent-sd-test) in a directory named after a
# hash of what went into it (the release among it), so a changed package list builds a new one and an old one is
# never reused by mistake. Callers must never boot or modify the cached tree itself: copy it (cp -a) and use the
# copy.
#
#   packaging/debian-rootfs.sh [bookworm|trixie]   -> /var/cache/pdagent-sd-test/rootfs-<hash>   (default bookworm)
#
# Needs root, debootstrap and Debian's package mirror (the one apt on this machine uses, or
# $PDAGENT_DEBIAN_MIRROR). Takes about 90 s the first time (trixie about two minutes), nothing after.
set -euo pipefail

suite=${1:-bookworm}
case $suite in
    bookworm|trixie) ;;
    *) echo "debian-rootfs: unknown release $suite (bookworm or trixie)" >&2; exit 2 ;;
esac
variant=minbase
# Only what a minimal systemd host has; the package's own dependencies (python3-systemd, python3-requests, ...)
# are deliberately NOT here: installing the .deb with apt must fetch them from Debian.
include=systemd,systemd-sysv,dbus,python3

cache_dir=${PDAGENT_TEST_CACHE:-/var/cache/pdagent-sd-test}

die() { echo "debian-rootfs: $*" >&2; exit 1; }

# The Debian mirror that apt on this machine already uses (deb822 .sources or one-line .list files).
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($i ~ /\/debian\/?$/) print $i; break } }' "$f"
    done
}

mirror=${PDAGENT_DEBIAN_MIRROR:-$(host_mirror | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}

[ "$(id -u)" = 0 ] || die "must run as root"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

key=$(printf '%s\n' "$suite" "$variant" "$include" | sha256sum | cut -c1-16)
root=$cache_dir/rootfs-$key

mkdir -p "$cache_dir"
exec 9>"$cache_dir/rootfs-$key.lock"
flock 9   # another run building the same tree: wait for it, then reuse its result

if [ ! -e "$root/.pdagent-rootfs-complete" ]; then
    tmp=$cache_dir/rootfs-$key.tmp.$$
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    echo "debian-rootfs: debootstrap $suite from $mirror into $root (once; about 90 s)" >&2
    mkdir -p "$cache_dir/debs-$suite"
    debootstrap --variant="$variant" --include="$include" --cache-dir="$cache_dir/debs-$suite" \
        "$suite" "$tmp" "$mirror" >"$cache_dir/debootstrap-$key.log" 2>&1 \
        || die "debootstrap failed; see $cache_dir/debootstrap-$key.log"
    echo "deb $mirror $suite main" >"$tmp/etc/apt/sources.list"
    echo pdagent-test >"$tmp/etc/hostname"
    # Empty machine-id: each boot of a copy gets its own id from systemd-nspawn.
    : >"$tmp/etc/machine-id"
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    printf '%s\n%s\n%s\n%s\n' "suite=$suite" "variant=$variant" "include=$include" "mirror=$mirror" \
        >"$tmp/.pdagent-rootfs-complete"
    rm -rf "$root"
    mv "$tmp" "$root"
    trap - EXIT
fi
echo "$root"
