"""Unit alerts across a reboot, under a real booted systemd: incidents opened before the reboot are resolved
by the units' first successful run after it, with the same dedup key.

- a service enabled at boot, broken before the reboot: resolved once it has stayed up after the boot;
- a timer's oneshot that failed before the reboot: not resolved before it has run in the new boot (nothing about
  it has run yet), resolved when its timer has run it successfully;
- a oneshot started by hand after the boot: resolved by that run.

What breaks the units is a file in /run, so the reboot itself is what fixes them. The container's / is volatile
(bootedsystemd.py); /var/lib/pdagent-unit-alert (the open incidents) and /etc/pdagent (the key) are host
directories bound in, so they persist as the disk would, and each boot's staging tree carries the same units.
Each boot gets a new host name (the container's name), so the dedup key is the first boot's: what was paged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from bootedsystemd import BootedSystemd, wait_until
from standin import StandIn

pytestmark = pytest.mark.system

KEY = "5eb007ed0123456789abcdef01234567"
CONFIG = f"[Keys]\nsystemd = {KEY}\n\n[UnitAlerts]\nstay_up_sec = 2\n"
STATE = "/var/lib/pdagent-unit-alert"
BROKEN = "/run/alert-reboot-broken"  # gone with the reboot: what fixes the units
SERVICE = "alert-reboot.service"
JOB = "alert-reboot-job.service"
TIMER = "alert-reboot-job.timer"
BY_HAND = "alert-reboot-hand.service"
TIMER_AFTER_BOOT_SEC = 20
RESOLVE_AFTER_BOOT_SEC = 30  # the bound for the service enabled at boot (stay_up_sec is 2 s here)
PER_UNIT_ALERT = (Path(__file__).resolve().parents[2] / "units" / "unit-alert.conf.example").read_text()


def broken_or(command: str, status: int) -> str:
    return f"if [ -e {BROKEN} ]; then echo broken until the reboot; exit {status}; fi; {command}"


UNITS = {
    SERVICE: f"[Service]\nExecStart=/bin/sh -c '{broken_or('exec sleep infinity', 1)}'\n"
             "[Install]\nWantedBy=multi-user.target\n",
    JOB: f"[Service]\nType=oneshot\nExecStart=/bin/sh -c '{broken_or('echo backup done', 2)}'\n",
    TIMER: f"[Timer]\nOnStartupSec={TIMER_AFTER_BOOT_SEC}s\nAccuracySec=100ms\n[Install]\nWantedBy=timers.target\n",
    BY_HAND: f"[Service]\nType=oneshot\nExecStart=/bin/sh -c '{broken_or('echo fine', 3)}'\n",
}


def stager(enable: Dict[str, str]) -> Callable[[Path], None]:
    """The test's units, each service with the per-unit OnFailure= drop-in; `enable`: {unit: target}."""

    def stage(root: Path) -> None:
        unit_dir = root / "etc/systemd/system"
        for name, text in UNITS.items():
            (unit_dir / name).write_text(text)
            if name.endswith(".service"):
                (unit_dir / f"{name}.d").mkdir(exist_ok=True)
                (unit_dir / f"{name}.d" / "override.conf").write_text(PER_UNIT_ALERT)
        for name, target in enable.items():
            wants = unit_dir / f"{target}.wants"
            wants.mkdir(exist_ok=True)
            (wants / name).symlink_to(f"/etc/systemd/system/{name}")

    return stage


def events_for(api: StandIn, dedup_key: str) -> List[Dict[str, Any]]:
    return [body for body in api.bodies(KEY) if body.get("dedup_key") == dedup_key]


