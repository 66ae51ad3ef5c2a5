#!/bin/bash
# The clean Debian 12 tree of `make demo` and the package tests: packaging/debian-rootfs.sh bookworm.
exec "$(dirname "$0")/debian-rootfs.sh" bookworm
