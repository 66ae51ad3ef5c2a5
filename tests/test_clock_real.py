"""Time and order (issue 23) on the real daemon: a wall clock that jumps under it (libfaketime, Debian's
`faketime` package, with the offset read from a file the test rewrites) and an Events API stand-in that
processes a request after the client gave up on it. Judged by PagerDuty's end state (tests/pdmodel.py)."""

from __future__ import annotations

import os
import random
import time
from typing import Dict, List, Tuple

import pytest

from agentproc import KEY_A, KEY_B, action, send_many, trigger
from pdmodel import Alert, Incident, fifo, from_standin
from standin import StandIn
from tiers import missing

pytestmark = pytest.mark.integration

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


@pytest.fixture
def jumping_clock(tmp_path) -> Tuple[str, Dict[str, str]]:  # type: ignore[no-untyped-def]
    """A file holding the daemon's wall-clock offset ("+0", "-3600", ...) and the environment that makes the
    daemon read it: libfaketime re-reads the file on every call (FAKETIME_NO_CACHE) and leaves the monotonic
    clock alone (FAKETIME_DONT_FAKE_MONOTONIC), as an NTP step or `date -s` would."""
    if not os.path.exists(LIBFAKETIME):
        missing(f"{LIBFAKETIME} is missing: .ci/install-deps.sh installs Debian's faketime")
    offset = str(tmp_path / "faketime.rc")
    with open(offset, "w") as handle:
        handle.write("+0\n")
    return offset, {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": offset, "FAKETIME_NO_CACHE": "1",
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def step_to(offset_file: str, seconds: int) -> None:
    with open(offset_file + ".new", "w") as handle:
        handle.write(f"{seconds:+d}\n")
    os.replace(offset_file + ".new", offset_file)  # never a half-written offset


def delivered(standin: StandIn, dedup_key: str) -> List[str]:
    return [str(event.action) for event in standin.received() if event.key == dedup_key]


@pytest.mark.parametrize("step", [-86400, 3600], ids=["back-a-day", "forward-an-hour"])
def test_a_clock_step_under_the_real_daemon_never_holds_a_page(make_agent, standin, jumping_clock, step) -> None:  # type: ignore[no-untyped-def]
    """The issue's reproduction: an event meets a 503 and is deferred (at most 2 s here); the wall clock steps;
    the deferred event and a new incident on the key go within the backoff, not after the step. Then again
    across a restart: deferred, stopped, the clock steps again, started: it goes at once."""
    offset, env = jumping_clock
    agent = make_agent(PDAGENT_BACKOFF_MIN_SEC="1", PDAGENT_BACKOFF_MAX_SEC="2", **env)
    standin.add_fault(503, count=1, routing_key=KEY_A)
    send_many(agent, [trigger(KEY_A, "disk full", "inc")])
    assert standin.wait_for_requests(1, timeout=5)
    step_to(offset, step)
    send_many(agent, [trigger(KEY_A, "load high", "other")])
    assert standin.wait_for(2, timeout=6), agent.log()  # 2 s of backoff and some slack, not an hour
    assert delivered(standin, "inc") == ["trigger"] and delivered(standin, "other") == ["trigger"]

    standin.add_fault(503, count=1, routing_key=KEY_A)
    send_many(agent, [action(KEY_A, "resolve", "inc")])
    assert standin.wait_for_requests(4, timeout=5)  # the 503 for the resolve: deferred 1-2 s
    agent.stop()
    step_to(offset, 2 * step)
    agent.start()
    assert standin.wait_for(3, timeout=5), agent.log()
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=5)
    end = from_standin(standin.received()).end_state()
    assert end == fifo([("trigger", "inc", "disk full", KEY_A), ("trigger", "other", "load high", KEY_A),
                        ("resolve", "inc", "", KEY_A)]).end_state()


def test_a_trigger_processed_after_the_timeout_does_not_reopen_the_incident(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    """The stand-in holds the first copy of the trigger past the client's 1 s timeout and then processes it; the
    agent re-sends the trigger and must not send the resolve before that first copy can no longer land
    (1 + 2 x 1 s after it was sent): PagerDuty ends resolved, with one alert, as FIFO leaves it."""
    agent = make_agent(PDAGENT_REQUEST_TIMEOUT_SEC="1", PDAGENT_CONNECT_TIMEOUT_SEC="1")
    standin.add_fault(None, count=1, routing_key=KEY_A, delay=1.6)  # no status of its own: processed late
    send_many(agent, [trigger(KEY_A, "disk full", "inc"), action(KEY_A, "resolve", "inc"),
                      trigger(KEY_B, "elsewhere", "b")])
    assert standin.wait_for(4, timeout=10), agent.log()
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=5)
    arrivals = [(event.key, event.action) for event in standin.received(KEY_A)]
    assert arrivals == [("inc", "trigger"), ("inc", "trigger"), ("inc", "resolve")]  # the late copy in between
    end = from_standin(standin.received()).end_state()
    assert end[f"{KEY_A}/inc"] == Incident(Alert.RESOLVED, 1)
    assert end == fifo([("trigger", "inc", "disk full", KEY_A), ("resolve", "inc", "", KEY_A),
                        ("trigger", "b", "elsewhere", KEY_B)]).end_state()


