"""Unit alerts under a real booted systemd: a failed unit pages with its journal lines, starting it again
successfully resolves the same dedup key, a restart loop opens one incident, a failed timer job pages with
severity error, the journal being unreadable does not stop the page, and with the host-wide service.d/ drop-in
a failure of the agent itself (or of its alert handler) pages nothing and starts nothing in a loop, and journal
entries forged by an unprivileged user with the failing run's invocation ID stay off the page.

One container for the module (its boot and installation are most of the cost), the stand-in on the host's
loopback; each test uses units of its own and looks only at its own dedup keys.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest

from bootedsystemd import UNIT_DIR, BootedSystemd, assert_no_whole_key_in_journal, wait_until
from standin import StandIn
from waiting import quiet_for

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
KEY = "c0ffee0123456789abcdef0123456789"  # the [Keys] entry "systemd": unit alerts never carry a key themselves
CONFIG = f"""[Keys]
systemd = {KEY}

[UnitAlerts]
stay_up_sec = 2
"""
PER_UNIT_EXAMPLE = (REPO / "units" / "unit-alert.conf.example").read_text()
HOST_WIDE_EXAMPLE = (REPO / "units" / "service-alert.conf.example").read_text()


@pytest.fixture(scope="module")
def api() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


@pytest.fixture(scope="module")
def machine(boot_machine: Callable[..., BootedSystemd], api: StandIn) -> Iterator[BootedSystemd]:
    with boot_machine() as booted:
        booted.install_agent(events_url=api.url)
        booted.write_file("/etc/pdagent/agent.conf.d/50-unit-alerts.conf", CONFIG)
        yield booted
        assert_no_whole_key_in_journal(booted, api.keys_seen)


def host(machine: BootedSystemd) -> str:
    return machine.run(["hostname"]).stdout.strip()


def events_for(api: StandIn, dedup_key: str) -> List[Dict[str, Any]]:
    return [body for body in api.bodies(KEY) if body.get("dedup_key") == dedup_key]


def wait_events(api: StandIn, dedup_key: str, count: int, machine: BootedSystemd, unit: str,
                timeout: float = 30) -> List[Dict[str, Any]]:
    def enough() -> Any:
        found = events_for(api, dedup_key)
        return found if len(found) >= count else None

    try:
        return wait_until(enough, timeout, f"{count} event(s) with dedup key {dedup_key}", interval=0.2)
    except Exception:
        print(machine.unit_log(unit, f"pdagent-unit-failed@{unit}.service", f"pdagent-unit-ok@{unit}.service",
                               "pdagent.service"))
        raise


def add_unit(machine: BootedSystemd, name: str, text: str, alert: bool = True) -> None:
    machine.write_file(f"{UNIT_DIR}/{name}", text)
    if alert:  # what `systemctl edit NAME` with the shipped example gives
        machine.write_file(f"{UNIT_DIR}/{name}.d/override.conf", PER_UNIT_EXAMPLE)
    machine.systemctl("daemon-reload")


def oneshot(command: str) -> str:
    return f"[Service]\nType=oneshot\nExecStart=/bin/sh -c '{command}'\n"


def test_failed_unit_pages_with_its_journal_and_a_successful_run_resolves(machine: BootedSystemd,
                                                                            api: StandIn) -> None:
    unit = "alert-exit1.service"
    assert machine.show("pdagent.service", "ActiveState") == "inactive", "the page must start the agent itself"
    add_unit(machine, unit, oneshot("echo first line of the job; echo the reason: disk gone >&2; exit 1"))
    started = time.monotonic()
    machine.systemctl("start", unit, check=False)
    key = f"systemd/{host(machine)}/{unit}"
    trigger = wait_events(api, key, 1, machine, unit)[0]
    print(f"unit failed -> trigger at the stand-in: {time.monotonic() - started:.2f}s")
    payload = trigger["payload"]
    assert trigger["event_action"] == "trigger"
    assert payload["summary"] == f"{unit} failed on {host(machine).split('.')[0]}: exit-code (status 1)"
    assert payload["severity"] == "critical"
    assert payload["component"] == unit
    assert payload["source"], "the agent fills in the host's FQDN"
    details = payload["custom_details"]
    invocation = machine.show(unit, "InvocationID")
    assert details["InvocationID"] == invocation
    assert details["Result"] == "exit-code"
    assert details["ExecMainCode"] == "exited" and details["ExecMainStatus"] == "1"
    assert details["NRestarts"] == "0"
    assert details["InactiveEnterTimestamp"]
    assert any(line.endswith("first line of the job") for line in details["journal"]), details["journal"]
    assert any(line.endswith("the reason: disk gone") for line in details["journal"]), details["journal"]
    assert "journal_missing" not in details
    assert invocation in details["journal_command"]
    shown = machine.run(details["journal_command"].split() + ["--no-pager"]).stdout
    assert "the reason: disk gone" in shown, "the journalctl command shows the lines"
    assert machine.is_active(f"pdagent-unit-failed@{unit}.service"), "stays active while the incident is open"
    # The sandboxed handler must know the container's boot, not the host's (ProtectKernelTunables= hides the
    # container's boot_id under /proc/sys): with the host's, the lines journald could not tie to the invocation
    # were dropped as another boot's, and an incident would count as this boot's after the container rebooted.
    record = json.loads(machine.run(["cat", f"/var/lib/pdagent-unit-alert/{unit}"]).stdout)
    assert record["boot_id"] == machine.run(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip().replace("-", "")

    # pd-send --unit: the same state and journal tail on any event a script sends.
    machine.pd_send(KEY, "backup check", dedup_key="pd-send-unit", extra=["--unit", unit])
    sent = wait_events(api, "pd-send-unit", 1, machine, unit)[0]["payload"]["custom_details"]["systemd_unit"]
    assert sent["unit"] == unit and sent["Result"] == "exit-code" and sent["InvocationID"] == invocation
    assert any(line.endswith("the reason: disk gone") for line in sent["journal"])
    # A user who may not read the system journal (pdagent is not in systemd-journal or adm) still sends, and
    # is told why the lines are missing.
    machine.pd_send(KEY, "backup check", dedup_key="pd-send-unit-pdagent", extra=["--unit", unit], user="pdagent")
    sent = wait_events(api, "pd-send-unit-pdagent", 1, machine, unit)[0]["payload"]["custom_details"]["systemd_unit"]
    assert sent["Result"] == "exit-code" and "journal" not in sent
    assert "unreadable to uid" in sent["journal_missing"], sent

    add_unit(machine, unit, oneshot("echo fixed"))
    machine.systemctl("start", unit)
    resolve = wait_events(api, key, 2, machine, unit)[1]
    assert resolve == {"routing_key": KEY, "event_action": "resolve", "dedup_key": key}
    assert not machine.exists(f"/var/lib/pdagent-unit-alert/{unit}")
    assert machine.show(f"pdagent-unit-failed@{unit}.service", "ActiveState") == "inactive"
    assert machine.show(f"pdagent-unit-ok@{unit}.service", "Result") == "success"


# Run as nobody while a unit fails: journal entries claiming to be systemd's messages about the failed run
# (INVOCATION_ID and UNIT are fields any client may set; the invocation ID is public through systemctl show),
# and stdout streams whose header names the unit, written by processes that exit at once so that journald
# can only take the unit from the header. 25 entries per 50 ms, as the attack in issue 18.
FORGER = r"""
import os, socket, sys, time
from systemd import journal
invocation, unit, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
while time.monotonic() < end:
    for n in range(25):
        journal.send(f"{unit}: FORGED planned maintenance, no action needed", INVOCATION_ID=invocation,
                     UNIT=unit, SYSLOG_IDENTIFIER="systemd", SYSLOG_PID="1", PRIORITY="3")
    if os.fork() == 0:
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stream.connect("/run/systemd/journal/stdout")
        stream.sendall(f"systemd\n{unit}\n3\n0\n0\n0\n0\nFORGED stream line\n".encode())
        os._exit(0)
    os.wait()
    time.sleep(0.05)
