"""Debian 12 (systemd 252) and 13 (systemd 257) as the docs set them up, with the .deb installed by apt: every
doc installed with working links; unit alerts (page and resolve, and units with Restart=: a crash it heals pages
nobody, a unit that ends failed pages once); pd-send --unit on an unloaded oneshot; a bad setting; and
docs/security.md's SocketGroup= drop-in across a reboot.

One container per release for the whole module (``installed``); each test uses units, users and dedup keys
of its own. In file order: the reboot of the last test comes last.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pytest
from debbuild import BuiltDeb
from debcontainer import DebianContainer, wait_until
from test_deb_package import deb_files

from standin import StandIn

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parents[2]
KEY = "5e0c1b2a39281706f5e44f1d0c2b9e8a"
UNIT_ALERT_CONFIG = f"[Keys]\nsystemd = {KEY}\n\n[UnitAlerts]\nstay_up_sec = 2\n"
PER_UNIT_EXAMPLE = (REPO / "units" / "unit-alert.conf.example").read_text()


def socket_drop_in_from_the_docs() -> str:
    """The ini block of docs/security.md's SocketGroup= section, word for word."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text[text.index("## Who may send at all"):]
    return re.search(r"```ini\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def box(installed: DebianContainer) -> DebianContainer:
    installed.write("/etc/pdagent/agent.conf.d/50-unit-alerts.conf", UNIT_ALERT_CONFIG)
    installed.run("chown", "root:pdagent", "/etc/pdagent/agent.conf.d/50-unit-alerts.conf")
    installed.run("chmod", "0640", "/etc/pdagent/agent.conf.d/50-unit-alerts.conf")
    return installed


def host(box: DebianContainer) -> str:
    return box.run("hostname").stdout.strip()


def events_for(api: StandIn, dedup_key: str) -> List[Dict[str, Any]]:
    return [body for body in api.bodies(KEY) if body.get("dedup_key") == dedup_key]


def add_unit(box: DebianContainer, name: str, service: str, unit: str = "") -> None:
    box.write(f"/etc/systemd/system/{name}", f"[Unit]\n{unit}[Service]\n{service}")
    box.write(f"/etc/systemd/system/{name}.d/override.conf", PER_UNIT_EXAMPLE)  # `systemctl edit` + the example


def handler_log(box: DebianContainer, unit: str) -> str:
    return box.run("journalctl", "--no-pager", "-o", "cat", "-u", f"pdagent-unit-failed@{unit}.service",
                   check=False).stdout


def systemd_version(box: DebianContainer) -> int:
    return int(box.run("systemctl", "--version").stdout.split()[1])


DOC_DIR = "/usr/share/doc/pdagent-sd/"
LINK = re.compile(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)")


def test_every_doc_is_installed_and_every_link_between_them_resolves_there(built_deb: BuiltDeb) -> None:
    files = set(deb_files(built_deb.path))
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for source in sources:
        installed = DOC_DIR + str(source.relative_to(REPO))
        assert installed in files, f"{installed} is not in the package (compressed, or left out)"
        for target in LINK.findall(source.read_text()):
            resolved = str(Path(installed).parent.joinpath(target)).replace("/./", "/")
            resolved = str(Path(resolved).resolve()) if ".." in resolved else resolved
            assert resolved in files, f"{source.name} links to {target}: {resolved} is not installed"
    for unit in sorted((REPO / "units").iterdir()):
        for target in re.findall(r"file://(/\S+)", unit.read_text()):
            assert target in files, f"{unit.name}: Documentation= {target} is not installed"


def test_a_failed_oneshot_pages_with_its_journal_and_a_successful_run_resolves(box: DebianContainer,
                                                                               events_api: StandIn) -> None:
    unit = "job-exit1.service"
    add_unit(box, unit, "Type=oneshot\nExecStart=/bin/sh -c 'echo the reason: disk gone >&2; exit 1'\n")
    box.run("systemctl", "daemon-reload")
    key = f"systemd/{host(box)}/{unit}"
    before = len(events_for(events_api, key))
    box.run("systemctl", "start", unit, check=False)
    trigger = wait_until(lambda: events_for(events_api, key)[before:], 30, "the page")[0]
    details = trigger["payload"]["custom_details"]
    assert trigger["event_action"] == "trigger" and details["Result"] == "exit-code", details
    assert any(line.endswith("the reason: disk gone") for line in details.get("journal", [])), details
    add_unit(box, unit, "Type=oneshot\nExecStart=/bin/true\n")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", unit)
    wait_until(lambda: len(events_for(events_api, key)[before:]) == 2, 30, "the resolve")
    events = events_for(events_api, key)[before:]
    assert [body["event_action"] for body in events] == ["trigger", "resolve"]
    assert not box.exists(f"/var/lib/pdagent-unit-alert/{unit}")


def test_a_crash_that_restart_heals_pages_nobody(box: DebianContainer, events_api: StandIn) -> None:
    """systemd 257 starts the OnFailure= handler at every crash of a Restart= unit, before the restart: it must
    not page. `slow` is still waiting in auto-restart when the handler looks; `fast` (RestartSec's default,
    100 ms) is usually running again already."""
    crash_once = ("ExecStart=/bin/sh -c 'if [ -e /run/{0}.crashed ]; then exec sleep 600; fi; "
                  "touch /run/{0}.crashed; echo crashing once; exit 3'\n")
    units = {"heal-slow.service": "Restart=on-failure\nRestartSec=3\n",
             "heal-fast.service": "Restart=on-failure\n"}
    for unit, restart in units.items():
        add_unit(box, unit, restart + crash_once.format(unit))
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "--no-block", *units)
    for unit in units:
        wait_until(lambda unit=unit: box.run("systemctl", "show", "-p", "ActiveState,NRestarts", unit).stdout.split()
                   in (["ActiveState=active", "NRestarts=1"], ["NRestarts=1", "ActiveState=active"]), 30,
                   f"{unit} to be back")
    newer = systemd_version(box) >= 254
    for unit in units:
        handler = f"pdagent-unit-failed@{unit}.service"
        if newer:
            # 257 started the handler at the crash. It watched while the unit waited in auto-restart, and was
            # stopped by the restart's start (Conflicts=), or saw the unit running again and was skipped: done
            # once it has no job and is not starting, and inactive, not failed nor holding an incident.
            if unit == "heal-slow.service":  # heal-fast's restart may come before its handler even started
                wait_until(lambda unit=unit, handler=handler: f"Starting {handler}" in handler_log(box, unit), 30,
                           f"the crash of {unit} to start {handler}")
            wait_until(lambda handler=handler: box.unit_property(handler, "Job") == "" and
                       box.unit_property(handler, "ActiveState") == "inactive", 30, f"{handler} to be done")
            assert box.unit_property(handler, "Result") == "success", handler_log(box, unit)
        else:  # 252: OnFailure= is not triggered while Restart= applies
            assert box.unit_property(handler, "ExecMainStartTimestampMonotonic") == "0"
    box.run("pd-queue", "flush")
    wait_until(lambda: json.loads(box.run("pd-queue", "status", "--json").stdout)["totals"]["pending"] == 0, 20,
               "an empty queue")
    for unit in units:
        assert events_for(events_api, f"systemd/{host(box)}/{unit}") == [], handler_log(box, unit)
        assert "paged:" not in handler_log(box, unit)
    for unit in units:
        print(handler_log(box, unit))
        assert not box.exists(f"/var/lib/pdagent-unit-alert/{unit}"), "no incident is open"
    box.run("systemctl", "stop", *units)


