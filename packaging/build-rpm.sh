#!/bin/bash
# Build the RPM on this Debian machine: dist/pdagent-sd-<version>-1.noarch.rpm and the source RPM
# dist/pdagent-sd-<version>-1.src.rpm, then run rpmlint on the spec and both packages and print what it says.
#
#   packaging/build-rpm.sh [--outdir DIR] [--no-rpmlint] [--keep]
#
# packaging/rpm/pdagent-sd.spec is written for Fedora / RHEL build hosts. Debian's rpm lacks the macros such
# hosts get from python3-devel, pyproject-rpm-macros and systemd-rpm-macros; packaging/rpm/debian-host/macros
# provides the few the spec uses (docs/packaging.md says which and why), loaded with rpmbuild --load.
# The build dependencies are RPM names that Debian's (empty) rpm database cannot know, so rpmbuild runs with
# --nodeps and this script checks the Debian packages that provide the same tools instead.
# Nothing here installs or tests the RPM: that needs a RHEL-family system, which these machines are not.
# Exit status: non-zero if the build fails or rpmlint reports an error.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
hostdir=$top/packaging/rpm/debian-host
spec=$top/packaging/rpm/pdagent-sd.spec
outdir=$top/dist
run_rpmlint=yes
keep=no

while [ $# -gt 0 ]; do
    case $1 in
        --outdir) outdir=$2; shift 2 ;;
        --no-rpmlint) run_rpmlint=no; shift ;;
        --keep) keep=yes; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-rpm: unknown argument $1" >&2; exit 2 ;;
    esac
done

# Debian's own interpreter and tools, never a python3 from pyenv, a venv or /usr/local earlier on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

missing=()
command -v rpmbuild >/dev/null || missing+=(rpm)
command -v help2man >/dev/null || missing+=(help2man)
python3 -c 'import build' 2>/dev/null || missing+=(python3-build)
python3 -c 'import installer' 2>/dev/null || missing+=(python3-installer)
python3 -c 'import setuptools' 2>/dev/null || missing+=(python3-setuptools)
python3 -c 'import requests, sdnotify, systemd.daemon' 2>/dev/null || missing+=(python3-requests python3-sdnotify python3-systemd)
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-rpm: missing on this machine: apt-get install ${missing[*]}" >&2
    exit 1
fi

spec_version=$(rpmspec -q --srpm --qf '%{VERSION}' --define "pdagent_hostdir $hostdir" --load "$hostdir/macros" \
    "$spec" 2>/dev/null)
tree_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
if [ "$spec_version" != "$tree_version" ]; then
    echo "build-rpm: the spec says Version $spec_version, pyproject.toml says $tree_version: update the spec" >&2
    exit 1
fi

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pdagent-sd-rpm.XXXXXX")
if [ "$keep" = yes ]; then
    echo "build-rpm: keeping the build directory $work"
else
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"/{SOURCES,SPECS,BUILD,RPMS,SRPMS} "$work/src/pdagent-sd-$tree_version"

# Source0: the project as it is in the work tree, without VCS data, build outputs, caches and the debian/ dir.
# (tar exits 1 when a file changes while it reads: not a reason to fail the build.)
{ tar -C "$top" -c --warning=no-file-changed \
    --exclude=./.git --exclude=./dist --exclude=./build --exclude=./.venv \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis --exclude=./packaging/deb \
    . || [ $? = 1 ]; } | tar -C "$work/src/pdagent-sd-$tree_version" -x
tar -C "$work/src" -czf "$work/SOURCES/pdagent-sd-$tree_version.tar.gz" "pdagent-sd-$tree_version"
cp "$top/units/pdagent.sysusers" "$work/SOURCES/pdagent.sysusers"
cp "$spec" "$work/SPECS/"

echo "== rpmbuild -ba --nodeps (Fedora macros from packaging/rpm/debian-host/macros; log: build.log)"
if ! rpmbuild -ba --nodeps \
        --define "_topdir $work" \
        --define "pdagent_hostdir $hostdir" \
        --define "packager pdagent-sd developers <dev@pdagent-sd.invalid>" \
        --load "$hostdir/macros" \
        "$work/SPECS/pdagent-sd.spec" >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    echo "build-rpm: rpmbuild failed (last 60 lines above)" >&2
    exit 1
fi

rpms=("$work"/RPMS/noarch/pdagent-sd-*.noarch.rpm "$work"/SRPMS/pdagent-sd-*.src.rpm)
cp "${rpms[@]}" "$outdir"/
for rpm in "${rpms[@]}"; do
    echo "built $outdir/${rpm##*/}"
done

status=0
if [ "$run_rpmlint" = yes ]; then
    if command -v rpmlint >/dev/null; then
        echo "== rpmlint -c packaging/rpm/rpmlint.toml pdagent-sd.spec ${rpms[*]##*/}"
        rpmlint -c "$top/packaging/rpm/rpmlint.toml" "$work/SPECS/pdagent-sd.spec" "${rpms[@]}" || status=$?
        [ "$status" = 0 ] && echo "rpmlint: no errors"
    else
        echo "build-rpm: rpmlint is not installed; skipped" >&2
    fi
fi
exit "$status"
