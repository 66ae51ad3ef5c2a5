"""What the robustness tests share: the two run sizes, and reading a process's memory, threads and clients."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")


def runs(short: Dict[str, Any], full: Dict[str, Any]) -> List[Any]:
    """The two forms of a test: `short` (marker integration, in `make test`) and `full` (marker slow,
    skipped unless RELIABILITY_FULL=1, as in `make reliability`)."""
    return [pytest.param(short, id="short", marks=pytest.mark.integration),
            pytest.param(full, id="full", marks=[pytest.mark.slow, pytest.mark.skipif(
                not FULL, reason="the full run: RELIABILITY_FULL=1 pytest -m slow tests/robustness")])]


def proc_status(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a live process, in MiB."""
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def client_connections(pid: int, socket_path: str) -> int:
    """Client connections the process holds open on its listening socket at `socket_path`: its socket fds
    whose inode /proc/net/unix lists under that path (accepted sockets carry the listener's path), less the
    listener itself."""
    with open(f"/proc/{pid}/net/unix", encoding="utf-8") as handle:
        next(handle)
        inodes = {fields[6] for fields in (line.split() for line in handle)
                  if len(fields) >= 8 and fields[7] == socket_path}
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return max(0, held - 1)
