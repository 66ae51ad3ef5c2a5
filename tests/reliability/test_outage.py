"""Outage: the Events API refuses connections, then answers 500, then 429 with Retry-After, while events keep
arriving and the retry timer keeps flushing. Afterwards everything is delivered once, in order per key, and the
attempts recorded in queue.db show the backoff stayed within its bounds: never a hot loop, never a gap longer
than the cap."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import defaultdict
from typing import Any, Dict, List, Tuple

import pytest

from agentproc import Agent, trigger
from chaoslib import routing_key, runs

KEYS = [routing_key(n) for n in range(4)]
# A gap may exceed the chosen delay by the attempt itself and a scheduling hiccup on a loaded machine; a SYN
# that races the stand-in's listener closing is retried by the kernel after 1 s.
GAP_TOLERANCE_SEC = 1.5


def attempts_by_key(state_dir: str) -> Dict[str, List[Tuple[float, str, Any]]]:
    conn = sqlite3.connect(os.path.join(state_dir, "queue.db"))
    try:
        by_key: Dict[str, List[Tuple[float, str, Any]]] = defaultdict(list)
        for key, at, outcome, status in conn.execute(
                "SELECT events.routing_key, attempts.at, attempts.outcome, attempts.http_status FROM attempts "
                "JOIN events ON events.id = attempts.event_id ORDER BY attempts.at"):
            by_key[key].append((at, outcome, status))
        return by_key
    finally:
        conn.close()


class Trickle:
    """Events for every key at a steady pace, and a flush every few seconds (the retry timer's job)."""

    def __init__(self, agent: Agent, every: float, flush_every: float) -> None:
        self.agent = agent
        self.every = every
        self.flush_every = flush_every
        self.sent: List[Tuple[str, int, str]] = []  # (routing key, id, dedup key)
        self.failures: List[Dict[str, Any]] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        next_flush = time.monotonic() + self.flush_every
        while not self.stopping.wait(self.every):
            key = KEYS[n % len(KEYS)]
            tag = f"outage-{n}"
            reply = self.agent.request({"op": "send", "api": "v2", "event": trigger(key, tag, tag)})
            if reply.get("ok"):
                self.sent.append((key, reply["id"], tag))
            else:
                self.failures.append(reply)
            n += 1
            if time.monotonic() >= next_flush:
                self.agent.request({"op": "flush"})
                next_flush += self.flush_every

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


@pytest.mark.parametrize("size", runs({"phase_sec": 8.0, "min": 0.2, "max": 2.0, "retry_after": 1},
                                      {"phase_sec": 60.0, "min": 1.0, "max": 20.0, "retry_after": 5}))
def test_refused_then_500_then_429_backs_off_within_bounds_and_delivers_in_order(
        size, make_agent, standin, figures) -> None:  # type: ignore[no-untyped-def]
    low, high, phase = size["min"], size["max"], size["phase_sec"]
    agent = make_agent(PDAGENT_BACKOFF_MIN_SEC=str(low), PDAGENT_BACKOFF_MAX_SEC=str(high))
    standin.refuse_connections()
    trickle = Trickle(agent, every=0.25, flush_every=2.0)
    windows: Dict[str, Tuple[float, float]] = {}
    try:
        start = time.time()
        time.sleep(phase)
        windows["refused"] = (start, time.time())
        standin.add_fault(status=500)
        standin.accept_connections()
        time.sleep(phase)
        windows["500"] = (windows["refused"][1], time.time())
        standin.clear_faults()  # one rule at a time: the first matching rule applies
        standin.add_fault(status=429, retry_after=size["retry_after"])
        time.sleep(phase)
        standin.clear_faults()
        windows["429"] = (windows["500"][1], time.time())
        trickle.stop()
        ended = time.monotonic()
        assert not trickle.failures, trickle.failures[:3]
        tags = {tag for _, _, tag in trickle.sent}
        assert agent.wait_until(lambda: tags <= {e.body.get("dedup_key") for e in standin.events},
                                timeout=high + 30), agent.log()[-3000:]
        figures["recovery_sec"] = round(time.monotonic() - ended, 2)
        assert agent.wait_until(lambda: agent.pending() == 0, timeout=30)
    finally:
        trickle.stop()
    assert agent.stop() == 0

    # Delivered once each, and per key in the order the events were acknowledged.
    received = [event.body["dedup_key"] for event in standin.events]
    assert len(received) == len(set(received)) == len(trickle.sent)
    for key in KEYS:
        acknowledged = [tag for k, _, tag in sorted(trickle.sent, key=lambda s: s[1]) if k == key]
        assert [event.body["dedup_key"] for event in standin.received(key)] == acknowledged

    by_key = attempts_by_key(agent.state_dir)
    counts = {name: [sum(1 for at, outcome, _ in by_key[key] if begin <= at < end and outcome == "deferred")
                     for key in KEYS] for name, (begin, end) in windows.items()}
    gaps_after_failure = [later[0] - earlier[0] for key in KEYS for earlier, later in zip(by_key[key], by_key[key][1:])
                          if earlier[1] == "deferred"]
    figures.update(events=len(trickle.sent), phase_sec=phase, backoff_min=low, backoff_max=high,
                   deferred_attempts_per_key=counts, min_gap_sec=round(min(gaps_after_failure), 3),
                   max_gap_sec=round(max(gaps_after_failure), 3))
    for name, per_key in counts.items():
        floor = size["retry_after"] if name == "429" else low
        ceiling = phase / floor + 2  # no hot loop: every wait is at least the floor
        at_least = phase / (high + GAP_TOLERANCE_SEC) - 1  # kept trying all along: no wait beyond the cap
        assert all(at_least <= count <= ceiling for count in per_key), (name, per_key, at_least, ceiling)
    # attempt times are taken a moment after each attempt, so a busy machine can shorten a gap by a few tens of
    # milliseconds; a hot loop would show gaps near zero
    assert min(gaps_after_failure) >= low * 0.8
    assert max(gaps_after_failure) <= high + GAP_TOLERANCE_SEC


@pytest.mark.integration
@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_zero_or_in_the_past_is_no_hot_loop(retry_after, make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    """A 429 whose Retry-After asks for no wait at all still waits backoff_min_sec: a proxy or API answering
    that way must not be hammered."""
    low = 0.2
    standin.add_fault(status=429, retry_after=retry_after)
    agent = make_agent(PDAGENT_BACKOFF_MIN_SEC=str(low), PDAGENT_BACKOFF_MAX_SEC="1")
    assert agent.request({"op": "send", "api": "v2", "event": trigger(KEYS[0], "x", "x")})["ok"]
    time.sleep(2.0)
    standin.clear_faults()
    assert standin.wait_for(1, timeout=5)
    assert standin.request_count_for(KEYS[0]) <= 2.0 / low + 2, standin.request_count_for(KEYS[0])


@pytest.mark.integration
def test_retry_after_beyond_the_cap_waits_the_cap(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    """backoff_max_sec bounds every wait, a server's Retry-After too: a proxy answering "Retry-After: 86400"
    must not hold alerts back for a day; if the API still throttles, it says so again at the next attempt."""
    standin.add_fault(status=429, retry_after=86400, count=1)
    agent = make_agent(PDAGENT_BACKOFF_MIN_SEC="0.2", PDAGENT_BACKOFF_MAX_SEC="1")
    assert agent.request({"op": "send", "api": "v2", "event": trigger(KEYS[0], "x", "x")})["ok"]
    assert standin.wait_for(1, timeout=5), agent.log()
    first, second = [r.time for r in standin.requests if r.routing_key == KEYS[0]][:2]
    assert 0.2 <= second - first <= 1.0 + GAP_TOLERANCE_SEC