def test_a_unit_that_restart_cannot_heal_pages_once(box: DebianContainer, events_api: StandIn) -> None:
    """Restart=always that hits the start limit (RestartMode=normal, and =direct on 254+: 252 ignores the key),
    and Restart=on-abnormal after a plain exit code (no restart at all): each ends failed and pages once."""
    loop = "StartLimitIntervalSec=60\nStartLimitBurst=3\n"
    crash = "ExecStart=/bin/sh -c 'echo crashing; sleep 0.3; exit 3'\n"
    units = {"loop-normal.service": ("Restart=always\nRestartSec=200ms\n" + crash, loop),
             "loop-direct.service": ("Restart=always\nRestartMode=direct\nRestartSec=200ms\n" + crash, loop),
             "abnormal-only.service": ("Restart=on-abnormal\n" + crash, "")}
    for unit, (service, limits) in units.items():
        add_unit(box, unit, service, limits)
    box.run("systemctl", "daemon-reload")
    # The stand-in is the session's: the other release's container has the same host name, so the same keys.
    before = {unit: len(events_for(events_api, f"systemd/{host(box)}/{unit}")) for unit in units}
    box.run("systemctl", "start", "--no-block", *units)
    for unit in units:
        key = f"systemd/{host(box)}/{unit}"
        wait_until(lambda unit=unit: box.unit_property(unit, "ActiveState") == "failed", 30, f"{unit} to end failed")
        trigger = wait_until(lambda key=key, unit=unit: events_for(events_api, key)[before[unit]:], 30,
                             f"the page for {unit}")[0]
        details = trigger["payload"]["custom_details"]
        assert trigger["event_action"] == "trigger" and details["ActiveState"].startswith("failed"), details
        expected_restarts = 0 if unit == "abnormal-only.service" else 2
        assert int(details["NRestarts"]) >= expected_restarts, details
    box.run("pd-queue", "flush")
    wait_until(lambda: json.loads(box.run("pd-queue", "status", "--json").stdout)["totals"]["pending"] == 0, 20,
               "an empty queue")
    for unit in units:
        assert len(events_for(events_api, f"systemd/{host(box)}/{unit}")) == before[unit] + 1, handler_log(box, unit)


