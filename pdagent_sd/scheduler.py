"""Who sends what, when: FIFO per routing key and sender (with coalescing: truth first, in order per incident),
the senders of a key in turn (trusted first), keys in parallel on a bounded pool of workers, exponential
backoff with full jitter and Retry-After per key, and a token bucket per key.

A key is in exactly one place at a time: idle (nothing known to send), ready (waiting for a worker),
waiting (backing off or throttled until a time), or busy (a worker is sending its oldest event).

Fairness between senders: a key that becomes ready joins the line of the uid that queued its event, and
workers take the next ready key from each sender's line in turn (round robin over uids), so one local user's
thousands of keys cannot queue ahead of another's key: with W workers and U senders with ready keys, a key
that becomes ready gets a worker after at most U - 1 turns of other keys, each at most BATCH_PER_TURN attempts.

Fairness inside a key (a routing key is shared, an event is its sender's): each turn of a key sends the events
of one party only — the trusted senders' (root, the service's user, group pdagent, trusted_groups: one party)
whenever they have any pending, else the next untrusted sender uid in turn (round robin) — in that party's own
order (FIFO, or truth first with coalescing, and always in order per incident). So a page of a trusted sender
waits for at most the turn in progress and one token of the key's bucket, however many events other users
have queued on the same key; and among untrusted users each waits for at most one turn of each other. A
trusted sender's event on a key that waits in another sender's line moves the key to the trusted sender's
line, so a shared key does not wait behind its waker's other keys.

Memory: an idle key's state is forgotten once no backoff or throttle is in force for it and its token bucket
has filled again (a new one would be the same), so made-up keys cost nothing once their events are settled.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

from pdagent_sd.commit import Commit
from pdagent_sd.config import Config
from pdagent_sd.delivery import Deliverer, Outcome, Result
from pdagent_sd.errors import StorageError
from pdagent_sd.journal import Kind, report
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queue_reads import UNKNOWN_OUTCOME
from pdagent_sd.queuetypes import TRUSTED_PARTY, UNKNOWN_SENDER, QueuedEvent
from pdagent_sd.statustypes import NOT_HELD, Held, State
from pdagent_sd.store import Store

logger = logging.getLogger(__name__)

# A token refilled by waiting exactly the time wait_time() asked for can add up to 0.9999999999 (110/min is not
# a round rate): without this slack the key asks again for a wait too small to move a clock, for ever.
TOKEN_EPSILON = 1e-9
THROTTLE_BACKOFF_MAX_SEC = 15.0  # the longest wait after a throttle answer (429) without Retry-After
BATCH_PER_TURN = 32  # events a worker sends for one key before letting other ready keys have a turn


def landing_window(config: Config) -> float:
    """How long after an attempt began its request may still land at PagerDuty when no answer said what became
    of it: the attempt's own time (connect, then the answer) and as long again for an answer PagerDuty was late
    with. The incident's next event waits that long (docs/design-notes.md, "Time and order")."""
    return config.connect_timeout_sec + 2 * config.request_timeout_sec


