"""The shipped units, sysusers.d file, catalog and proxy example, checked by systemd itself.

What needs no running daemon: systemd-analyze verify and security, the state of things right after a boot
with the agent installed, systemd-sysusers with the shipped file, the catalog, the timer's condition.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from bootedsystemd import CATALOG_FILE, SHIPPED_FILES, SOCKET_PATH, SYSUSERS_FILE, UNIT_DIR, UNITS, BootedSystemd
from tiers import CI

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
UNITS_DIR = REPO / "units"
MAX_EXPOSURE = 1.5
MESSAGE_IDS = {
    "accepted": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c501",
    "delivered": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c502",
    "deferred": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c503",
    "failed": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c504",
    "retried": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c505",
    "dropped": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c506",
    "throttled": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c507",
    "started": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c508",
    "stopped": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c509",
    "corrupt_queue": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c50a",
    "superseded": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c515",
    "marker_failed": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5d1",
    "heartbeat_missed": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b1",
    "heartbeat_recovered": "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b2",
}


def exposure(output: str, unit: str) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


def unit_settings(path: Path) -> Dict[str, List[str]]:
    """KEY -> [values] of a unit file, comments and sections ignored (enough for what these tests ask)."""
    settings: Dict[str, List[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def catalog_entries(text: str) -> Dict[str, str]:
    """MESSAGE_ID -> its Subject: line, from a catalog file."""
    entries: Dict[str, str] = {}
    for block in re.split(r"^-- ", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        subject = re.search(r"^Subject: (.*)$", body, re.M)
        entries[header.strip()] = subject.group(1) if subject else ""
    return entries


# --- on the host: no container needed ----------------------------------------------------------------------


@pytest.mark.skipif(not CI and shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not found (package systemd)")
@pytest.mark.parametrize("unit", ["pdagent.service", "pdagent-retry.service", "pdagent-boot.service",
                                  "pdagent-unit-rearm.service", "pdagent-heartbeat.service"])
def test_security_exposure_offline(unit: str) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNITS_DIR / unit)],
                            capture_output=True, text=True, timeout=60)
    score = exposure(result.stdout, unit)
    print(f"systemd-analyze security --offline=yes {unit}: {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_service_does_not_own_the_socket_directory() -> None:
    """RuntimeDirectory=pdagent in the service would delete the socket systemd holds when the service stops."""
    service = unit_settings(UNITS_DIR / "pdagent.service")
    assert "RuntimeDirectory" not in service
    assert unit_settings(UNITS_DIR / "pdagent.socket")["ListenStream"] == [SOCKET_PATH]


def test_catalog_has_exactly_the_message_ids_of_the_daemon() -> None:
    entries = catalog_entries((UNITS_DIR / "pdagent.catalog").read_text())
    assert set(entries) == set(MESSAGE_IDS.values())
    assert all(entries.values()), "every entry has a Subject:"
    journal = (REPO / "pdagent_sd" / "journal.py").read_text()
    daemon_ids = set(re.findall(r'"(7f1c2c1e5a0b4d0c9f3e2a61b8d4c5[0-9a-f]{2})"', journal))
    assert daemon_ids == set(MESSAGE_IDS.values()), "pdagent_sd/journal.py and the catalog disagree"


# --- in a booted container ---------------------------------------------------------------------------------


def test_installed_units_are_the_shipped_files(agent_machine_shared: BootedSystemd) -> None:
    for relative, target in SHIPPED_FILES:
        inside = agent_machine_shared.run(["sha256sum", target]).stdout.split()[0]
        assert inside == hashlib.sha256((REPO / relative).read_bytes()).hexdigest(), target


def test_systemd_analyze_verify(agent_machine_shared: BootedSystemd) -> None:
    """Verified where they are installed: ExecStart=/usr/bin/pdagentd and /usr/bin/pd-queue exist there.
    A template is verified as an instance (its %i names a unit), which verify finds beside the template."""
    units = [unit.replace("@.", "@systemd-journald.service.") for unit in UNITS]
    result = agent_machine_shared.run(["systemd-analyze", "verify", *[f"{UNIT_DIR}/{unit}" for unit in units]],
                                      check=False)
    output = (result.stdout + result.stderr).strip()
    print(f"systemd-analyze verify: exit {result.returncode}, output {output!r}")
    assert result.returncode == 0, output
    assert output == "", output


def test_security_exposure_of_the_loaded_unit(agent_machine_shared: BootedSystemd) -> None:
    result = agent_machine_shared.run(["systemd-analyze", "security", "--no-pager", "pdagent.service"],
                                      check=False)
    score = exposure(result.stdout, "pdagent.service")
    print(f"systemd-analyze security pdagent.service (loaded in the container): {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_after_boot_socket_listens_and_service_is_inactive(boot_machine: Callable[..., BootedSystemd]) -> None:
    """Boot a system that has the agent installed and enabled: only the socket and the timer are up."""
    with boot_machine(preinstall=True) as machine:
        assert machine.show("pdagent.socket", "UnitFileState") == "enabled"
        assert machine.show("pdagent.socket", "ActiveState") == "active"
        assert machine.show("pdagent.socket", "SubState") == "listening"
        assert machine.show("pdagent-retry.timer", "UnitFileState") == "enabled"  # through the socket's Also=
        assert machine.show("pdagent-retry.timer", "ActiveState") == "active"
        assert machine.show("pdagent.service", "ActiveState") == "inactive"
        assert machine.show("pdagent.service", "ExecMainStartTimestampMonotonic") == "0", "never started"
        assert machine.run(["stat", "-c", "%F %a %U", SOCKET_PATH]).stdout.split() == ["socket", "666", "root"]
        assert machine.run(["stat", "-c", "%a", "/run/pdagent"]).stdout.strip() == "755"
        assert machine.run(["getent", "passwd", "pdagent"]).returncode == 0, "systemd-sysusers.service at boot"
        assert machine.agent_pids() == []
        assert machine.systemctl("--failed", "--no-legend").stdout.strip() == ""


def test_sysusers_file_creates_user_pdagent(systemd_machine: BootedSystemd) -> None:
    machine = systemd_machine
    assert machine.run(["getent", "passwd", "pdagent"], check=False).returncode == 2
    machine.write_file(SYSUSERS_FILE, (UNITS_DIR / "pdagent.sysusers").read_text())
    machine.run(["systemd-sysusers", SYSUSERS_FILE])
    name, _, uid, gid, _, home, shell = machine.run(["getent", "passwd", "pdagent"]).stdout.strip().split(":")
    group = machine.run(["getent", "group", "pdagent"]).stdout.strip().split(":")
    assert (name, home) == ("pdagent", "/var/lib/pdagent")
    assert shell.endswith("/nologin")
    assert 0 < int(uid) < 1000, "a system user"
    assert group[0] == "pdagent" and group[2] == gid
    machine.run(["systemd-sysusers", SYSUSERS_FILE])  # idempotent: a package upgrade runs it again
    assert machine.run(["getent", "passwd", "pdagent"]).stdout.split(":")[2] == uid


def test_catalog_is_installed_for_journalctl_x(agent_machine_shared: BootedSystemd) -> None:
    listed = agent_machine_shared.run(["journalctl", "--list-catalog"]).stdout
    for kind, message_id in MESSAGE_IDS.items():
        assert message_id in listed, kind
    text = agent_machine_shared.run(["journalctl", "--dump-catalog", MESSAGE_IDS["delivered"]]).stdout
    assert "Subject: PagerDuty event @PDAGENT_EVENT_ID@ delivered" in text
    assert agent_machine_shared.run(["test", "-f", CATALOG_FILE]).returncode == 0


def test_timer_schedule(agent_machine_shared: BootedSystemd) -> None:
    timers = agent_machine_shared.show("pdagent-retry.timer", "TimersMonotonic")
    assert "OnBootUSec=1min" in timers and "OnUnitInactiveUSec=30s" in timers, timers
    assert agent_machine_shared.show("pdagent-retry.timer", "AccuracyUSec") == "1s"


def test_retry_with_empty_queue_starts_nothing(agent_machine_shared: BootedSystemd) -> None:
    """No `pending` marker: the retry service's condition fails, so no process at all is started."""
    machine = agent_machine_shared
    assert not machine.exists("/var/lib/pdagent/pending")
    machine.systemctl("start", "pdagent-retry.service")
    assert machine.show("pdagent-retry.service", "ConditionResult") == "no"
    assert machine.show("pdagent-retry.service", "ExecMainStartTimestampMonotonic") == "0"
    assert machine.show("pdagent.service", "ActiveState") == "inactive"
    assert machine.agent_pids() == []


def test_proxy_example_is_a_valid_drop_in(agent_machine_shared: BootedSystemd) -> None:
    machine = agent_machine_shared
    machine.drop_in("pdagent.service", "proxy", (UNITS_DIR / "proxy.conf.example").read_text())
    try:
        environment = machine.show("pdagent.service", "Environment").split()
        assert "HTTPS_PROXY=http://proxy.example:3128" in environment
        assert any(item.startswith("NO_PROXY=") for item in environment)
        assert not any(item.startswith("REQUESTS_CA_BUNDLE=") for item in environment), "commented out"
        verify = machine.run(["systemd-analyze", "verify", f"{UNIT_DIR}/pdagent.service"], check=False)
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify
    finally:
        machine.remove_drop_in("pdagent.service", "proxy")
