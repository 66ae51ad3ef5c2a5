"""Under a real booted systemd: events pending (the Events API down), the container killed outright (no
shutdown), booted again with the same /var/lib/pdagent: every pending event is delivered within 2 minutes of
boot, with no new pd-send — also when the `pending` marker was removed by hand before the kill, which
pdagent-boot.service makes good. A third boot with an empty queue starts no pdagentd at all.

The container's / is volatile (bootedsystemd.py); /var/lib/pdagent is a host directory bound in, so it is the
one thing that persists across the boots, as the disk would."""

from __future__ import annotations

import os
import time
from typing import Callable

import pytest

from bootedsystemd import BootedSystemd, wait_until
from standin import StandIn

pytestmark = pytest.mark.system

KEY = "b0075a1e5a0b4d0c9f3e2a61b8d4c5d1"
EVENTS = 5
DELIVERY_AFTER_BOOT_SEC = 120


# Before the kill, every failed attempt defers its event by 200-300 s: a long outage's retry times, written as
# wall-clock times into queue.db. The boot pass makes them due, or delivery would wait past the 2 minutes.
LONG_OUTAGE_BACKOFF = {"PDAGENT_BACKOFF_MIN_SEC": "200", "PDAGENT_BACKOFF_MAX_SEC": "300"}


def boot(boot_machine: Callable[..., BootedSystemd], state: str, api: StandIn, **environment: str) -> BootedSystemd:
    return boot_machine(preinstall=True, environment={"PDAGENT_EVENTS_URL": api.url, **environment},
                        extra_args=[f"--bind={state}:/var/lib/pdagent"])


@pytest.mark.parametrize("marker_removed", [False, True], ids=["marker-kept", "marker-removed-by-hand"])
def test_pending_events_are_delivered_after_a_kill_and_a_boot(marker_removed, boot_machine, events_api,
                                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = str(tmp_path / "var-lib-pdagent")
    os.mkdir(state, 0o700)
    events_api.refuse_connections()
    first = boot(boot_machine, state, events_api, **LONG_OUTAGE_BACKOFF)
    tags = [f"cut-{marker_removed:d}-{n}" for n in range(EVENTS)]
    for tag in tags:
        first.pd_send(KEY, f"pending across a power cut {tag}", dedup_key=tag)
    assert first.exists("/var/lib/pdagent/pending")
    wait_until(lambda: "deferred" in first.unit_log("pdagent.service"), 30, "a failed attempt to defer the events")
    if marker_removed:
        first.remove_file("/var/lib/pdagent/pending")
    first.kill()
    assert os.path.exists(os.path.join(state, "pending")) != marker_removed

    second = boot(boot_machine, state, events_api)
    booted = time.monotonic()
    events_api.accept_connections()
    try:
        wait_until(lambda: {event.body.get("dedup_key") for event in events_api.events} >= set(tags),
                   DELIVERY_AFTER_BOOT_SEC, f"the {EVENTS} pending events to be delivered after the boot")
    except Exception:
        print(second.unit_log("pdagent-boot.service", "pdagent.service", "pdagent-retry.service"))
        raise
    delivered_sec = time.monotonic() - booted
    print(f"delivered {EVENTS} events {delivered_sec:.1f}s after the boot")
    boot_log = second.unit_log("pdagent-boot.service")
    assert "pending events, starting a delivery pass" in boot_log, boot_log
    wait_until(lambda: not second.exists("/var/lib/pdagent/pending"), 30, "the marker to go once delivered")
    assert sorted(event.body["dedup_key"] for event in events_api.events) == sorted(tags)  # each once
    second.kill()

    third = boot(boot_machine, state, events_api)  # an empty queue: the boot pass is skipped, nothing runs
    wait_until(lambda: third.show("pdagent-boot.service", "ActiveState") == "inactive", 30, "the boot pass")
    assert "no pending event" in third.unit_log("pdagent-boot.service")
    assert third.show("pdagent.service", "ActiveState") == "inactive"
    assert third.agent_pids() == []
    third.stop()
