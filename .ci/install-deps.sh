#!/usr/bin/env bash
# Everything the whole test suite needs on a fresh Debian 12 machine, as root. Idempotent.
set -euo pipefail

APT_PACKAGES=(
  # building systemd-python from source in the virtualenv
  python3 python3-venv python3-dev libsystemd-dev pkg-config gcc
  # the booted-systemd tier
  systemd systemd-container dbus iproute2 debootstrap
  # the agent's runtime deps from Debian (system tests and the .deb)
  python3-systemd python3-sdnotify python3-requests
  # tests/test_pd_queue.py parses `pd-queue metrics` with the real Prometheus client, under Debian's python3
  python3-prometheus-client
  # integrations and proxy tests
  nagios4 icinga2-bin monitoring-plugins-basic tinyproxy openssl
  # packaging
  debhelper dh-python pybuild-plugin-pyproject python3-setuptools python3-all lintian help2man
  rpm rpmlint fakeroot devscripts
  # the fleet (issue 22): make repo signs an apt and a dnf repository; dnf reads it back, promtool checks
  # the alert rules, a real prometheus and node_exporter scrape the metrics; ansible reaches hosts over SSH
  gnupg apt-utils createrepo-c dnf python3-build python3-installer
  prometheus prometheus-node-exporter openssh-client
  # benchmarks
  hyperfine
  # a jumping wall clock under the real daemon (tests/test_clock_real.py): libfaketime
  faketime
  # the power-cut layer (tests/reliability/lazyfs.py): FUSE, and fusepy for Debian's python3
  fuse3 python3-fusepy
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
