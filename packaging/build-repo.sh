#!/bin/bash
# Build the signed package repositories: an apt repository in dist/repo/ and a dnf/yum one in dist/rpmrepo/.
#
#   packaging/build-repo.sh [--outdir DIR] [--url URL] [--deb FILE]... [--rpm FILE]... [--key FPR]
#                           [--key-expiry 2y] [--no-rpm]
#
# Without --deb / --rpm the packages are built first (build-deb.sh, build-rpm.sh; the RPM only when rpmbuild and
# its helpers are installed; --no-rpm: the apt repository only). Without --key a throwaway signing key is made
# for this build (RSA 4096, SHA-512, expiring after --key-expiry) in a temporary GNUPGHOME that is deleted at
# exit: the private half is never written anywhere else. A maintainer publishing a release passes --key with the fingerprint of the project's
# real key, which must then be in $GNUPGHOME (docs/packaging.md, "Signed repositories").
#
# Output (DIR defaults to dist/, URL to https://pdagent-sd.example):
#   DIR/repo/dists/stable/{Release,Release.gpg,InRelease}, dists/stable/main/binary-all/Packages{,.gz},
#   DIR/repo/pool/main/p/pdagent-sd/*.deb, DIR/repo/pdagent-sd-archive-keyring.gpg (binary public keyring),
#   DIR/repo/pdagent-sd.sources (deb822, Signed-By: the keyring installed in /usr/share/keyrings)
#   DIR/rpmrepo/*.rpm (signed), DIR/rpmrepo/repodata/ with repomd.xml.asc, DIR/rpmrepo/RPM-GPG-KEY-pdagent-sd,
#   DIR/rpmrepo/pdagent-sd.repo (gpgcheck=1, repo_gpgcheck=1)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
outdir=$top/dist
url=https://pdagent-sd.example
debs=()
rpms=()
key=
expiry=2y
with_rpm=yes
while [ $# -gt 0 ]; do
    case $1 in
        --outdir) outdir=$2; shift 2 ;;
        --url) url=${2%/}; shift 2 ;;
        --deb) debs+=("$2"); shift 2 ;;
        --rpm) rpms+=("$2"); shift 2 ;;
        --key) key=$2; shift 2 ;;
        --key-expiry) expiry=$2; shift 2 ;;
        --no-rpm) with_rpm=no; shift ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-repo: unknown argument $1" >&2; exit 2 ;;
    esac
done

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
for tool in gpg apt-ftparchive; do
    command -v "$tool" >/dev/null || { echo "build-repo: $tool is missing; apt-get install gnupg apt-utils" >&2; exit 1; }