"""


def test_entries_forged_by_another_user_never_reach_the_page(machine: BootedSystemd, api: StandIn) -> None:
    unit = "alert-forged.service"
    add_unit(machine, unit, oneshot("sleep 2; echo the real error: db01 unreachable; exit 1"))
    machine.systemctl("start", "--no-block", unit)
    invocation = wait_until(lambda: machine.show(unit, "InvocationID"), 10, f"{unit} to start")
    machine.write_file("/usr/local/lib/forge-journal.py", FORGER)
    machine.run(["systemd-run", "--quiet", "--collect", "--unit=forge-journal", "--uid=nobody", "--gid=nogroup",
                 "python3", "/usr/local/lib/forge-journal.py", invocation, unit, "8"])
    try:
        details = wait_events(api, f"systemd/{host(machine)}/{unit}", 1, machine, unit)[0]["payload"][
            "custom_details"]
    finally:
        machine.systemctl("stop", "forge-journal.service", check=False)
    forged = machine.journal_json(f"INVOCATION_ID={invocation}", "_UID=65534")
    assert len(forged) > 50, "the forger's entries carrying the run's ID are in the journal"
    main_pid = machine.show(unit, "ExecMainPID")
    lines = details["journal"]
    assert not [line for line in lines if "FORGED" in line], lines
    # the unit's shell is named by its _COMM, or only by its PID when it had exited before journald read it
    assert all(f"[{main_pid}]: " in line or " systemd[1]: " in line for line in lines), lines
    assert any(line.endswith(f"[{main_pid}]: the real error: db01 unreachable") for line in lines), lines
    assert any(" systemd[1]: " in line and "Failed with result" in line for line in lines), lines


def test_restart_loop_opens_one_incident_and_staying_up_resolves(machine: BootedSystemd, api: StandIn) -> None:
    unit = "alert-loop.service"
    add_unit(machine, unit, "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=4\n[Service]\nRestart=always\n"
             "RestartSec=200ms\nExecStart=/bin/sh -c 'echo crashing; sleep 0.2; exit 3'\n")
    machine.systemctl("start", unit, check=False)
    machine.wait_for_state(unit, "failed", timeout=30)
    key = f"systemd/{host(machine)}/{unit}"
    trigger = wait_events(api, key, 1, machine, unit)[0]
    assert trigger["payload"]["summary"].endswith("failed on " + host(machine).split(".")[0]
                                                  + ": exit-code (status 3)")
    assert int(trigger["payload"]["custom_details"]["NRestarts"]) >= 3
    # Failing again at once (a second loop, started by hand) is within rate_limit_sec: no new trigger.
    machine.systemctl("reset-failed", unit)
    machine.systemctl("start", unit, check=False)
    machine.wait_for_state(unit, "failed", timeout=30)
    wait_until(lambda: machine.show(f"pdagent-unit-failed@{unit}.service", "ActiveState") == "active", 20,
               "the second page's handler to finish")
    quiet_for(api, 1, routing_key=KEY)  # no second trigger follows
    assert len(events_for(api, key)) == 1, [body["event_action"] for body in events_for(api, key)]
    assert "rate_limit_sec" in machine.unit_log(f"pdagent-unit-failed@{unit}.service")

    # Fixed: a service that stays up stay_up_sec (2 s here) resolves the incident.
    add_unit(machine, unit, "[Service]\nExecStart=/bin/sleep 600\n")
    machine.systemctl("reset-failed", unit)
    machine.systemctl("start", unit)
    events = wait_events(api, key, 2, machine, unit)
    assert [body["event_action"] for body in events] == ["trigger", "resolve"]
    assert machine.is_active(unit)
    machine.systemctl("stop", unit)


def test_failed_timer_job_pages_with_severity_error_even_while_the_api_is_down(machine: BootedSystemd,
                                                                               api: StandIn) -> None:
    unit = "alert-backup.service"
    add_unit(machine, unit, oneshot("echo backup target unreachable; exit 2"))
    machine.write_file(f"{UNIT_DIR}/alert-backup.timer", "[Timer]\nOnActiveSec=1s\nAccuracySec=100ms\n")
    machine.systemctl("daemon-reload")
    api.refuse_connections()
    try:
        machine.systemctl("start", "alert-backup.timer")
        handler = f"pdagent-unit-failed@{unit}.service"
        wait_until(lambda: machine.show(handler, "ActiveState") == "active", 30, "the page to be queued")
        assert machine.show(handler, "Result") == "success", machine.unit_log(handler)
    finally:
        api.accept_connections()
    key = f"systemd/{host(machine)}/{unit}"
    payload = wait_events(api, key, 1, machine, unit)[0]["payload"]
    assert payload["severity"] == "error", payload
    assert payload["summary"].endswith(": exit-code (status 2)")
    assert payload["custom_details"]["TriggeredBy"] == "alert-backup.timer"
    assert any(line.endswith("backup target unreachable") for line in payload["custom_details"]["journal"]), payload


def test_unreadable_journal_still_pages(machine: BootedSystemd, api: StandIn) -> None:
    unit = "alert-nojournal.service"
    add_unit(machine, unit, oneshot("echo you will not see this; exit 1"))
    machine.drop_in(f"pdagent-unit-failed@{unit}.service", "50-no-journal",
                    "[Service]\nInaccessiblePaths=/run/log/journal\nInaccessiblePaths=-/var/log/journal\n")
    machine.systemctl("start", unit, check=False)
    details = wait_events(api, f"systemd/{host(machine)}/{unit}", 1, machine, unit)[0]["payload"]["custom_details"]
    assert "journal" not in details
    assert "no journal entries" in details["journal_missing"], details
    assert details["Result"] == "exit-code"


def test_host_wide_drop_in_covers_services_but_never_loops_on_the_agent(machine: BootedSystemd,
                                                                        api: StandIn) -> None:
    machine.write_file(f"{UNIT_DIR}/service.d/pdagent-alert.conf", HOST_WIDE_EXAMPLE)
    add_unit(machine, "alert-hostwide.service", oneshot("exit 4"), alert=False)
    assert machine.show("alert-hostwide.service", "OnFailure") == "pdagent-unit-failed@alert-hostwide.service.service"
    for own in ("pdagent.service", "pdagent-retry.service", "pdagent-boot.service", "pdagent-unit-rearm.service",
                "pdagent-unit-failed@x.service.service", "pdagent-unit-ok@x.service.service"):
        assert machine.show(own, "OnFailure") == "", own
    machine.systemctl("start", "alert-hostwide.service", check=False)
    wait_events(api, f"systemd/{host(machine)}/alert-hostwide.service", 1, machine, "alert-hostwide.service")

    # The agent itself fails (killed, no restart): nothing is started for it, nothing is queued or sent.
    before = len(api.events)
    machine.drop_in("pdagent.service", "60-test-no-restart", "[Service]\nRestart=no\n")
    machine.systemctl("start", "pdagent.service")
    machine.run(["kill", "-9", machine.show("pdagent.service", "MainPID")])
    machine.wait_for_state("pdagent.service", "failed")
    time.sleep(2)
    handler = "pdagent-unit-failed@pdagent.service.service"
    assert machine.show(handler, "ActiveState") == "inactive"
    assert machine.show(handler, "ExecMainStartTimestampMonotonic") == "0", "never started"
    machine.remove_drop_in("pdagent.service", "60-test-no-restart")
    machine.systemctl("reset-failed", "pdagent.service")

    # The handler itself fails (its key name is not configured): it does not page about itself either.
    unit = "alert-badkey.service"
    add_unit(machine, unit, oneshot("exit 1"), alert=False)
    machine.drop_in(f"pdagent-unit-failed@{unit}.service", "50-bad-key",
                    "[Service]\nEnvironment=PDAGENT_CONFIG=/etc/pdagent/bad-key.conf\n")
    machine.write_file("/etc/pdagent/bad-key.conf", "[UnitAlerts]\nkey = no-such-key\n")
    machine.systemctl("start", unit, check=False)
    handler = f"pdagent-unit-failed@{unit}.service"
    machine.wait_for_state(handler, "failed")
    time.sleep(2)
    looped = machine.systemctl("list-units", "--all", "--plain", "--no-legend", "pdagent-unit-failed@pdagent*",
                               check=False).stdout.strip()
    assert looped == "", looped
    assert len(api.events) == before, [body.get("dedup_key") for body in api.bodies()[before:]]
    machine.remove_file(f"{UNIT_DIR}/service.d/pdagent-alert.conf")
    machine.systemctl("daemon-reload")
