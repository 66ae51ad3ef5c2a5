"""Integration: an alert storm on one routing key, through the real daemon, socket, SQLite file and a stand-in that
limits each key as PagerDuty does (issue 15). PagerDuty must show the truth soon after the storm ends: every
incident resolved, each having received its trigger, and no incident's order changed.

The full storms (5,000 events over 50 dedup keys at the default rate limit, 60 s to the truth; the same behind a
minute of 429s) are `slow`; `make test` runs the same checks on storms scaled down in size and in time.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from pdagent_sd.errors import AgentUnreachable
from pdagent_sd.protocol import Client

from agentproc import KEY_A, Agent, action, send_many, trigger
from standin import StandIn
from storm import body, send_storm, storm_events, wrongs
from waiting import poll

pytestmark = pytest.mark.integration

PAGERDUTY_PER_MINUTE = 120  # what the stand-in allows per key, as PagerDuty does


def check_truth(standin: StandIn, events: List[Tuple[str, str]], since: float, within: float) -> Dict[str, float]:
    """Wait up to `within` seconds after `since` for every incident to be resolved at the stand-in, then check
    what each received; returns the seconds from `since` to each incident's resolve."""
    wanted = {dedup_key for dedup_key, _ in events}
    poll(lambda: all(standin.resolved_at(KEY_A).get(key) is not None for key in wanted),
         max(0.0, since + within - time.monotonic()), interval=0.1)
    resolved = standin.resolved_at(KEY_A)
    late = sorted(key for key in wanted if resolved.get(key) is None)
    assert not late, f"{len(late)} incidents not resolved {within:.0f}s after the storm: {late[:5]}"
    problems = wrongs(standin.incidents(KEY_A), events)
    assert not problems, problems[:5]
    return {key: float(resolved[key] or 0.0) - since for key in wanted}


def run_storm(make_agent: Any, standin: StandIn, *, incidents: int, per_incident: int, flapping: int,
              per_minute: int, within: float, throttled_for: float = 0.0, duration: float = 0.0,
              **settings: str) -> Tuple[Agent, Dict[str, float], int]:
    standin.rate_limit_per_minute = round(per_minute * PAGERDUTY_PER_MINUTE / 110)
    agent = make_agent(PDAGENT_RATE_LIMIT_PER_MINUTE=str(per_minute), **settings)
    events = storm_events(incidents, per_incident, flapping)
    fault: Optional[Any] = None
    started = time.monotonic()
    if throttled_for:
        fault = standin.add_fault(status=429, routing_key=KEY_A)  # as PagerDuty: no Retry-After
        timer = threading.Timer(throttled_for, standin.clear_faults)
        timer.start()
    try:
        storm_end = send_storm(agent.socket, KEY_A, events, duration)
        since = max(storm_end, started + throttled_for)  # the storm's end, or PagerDuty's, if that is later
        try:
            times = check_truth(standin, events, since, within)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nrequests: {standin.stats()['requests']}; the daemon's log ends:\n"
                                 + "\n".join(agent.log().splitlines()[-30:])) from None
    finally:
        if throttled_for:
            timer.cancel()
    if fault is not None:
        assert fault.hits > 0  # the agent did meet the 429s
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=30)
    status = agent.status()["totals"]
    assert status["delivered"] + status["superseded"] == len(events)  # each event sent or superseded
    return agent, times, len(standin.received(KEY_A))


def test_storm_scaled_down_shows_the_truth_in_time(make_agent, standin):
    # 20 incidents x 15 events at 1200/min: ten times PagerDuty's rate, so the 60 s of the full storm are 5.5 s
    agent, times, received = run_storm(make_agent, standin, incidents=20, per_incident=15, flapping=3,
                                       per_minute=1200, within=5.5)
    assert received < 300 / 2  # FIFO would have sent all 300
    log = agent.log()
    assert log.count("superseded by event") == 300 - received  # one record per event coalesced away
    assert KEY_A not in log  # masked in those records too


def test_storm_scaled_down_behind_429s_shows_the_truth_in_time(make_agent, standin):
    # a storm spread over 4 s, PagerDuty answering 429 for the first 2.5 s of it
    agent, times, received = run_storm(make_agent, standin, incidents=20, per_incident=15, flapping=3,
                                       per_minute=1200, within=5.5, throttled_for=2.5, duration=4.0)
    assert received < 300 / 2


def test_storm_without_coalescing_sends_everything_in_fifo_order(make_agent, standin):
    # the same storm with coalesce = no: every event goes, in arrival order per key
    events = storm_events(10, 6, 2)
    standin.rate_limit_per_minute = 0
    agent = make_agent(PDAGENT_COALESCE="no")
    send_storm(agent.socket, KEY_A, events)
    assert standin.wait_for(len(events), timeout=30), agent.log()
    by_key = {key: [kind for kind, _ in history] for key, history in standin.incidents(KEY_A).items()}
    for key, history in by_key.items():
        assert history == [kind for dedup_key, kind in events if dedup_key == key]
    assert agent.status()["totals"]["superseded"] == 0


