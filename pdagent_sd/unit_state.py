"""What systemd says about a unit: its name checked against systemd's rules, its properties from `systemctl
show` (plain text, no D-Bus binding needed), and this boot's ID. Every `systemctl` the agent runs goes through
systemctl() here."""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Any, Dict

from pdagent_sd.errors import PdagentError

PROPERTIES = ("Id", "Description", "LoadState", "ActiveState", "SubState", "Result", "Type", "ExecMainCode",
              "ExecMainStatus", "NRestarts", "InvocationID", "InactiveEnterTimestamp", "ActiveEnterTimestamp",
              "ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic", "TriggeredBy", "Job", "ExecMainPID")
# systemd's rules for a unit name (unit_name_is_valid): at most 255 characters of these, a known suffix.
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,246}\.(service|socket|target|device|mount|automount|swap|timer|"
                       r"path|slice|scope)", re.ASCII)
ID128 = re.compile(r"[0-9a-f]{32}", re.ASCII)  # an invocation or boot ID, as systemd prints it
SYSTEMCTL_TIMEOUT_SEC = 15.0


class UnitError(PdagentError):
    """The unit cannot be looked at (a bad name, systemctl failed); the message says which and why."""

    code = "invalid_event"


def check_unit_name(unit: str) -> str:
    if not UNIT_NAME.fullmatch(unit) or unit.startswith(".") or ".." in unit:
        raise UnitError(f"not a systemd unit name: {unit!r}")
    return unit


def read_properties(unit: str) -> Dict[str, str]:
    """`systemctl show -p ...` of one unit as a dict of strings (systemd's own formatting)."""
    check_unit_name(unit)
    return parse_properties(systemctl("show", "--no-pager", "-p", ",".join(PROPERTIES), "--", unit,
                                      what=f"show {unit}"))


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT_SEC, what: str = "") -> str:
    """Run systemctl with `args` and return what it printed; UnitError, naming `what` was run (all of `args` if
    not given) and why, if it could not be run or failed."""
    command = what or " ".join(args)
    try:
        result = subprocess.run(["systemctl", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                errors="replace", timeout=timeout,
                                env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnitError(f"cannot run systemctl {command}: {exc}") from None
    if result.returncode != 0:
        raise UnitError(f"systemctl {command} exited {result.returncode}: {result.stderr.strip()[:500]}")
    return result.stdout


def parse_properties(text: str) -> Dict[str, str]:
    properties: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            properties[name] = value
    return properties

def main_pid(properties: Dict[str, str]) -> int:
    """The PID of the run's main process (ExecMainPID, kept after it exited); 0 if unknown."""
    value = properties.get("ExecMainPID", "")
    return int(value) if value.isdigit() else 0


def start_usec(properties: Dict[str, str]) -> int:
    """When the unit's current (or last) run began, on the monotonic clock; 0 if unknown."""
    value = properties.get("InactiveExitTimestampMonotonic", "")
    return int(value) if value.isdigit() else 0


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock of systemd's *TimestampMonotonic properties."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)

BOOT_ID_VARIABLE = "PDAGENT_BOOT_ID"


def boot_uuid() -> Any:
    """This boot's ID as a UUID (None if unknown). The units pass it as systemd knows it (`%b`) in
    $PDAGENT_BOOT_ID: in a container, ProtectKernelTunables= hides the container manager's boot_id file under
    /proc/sys, and the process would read the host's ID, which outlives the container's reboots and matches
    none of the container's journal entries."""
    import uuid

    given = os.environ.get(BOOT_ID_VARIABLE, "")
    if ID128.fullmatch(given):
        return uuid.UUID(given)
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return uuid.UUID(handle.read().strip())
    except (OSError, ValueError):
        return None


def boot_id() -> str:
    """This boot's ID (32 hex digits), "" if unknown: tells an incident of this boot from an earlier boot's."""
    boot = boot_uuid()
    return boot.hex if boot is not None else ""
