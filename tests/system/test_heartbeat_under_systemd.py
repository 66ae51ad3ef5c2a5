"""Heartbeats under a real booted systemd, the agent installed from this tree.

A heartbeat `--every 40s --grace 10s` pages within 30 s of its deadline with no pdagentd running while it
waits (idle_exit_sec short: the daemon exits, the transient pdagent-heartbeat.timer armed through
pdagent-heartbeat-arm.path starts it again at the deadline), and the next check-in resolves the same dedup key.
A machine killed right after a check-in and booted after the deadline pages within 60 s of the boot."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Callable, List

import pytest

from bootedsystemd import STATE_DIR, BootedSystemd, wait_until
from standin import StandIn

pytestmark = pytest.mark.system

KEY = "4ea7bea7c04764012d7bfb002500d5d1"
MISSED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b1"
RECOVERED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b2"
PAGE_WITHIN_SEC = 30.0
REPO = Path(__file__).resolve().parents[2]


def documented_exec_stop_post() -> str:
    """docs/heartbeats.md's ExecStopPost= line for a timer job, with this test's heartbeat in it."""
    line = next(line for line in (REPO / "docs" / "heartbeats.md").read_text().splitlines()
                if line.startswith("ExecStopPost="))
    ours = f'nightly --every 40s --grace 10s -k {KEY} -d "the backup"'
    wired, count = re.subn(r"(/usr/bin/pd-heartbeat )[^;]*(; fi')$", lambda m: m.group(1) + ours + m.group(2), line)
    assert count == 1, line
    return wired


JOB_UNIT = f"""[Service]
Type=oneshot
ExecStart=/bin/sh -c 'test ! -e /run/nightly-fails'
{documented_exec_stop_post()}
"""


def actions(api: StandIn, dedup_key: str) -> List[str]:
    return [event.action or "" for event in api.events if event.body.get("dedup_key") == dedup_key]


def test_a_miss_pages_from_the_timer_with_no_daemon_waiting(agent_machine: BootedSystemd,
                                                            events_api: StandIn) -> None:
    machine = agent_machine
    machine.set_environment({"PDAGENT_EVENTS_URL": events_api.url, "PDAGENT_IDLE_EXIT_SEC": "3"})
    host = machine.run(["hostname"]).stdout.strip()
    dedup = f"heartbeat/{host}/root/nightly"
    # The job checks in from docs/heartbeats.md's ExecStopPost= line on success; a failed run does not.
    machine.write_file("/etc/systemd/system/nightly.service", JOB_UNIT)
    machine.systemctl("daemon-reload")
    machine.systemctl("start", "nightly.service")
    [listed] = json.loads(machine.run(["pd-heartbeat", "--list", "--json"]).stdout)
    deadline = listed["last_check_in"] + 50
    assert listed["next_deadline"] == deadline
    machine.wait_for_state("pdagent.service", "inactive", timeout=20)  # idle exit
    due = int(machine.run(["cat", f"{STATE_DIR}/heartbeat-due"]).stdout)
    assert due == math.ceil(deadline)
    wait_until(lambda: machine.show("pdagent-heartbeat.timer", "ActiveState") == "active", 10,
               "pdagent-heartbeat.timer armed by pdagent-heartbeat-arm.service")
    # No pdagent process at all while the deadline waits (looked at every second until shortly before it).
    machine.write_file("/run/nightly-fails", "")
    machine.systemctl("start", "nightly.service", check=False)  # fails: no check-in, the deadline stands
    assert machine.show("nightly.service", "Result") == "exit-code"
    machine.remove_file("/run/nightly-fails")
    samples = 0
    while time.time() < deadline - 2:
        assert machine.agent_pids() == [], machine.processes()
        assert machine.show("pdagent.service", "ActiveState") == "inactive"
        samples += 1
        time.sleep(1)
    try:
        wait_until(lambda: actions(events_api, dedup) == ["trigger"], deadline + PAGE_WITHIN_SEC - time.time(),
                   "the page of the miss")
    except Exception:
        print(machine.unit_log("pdagent.service", "pdagent-heartbeat.service", "pdagent-heartbeat-arm.service",
                               "pdagent-heartbeat.timer"))
        raise
    page = next(event for event in events_api.events if event.body.get("dedup_key") == dedup)
    late = page.wall_time - deadline
    print(f"heartbeat --every 40s --grace 10s: paged {late:.1f}s after its deadline; {samples} looks, "
          "no pdagentd while it waited")
    assert -1.0 <= late <= PAGE_WITHIN_SEC
    assert page.body["payload"]["summary"].startswith(f"nightly on {host} missed its check-in")
    assert page.body["payload"]["custom_details"]["description"] == "the backup"
    status = wait_until(lambda: "1 paged" in machine.show("pdagent.service", "StatusText")
                        and machine.show("pdagent.service", "StatusText"), 10, "STATUS= to mention the page")
    assert "heartbeats: 1" in status
    missed = machine.journal_json("-u", "pdagent.service", f"MESSAGE_ID={MISSED}")
    assert [entry["PDAGENT_DEDUP_KEY"] for entry in missed] == [dedup]

    machine.systemctl("start", "nightly.service")  # a good run again
    wait_until(lambda: actions(events_api, dedup) == ["trigger", "resolve"], 20, "the resolve")
    recovered = machine.journal_json("-u", "pdagent.service", f"MESSAGE_ID={RECOVERED}")
    assert [entry["PDAGENT_DEDUP_KEY"] for entry in recovered] == [dedup]
    assert "1 ok" in machine.pd_queue("status").stdout
    # The last heartbeat removed: the file says none once pdagentd exits, and the timer is stopped.
    machine.run(["pd-heartbeat", "nightly", "--remove"])
    machine.wait_for_state("pdagent.service", "inactive", timeout=20)
    assert machine.run(["cat", f"{STATE_DIR}/heartbeat-due"]).stdout == "none\n"
    wait_until(lambda: machine.show("pdagent-heartbeat.timer", "ActiveState") == "inactive", 10,
               "pdagent-heartbeat.timer stopped")


def test_a_power_cut_after_a_check_in_pages_within_60s_of_the_boot(boot_machine: Callable[..., BootedSystemd],
                                                                  events_api: StandIn, tmp_path) -> None:
    """Two heartbeats checked in, the machine killed, booted after both deadlines: each gets its grace after
    the boot (pdagent-boot.service stamps the container's own boot); `late` pages then, `persistent` checks in
    within its grace (as a Persistent=true timer job would) and is never paged."""
    state = str(tmp_path / "var-lib-pdagent")
    os.mkdir(state, 0o700)

    def boot() -> BootedSystemd:
        return boot_machine(preinstall=True, environment={"PDAGENT_EVENTS_URL": events_api.url},
                            extra_args=[f"--bind={state}:/var/lib/pdagent"])

    first = boot()
    first.run(["pd-heartbeat", "late", "--every", "3s", "--grace", "2s", "-k", KEY])
    first.run(["pd-heartbeat", "persistent", "--every", "3s", "--grace", "12s", "-k", KEY])
    deadlines = [row["next_deadline"] for row in json.loads(first.run(["pd-heartbeat", "--list", "--json"]).stdout)]
    first.kill()  # power cut right after the check-ins
    time.sleep(max(0.0, max(deadlines) + 1 - time.time()))  # both deadlines pass while the machine is off
    second = boot()
    booted = time.monotonic()
    second.run(["pd-heartbeat", "persistent", "--every", "3s", "--grace", "12s", "-k", KEY])
    host = second.run(["hostname"]).stdout.strip()  # each container has its own: the page names this one
    try:
        wait_until(lambda: [event.body["dedup_key"] for event in events_api.events]
                   == [f"heartbeat/{host}/root/late"], 60, "the page after the boot")
    except Exception:
        print(second.unit_log("pdagent-boot.service", "pdagent.service", "pdagent-heartbeat-arm.service"))
        raise
    paged_after = time.monotonic() - booted
    with open(os.path.join(state, "booted")) as stamp:
        boot_time = float(stamp.read())
    page = events_api.events[0]
    assert page.wall_time >= boot_time + 2 - 0.5, "paged before its grace after the boot"
    print(f"power cut after a check-in: paged {paged_after:.1f}s after the boot "
          f"({page.wall_time - boot_time:.1f}s after the boot stamp; grace 2s)")
    time.sleep(max(0.0, boot_time + 12 + 3 - time.time()))
    assert [event.body["dedup_key"] for event in events_api.events] == [f"heartbeat/{host}/root/late"]
    second.stop()