@pytest.mark.slow
def test_storm_of_5000_events_at_the_default_rate_limit_shows_the_truth_within_60s(make_agent, standin):
    agent, times, received = run_storm(make_agent, standin, incidents=50, per_incident=100, flapping=5,
                                       per_minute=110, within=60.0, PDAGENT_BACKOFF_MIN_SEC="1",
                                       PDAGENT_BACKOFF_MAX_SEC="300")
    print(f"\nstorm of 5000: {received} events sent; truth {max(times.values()):.1f}s after the storm's end")


@pytest.mark.slow
def test_storm_of_5000_events_behind_a_minute_of_429s_shows_the_truth_within_60s(make_agent, standin):
    # the storm spread over 90 s, PagerDuty answering 429 (without Retry-After) for its first minute
    agent, times, received = run_storm(make_agent, standin, incidents=50, per_incident=100, flapping=5,
                                       per_minute=110, within=60.0, throttled_for=60.0, duration=90.0,
                                       PDAGENT_BACKOFF_MIN_SEC="1", PDAGENT_BACKOFF_MAX_SEC="300")
    print(f"\nstorm of 5000 over 90 s, 429 for the first 60 s: {received} events sent; truth "
          f"{max(times.values()):.1f}s after the storm's end")


def test_superseded_events_are_shown_counted_and_kept_out_of_pagerduty(make_agent, standin):
    standin.add_fault(status=503, routing_key=KEY_A)  # the first trigger waits, deferred, while the rest arrive
    agent = make_agent()
    replies = send_many(agent, [trigger(KEY_A, "first", "db")])
    assert standin.wait_for_requests(1, timeout=10)
    replies += send_many(agent, [trigger(KEY_A, "update 1", "db"), trigger(KEY_A, "update 2", "db"),
                                 action(KEY_A, "resolve", "db")])
    first, update1, update2, resolve = (reply["id"] for reply in replies)

    def queue(*args: str) -> str:
        result = agent.client("pdagent_sd.cli.queue", *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        return str(result.stdout)

    assert f"{KEY_A}: oldest pending" in queue("status") and "2 superseded" in queue("status")
    listed = queue("list", "--state", "superseded")
    assert f"superseded by {update2}" in listed and f"superseded by {resolve}" in listed
    assert f"Superseded by: event {update2} " in queue("show", str(update1))
    assert 'pdagent_queue_events{state="superseded"} 2' in queue("metrics")
    assert json.loads(queue("status", "--json"))["totals"]["superseded"] == 2
    standin.clear_faults()
    assert standin.wait_for(2, timeout=15), agent.log()
    assert [event.action for event in standin.received(KEY_A)] == ["trigger", "resolve"]
    assert standin.received(KEY_A)[0].body["payload"]["summary"] == "first"
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 2)
    assert first < update1


def test_a_kill_in_the_middle_of_a_storm_leaves_every_event_pending_delivered_or_superseded(make_agent, standin):
    """SIGKILL while a storm is being coalesced: after the restart every acknowledged event is still in the
    queue, pending, delivered or superseded by a later event of its own incident; then PagerDuty ends with
    every incident resolved, in order."""
    standin.rate_limit_per_minute = 0
    agent = make_agent(PDAGENT_RATE_LIMIT_PER_MINUTE="600", PDAGENT_RATE_LIMIT_BURST="5")
    events = storm_events(10, 30, 2)
    acknowledged: Dict[int, Tuple[str, str]] = {}
    killer = threading.Thread(target=agent.kill9)  # started a third of the way: it lands while sends go on
    try:
        with Client(agent.socket) as conn:
            for index, (dedup_key, kind) in enumerate(events):
                if index == len(events) // 3:
                    killer.start()
                reply = conn.request({"op": "send", "api": "v2", "event": body(KEY_A, dedup_key, kind, index)})
                acknowledged[int(reply["id"])] = (dedup_key, kind)
    except AgentUnreachable:
        pass  # the daemon died under the sender
    finally:
        killer.join()
    assert 0 < len(acknowledged) < len(events), "the kill must land in the middle of the storm"
    with sqlite3.connect(os.path.join(agent.state_dir, "queue.db")) as db:
        rows = {row[0]: row[1:]
                for row in db.execute("SELECT id, dedup_key, action, state, superseded_by FROM events")}
    for event_id, (dedup_key, kind) in acknowledged.items():
        assert event_id in rows, f"acknowledged event {event_id} lost"
        _, action_, state, by = rows[event_id]
        assert action_ == kind
        assert state in ("pending", "delivered", "superseded"), state
        if state == "superseded":
            assert by in rows and by > event_id and rows[by][0] == dedup_key
    agent.start()  # the same queue: send the rest of the storm, then every incident's resolve
    sent = [acknowledged[event_id] for event_id in sorted(acknowledged)]
    rest = [(f"storm-{number}", "resolve") for number in range(10)]
    send_storm(agent.socket, KEY_A, rest)
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=30), agent.log()
    problems = wrongs(standin.incidents(KEY_A), sent + rest)
    assert not problems, problems[:5]