def backoff_delay(failures: int, low: float, high: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter, never below `low` (no hot loop) nor above `high`."""
    ceiling = min(high, low * (2 ** min(failures, 30)))
    return low + (ceiling - low) * rng()


class TokenBucket:
    """Just under PagerDuty's per-key rate limit, so we wait here rather than collect 429s there."""

    __slots__ = ("rate", "capacity", "tokens", "stamp")

    def __init__(self, per_minute: int, burst: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, burst))
        self.tokens = self.capacity
        self.stamp = now

    def wait_time(self, now: float) -> float:
        """0 and a token taken if one is available; otherwise how long until one is."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1 - TOKEN_EPSILON:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def available(self, now: float) -> Optional[int]:
        """Whole tokens there are now, without taking one; None when the throttle is off."""
        if self.rate <= 0:
            return None
        return int(min(self.capacity, self.tokens + (now - self.stamp) * self.rate) + TOKEN_EPSILON)

    def full_at(self, now: float) -> float:
        """When the bucket is full again (now or earlier if it is)."""
        if self.rate <= 0:
            return now
        return now + max(0.0, self.capacity - self.tokens - (now - self.stamp) * self.rate) / self.rate


class KeyState:
    __slots__ = ("routing_key", "bucket", "place", "due", "failures", "woken", "throttled_until",
                 "backoff_until", "owner", "retire_at", "resumed", "last_party", "landing", "held_for_landing")

    def __init__(self, routing_key: RoutingKey, bucket: TokenBucket) -> None:
        self.routing_key = routing_key
        self.bucket = bucket
        self.place = "idle"  # idle | ready | waiting | busy
        self.due = 0.0
        self.failures = 0
        self.woken = False  # a new event arrived while a worker held the key
        self.throttled_until = 0.0
        self.backoff_until = 0.0
        self.owner = UNKNOWN_SENDER  # the sender uid whose line the key waits in when ready
        self.retire_at = 0.0  # when an idle key may be forgotten
        self.resumed = False  # the backoff remembered in the queue has been read (see _resume)
        self.last_party: Optional[int] = None  # the untrusted sender whose events the key sent last
        # Incidents with an attempt whose outcome is unknown: dedup key -> (that event's id, the clock() time until
        # which its first copy may still land at PagerDuty). Their next events wait until then (see _landing_wait).
        self.landing: Dict[str, Tuple[int, float]] = {}
        self.held_for_landing = False  # waiting only because every event it read is held so: a new one may go


@dataclass
class Stats:
    last_delivery: Optional[float] = None
    delivered: int = 0
    attempts: int = 0
    in_flight: int = 0


class Scheduler:
    def __init__(self, store: Store, config: Config, *, deliverer_factory: Optional[Callable[[], Deliverer]] = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.store = store
        self.config = config
        self.deliverer_factory = deliverer_factory or (lambda: Deliverer(
            config.events_url, connect_timeout=config.connect_timeout_sec,
            read_timeout=config.request_timeout_sec, ca_bundle=config.ca_bundle))
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng
        self.keys: Dict[RoutingKey, KeyState] = {}
        self.ready: Dict[int, Deque[RoutingKey]] = {}  # per sender uid, its ready keys in order
        self.turns: Deque[int] = deque()  # the uids with ready keys, in the order they get a worker
        self.timers: List[Tuple[float, RoutingKey]] = []
        self.retiring: List[Tuple[float, RoutingKey]] = []  # idle keys to forget once their bucket is full
        self.cond = threading.Condition()
        self.stopping = False
        self.stats = Stats()
        self.workers: List[threading.Thread] = []
        # Attempts of the previous process whose outcome is unknown, read at the first key's first turn (_resume)
        self.unknown_at_start: Optional[Dict[Tuple[RoutingKey, str], Tuple[int, float]]] = None

    def start(self) -> None:
        for index in range(self.config.delivery_workers):
            worker = threading.Thread(target=self._work, name=f"delivery-{index}", daemon=True)
            worker.start()
            self.workers.append(worker)
        self.flush()

    def stop(self, timeout: float) -> None:
        """Let in-flight attempts finish (their results are recorded) for up to `timeout` seconds."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        deadline = self.clock() + timeout
        for worker in self.workers:
            worker.join(max(0.0, deadline - self.clock()))

    def alive(self) -> bool:
        return all(worker.is_alive() for worker in self.workers)

    def idle(self) -> bool:
        with self.cond:
            return not self.turns and self.stats.in_flight == 0

    # --- waking keys -------------------------------------------------------------------------------------

    def wake(self, routing_key: RoutingKey, sender_uid: int = UNKNOWN_SENDER, trusted: bool = False) -> None:
        """An event for this key was committed (by `sender_uid`, a trusted sender or not): make sure a worker
        will look at it."""
        with self.cond:
            self._wake_locked(routing_key, sender_uid, trusted)

    def flush(self) -> int:
        """Look at every key with pending events now (backoffs and throttles still hold); return how many."""
        keys = self.store.reads.pending_keys()
        with self.cond:
            for key, sender_uid in keys:
                self._wake_locked(key, sender_uid)
        return len(keys)

    def _key(self, routing_key: RoutingKey) -> KeyState:
        state = self.keys.get(routing_key)
        if state is None:
            bucket = TokenBucket(self.config.rate_limit_per_minute, self.config.rate_limit_burst, self.clock())
            state = self.keys[routing_key] = KeyState(routing_key, bucket)
        return state

    def _wake_locked(self, routing_key: RoutingKey, sender_uid: int = UNKNOWN_SENDER, trusted: bool = False) -> None:
        state = self._key(routing_key)
        if state.place == "idle":
            state.owner = sender_uid
            self._make_ready(state)
        elif state.place == "busy":
            state.woken = True
        elif state.place == "waiting" and state.held_for_landing:
            self._make_ready(state)  # the new event may be another incident's, which nothing holds
        if trusted and state.owner != sender_uid:
            self._move_to_line(state, sender_uid)

    def _move_to_line(self, state: KeyState, owner: int) -> None:
        """A trusted sender's event on a key another sender woke: the key waits in the trusted sender's line
        from now on, not behind that sender's other ready keys (a shared key is not its waker's)."""
        if state.place == "ready":
            line = self.ready[state.owner]
            line.remove(state.routing_key)
            if not line:
                del self.ready[state.owner]
                self.turns.remove(state.owner)
            state.owner = owner
            self._make_ready(state)
        else:
            state.owner = owner  # waiting or busy: it joins this line when it is ready again

    def _make_ready(self, state: KeyState) -> None:
        line = self.ready.get(state.owner)
        if line is None:
            line = self.ready[state.owner] = deque()
            self.turns.append(state.owner)
        line.append(state.routing_key)
        state.place = "ready"
        self.cond.notify()

    def _take_ready(self) -> KeyState:
        """The next ready key: the first of the line of the sender whose turn it is."""
        owner = self.turns.popleft()
        line = self.ready[owner]
        routing_key = line.popleft()
        if line:
            self.turns.append(owner)
        else:
            del self.ready[owner]
        return self.keys[routing_key]

    def _retire_idle(self, now: float) -> None:
        while self.retiring and self.retiring[0][0] <= now:
            retire_at, routing_key = heapq.heappop(self.retiring)
            state = self.keys.get(routing_key)
            if state is not None and state.place == "idle" and state.retire_at == retire_at:
                del self.keys[routing_key]

    def _wait_locked(self, state: KeyState, delay: float) -> None:
        state.place = "waiting"
        state.due = self.clock() + delay
        heapq.heappush(self.timers, (state.due, state.routing_key))
        self.cond.notify()  # a sleeping worker may need to wake earlier for this timer

    # --- the workers ----------------------------------------------------------------------------------

    def _next_key(self, block: bool) -> Optional[KeyState]:
        with self.cond:
            while not self.stopping:
                now = self.clock()
                while self.timers and self.timers[0][0] <= now:
                    due, routing_key = heapq.heappop(self.timers)
                    state = self.keys[routing_key]
                    if state.place == "waiting" and state.due == due:
                        self._make_ready(state)
                self._retire_idle(now)
                if self.turns:
                    state = self._take_ready()
                    state.place = "busy"
                    state.woken = False
                    state.held_for_landing = False
                    return state
                if not block:
                    return None
                soonest = min(self.timers[0][0] if self.timers else float("inf"),
                              self.retiring[0][0] if self.retiring else float("inf"))
                self.cond.wait(soonest - now if soonest != float("inf") else None)
            return None

    def _work(self) -> None:
        deliverer = self.deliverer_factory()
        try:
            while self.turn(deliverer):
                pass
        finally:
            deliverer.close()

    def turn(self, deliverer: Deliverer, *, block: bool = True) -> bool:
        """One worker turn: take the next ready key (timers that are due first), send its oldest events, put it
        back. False, having done nothing, once stopping, or when `block` is off and no key is ready now.

        The worker threads loop on it; tests call it with block=False, a scripted deliverer and a fake clock to
        run the delivery rules step by step in one thread."""
        state = self._next_key(block)
        if state is None:
            return False
        try:
            delay = self._serve_key(state, deliverer)
        except StorageError as error:  # e.g. results not on disk: those events go again, after a backoff
            delay = self._storage_backoff(state, error)
        except Exception:  # noqa: BLE001 - one bad turn must not kill a worker
            logger.exception("delivery of routing key %s failed unexpectedly", state.routing_key)
            delay = self.config.backoff_max_sec
        self._release(state, delay)
        return True

    def next_due(self) -> Optional[float]:
        """The clock() time of the earliest key waiting on a backoff or throttle, or None."""
        with self.cond:
            return self.timers[0][0] if self.timers else None

    def _storage_backoff(self, state: KeyState, error: StorageError) -> float:
        """The queue cannot be read or cannot record results (disk full): back off like a failed attempt, so the
        key neither hammers the Events API with events it must send again nor waits the whole cap once the
        disk is back."""
        state.failures += 1
        delay = backoff_delay(state.failures, self.config.backoff_min_sec, self.config.backoff_max_sec, self.rng)
        state.backoff_until = self.clock() + delay
        logger.error("routing key %s: %s; delivery goes on in %.1fs (events whose result was not recorded are "
                     "sent again)", state.routing_key, error.message, delay)
        return delay

    def _release(self, state: KeyState, delay: Optional[float]) -> None:
        """Put a key back: waiting for `delay` seconds, ready again, or idle when nothing is left."""
        with self.cond:
            if delay is not None:
                self._wait_locked(state, delay)
            elif state.woken:
                self._make_ready(state)
            else:
                state.place = "idle"
                now = self.clock()
                state.retire_at = max(now, state.throttled_until, state.backoff_until, state.bucket.full_at(now),
                                      *(until for _, until in state.landing.values()))
                if state.retire_at <= now:
                    del self.keys[state.routing_key]
                else:
                    heapq.heappush(self.retiring, (state.retire_at, state.routing_key))

    def _serve_key(self, state: KeyState, deliverer: Deliverer) -> Optional[float]:
        """Send this key's oldest events in order; return seconds to wait, or None when nothing is left.

        Results are committed in the background while the next event goes out, and all of them are on disk
        before the key is released. The writer commits in order, so after a crash the pending events of a
        key are always a suffix of what was sent, and re-sending them keeps the order.
        """
        if not state.resumed:
            self._resume(state)
        limit = self._turn_size(state)
        events = self._next_events(state, limit)
        commits: List[Commit] = []
        claimed: List[int] = []
        passed_over: Set[str] = set()  # incidents with an event superseded under this turn: keep their order
        held: Optional[float] = None  # the shortest wait of an incident held for an unknown outcome
        try:
            for event in events:
                if self.stopping:
                    return None
                if event.dedup_key in passed_over:
                    continue
                # Only the monotonic clock decides when a key may go: the retry times stored in the queue are
                # wall-clock hints, read once per process (_resume) and clamped there.
                wait = state.backoff_until - self.clock()
                if wait > 0:
                    return wait
                wait = self._landing_wait(state, event)
                if wait > 0:
                    if not self.config.coalesce:
                        return wait  # FIFO per key: nothing passes the held event
                    passed_over.add(event.dedup_key)  # other incidents go on
                    held = wait if held is None else min(held, wait)
                    continue
                wait = state.bucket.wait_time(self.clock())
                if wait > 0:
                    if state.throttled_until <= self.clock():
                        report(Kind.THROTTLED, f"routing key throttled for {wait:.1f}s (rate_limit_per_minute)",
                               routing_key=state.routing_key, retry_in_sec=f"{wait:.1f}")
                    state.throttled_until = self.clock() + wait
                    return wait
                if commits and self.store.writes_failing:
                    commits[-1].exception()  # no sending ahead of the commits while they fail: wait for it
                if any(commit.done() and commit.exception() is not None for commit in commits):
                    break  # a result could not be recorded: every event sent now would have to go again
                if not self.store.claims.claim(event.id):
                    passed_over.add(event.dedup_key)  # superseded since it was read: not sent, and nothing
                    continue  # after it in its incident goes this turn
                claimed.append(event.id)
                delay, commit = self._attempt(state, event, deliverer)
                commits.append(commit)
                if delay is not None:
                    return delay
        finally:
            try:
                _wait_all(commits)
            finally:
                self.store.claims.release(claimed)
        if held is not None and not claimed:
            with self.cond:
                state.held_for_landing = True  # until then, a new event wakes the key (_wake_locked)
            return held  # nothing else could go: come back when the first held incident may
        if events:
            with self.cond:
                # More may be left, of this party or another: go to the back of the line so other keys get a
                # turn, and pick the party again at the next turn.
                state.woken = True
        return None

    def _next_events(self, state: KeyState, limit: int) -> List[QueuedEvent]:
        """The events of this turn: those of the party whose turn it is (the trusted senders first, else the
        next sender uid in turn), in that party's order."""
        party = self.store.reads.next_party(state.routing_key, state.last_party)
        if party is None:
            return []
        if party != TRUSTED_PARTY:
            state.last_party = party
        if self.config.coalesce:
            return self.store.reads.next_pending(state.routing_key, limit, party)
        return self.store.reads.oldest_pending(state.routing_key, limit, party)

    def _landing_wait(self, state: KeyState, event: QueuedEvent) -> float:
        """How long `event` must wait for an earlier attempt of its incident whose outcome is unknown: until
        that attempt's first copy can no longer land at PagerDuty after this one (docs/design-notes.md, "Time
        and order"). The unknown event itself may go again at once: a second copy of the same event lands the same
        way."""
        landing = state.landing.get(event.dedup_key)
        if landing is None or landing[0] == event.id:
            return 0.0
        wait = landing[1] - self.clock()
        if wait <= 0:
            del state.landing[event.dedup_key]
        return wait

    def _note_unknown(self, state: KeyState, event: QueuedEvent, sent_at: float) -> None:
        """An attempt of `event` that began at `sent_at` may yet be processed: hold the rest of its incident."""
        now = self.clock()
        for dedup_key in [key for key, (_, until) in state.landing.items() if until <= now]:
            del state.landing[dedup_key]  # over: forgotten here too, for incidents that sent nothing since
        until = sent_at + landing_window(self.config)
        earlier = state.landing.get(event.dedup_key)
        if earlier is not None and earlier[0] == event.id:
            until = max(until, earlier[1])
        state.landing[event.dedup_key] = (event.id, until)

    def _resume(self, state: KeyState) -> None:
        """A key's first turn in this process: hold it until the latest retry time its pending events remember
        (after a restart, say). FIFO found that on the oldest event, the one that was deferred; in truth-first
        order another event of the key may come first, and must not go out during the backoff either."""
        state.resumed = True
        recent = None
        if self.unknown_at_start is None:  # workers may race here: the first answer read is the one kept
            recent = self.store.reads.recent_unknown(self.wall_clock(), landing_window(self.config))
        now = self.clock()
        with self.cond:
            if self.unknown_at_start is None:
                self.unknown_at_start = recent or {}
            for (routing_key, dedup_key), (event_id, left) in list(self.unknown_at_start.items()):
                if routing_key == state.routing_key:  # an attempt before the restart may still land
                    state.landing[dedup_key] = (event_id, now + left)
                    del self.unknown_at_start[(routing_key, dedup_key)]
        remaining = self.store.reads.retry_remaining(state.routing_key, self.wall_clock())
        # A wall-clock time is a hint: whatever the clock did since it was written (stepped back an hour, a day),
        # a remembered backoff is never longer than the longest one the scheduler gives.
        remaining = min(remaining, self.config.backoff_max_sec)
        if remaining > 0:
            state.backoff_until = max(state.backoff_until, self.clock() + remaining)

    def _turn_size(self, state: KeyState) -> int:
        """How many events one turn reads. FIFO: BATCH_PER_TURN. With coalescing the order is truth first (the
        first triggers and resolves before the updates, in order per incident), and a turn reads only as many
        as the token bucket lets go now, so that a throttled key picks again from what is pending at each
        token: a resolve that arrives while the key waits goes ahead of the updates read before it."""
        if not self.config.coalesce:
            return BATCH_PER_TURN
        tokens = state.bucket.available(self.clock())
        return BATCH_PER_TURN if tokens is None else max(1, min(BATCH_PER_TURN, tokens))

    def _attempt(self, state: KeyState, event: QueuedEvent,
                 deliverer: Deliverer) -> Tuple[Optional[float], Commit]:
        with self.cond:
            self.stats.in_flight += 1
        sent_at = self.clock()
        try:
            result = deliverer.attempt(event.api, event.body)
        finally:
            with self.cond:
                self.stats.in_flight -= 1
                self.stats.attempts += 1
        attempt = event.attempts + 1
        if result.unknown:
            self._note_unknown(state, event, sent_at)
        fields = dict(event_id=event.id, dedup_key=event.dedup_key, routing_key=event.routing_key,
                      action=event.action.value, api=event.api.value, attempt=attempt, http_status=result.http_status)
        if result.outcome is Outcome.DELIVERED:
            commit = self.store.record_attempt(event.id, State.DELIVERED, State.DELIVERED.value, result.http_status, "",
                                               sender_uid=event.sender_uid)
            if not self.store.writes_failing:
                # Not while the queue cannot record results: the event goes again, and the storage backoff must
                # grow (it stayed at 1-2 s, re-sending one event to PagerDuty that often for as long as the disk
                # was full).
                state.failures = 0
            with self.cond:
                self.stats.delivered += 1
                self.stats.last_delivery = self.wall_clock()
            report(Kind.DELIVERED, f"delivered event {event.id} ({event.api.value} {event.action.value})", **fields)
            return None, commit
        if result.outcome is Outcome.FAILED or self._out_of_attempts(attempt):
            commit = self.store.record_attempt(event.id, State.FAILED, State.FAILED.value, result.http_status,
                                               result.error, sender_uid=event.sender_uid)
            report(Kind.FAILED, f"event {event.id} failed: {result.error}", error=result.error, **fields)
            return None, commit
        return self._defer(state, event, result, fields)

    def _out_of_attempts(self, attempt: int) -> bool:
        return self.config.max_attempts > 0 and attempt >= self.config.max_attempts

    def _defer(self, state: KeyState, event: QueuedEvent, result: Result,
               fields: Dict[str, object]) -> Tuple[float, Commit]:
        state.failures += 1
        low, high = self.config.backoff_min_sec, self.config.backoff_max_sec
        delay = backoff_delay(state.failures, low, high, self.rng)
        if result.retry_after is not None:
            # Honoured, within the backoff bounds: "Retry-After: 0" or a date in the past must not turn into a
            # hot loop, and a huge one (a confused proxy) must not hold alerts back longer than the cap.
            delay = min(high, max(low, delay if not result.throttled else 0.0, result.retry_after))
        elif result.throttled:
            # PagerDuty counts its limit per minute and says nothing of when to come back: a backoff grown to
            # minutes would hold the truth back long after the limit has let go (issue 15).
            delay = backoff_delay(state.failures, low, min(high, THROTTLE_BACKOFF_MAX_SEC), self.rng)
        state.backoff_until = self.clock() + delay
        outcome = UNKNOWN_OUTCOME if result.unknown else "deferred"
        commit = self.store.record_attempt(event.id, State.PENDING, outcome, result.http_status, result.error,
                                           next_attempt=self.wall_clock() + delay)
        report(Kind.DEFERRED, f"event {event.id} deferred {delay:.1f}s: {result.error}",
               error=result.error, retry_in_sec=f"{delay:.1f}", **fields)
        return delay, commit

    # --- what systemctl status and pd-queue status show --------------------------------------------------

    def held_keys(self) -> List[RoutingKey]:
        """Keys with events waiting that are throttled or backing off now. A key whose pending events were
        dropped meanwhile stays among them until its backoff ends: Handlers.held_keys() leaves those out."""
        with self.cond:
            now = self.clock()
            return [state.routing_key for state in self.keys.values() if state.place != "idle"
                    and (state.throttled_until > now or state.backoff_until > now)]

    def key_status(self, routing_key: RoutingKey) -> Held:
        """Wall-clock times until which a key is throttled or backing off (None when it is not)."""
        with self.cond:
            state = self.keys.get(routing_key)
            if state is None:
                return NOT_HELD
            now, wall = self.clock(), self.wall_clock()
            return Held(
                throttled_until=wall + state.throttled_until - now if state.throttled_until > now else None,
                backoff_until=wall + state.backoff_until - now if state.backoff_until > now else None,
            )


def _wait_all(commits: List[Commit]) -> None:
    """Wait for every commit of a turn, then raise the first failure: a key is released only once all its
    results are settled one way or the other."""
    failure: Optional[BaseException] = None
    for commit in commits:
        exc = commit.exception()
        failure = failure or exc
    if failure is not None:
        raise failure
