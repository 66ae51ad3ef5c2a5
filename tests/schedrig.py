"""A deterministic rig for the delivery state machine: the real Scheduler and a real Store (SQLite on a tmp
directory), driven in one thread by a fake clock and a scripted deliverer, in milliseconds.

    rig = Rig(str(tmp_path), rate_limit_per_minute=0)
    rig.deliverer.script(KEY_A, throttled("10"), DELIVERED)   # answers for KEY_A's next attempts, in order
    first = rig.send(KEY_A, dedup_key="a1")
    rig.run()                                                 # turns, then the clock jumps to the next timer
    assert [(s.dedup_key, s.outcome) for s in rig.deliverer.sent] == [("a1", "retry"), ("a1", "delivered")]
    assert rig.deliverer.sent[1].at - rig.deliverer.sent[0].at == 10
    rig.close()

No worker thread is started: `Scheduler.turn(deliverer, block=False)`, the same method the workers loop on,
runs one key's turn. The Store's writer thread is real, but every turn waits for its commits, so the order of
everything is fixed. HTTP answers go through `delivery.classify`, the real rules table.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import pytest

from pdagent_sd.config import AGENT_SETTINGS, Config
from pdagent_sd.delivery import Outcome, Result, classify
from pdagent_sd.errors import StorageError
from pdagent_sd.events import Api, validate
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queuetypes import INTERNAL, Sender
from pdagent_sd.scheduler import Scheduler
from pdagent_sd.statustypes import State
from pdagent_sd.store import Store

from pdmodel import PagerDuty, replay

KEY_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
KEY_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
KEY_C = "cccccccccccccccccccccccccccccccc"

START_MONOTONIC = 1000.0
START_WALL = 1_800_000_000.0  # 2027-01-15, a whole number so that wall and monotonic differences stay exact


class FakeClock:
    """Monotonic and wall time that move only when told; wall - monotonic is constant until step_wall()."""

    def __init__(self) -> None:
        self.now = START_MONOTONIC
        self.wall_offset = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return START_WALL - START_MONOTONIC + self.now + self.wall_offset

    def step_wall(self, seconds: float) -> None:
        """The wall clock alone jumps (NTP, an admin, a VM restored from a snapshot): back when negative."""
        self.wall_offset += seconds

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        self.now += seconds

    def elapsed(self) -> float:
        return self.now - START_MONOTONIC


@dataclass(frozen=True)
class Answer:
    """What the Events API does with one attempt. status None: no answer at all (connection refused)."""

    status: Optional[int] = 202
    retry_after: Optional[str] = None  # the Retry-After header, as sent
    text: str = ""
    latency: float = 0.0  # seconds the attempt takes on the fake clock
    unknown: bool = False  # status None: the request went out and no answer came (a read timeout, a reset)
    lands_after: Optional[float] = None  # seconds after the attempt began when PagerDuty processes it anyway

    def result(self, api: Api, now: float) -> Result:
        if self.status is None:
            if self.unknown:
                return Result(Outcome.RETRY, None, "timed out waiting for the stand-in to answer", unknown=True)
            return Result(Outcome.RETRY, None, "cannot connect to the stand-in: Connection refused")
        return classify(api, self.status, self.text, self.retry_after, now=now)

    def lands_at(self, at: float, outcome: Outcome) -> Optional[float]:
        """When PagerDuty takes the event sent at `at`, or None if it never does."""
        if self.lands_after is not None:
            return at + self.lands_after
        return at + self.latency if outcome is Outcome.DELIVERED else None


DELIVERED = Answer(202)


def throttled(retry_after: Optional[str] = None, status: int = 429) -> Answer:
    return Answer(status, retry_after, '{"status":"throttle event","message":"Requests are being throttled"}')


def server_error(status: int = 500, retry_after: Optional[str] = None) -> Answer:
    return Answer(status, retry_after, "internal error")


def refused(status: int = 400, message: str = "Event object is invalid") -> Answer:
    return Answer(status, None, json.dumps({"status": "invalid event", "message": message,
                                            "errors": ["payload.summary is missing"]}))


def unreachable() -> Answer:
    return Answer(None)


def timed_out(after: float = 15.0, lands_after: Optional[float] = None) -> Answer:
    """No answer within `after` seconds (request_timeout_sec); PagerDuty processes the request anyway
    `lands_after` seconds after it was sent (None: never)."""
    return Answer(None, latency=after, unknown=True, lands_after=lands_after)


@dataclass(frozen=True)
class Sent:
    """One attempt as the deliverer saw it."""

    at: float  # fake monotonic time when it went out
    routing_key: str
    dedup_key: str
    action: str
    api: str
    status: Optional[int]
    outcome: str  # delivered | retry | failed


@dataclass
class ScriptedDeliverer:
    """Answers attempts from per-routing-key scripts; a key whose script is used up gets `default`."""

    clock: FakeClock
    default: Answer = DELIVERED
    scripts: Dict[str, Deque[Answer]] = field(default_factory=dict)
    sent: List[Sent] = field(default_factory=list)
    closed: bool = False
    # (time, routing key, dedup key, action, summary) of every event PagerDuty processed: pdmodel.replay()
    arrivals: List[Tuple[float, str, str, str, str]] = field(default_factory=list)
    during: Optional[Callable[[], None]] = None  # runs once, inside the next attempt

    def script(self, routing_key: str, *answers: Answer) -> None:
        self.scripts.setdefault(routing_key, deque()).extend(answers)

    def attempt(self, api: Api, body: str) -> Result:
        fields = json.loads(body)
        routing_key = fields.get("routing_key") or fields.get("service_key") or ""
        dedup_key = fields.get("dedup_key") or fields.get("incident_key") or ""
        action = fields.get("event_action") or fields.get("event_type") or "change"
        script = self.scripts.get(routing_key)
        answer = script.popleft() if script else self.default
        at = self.clock.monotonic()
        self.clock.advance(answer.latency)
        if self.during is not None:  # e.g. the wall clock steps while the request is out
            hook, self.during = self.during, None
            hook()
        result = answer.result(api, self.clock.wall())
        self.sent.append(Sent(at, routing_key, dedup_key, action, api.value, result.http_status,
                              result.outcome.value))
        lands_at = answer.lands_at(at, result.outcome)
        if lands_at is not None:
            summary = str((fields.get("payload") or {}).get("summary") or fields.get("description") or "")
            self.arrivals.append((lands_at, routing_key, dedup_key, action, summary))
        return result

    def pagerduty(self) -> PagerDuty:
        """What PagerDuty ends in once every event that will land has landed."""
        return replay(self.arrivals)

    def close(self) -> None:
        self.closed = True

    def of(self, routing_key: str) -> List[Sent]:
        return [sent for sent in self.sent if sent.routing_key == routing_key]


def make_config(**settings: object) -> Config:
    values = {setting.name: setting.default for setting in AGENT_SETTINGS}
    values["events_url"] = "http://127.0.0.1:9"  # never used: the deliverer is scripted
    values.update(settings)
    return Config(**values)  # type: ignore[arg-type]


class Rig:
    """The real Scheduler over a real Store, a FakeClock and a ScriptedDeliverer; settings as keywords."""

    def __init__(self, state_dir: str, *, rng: Optional[Callable[[], float]] = None, seed: int = 0,
                 **settings: object) -> None:
        self.clock = FakeClock()
        self.config = make_config(**settings)
        self.state_dir = state_dir
        self.rng = rng or random.Random(seed).random
        self.deliverer = ScriptedDeliverer(self.clock)
        self._start()
        self.turns = 0

    def _start(self) -> None:
        self.store = Store(self.state_dir, max_pending=self.config.max_pending_events, clock=self.clock.wall,
                           coalesce=self.config.coalesce)  # as the daemon builds it
        self.store.open()
        self.scheduler = Scheduler(self.store, self.config, deliverer_factory=lambda: self.deliverer,
                                   clock=self.clock.monotonic, wall_clock=self.clock.wall, rng=self.rng)

    def restart(self) -> None:
        """The daemon stops (between turns, every result on disk) and starts again on the same queue: a new
        Store and Scheduler; the clocks go on. What it remembers is what queue.db holds."""
        self.store.close()
        self._start()
        self.scheduler.flush()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events in ---------------------------------------------------------------------------------------

    def send(self, routing_key: str = KEY_A, action: str = "trigger", dedup_key: str = "",
             summary: str = "disk full", sender_uid: Optional[int] = None) -> int:
        """What the daemon does for one pd-send: commit the event, wake its key. Returns the event's id.
        sender_uid: the uid the daemon would read with SO_PEERCRED (an untrusted one); None: the daemon's own."""
        body: Dict[str, object] = {"routing_key": routing_key, "event_action": action}
        if dedup_key:
            body["dedup_key"] = dedup_key
        if action == "trigger":
            body["payload"] = {"summary": summary, "source": "rig", "severity": "critical"}
        sender = INTERNAL if sender_uid is None else Sender(sender_uid, False)
        event_id = self.store.enqueue(validate("v2", body), sender)
        self.scheduler.wake(RoutingKey(routing_key), sender.uid, sender.trusted)
        return event_id

    # --- time ----------------------------------------------------------------------------------------

    def step(self) -> int:
        """Run every turn that is possible without time passing; return how many ran."""
        count = 0
        while self.scheduler.turn(self.deliverer, block=False):
            count += 1
            self.turns += 1
            assert self.turns < 100_000, "the scheduler does not settle"
        return count

    def run(self, for_sec: Optional[float] = None) -> None:
        """Run turns, jumping the clock to each next timer, until nothing is left to do (or `for_sec` of fake
        time has passed: then the clock stops exactly there)."""
        end = None if for_sec is None else self.clock.now + for_sec
        while True:
            self.step()
            due = self.scheduler.next_due()
            if due is None:
                if end is not None:
                    self.clock.now = max(self.clock.now, end)
                return
            if end is not None and due > end:
                self.clock.now = max(self.clock.now, end)
                return
            self.clock.now = max(self.clock.now, due)

    # --- the queue, as the tests look at it -----------------------------------------------------------

    def states(self, routing_key: Optional[str] = None) -> Dict[str, str]:
        """dedup_key → state of every event still in the queue."""
        return {row.dedup_key: row.state
                for row in self.store.reads.list_events(None, routing_key, 1_000_000)}

    def pending(self) -> int:
        return len([state for state in self.states().values() if state == State.PENDING.value])

    def fail_writes(self, failing: bool) -> None:
        """Make every write of the queue fail (SQLITE_READONLY) or work again, as a full or read-only disk
        would. Call it between turns: the writer is idle then, every turn having waited for its commits.

        Failing starts with one failed write, as when a pd-send met the full disk first: the store then knows
        (writes_failing) and a turn sends nothing ahead of its commits. A disk that fills in the middle of a
        turn is a race between the worker and the writer thread; the rig does not model it."""
        conn = self.store._write_conn  # noqa: SLF001 - the harness reaches in; the product has no such switch
        assert conn is not None
        conn.execute(f"PRAGMA query_only = {1 if failing else 0}")
        if failing:
            with pytest.raises(StorageError):
                self.store.write(lambda conn: (None, 0))
            assert self.store.writes_failing


@contextlib.contextmanager
def rig_maker(directory: str, **defaults: Any) -> Iterator[Callable[..., "Rig"]]:
    """make(**settings) -> a Rig in its own state directory under `directory`, its settings over `defaults`;
    every rig made is closed at the end (the tests' make_rig fixtures)."""
    rigs: List[Rig] = []

    def make(**settings: Any) -> Rig:
        rig = Rig(os.path.join(directory, f"state{len(rigs)}"), **{**defaults, **settings})
        rigs.append(rig)
        return rig

    try:
        yield make
    finally:
        for rig in rigs:
            rig.close()
