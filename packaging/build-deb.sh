#!/bin/bash
# Build the Debian package: dist/pdagent-sd_<version>_all.deb, then run lintian on it and print what it says.
#
#   packaging/build-deb.sh [--outdir DIR] [--version VERSION] [--no-lintian] [--keep]
#
# The source tree is copied to a temporary build directory with packaging/deb/debian/ as its debian/, and built
# there with `dpkg-buildpackage -us -uc -b` (debhelper 13, dh-python, pybuild-plugin-pyproject): the work tree is
# never written to, except the .deb that lands in --outdir (default: dist/).
# --version builds the same tree under another Debian version (a changelog entry added in the temporary copy
# only): the package test uses it to build an upgrade.
# --keep leaves the build directory (and its build.log) in place for a look.
# Exit status: non-zero if the build fails or lintian reports an error.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
outdir=$top/dist
version=
run_lintian=yes
keep=no

while [ $# -gt 0 ]; do
    case $1 in
        --outdir) outdir=$2; shift 2 ;;
        --version) version=$2; shift 2 ;;
        --no-lintian) run_lintian=no; shift ;;
        --keep) keep=yes; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb: unknown argument $1" >&2; exit 2 ;;
    esac
done

# Debian's own interpreter and tools, never a python3 from pyenv, a venv or /usr/local earlier on PATH: the
# package is built for, and depends on, /usr/bin/python3.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV

for tool in dpkg-buildpackage dh pybuild help2man; do
    command -v "$tool" >/dev/null || {
        echo "build-deb: $tool is missing; apt-get install debhelper dh-python pybuild-plugin-pyproject help2man" >&2
        exit 1
    }
done

tree_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$top/pyproject.toml" | head -n1)
deb_version=$(dpkg-parsechangelog -l "$top/packaging/deb/debian/changelog" -S Version)
case $deb_version in
    "$tree_version"|"$tree_version"[-+~]*) ;;
    *) echo "build-deb: debian/changelog says $deb_version, pyproject.toml says $tree_version:" \
            "add a changelog entry" >&2
       exit 1 ;;
esac

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pdagent-sd-deb.XXXXXX")
if [ "$keep" = yes ]; then
    echo "build-deb: keeping the build directory $work"
else
    trap 'rm -rf "$work"' EXIT
fi
src=$work/pdagent-sd

# The project as it is in the work tree, without VCS data, build outputs and caches. (tar exits 1 when a
# file changes while it reads, e.g. an editor saving: that is not a reason to fail the build.)
mkdir "$src"
{ tar -C "$top" -c --warning=no-file-changed \
    --exclude=./.git --exclude=./dist --exclude=./build --exclude=./.venv \
    --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache --exclude=.mypy_cache \
    --exclude=.ruff_cache --exclude=.hypothesis --exclude=./packaging/deb \
    . || [ $? = 1 ]; } | tar -C "$src" -x
cp -R "$top/packaging/deb/debian" "$src/debian"

if [ -n "$version" ]; then
    {
        printf 'pdagent-sd (%s) unstable; urgency=medium\n\n  * Rebuilt as %s.\n\n -- %s  %s\n\n' \
            "$version" "$version" "pdagent-sd developers <dev@pdagent-sd.invalid>" "$(date -R)"
        cat "$src/debian/changelog"
    } >"$work/changelog"
    mv "$work/changelog" "$src/debian/changelog"
fi

echo "== dpkg-buildpackage -us -uc -b (log: build.log in the build dir)"
if ! (cd "$src" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (last 60 lines above)" >&2
    exit 1
fi

debs=("$work"/pdagent-sd_*_all.deb)
changes=("$work"/pdagent-sd_*.changes)
cp "${debs[@]}" "$outdir"/
for deb in "${debs[@]}"; do
    echo "built $outdir/${deb##*/}"
done

status=0
if [ "$run_lintian" = yes ]; then
    if command -v lintian >/dev/null; then
        echo "== lintian --display-info ${changes[0]##*/}"
        lintian --display-info "${changes[0]}" || status=$?
        [ "$status" = 0 ] && echo "lintian: no errors"
    else
        echo "build-deb: lintian is not installed; skipped" >&2
    fi
fi
exit "$status"