done

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pdagent-sd-repo.XXXXXX")
trap 'gpgconf --homedir "$work/gnupg" --kill all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# --- the packages ----------------------------------------------------------------------------------------------
if [ ${#debs[@]} -eq 0 ]; then
    bash "$top/packaging/build-deb.sh" --outdir "$work/built" --no-lintian
    debs=("$work"/built/pdagent-sd_*_all.deb)
fi
if [ "$with_rpm" = yes ] && [ ${#rpms[@]} -eq 0 ] && command -v rpmbuild >/dev/null && command -v createrepo_c >/dev/null; then
    if bash "$top/packaging/build-rpm.sh" --outdir "$work/built" --no-rpmlint; then
        rpms=("$work"/built/pdagent-sd-*.noarch.rpm)
    else
        echo "build-repo: the RPM did not build; dist/rpmrepo is left out" >&2
    fi
fi

# --- the signing key -------------------------------------------------------------------------------------------
if [ -z "$key" ]; then
    export GNUPGHOME=$work/gnupg
    install -d -m 0700 "$GNUPGHOME"
    printf 'personal-digest-preferences SHA512\ncert-digest-algo SHA512\ndigest-algo SHA512\n' >"$GNUPGHOME/gpg.conf"
    gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
        --quick-generate-key "pdagent-sd archive signing key (throwaway, $(date -u +%Y-%m-%d)) <dev@pdagent-sd.invalid>" \
        rsa4096 sign "$expiry" 2>/dev/null
    key=$(gpg --batch --quiet --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
    echo "build-repo: signed with a throwaway key made for this build: $key (expires in $expiry; not kept)"
fi
gpg_sign=(gpg --batch --yes --quiet --local-user "$key" --digest-algo SHA512)

# --- apt ------------------------------------------------------------------------------------------------------
repo=$outdir/repo
rm -rf "$repo"
mkdir -p "$repo/pool/main/p/pdagent-sd" "$repo/dists/stable/main/binary-all"
cp "${debs[@]}" "$repo/pool/main/p/pdagent-sd/"
# SHA-256 and SHA-512 only: no MD5 or SHA1 left for a client to fall back on.
weak=(-o APT::FTPArchive::MD5=false -o APT::FTPArchive::SHA1=false)
(cd "$repo" && apt-ftparchive "${weak[@]}" --arch all packages pool >dists/stable/main/binary-all/Packages)
gzip -9n --keep "$repo/dists/stable/main/binary-all/Packages"
(cd "$repo/dists/stable" && apt-ftparchive "${weak[@]}" \
    -o APT::FTPArchive::Release::Origin=pdagent-sd \
    -o APT::FTPArchive::Release::Label=pdagent-sd \
    -o APT::FTPArchive::Release::Suite=stable \
    -o APT::FTPArchive::Release::Codename=stable \
    -o APT::FTPArchive::Release::Architectures=all \
    -o APT::FTPArchive::Release::Components=main \
    -o APT::FTPArchive::Release::Description="pdagent-sd, the systemd-native PagerDuty agent" \
    release . >"$work/Release")
mv "$work/Release" "$repo/dists/stable/Release"
"${gpg_sign[@]}" --clearsign --output "$repo/dists/stable/InRelease" "$repo/dists/stable/Release"
"${gpg_sign[@]}" --detach-sign --armor --output "$repo/dists/stable/Release.gpg" "$repo/dists/stable/Release"
gpg --batch --export "$key" >"$repo/pdagent-sd-archive-keyring.gpg"
cat >"$repo/pdagent-sd.sources" <<EOF
Types: deb
URIs: $url/repo
Suites: stable
Components: main
Signed-By: /usr/share/keyrings/pdagent-sd-archive-keyring.gpg
EOF
echo "apt repository: $repo (sources: $repo/pdagent-sd.sources)"

# --- dnf / yum ------------------------------------------------------------------------------------------------
[ "$with_rpm" = yes ] && [ ${#rpms[@]} -gt 0 ] || exit 0
command -v createrepo_c >/dev/null || { echo "build-repo: createrepo_c is missing; apt-get install createrepo-c" >&2; exit 1; }
rpmrepo=$outdir/rpmrepo
rm -rf "$rpmrepo"
mkdir -p "$rpmrepo"
cp "${rpms[@]}" "$rpmrepo/"
rpmsign --addsign \
    --define "__gpg /usr/bin/gpg" --define "_gpg_name $key" --define "_gpg_path ${GNUPGHOME:-$HOME/.gnupg}" --define "_gpg_digest_algo sha512" \
    "$rpmrepo"/*.rpm >/dev/null
createrepo_c --quiet --unique-md-filenames "$rpmrepo"
"${gpg_sign[@]}" --detach-sign --armor --output "$rpmrepo/repodata/repomd.xml.asc" "$rpmrepo/repodata/repomd.xml"
gpg --batch --export --armor "$key" >"$rpmrepo/RPM-GPG-KEY-pdagent-sd"
cat >"$rpmrepo/pdagent-sd.repo" <<EOF
[pdagent-sd]
name=pdagent-sd, the systemd-native PagerDuty agent
baseurl=$url/rpmrepo
enabled=1
gpgcheck=1
repo_gpgcheck=1
gpgkey=$url/rpmrepo/RPM-GPG-KEY-pdagent-sd
EOF
echo "dnf repository: $rpmrepo (repo file: $rpmrepo/pdagent-sd.repo)"