def test_pd_send_unit_says_why_an_unloaded_oneshot_has_no_run(box: DebianContainer, events_api: StandIn) -> None:
    """Right after a successful run, a oneshot nothing refers to is unloaded: systemd shows no invocation."""
    box.write("/etc/systemd/system/backup-once.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n")
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "start", "backup-once.service")
    dedup = f"unit-{uuid.uuid4().hex[:8]}"
    box.run("pd-send", "-k", KEY, "-t", "trigger", "-d", "backup done", "-i", dedup, "--unit", "backup-once.service")
    details = wait_until(lambda: events_for(events_api, dedup), 30, "the event")[0]["payload"]["custom_details"]
    unit = details["systemd_unit"]
    assert unit["unit"] == "backup-once.service" and "journal" not in unit, unit
    assert "unloaded" in unit["journal_missing"], unit


def test_a_bad_setting_keeps_the_socket_and_delivery_resumes_once_the_file_is_fixed(
        box: DebianContainer, events_api: StandIn) -> None:
    bad = "/etc/pdagent/agent.conf.d/90-typo.conf"
    box.write(bad, "[Agent]\nidle_exit_sec = soon\n")
    check = box.run("pdagentd", "--check-config", check=False)
    assert check.returncode == 78 and bad in check.stderr and "idle_exit_sec" in check.stderr, check
    box.run("systemctl", "restart", "pdagent.service")
    for attempt in range(8):  # more than the start limit (5 in 10 s) that used to fail the socket
        sent = box.run("pd-send", "-k", KEY, "-t", "trigger", "-d", f"typo {attempt}", check=False)
        assert sent.returncode == 78 and bad in sent.stderr and "idle_exit_sec" in sent.stderr, sent
    assert box.run("systemctl", "is-active", "pdagent.socket", "pdagent.service").stdout.split() == [
        "active", "active"]
    assert box.unit_property("pdagent.service", "NRestarts") == "0"
    assert "CONFIGURATION ERROR" in box.unit_property("pdagent.service", "StatusText")
    box.run("rm", bad)  # fixed: nothing else is done, no systemctl
    dedup = f"after-typo-{uuid.uuid4().hex[:8]}"
    wait_until(lambda: box.run("pd-send", "-k", KEY, "-t", "trigger", "-d", "fixed", "-i", dedup,
                               check=False).returncode == 0, 15, "pd-send to be accepted again")
    wait_until(lambda: events_for(events_api, dedup), 30, "delivery once the file is fixed")
    assert box.run("pdagentd", "--check-config").returncode == 0


def test_socket_group_drop_in_from_the_docs_keeps_delivery_across_a_reboot(box: DebianContainer,
                                                                          events_api: StandIn) -> None:
    box.apt("install", "acl")
    box.sh("groupadd --system pdagent-senders; useradd -G pdagent-senders sender; useradd -G pdagent admin1; "
           "useradd outsider")
    box.write("/etc/systemd/system/pdagent.socket.d/override.conf", socket_drop_in_from_the_docs())
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "restart", "pdagent.socket")
    assert box.run("stat", "-c", "%a %U:%G", "/run/pdagent/pdagent.sock").stdout.strip() == "660 root:pdagent-senders"

    refused = box.run("runuser", "-u", "outsider", "--", "pd-send", "-k", KEY, "-t", "trigger", "-d", "no", check=False)
    assert refused.returncode == 69 and "Permission denied" in refused.stderr, refused
    assert "group" in refused.stderr and "is the agent running" not in refused.stderr, refused
    assert box.run("runuser", "-u", "admin1", "--", "pd-queue", "status", check=False).returncode == 0
    dedup = f"sender-{uuid.uuid4().hex[:8]}"
    box.run("runuser", "-u", "sender", "--", "pd-send", "-k", KEY, "-t", "trigger", "-d", "from a sender", "-i", dedup)
    wait_until(lambda: events_for(events_api, dedup), 30, "the sender's event")

    pending = f"across-reboot-{uuid.uuid4().hex[:8]}"
    events_api.refuse_connections()
    try:
        box.run("pd-send", "-k", KEY, "-t", "trigger", "-d", "pending across the reboot", "-i", pending)
        assert json.loads(box.run("pd-queue", "status", "--json").stdout)["totals"]["pending"] >= 1
        box.stop()
    finally:
        events_api.accept_connections()
    box.start()  # nobody sends anything after this
    wait_until(lambda: events_for(events_api, pending), 90, "the pending event, delivered after the reboot")
    boot = box.run("systemctl", "show", "-p", "Result,ExecMainStatus", "pdagent-boot.service").stdout
    log = box.run("journalctl", "--no-pager", "-b", "-u", "pdagent-boot.service").stdout
    assert sorted(boot.split()) == ["ExecMainStatus=0", "Result=success"], log