def test_pagerduty_ends_as_fifo_through_late_answers_and_503s_on_the_real_daemon(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    """Random incidents on two keys, each a few triggers, acknowledges and resolves, while the stand-in answers
    some requests late (after the client's timeout, processing them anyway), some with 503, some by dropping
    the connection: once all is delivered PagerDuty's end state equals FIFO's."""
    seed = int(os.environ.get("CLOCK_REAL_SEED", "0")) or random.randrange(1, 1_000_000)
    rng = random.Random(seed)
    agent = make_agent(PDAGENT_REQUEST_TIMEOUT_SEC="0.5", PDAGENT_CONNECT_TIMEOUT_SEC="0.5")
    for key in (KEY_A, KEY_B):
        standin.add_fault(None, count=2, routing_key=key, delay=0.5 + rng.uniform(0.05, 0.45))
        standin.add_fault(503, count=rng.randrange(0, 3), routing_key=key)
        standin.add_fault(None, count=1, routing_key=key, delay=0.5 + rng.uniform(0.05, 0.45))
        standin.add_fault(count=1, routing_key=key, disconnect=True)  # dropped unprocessed, unknown to the agent
    reference: List[Tuple[str, str, str, str]] = []
    bodies = []
    for number in range(24):
        key = rng.choice((KEY_A, KEY_B))
        incident = rng.choice(("x", "y", "z"))
        kind = rng.choice(("trigger", "trigger", "acknowledge", "resolve"))
        if kind == "trigger":
            bodies.append(trigger(key, f"{incident}{number}", incident))
            reference.append((kind, incident, f"{incident}{number}", key))
        else:
            bodies.append(action(key, kind, incident))
            reference.append((kind, incident, "", key))
    replies = send_many(agent, bodies)
    assert all(reply.get("ok") for reply in replies), replies
    assert agent.wait_until(lambda: agent.pending() == 0, timeout=40), agent.log()
    time.sleep(1.0)  # a copy held by the stand-in lands at most 0.95 s after it arrived
    end = from_standin(standin.received()).end_state()
    assert end == fifo(reference).end_state(), f"seed {seed} (CLOCK_REAL_SEED={seed} replays it)"


@pytest.mark.parametrize("fault, unknown", [
    (dict(status=None, delay=0.6), True),  # no answer within the 0.3 s read timeout: may still be processed
    (dict(disconnect=True), True),  # the connection closed after the request went out
    (dict(status=504), True),  # a gateway gave up waiting: upstream may still take it
    (dict(status=503), False),  # PagerDuty's own refusal
    (dict(status=429), False),
    (None, False),  # delivered
], ids=["read-timeout", "dropped", "504", "503", "429", "delivered"])
def test_the_outcome_of_an_attempt_is_unknown_only_once_the_request_went_out(standin, fault, unknown) -> None:  # type: ignore[no-untyped-def]
    from pdagent_sd.delivery import Deliverer, Outcome
    from pdagent_sd.events import Api, validate

    if fault is not None:
        standin.add_fault(count=1, **fault)
    deliverer = Deliverer(standin.url, connect_timeout=0.3, read_timeout=0.3)
    try:
        result = deliverer.attempt(Api.V2, validate("v2", trigger(KEY_A, "disk full", "inc")).encoded())
    finally:
        deliverer.close()
    assert result.unknown is unknown, result
    assert result.outcome is (Outcome.DELIVERED if fault is None else Outcome.RETRY)


def test_a_refused_connection_is_a_known_failure(standin) -> None:  # type: ignore[no-untyped-def]
    from pdagent_sd.delivery import Deliverer, Outcome
    from pdagent_sd.events import Api, validate

    standin.refuse_connections()
    deliverer = Deliverer(standin.url, connect_timeout=0.3, read_timeout=0.3)
    try:
        result = deliverer.attempt(Api.V2, validate("v2", trigger(KEY_A, "disk full", "inc")).encoded())
    finally:
        deliverer.close()
    assert result.outcome is Outcome.RETRY and not result.unknown, result
    assert "cannot connect" in result.error