@pytest.mark.parametrize("reboot", ["clean", "power-cut"])
def test_incidents_open_before_a_reboot_resolve_at_the_first_successful_run_after_it(
        reboot: str, boot_machine: Callable[..., BootedSystemd], events_api: StandIn, tmp_path: Path) -> None:
    state = tmp_path / "unit-alert-state"
    state.mkdir(mode=0o700)
    etc = tmp_path / "etc-pdagent"
    (etc / "agent.conf.d").mkdir(parents=True)
    (etc / "agent.conf.d" / "50-unit-alerts.conf").write_text(CONFIG)
    binds = [f"--bind={state}:{STATE}", f"--bind={etc}:/etc/pdagent"]

    def boot(enable: Dict[str, str]) -> BootedSystemd:
        return boot_machine(preinstall=True, environment={"PDAGENT_EVENTS_URL": events_api.url},
                            extra_args=binds, stage=stager(enable))

    first = boot({SERVICE: "multi-user.target"})
    host = first.run(["hostname"]).stdout.strip()
    keys = {unit: f"systemd/{host}/{unit}" for unit in (SERVICE, JOB, BY_HAND)}
    first.run(["touch", BROKEN])
    first.systemctl("restart", SERVICE, check=False)
    first.systemctl("start", JOB, check=False)
    first.systemctl("start", BY_HAND, check=False)
    try:
        wait_until(lambda: all(events_for(events_api, key) for key in keys.values()), 60, "the three pages")
        handlers = [f"pdagent-unit-failed@{unit}.service" for unit in keys]
        wait_until(lambda: all(first.is_active(handler) for handler in handlers), 30, "the handlers to stay active")
    except Exception:
        print(first.unit_log(*keys, "pdagent.service"))
        raise
    assert sorted(os.listdir(state)) == sorted([".lock", *keys])
    if reboot == "clean":
        first.stop()  # the handlers are stopped at shutdown; their ExecStop= cannot start a watcher then
    else:
        first.kill()

    booted = time.monotonic()  # from the start of the container, through its boot
    second = boot({SERVICE: "multi-user.target", TIMER: "timers.target"})
    watchers = [f"pdagent-unit-ok@{unit}.service" for unit in keys]
    try:
        wait_until(lambda: len(events_for(events_api, keys[SERVICE])) == 2, RESOLVE_AFTER_BOOT_SEC,
                   f"the resolve of {SERVICE} after the boot")
        resolved_sec = time.monotonic() - booted
        print(f"{reboot} reboot: {SERVICE} resolved {resolved_sec:.1f}s after the container's start "
              f"(stay_up_sec 2; {second.startup_finished})")
        # The watcher started during the boot is not a start job: the boot does not wait for it.
        assert second.system_state == "running", second.system_state
        assert [body["event_action"] for body in events_for(events_api, keys[SERVICE])] == ["trigger", "resolve"]
        assert events_for(events_api, keys[SERVICE])[1] == {"routing_key": KEY, "event_action": "resolve",
                                                            "dedup_key": keys[SERVICE]}
        assert not second.exists(f"{STATE}/{SERVICE}")

        # The timer's job has not run in this boot: nothing may resolve it yet.
        assert second.show(JOB, "InactiveExitTimestampMonotonic") == "0"
        assert len(events_for(events_api, keys[JOB])) == 1 and second.exists(f"{STATE}/{JOB}")
        assert second.exists(f"/run/systemd/system/{JOB}.d/pdagent-rearm.conf")
        assert second.show(JOB, "Wants") == f"pdagent-unit-ok@{JOB}.service"
        rearm_log = second.unit_log("pdagent-unit-rearm.service")
        assert "3 open incident(s)" in rearm_log, rearm_log
        assert second.show("pdagent-unit-rearm.service", "Result") == "success"

        # Started by hand: the drop-in pulls in the watcher, and the run resolves.
        second.systemctl("start", BY_HAND)
        wait_until(lambda: len(events_for(events_api, keys[BY_HAND])) == 2, 30, f"the resolve of {BY_HAND}")
        assert events_for(events_api, keys[JOB])[1:] == [], "the job has still not run"

        # The timer runs the job successfully: resolved.
        wait_until(lambda: len(events_for(events_api, keys[JOB])) == 2, TIMER_AFTER_BOOT_SEC + 30,
                   f"the resolve of {JOB} after its timer ran it")
        print(f"{JOB} resolved {time.monotonic() - booted:.1f}s after the boot (its timer: {TIMER_AFTER_BOOT_SEC}s)")
        assert events_for(events_api, keys[JOB])[1]["event_action"] == "resolve"
        assert os.listdir(state) == [".lock"]
        for watcher in watchers:
            assert second.show(watcher, "Result") == "success", watcher
        # Resolved: a further start of the unit runs no watcher (its ConditionPathExists= fails).
        second.systemctl("start", BY_HAND)
        wait_until(lambda: second.show(f"pdagent-unit-ok@{BY_HAND}.service", "ConditionResult") == "no", 10,
                   "the watcher to be skipped")
        assert [body["dedup_key"] for body in events_api.bodies(KEY)].count(keys[BY_HAND]) == 2
    except Exception:
        print(second.unit_log("pdagent-unit-rearm.service", *watchers, *keys, "pdagent.service"))
        raise
    second.stop()
