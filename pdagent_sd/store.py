"""The durable queue: one SQLite file, WAL, synchronous=FULL; every change goes through one writer thread
that commits whatever arrived together in one transaction (group commit), so the disk's fsync rate is not the
ceiling, and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar, Union, cast

from pdagent_sd import marker, schema
from pdagent_sd.coalesce import Decision, Priority, Waiting, decide
from pdagent_sd.commit import Commit
from pdagent_sd.errors import NotFound, PdagentError, QueueFull, StorageError
from pdagent_sd.events import Action, Api, Event
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queuetypes import (
    INTERNAL,
    TRUSTED_PARTY,
    UNKNOWN_SENDER,
    EventRow,
    LegacyEntry,
    QueuedEvent,
    Quotas,
    Sender,
    Superseded,
    Usage,
)
from pdagent_sd.statustypes import STATES, Attempt, KeyCounts, State

logger = logging.getLogger(__name__)

# The one place a routing key is revealed to be stored (and looked up): SQLite binds a RoutingKey by its value.
sqlite3.register_adapter(RoutingKey, RoutingKey.reveal)

DB_NAME = "queue.db"
PENDING_MARKER = marker.MARKER_NAME
MAX_BATCH = 512
UNKNOWN_OUTCOME = "unknown"  # an attempt's outcome when the request went out and no answer came
RECENT_ATTEMPTS = 10000  # how far back recent_unknown() reads the attempts log at most
FUTURE_SLACK_SEC = 60.0  # a stored time this far ahead of the clock was written by a clock that ran ahead
PURGE_CHUNK = 500  # expired events deleted per transaction: some 10 ms of the writer's time
SUPERSEDED_MEMORY_SEC = 900.0  # how long the writer remembers an id it superseded, for claim()
# Rows that count toward a sender's event quota: what it has in the queue that is not settled as delivered.
HELD_STATES = "('pending', 'failed')"
# Per sender uid: events held, bytes of bodies stored. Each row is measured before the GROUP BY: measured after
# it, every body went through SQLite's sorter whole, which took 250 ms of the daemon's start on a queue of
# 100,000 events (80 ms this way). LIMIT -1 keeps SQLite from folding the subquery back into the GROUP BY.
USAGE_BY_SENDER = (f"SELECT sender_uid, SUM(held), SUM(size) FROM (SELECT sender_uid, state IN {HELD_STATES} AS held, "
                   "LENGTH(CAST(body AS BLOB)) AS size FROM events WHERE {where} LIMIT -1) GROUP BY sender_uid")


# What SQLite says of a file that is not a sound database: SQLITE_CORRUPT, SQLITE_NOTADB. Anything else (full,
# locked, I/O error, cannot open) is a condition of the disk or the system, not of the file.
CORRUPTION_CODES = (11, 26)


def is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in CORRUPTION_CODES
    return type(exc) is sqlite3.DatabaseError  # older Pythons raise exactly this class for those two codes


F = TypeVar("F", bound=Callable[..., Any])


def _read_op(method: F) -> F:
    """A read of the queue: SQLite's errors become StorageError (clients get storage_error, not an internal
    error), and damage met on the way is noted in store.damage."""

    @functools.wraps(method)
    def read(self: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._noticed(exc)
            raise StorageError(f"cannot read the queue at {self.path}: {exc}",
                               hint="see the daemon's journal") from None

    return cast(F, read)


class _Damaged(Exception):
    """queue.db failed its check at open: it is moved aside."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A write operation runs inside the writer's transaction and returns (result, change in pending count).
# It may refuse with a PdagentError only before it writes anything: the others in its batch still commit.
WriteOp = Callable[[sqlite3.Connection], Tuple[Any, int]]


class Store:
    """Owns queue.db and the `pending` marker file (present exactly while pending events exist)."""

    def __init__(self, state_dir: str, *, max_pending: int = 1000000, quotas: Optional[Quotas] = None,
                 clock: Callable[[], float] = time.time,
                 on_corrupt: Optional[Callable[[str, str], None]] = None,
                 on_marker_error: Optional[Callable[[str, str], None]] = None,
                 coalesce: bool = False,
                 on_superseded: Optional[Callable[[List[Superseded]], None]] = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, DB_NAME)
        self.marker = os.path.join(state_dir, PENDING_MARKER)
        self.quotas = quotas or Quotas(max_pending=max_pending)
        self.max_pending = self.quotas.max_pending
        # Per sender uid, kept in memory (counted once at open, then changed by each write): a quota check
        # must not cost a query per event. Only the writer thread changes it; _undo reverts a failed batch.
        self.usage: Dict[int, Usage] = {}
        self._undo: List[Tuple[int, int, int]] = []
        self.clock = clock
        self.on_corrupt = on_corrupt
        self.on_marker_error = on_marker_error
        self.marker_error: Optional[str] = None  # why the marker could not be created, while that lasts
        self.coalesce = coalesce
        self.on_superseded = on_superseded
        self.monotonic = monotonic
        # Events being sent (claimed by a delivery worker) are never superseded, and an event superseded is
        # never sent: both sides decide under this lock (see claim()).
        self._claim_lock = threading.Lock()
        self._claimed: Set[int] = set()
        self._superseded_ids: Set[int] = set()  # committed or in the open transaction, for SUPERSEDED_MEMORY_SEC
        self._superseded_order: Deque[Tuple[float, int]] = collections.deque()  # (when, id), oldest first
        self._batch_superseded: List[Superseded] = []  # in the open transaction
        self.pending_count = 0
        self.commits = 0  # transactions committed: fewer than writes when group commit works
        self.damage: Optional[str] = None  # what SQLite said when a read or write met a damaged file
        self.writes_failing = False  # the last transaction failed (disk full...): set until one commits
        self._ops: "queue.SimpleQueue[Optional[Tuple[WriteOp, Commit]]]" = queue.SimpleQueue()
        self._local = threading.local()
        # Every thread's read connection, so that close() closes them all: a connection left to the garbage
        # collector is a ResourceWarning under Python 3.13 (and a file descriptor held until then).
        self._readers: List[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._generation = 0
        self._writer: Optional[threading.Thread] = None
        self._write_conn: Optional[sqlite3.Connection] = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Open queue.db, checked with quick_check. A damaged one is moved aside and a new one started; any other
        failure (disk full, locked, unreadable) raises StorageError and leaves the queue where it is."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the state directory {self.state_dir}: {exc.strerror or exc}",
                               hint="check the mount and permissions of its parent") from None
        try:
            conn = self._connect_checked()
        except _Damaged as damage:
            self._move_aside(damage.reason)
            conn = self._connect_checked()
        try:
            self.pending_count = conn.execute("SELECT COUNT(*) FROM events WHERE state = 'pending'").fetchone()[0]
            self.usage = {}
            for uid, held, size in conn.execute(USAGE_BY_SENDER.format(where="1")):
                usage = self.usage[int(uid)] = Usage()
                usage.events, usage.bytes = int(held or 0), int(size or 0)
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"cannot read the queue at {self.path}: {exc}",
                               hint="check free space and the disk under the state directory") from None
        self._write_conn = conn
        self._sync_marker()
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._ops.put(None)
            self._writer.join(timeout=10)
            self._writer = None
        if self._write_conn is not None:
            self._sync_marker()  # a marker removed by hand while events are pending is back before we go
            self._write_conn.close()
            self._write_conn = None
        with self._readers_lock:
            readers, self._readers = self._readers, []
            self._generation += 1  # a thread's connection from before is closed: the next read opens another
        for conn in readers:
            conn.close()

    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _connect_checked(self) -> sqlite3.Connection:
        conn: Optional[sqlite3.Connection] = None
        try:
            conn = self._connect()
            schema.apply(conn)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if is_corruption(exc):
                raise _Damaged(str(exc)) from None
            raise StorageError(f"cannot open the queue at {self.path}: {exc}",
                               hint="check free space, permissions and the disk under the state directory; "
                                    "the queue is left as it is") from None
        if problems != ["ok"]:
            conn.close()
            lines = "\n".join(problems).splitlines()  # can be thousands: the first few say enough
            more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
            raise _Damaged("quick_check: " + "; ".join(lines[:3]) + more)
        try:
            os.chmod(self.path, 0o600)
        except OSError as exc:
            conn.close()
            raise StorageError(f"cannot make {self.path} private: {exc.strerror or exc}",
                               hint="check the mount and permissions of the state directory") from None
        return conn

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.clock()))
        target = f"{self.path}.corrupt-{stamp}"
        number = 1
        while os.path.exists(target):  # damaged twice within a second: keep both
            number += 1
            target = f"{self.path}.corrupt-{stamp}.{number}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, target + suffix)
        if self.on_corrupt is not None:
            self.on_corrupt(target, reason)  # the daemon's CORRUPT_QUEUE record: one critical entry, not two
        else:
            logger.critical("queue database %s is damaged (%s); moved aside to %s", self.path, reason, target)

    def _noticed(self, exc: BaseException) -> None:
        if self.damage is None and isinstance(exc, sqlite3.Error) and is_corruption(exc):
            self.damage = str(exc)
            logger.error("queue database %s found damaged while running: %s", self.path, exc)

    def corrupt_files(self) -> List[str]:
        return sorted(name for name in os.listdir(self.state_dir)
                      if name.startswith(DB_NAME + ".corrupt-") and not name.endswith(("-wal", "-shm")))

    def reader(self) -> sqlite3.Connection:
        """A connection for the calling thread's reads (WAL lets readers run beside the writer)."""
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "generation", None) != self._generation:
            conn = self._local.conn = self._connect()
            self._local.generation = self._generation
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # --- the writer ----------------------------------------------------------------------------------

    def submit(self, op: WriteOp) -> Commit:
        commit = Commit()
        self._ops.put((op, commit))
        return commit

    def write(self, op: WriteOp) -> Any:
        return self.submit(op).result()

    def _write_loop(self) -> None:
        while True:
            first = self._ops.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._ops.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._ops.put(None)
                    break
                batch.append(item)
            self._commit_batch(batch)

    def _commit_batch(self, batch: Sequence[Tuple[WriteOp, Commit]]) -> None:
        conn = self._write_conn
        assert conn is not None
        outcomes: List[Tuple[Commit, Any, Optional[BaseException]]] = []
        pending_delta = 0
        self._batch_superseded = []
        self._undo = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, future in batch:
                try:
                    result, delta = op(conn)
                except PdagentError as error:  # raised before the op writes anything (see WriteOp)
                    outcomes.append((future, None, error))
                    continue
                pending_delta += delta
                self.pending_count += delta
                outcomes.append((future, result, None))
            conn.execute("COMMIT")
            self.commits += 1
            self.writes_failing = False
        except Exception as exc:  # noqa: BLE001 - the writer thread must outlive any failure, or every write hangs
            self.pending_count -= pending_delta
            for uid, events, size in self._undo:
                self._charge(uid, -events, -size, undo=False)
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            with self._claim_lock:  # still pending after all: they may be sent
                for note in self._batch_superseded:
                    self._superseded_ids.discard(note.id)
            self._batch_superseded = []
            logger.error("queue write failed: %s", exc, exc_info=not isinstance(exc, sqlite3.Error))
            self._noticed(exc)
            self.writes_failing = True
            for _, future in batch:  # one exception each: they are raised in as many threads
                future.set_exception(StorageError(
                    f"cannot write the queue at {self.path}: {exc}",
                    hint="check free space and the health of the disk under the state directory"))
            return
        self._sync_marker()
        if self._batch_superseded and self.on_superseded is not None:
            try:
                self.on_superseded(self._batch_superseded)
            except Exception:  # noqa: BLE001 - a failing report must not stop the writer
                logger.exception("reporting superseded events failed")
        self._batch_superseded = []
        for future, result, failure in outcomes:
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(result)

    def _sync_marker(self) -> None:
        """The marker exists (durably, see marker.py) exactly while events are pending: called after every
        commit, before its writes are acknowledged. A marker that cannot be created goes to on_marker_error
        once per new reason (the daemon's MARKER_FAILED record and STATUS=), and is tried again at every
        commit; the events themselves are on disk and delivered while the daemon runs."""
        try:
            if self.pending_count > 0 and not os.path.lexists(self.marker):
                marker.create(self.marker)
            elif self.pending_count <= 0 and os.path.lexists(self.marker):
                marker.remove(self.marker)
        except OSError as exc:
            error = exc.strerror or str(exc)
            if self.pending_count > 0 and error != self.marker_error:
                self.marker_error = error
                if self.on_marker_error is not None:
                    self.on_marker_error(self.marker, error)
                else:
                    logger.error("cannot create %s: %s", self.marker, error)
            elif self.pending_count <= 0:
                logger.warning("cannot remove %s: %s", self.marker, error)
            return
        self.marker_error = None

    # --- write operations ------------------------------------------------------------------------------

    def _charge(self, uid: int, events: int, size: int, undo: bool = True) -> None:
        """Change a sender's usage (writer thread only); undone if the batch's transaction fails."""
        usage = self.usage.get(uid)
        if usage is None:
            usage = self.usage[uid] = Usage()
        usage.events += events
        usage.bytes += size
        if undo:
            self._undo.append((uid, events, size))

    def _check_room(self, sender: Sender, size: int) -> None:
        """Refuse an event the queue has no room for: past max_pending_events for everyone, past the part not
        reserved for trusted senders, or past the sender's own quotas."""
        quotas = self.quotas
        if self.pending_count >= quotas.max_pending:
            raise QueueFull(f"the queue already holds {self.pending_count} pending events "
                            f"(max_pending_events = {quotas.max_pending})",
                            hint="the agent cannot reach PagerDuty fast enough; check `pd-queue status`")
        if sender.trusted:
            return
        if self.pending_count >= quotas.max_pending - quotas.reserved_pending:
            raise QueueFull(f"the queue already holds {self.pending_count} pending events; the last "
                            f"{quotas.reserved_pending} places are for trusted senders (max_pending_events = "
                            f"{quotas.max_pending}, reserved_pending_events = {quotas.reserved_pending})",
                            hint="the agent cannot reach PagerDuty fast enough; check `pd-queue status`")
        usage = self.usage.get(sender.uid)
        if usage is None:
            return
        if quotas.sender_events and usage.events >= quotas.sender_events:
            raise QueueFull(f"uid {sender.uid} already has {usage.events} pending or failed events in the queue "
                            f"(sender_max_events = {quotas.sender_events})",
                            hint="wait for them to be delivered, or ask an admin (`pd-queue status`); "
                                 "trusted_groups in agent.conf lifts the quota for a monitoring system")
        if quotas.sender_bytes and usage.bytes + size > quotas.sender_bytes:
            raise QueueFull(f"uid {sender.uid} already has {usage.bytes} bytes of events stored in the queue "
                            f"(sender_max_bytes = {quotas.sender_bytes})",
                            hint="failed and delivered events count until they expire (keep_failed, "
                                 "keep_delivered); trusted_groups in agent.conf lifts the quota")

    def enqueue(self, event: Event, sender: Sender = INTERNAL) -> int:
        """Commit one event as pending; return its id once it is on disk. Refused when the queue is full."""
        return int(self.enqueue_async(event, sender).result())

    def enqueue_async(self, event: Event, sender: Sender = INTERNAL) -> Commit:
        """Queue the write and return at once; the future resolves to the id after the commit."""
        return self.submit(self.enqueue_op(event, sender))

    def enqueue_op(self, event: Event, sender: Sender = INTERNAL) -> WriteOp:
        """The write that commits `event` as pending, for an op that commits it with writes of its own (a
        heartbeat's page with the heartbeat's new state); it refuses (QueueFull) before it writes anything."""
        now = self.clock()
        body = event.encoded()
        size = len(body.encode())

        def op(conn: sqlite3.Connection) -> Tuple[int, int]:
            self._check_room(sender, size)
            decision, waiting = self._coalesce(conn, event, sender.party) if self.coalesce else (NOT_COALESCED, {})
            cursor = conn.execute(
                "INSERT INTO events (routing_key, api, action, dedup_key, body, state, created, updated, priority, "
                "sender_uid, party) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (event.routing_key, event.api.value, event.action.value, event.dedup_key, body,
                 now, now, int(decision.priority), sender.uid, sender.party))
            event_id = int(cursor.lastrowid or 0)
            self._charge(sender.uid, 1, size)
            if decision.superseded:
                marks = ",".join("?" * len(decision.superseded))
                for uid, count in conn.execute(  # settled: off their senders' event quota, as if delivered
                        f"SELECT sender_uid, COUNT(*) FROM events WHERE state = 'pending' AND id IN ({marks}) "
                        "GROUP BY sender_uid", list(decision.superseded)).fetchall():
                    self._charge(int(uid), -int(count), 0)
                conn.executemany("UPDATE events SET state = 'superseded', superseded_by = ?, updated = ? "
                                 "WHERE id = ? AND state = 'pending'",
                                 [(event_id, now, old) for old in decision.superseded])
                self._batch_superseded.extend(
                    Superseded(old, event_id, event.routing_key, event.dedup_key, *waiting[old])
                    for old in decision.superseded)
            return event_id, 1 - len(decision.superseded)

        return op

    def _coalesce(self, conn: sqlite3.Connection, event: Event,
                  party: int) -> Tuple[Decision, Dict[int, Tuple[str, str]]]:
        """What the new event makes redundant among its incident's pending events of its own party
        (coalesce.decide), and those events' (action, api). Coalescing never crosses senders: another user's
        event is never superseded by this one, and whether this is the first trigger of the incident is judged
        from its party's events alone (issue 18). Reads only the party's rows of the incident, through
        events_by_party_incident: no scan of the queue per enqueue. The ids it supersedes are marked under the
        claim lock, so no worker starts sending one of them."""
        if event.action is Action.CHANGE:
            return NOT_COALESCED, {}
        key = (event.routing_key, event.dedup_key, party)
        # One statement rather than two: each execute() is a few microseconds of the writer's time per event.
        rows: List[Tuple[int, str, str]] = []
        incident_open = False
        for event_id, action, api, pending in conn.execute(COALESCE_READ, key + key):
            if pending:
                rows.append((event_id, action, api))
            else:
                incident_open = action == Action.TRIGGER.value
        rows.sort()  # in id order, which the rules read them in
        with self._claim_lock:
            decision = decide([Waiting(row[0], row[1], row[0] in self._claimed) for row in rows], incident_open,
                              event.action.value)
            if decision.superseded:
                stamp = self.monotonic()
                order = self._superseded_order
                while order and stamp - order[0][0] > SUPERSEDED_MEMORY_SEC:  # no worker still holds these
                    self._superseded_ids.discard(order.popleft()[1])
                for old in decision.superseded:
                    self._superseded_ids.add(old)
                    order.append((stamp, old))
        return decision, {row[0]: (row[1], row[2]) for row in rows}

    def claim(self, event_id: int) -> bool:
        """A delivery worker is about to send this event: False if it was superseded (do not send it), else it
        is never superseded until release()."""
        with self._claim_lock:
            if event_id in self._superseded_ids:
                return False
            self._claimed.add(event_id)
            return True

    def release(self, event_ids: Iterable[int]) -> None:
        """The results of these events are settled (on disk, or failed to be): they may be superseded again."""
        with self._claim_lock:
            self._claimed.difference_update(event_ids)

    def record_attempt(self, event_id: int, state: State, outcome: str, http_status: Optional[int],
                       error: str, next_attempt: float = 0.0, sender_uid: int = UNKNOWN_SENDER) -> Commit:
        """Record one delivery attempt and the state it leaves the event in; the future resolves on commit.

        An event is settled (delivered, failed) only while no earlier event of its key is pending, so a key's
        pending events (with coalescing: an incident's) are always a suffix of what was sent and sending them
        again keeps the order: if the
        result of one event could not be committed (disk full) but that of the next one could, both stay
        pending, rather than the trigger going again after its resolve was recorded as delivered."""
        now = self.clock()
        # With coalescing, order is kept per incident (events of different dedup keys may go in any order), so
        # the rule holds per incident; without, per routing key.
        # Order is kept per party (issue 18): another sender's event still pending must not hold back this one.
        same_order = (" AND earlier.dedup_key = events.dedup_key" if self.coalesce else "") + \
            " AND earlier.party = events.party"
        head_only = "" if state is State.PENDING else (
            " AND NOT EXISTS (SELECT 1 FROM events AS earlier WHERE earlier.state = 'pending' "
            "AND earlier.routing_key = events.routing_key" + same_order + f" AND earlier.priority IN ({PRIORITIES}) "
            "AND earlier.id < events.id)")  # three seeks of events_by_party, not a scan of the key's events

        def op(conn: sqlite3.Connection) -> Tuple[None, int]:
            changed = conn.execute(
                "UPDATE events SET state = ?, updated = ?, attempts = attempts + 1, next_attempt = ?, "
                "last_status = ?, last_error = ? WHERE id = ? AND state = 'pending'" + head_only,
                (state.value, now, next_attempt, http_status, error or None, event_id)).rowcount
            if not changed:
                return None, 0  # dropped by an operator meanwhile, or an earlier event is pending again
            conn.execute("INSERT INTO attempts (event_id, at, outcome, http_status, error) VALUES (?, ?, ?, ?, ?)",
                         (event_id, now, outcome, http_status, error or None))
            if state is State.DELIVERED:
                self._charge(sender_uid, -1, 0)  # a failed event still counts toward its sender's quota
            return None, 0 if state is State.PENDING else -1

        return self.submit(op)

    def import_legacy(self, entries: Sequence[LegacyEntry]) -> List[Union[int, str, None]]:
        """Queue events from the old agent's outqueue in the order given, in one transaction: pending ones as
        pending, failed ones as failed (`pd-queue retry` sends them again), each charged to its sender (the file's
        owner) as if it had sent it now. Returns each entry's new id, None for a file name imported before, or
        the reason it was refused (the queue or its sender's quota full: that entry only, not the others)."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> Tuple[List[Union[int, str, None]], int]:
            names = [entry.name for entry in entries]
            seen = _imported(conn, names)
            outcome: Dict[str, Union[int, str]] = {}
            pending = 0
            for entry in entries:
                if entry.name in seen or entry.name in outcome:
                    continue
                event = entry.event
                body = event.encoded()
                size = len(body.encode())
                try:
                    if entry.state is State.PENDING and self.pending_count + pending >= self.quotas.max_pending:
                        raise QueueFull(f"the queue holds max_pending_events = {self.quotas.max_pending}")
                    self._check_room(entry.sender, size)
                except QueueFull as error:
                    outcome[entry.name] = error.message
                    continue
                cursor = conn.execute(
                    "INSERT INTO events (routing_key, api, action, dedup_key, body, state, created, updated, "
                    "last_error, sender_uid, party) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.routing_key, event.api.value, event.action.value, event.dedup_key, body,
                     entry.state.value, entry.queued_at, now, entry.note or None, entry.sender.uid,
                     entry.sender.party))
                outcome[entry.name] = int(cursor.lastrowid or 0)
                self._charge(entry.sender.uid, 1, size)
                pending += entry.state is State.PENDING
                conn.execute("INSERT INTO legacy_imports (name, event_id, imported) VALUES (?, ?, ?)",
                             (entry.name, outcome[entry.name], now))
            return [outcome.get(name) for name in names], pending

        return cast(List[Union[int, str, None]], self.write(op))

    @_read_op
    def imported_before(self, names: Sequence[str]) -> List[str]:
        """Which of these old-agent file names were imported already."""
        return sorted(_imported(self.reader(), names))

    def retry_failed(self, routing_key: Optional[RoutingKey] = None) -> int:
        """Failed → pending, keeping each event's id and so its place in its key's order."""
        now = self.clock()

        def op(conn: sqlite3.Connection) -> Tuple[int, int]:
            sql = "UPDATE events SET state = 'pending', updated = ?, next_attempt = 0 WHERE state = 'failed'"
            params: List[Any] = [now]
            if routing_key is not None:
                sql += " AND routing_key = ?"
                params.append(routing_key)
            count = conn.execute(sql, params).rowcount
            return count, count

        return self.write(op)

    def drop(self, event_id: Optional[int] = None, routing_key: Optional[RoutingKey] = None,
             state: Optional[State] = None, *, event_ids: Optional[Sequence[int]] = None,
             sender_uid: Optional[int] = None) -> int:
        """Delete the events that match every filter given (one id, some ids, a key, a state, a sender);
        return how many. With ids, only those of them that still match the other filters go: `pd-queue drop`
        passes the ids it showed and the state it showed them in, so nothing queued or moved since goes."""

        def op(conn: sqlite3.Connection) -> Tuple[int, int]:
            where, params = _selector(event_id, routing_key, state, sender_uid, event_ids)
            pending = conn.execute(f"SELECT COUNT(*) FROM events WHERE state = 'pending' AND {where}",
                                   params).fetchone()[0]
            self._uncharge_rows(conn, where, params)
            conn.execute(f"DELETE FROM attempts WHERE event_id IN (SELECT id FROM events WHERE {where})", params)
            count = conn.execute(f"DELETE FROM events WHERE {where}", params).rowcount
            return count, -pending

        return self.write(op)

    def purge_expired(self, keep_delivered: float, keep_failed: float) -> Commit:
        """Retention: delete delivered (and superseded) and failed events older than their keep_* setting; the
        future resolves
        to how many once all are gone.

        At most PURGE_CHUNK events go per transaction, and the next chunk queues behind the writes that arrived
        meanwhile: one transaction for a large backlog held the writer for seconds (150,000 rows: 1.8 s), and
        every send and every delivery result waited for it."""
        now = self.clock()
        done = Commit()
        purged = [0]
        first = [True]

        def op(conn: sqlite3.Connection) -> Tuple[int, int]:
            if first[0]:
                # Stored times are wall-clock hints. One from the future (written while the clock ran ahead, then
                # set right) is read as now, so the row expires keep_* from here rather than years later.
                first[0] = False
                conn.execute("UPDATE events SET updated = ? WHERE updated > ? AND state != 'pending'",
                             (now, now + FUTURE_SLACK_SEC))
            ids: List[Tuple[int]] = []
            for state, keep in ((State.DELIVERED, keep_delivered), (State.SUPERSEDED, keep_delivered),
                                (State.FAILED, keep_failed)):
                ids += conn.execute(PURGE_SELECT, (state.value, now - keep, now - keep,
                                                   PURGE_CHUNK - len(ids))).fetchall()
            if ids:
                self._uncharge_rows(conn, f"id IN ({','.join(str(row[0]) for row in ids)})", [])
            conn.executemany("DELETE FROM attempts WHERE event_id = ?", ids)
            conn.executemany("DELETE FROM events WHERE id = ?", ids)
            return len(ids), 0

        def chunk_done(chunk: Commit) -> None:  # runs in the writer thread, right after the commit
            try:
                count = chunk.result()
            except Exception as exc:  # noqa: BLE001 - the caller's future carries it
                done.set_exception(exc)
                return
            purged[0] += count
            if count < PURGE_CHUNK:
                done.set_result(purged[0])
            else:
                self.submit(op).add_done_callback(chunk_done)

        self.submit(op).add_done_callback(chunk_done)
        return done

    def _uncharge_rows(self, conn: sqlite3.Connection, where: str, params: List[Any]) -> None:
        """Take the rows about to be deleted off their senders' usage."""
        for uid, held, size in conn.execute(USAGE_BY_SENDER.format(where=where), params):
            self._charge(int(uid), -int(held or 0), -int(size or 0))

    # --- reads -----------------------------------------------------------------------------------------

    @_read_op
    def oldest_pending(self, routing_key: RoutingKey, limit: int, party: Optional[int] = None) -> List[QueuedEvent]:
        """A key's oldest pending events (of one party, if given), in the order they must be sent."""
        if party is None:
            conn = self.reader()
            ids = _oldest_ids(conn, State.PENDING.value, routing_key, limit)
            rows = conn.execute(f"SELECT {QUEUED_FIELDS} FROM events WHERE id IN ({_ints(ids)}) ORDER BY id")
        else:
            rows = self.reader().execute(f"SELECT {QUEUED_FIELDS} FROM events WHERE {PARTY_IN_ORDER}",
                                         {"state": State.PENDING.value, "key": routing_key, "n": limit,
                                          "party": party})
        return [_queued(row) for row in rows]

    @_read_op
    def next_pending(self, routing_key: RoutingKey, limit: int, party: Optional[int] = None) -> List[QueuedEvent]:
        """A key's pending events (of one party, if given) in the order they should go with coalescing: the
        first triggers and resolves first, then acknowledges and change events, then updates, oldest first
        within each; an event is preceded by the earlier pending events of its own incident and party, so each
        party's incident keeps its order."""
        conn = self.reader()
        plan: List[QueuedEvent] = []
        seen: Set[int] = set()
        conn.execute("BEGIN")  # one snapshot for every query of the plan
        try:
            parties = [party] if party is not None else _parties(conn, State.PENDING.value, routing_key)
            candidates: List[Tuple[int, int, str, int]] = []
            for each in parties:  # a party's own order is a run of events_by_party; parties merged by it
                candidates += conn.execute(
                    "SELECT priority, id, dedup_key, party FROM events WHERE state = 'pending' AND routing_key = ? "
                    "AND party = ? ORDER BY priority DESC, id LIMIT ?", (routing_key, each, limit)).fetchall()
            candidates.sort(key=lambda row: (-row[0], row[1]))
            for _priority, event_id, dedup_key, event_party in candidates[:limit]:
                if event_id in seen:
                    continue
                for row in conn.execute(
                        f"SELECT {QUEUED_FIELDS} FROM events WHERE routing_key = ? AND dedup_key = ? AND party = ? "
                        "AND state = 'pending' AND id <= ? ORDER BY id", (routing_key, dedup_key, event_party,
                                                                          event_id)):
                    if row[0] not in seen:
                        seen.add(row[0])
                        plan.append(_queued(row))
                if len(plan) >= limit:
                    break
        finally:
            conn.execute("COMMIT")
        return plan[:limit]

    @_read_op
    def next_party(self, routing_key: RoutingKey, after: Optional[int]) -> Optional[int]:
        """Whose pending events of a key go next: the trusted senders' while they have any, else the next
        sender uid after `after` in turn (round robin), or None when the key has nothing pending. Two or three
        seeks of events_by_party, however many events and senders wait."""
        conn = self.reader()
        pending = State.PENDING.value
        found = conn.execute(NEXT_PARTY, (pending, routing_key, TRUSTED_PARTY - 1)).fetchone()[0]
        if found is None or found == TRUSTED_PARTY or after is None:
            return None if found is None else int(found)
        following = conn.execute(NEXT_PARTY, (pending, routing_key, after)).fetchone()[0]
        return int(following if following is not None else found)

    @_read_op
    def retry_remaining(self, routing_key: RoutingKey, now: float) -> float:
        """Seconds left of the longest backoff a key's pending events remember (0 when none waits), read from
        wall-clock times as a hint: trusted only while the clock reads inside the deferral's own interval (from
        `updated`, when it was recorded, to next_attempt). A clock that reads before it has stepped back since, by
        an unknown amount: the wait is over rather than stretched by the step (a throttled PagerDuty will say
        so again); so a remembered wait is never longer than the backoff it was."""
        row = self.reader().execute(
            "SELECT MAX(CASE WHEN updated <= :now THEN next_attempt - :now ELSE 0 END) FROM events "
            "WHERE state = 'pending' AND routing_key = :key AND next_attempt > 0",
            {"now": now, "key": routing_key}).fetchone()
        return max(0.0, float(row[0] or 0.0)) if row else 0.0

    @_read_op
    def recent_unknown(self, now: float, window: float) -> Dict[Tuple[RoutingKey, str], Tuple[int, float]]:
        """Incidents whose last attempt with an unknown outcome (no answer after the request went out) may still
        land: (routing key, dedup key) -> (that event's id, seconds left of `window` since it was recorded).

        Read once when the daemon starts, from the latest attempts backwards (the log's rowid order is the order
        they were recorded in) until one older than `window`. Their times are wall-clock hints: one ahead of the
        clock (which stepped back since) counts as just recorded, never as more than `window`."""
        found: Dict[Tuple[RoutingKey, str], Tuple[int, float]] = {}
        rows = self.reader().execute(
            "SELECT attempts.event_id, attempts.at, attempts.outcome, events.routing_key, events.dedup_key "
            "FROM attempts JOIN events ON events.id = attempts.event_id ORDER BY attempts.rowid DESC LIMIT ?",
            (RECENT_ATTEMPTS,))
        for event_id, at, outcome, routing_key, dedup_key in rows:
            left = min(window, at + window - now)
            if left <= 0:
                break
            incident = (RoutingKey(routing_key), dedup_key)
            if outcome == UNKNOWN_OUTCOME and incident not in found:
                found[incident] = (int(event_id), left)
        return found

    @_read_op
    def has_pending(self, routing_key: RoutingKey) -> bool:
        return self.reader().execute("SELECT 1 FROM events WHERE state = 'pending' AND routing_key = ? LIMIT 1",
                                     (routing_key,)).fetchone() is not None

    def pending_keys(self) -> List[Tuple[RoutingKey, int]]:
        """Every routing key with pending events, with the sender of its oldest one."""
        rows = self.reader().execute(  # SQLite takes the bare column from the row MIN(id) picks
            "SELECT routing_key, sender_uid, MIN(id) FROM events WHERE state = 'pending' "
            "GROUP BY routing_key").fetchall()
        return [(RoutingKey(row[0]), int(row[1])) for row in rows]

    @_read_op
    def key_counts(self, limit: int, routing_key: Optional[RoutingKey] = None
                   ) -> Tuple[Dict[RoutingKey, KeyCounts], int]:
        """Counts per state and the oldest pending event's creation time for at most `limit` routing keys (or
        just `routing_key`), from one snapshot, and how many routing keys the queue holds in all.

        The keys shown are those with the most pending events, then the most failed, then the rest: a queue
        that a local user filled with a million made-up keys must not cost the daemon a million entries
        (and the reply a million lines) each time someone asks."""
        conn = self.reader()
        keys: Dict[RoutingKey, KeyCounts] = {}
        conn.execute("BEGIN")  # one read transaction: every query sees the same commit
        try:
            if routing_key is not None:
                chosen = [routing_key.reveal()]
                total = 1 if conn.execute("SELECT 1 FROM events WHERE routing_key = ? LIMIT 1",
                                          (routing_key,)).fetchone() else 0
            else:
                chosen = []
                for states in ("('pending')", "('failed')", "('delivered', 'superseded')"):
                    if len(chosen) >= limit:
                        break
                    taken = set(chosen)
                    for (key,) in conn.execute(
                            f"SELECT routing_key FROM events WHERE state IN {states} GROUP BY routing_key "
                            "ORDER BY COUNT(*) DESC, routing_key LIMIT ?", (limit + len(taken),)):
                        if key not in taken and isinstance(key, str) and len(chosen) < limit:
                            chosen.append(key)
                total = int(conn.execute("SELECT COUNT(DISTINCT routing_key) FROM events").fetchone()[0])
            for key in chosen:
                counts: Dict[str, int] = {}
                for state, count in conn.execute(
                        "SELECT state, COUNT(*) FROM events WHERE routing_key = ? GROUP BY state", (key,)):
                    if state in STATES:  # a damaged page SQLite has not noticed yet: no row of ours is else
                        counts[state] = count
                if not any(counts.values()):
                    continue
                oldest_pending: Optional[float] = None
                if counts.get(State.PENDING.value):  # index seeks (three per party), not a scan of its pending rows
                    oldest = _oldest_ids(conn, State.PENDING.value, key, 1)
                    row = conn.execute("SELECT created FROM events WHERE id = ?", oldest).fetchone() if oldest \
                        else None
                    created = row[0] if row else None
                    oldest_pending = created if isinstance(created, (int, float)) else None
                keys[RoutingKey(key)] = KeyCounts(**counts, oldest_pending=oldest_pending)
        finally:
            conn.execute("COMMIT")
        return keys, total

    @_read_op
    def totals(self) -> Dict[str, int]:
        """Events per state (a count over the state index, no row read)."""
        return {state: count for state, count in self.reader().execute(
            "SELECT state, COUNT(*) FROM events GROUP BY state") if isinstance(state, str)}

    @_read_op
    def last_delivery(self) -> Optional[float]:
        """When the latest delivery on record was: read from the newest attempt backwards, which stops at the
        first delivery instead of reading every attempt for MAX()."""
        row = self.reader().execute(
            "SELECT at FROM attempts WHERE outcome = 'delivered' ORDER BY rowid DESC LIMIT 1").fetchone()
        return row[0] if row else None

    @_read_op
    def list_events(self, state: Optional[State], routing_key: Optional[RoutingKey],
                    limit: int) -> List[EventRow]:
        conn = self.reader()
        rows = conn.execute(*_select_in_order(conn, ", ".join(ROW_FIELDS), routing_key, state, limit))
        return [_row(ROW_FIELDS, row) for row in rows]

    @_read_op
    def list_page(self, state: Optional[State], routing_key: Optional[RoutingKey], limit: int, *,
                  bodies: bool = True, max_bytes: int = 0,
                  sender_uid: Optional[int] = None) -> Tuple[List[EventRow], bool]:
        """Rows in id order (of one sender's events only, if sender_uid is given), with their bodies only if
        `bodies`; stops early once the bodies reach `max_bytes` (0 = no cap). Returns the rows and whether it
        stopped early."""
        fields = ROW_FIELDS if bodies else ROW_FIELDS[:-1]
        rows: List[EventRow] = []
        size = 0
        conn = self.reader()
        for row in conn.execute(*_select_in_order(conn, ", ".join(fields), routing_key, state, limit,
                                                  sender_uid)):
            entry = _row(fields, row)
            if bodies and max_bytes:
                size += len(entry.body) if isinstance(entry.body, str) else 0
                if size > max_bytes and rows:
                    return rows, True
            rows.append(entry)
        return rows, False

    @_read_op
    def matching_ids(self, routing_key: Optional[RoutingKey], state: Optional[State],
                     sender_uid: Optional[int] = None) -> List[int]:
        """The ids of the events a drop by key, state and sender would delete now, in id order."""
        where, params = _selector(None, routing_key, state, sender_uid)
        return [row[0] for row in self.reader().execute(f"SELECT id FROM events WHERE {where} ORDER BY id",
                                                        params)]

    @_read_op
    def show(self, event_id: int) -> EventRow:
        """One event whole, with every attempt made to deliver it."""
        where, params = _selector(event_id, None, None)
        rows = self._rows(where, params, 1)
        if not rows:
            raise NotFound(f"no event with id {event_id}")
        return replace(rows[0], attempts_log=tuple(
            Attempt(at, outcome, status, error) for at, outcome, status, error in self.reader().execute(
                "SELECT at, outcome, http_status, error FROM attempts WHERE event_id = ? ORDER BY rowid",
                (event_id,))))

    def _rows(self, where: str, params: List[Any], limit: int) -> List[EventRow]:
        rows = self.reader().execute(
            f"SELECT {', '.join(ROW_FIELDS)} FROM events WHERE {where} ORDER BY id LIMIT ?", params + [limit])
        return [_row(ROW_FIELDS, row) for row in rows]


def _queued(row: Sequence[Any]) -> QueuedEvent:
    return QueuedEvent(row[0], RoutingKey(row[1]), Api(row[2]), Action(row[3]), *row[4:])


def _row(fields: Sequence[str], row: Sequence[Any]) -> EventRow:
    """A list or show row: its routing key a RoutingKey (the reply reveals it to admins only), the rest as
    stored."""
    entry = dict(zip(fields, row))
    entry["routing_key"] = RoutingKey(str(entry["routing_key"]))
    return EventRow(**entry)


QUEUED_FIELDS = "id, routing_key, api, action, dedup_key, body, attempts, next_attempt, created, sender_uid, party"
ROW_FIELDS = ("id", "routing_key", "api", "action", "dedup_key", "state", "created", "updated", "attempts",
              "next_attempt", "last_status", "last_error", "superseded_by", "sender_uid", "body")  # body last
NOT_COALESCED = Decision((), Priority.OTHER)
PRIORITIES = ", ".join(str(int(priority)) for priority in Priority)  # the only values the column holds
# A key's events of one party in one state, oldest first, at most :n: the :n oldest of each priority's run of
# events_by_party, merged. ORDER BY id over the index's (priority, id) order would sort every event of the key.
PARTY_IN_ORDER = "id IN (" + " UNION ALL ".join(
    f"SELECT id FROM (SELECT id FROM events WHERE state = :state AND routing_key = :key AND party = :party "
    f"AND priority = {int(priority)} ORDER BY id LIMIT :n)" for priority in Priority) + ") ORDER BY id LIMIT :n"
# An incident's pending events of one party (flag 1) and that party's last delivered trigger or resolve
# (flag 0), through events_by_party_incident.
# Retention, per state: rows older than the cut, except a delivered trigger or resolve while an earlier one of its
# incident stays. Coalescing reads whether an incident is open from the last delivered trigger or resolve that is
# left (COALESCE_READ); after the clock stepped back, a resolve can carry an older time than its trigger, and
# purging it first would make the resolved incident look open.
PURGE_SELECT = (
    "SELECT id FROM events WHERE state = ? AND updated < ? AND NOT (state = 'delivered' "
    "AND action IN ('trigger', 'resolve') AND EXISTS (SELECT 1 FROM events AS earlier "
    "WHERE earlier.routing_key = events.routing_key AND earlier.dedup_key = events.dedup_key "
    "AND earlier.state = 'delivered' AND earlier.action IN ('trigger', 'resolve') AND earlier.id < events.id "
    "AND earlier.updated >= ?)) LIMIT ?")
COALESCE_READ = (
    "SELECT id, action, api, 1 FROM events WHERE routing_key = ? AND dedup_key = ? AND party = ? "
    "AND state = 'pending' UNION ALL SELECT * FROM (SELECT id, action, api, 0 FROM events WHERE routing_key = ? "
    "AND dedup_key = ? AND party = ? AND state = 'delivered' AND action IN ('trigger', 'resolve') "
    "ORDER BY id DESC LIMIT 1)")


# The smallest party above ? with events of a key in a state: one seek of events_by_party.
NEXT_PARTY = "SELECT MIN(party) FROM events WHERE state = ? AND routing_key = ? AND party > ?"


def _parties(conn: sqlite3.Connection, state: str, routing_key: Any) -> List[int]:
    """The parties with events of a key in a state, smallest first, one seek each: the senders of one key are
    the trusted ones and a few local uids, however many events they have."""
    parties: List[int] = []
    after = TRUSTED_PARTY - 1
    while True:
        found = conn.execute(NEXT_PARTY, (state, routing_key, after)).fetchone()[0]
        if found is None:
            return parties
        after = int(found)
        parties.append(after)


def _oldest_ids(conn: sqlite3.Connection, state: str, routing_key: Any, limit: int) -> List[int]:
    """The ids of a key's `limit` oldest events in a state: each party's `limit` oldest (PARTY_IN_ORDER),
    merged; at most 3 x limit index entries per party."""
    ids: List[int] = []
    for party in _parties(conn, state, routing_key):
        ids += [row[0] for row in conn.execute(f"SELECT id FROM events WHERE {PARTY_IN_ORDER}",
                                               {"state": state, "key": routing_key, "party": party, "n": limit})]
    return sorted(ids)[:limit]


def _ints(ids: Iterable[int]) -> str:
    return ",".join(str(int(event_id)) for event_id in ids)


def _imported(conn: sqlite3.Connection, names: Sequence[str]) -> set:
    found: set = set()
    for start in range(0, len(names), 500):  # SQLite's limit on bound parameters is 999 on older versions
        chunk = list(names[start:start + 500])
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in conn.execute(
            f"SELECT name FROM legacy_imports WHERE name IN ({marks})", chunk))
    return found


def _select_in_order(conn: sqlite3.Connection, fields: str, routing_key: Optional[RoutingKey],
                     state: Optional[State], limit: int, sender_uid: Optional[int] = None) -> Tuple[str, Any]:
    """SELECT `fields` of the events of a key and/or state (and/or sender) in id order, at most `limit`."""
    if routing_key is not None and state is not None and sender_uid is None:
        ids = _oldest_ids(conn, state.value, routing_key, limit)
        return f"SELECT {fields} FROM events WHERE id IN ({_ints(ids)}) ORDER BY id", []
    where, params = _selector(None, routing_key, state, sender_uid)
    return f"SELECT {fields} FROM events WHERE {where} ORDER BY id LIMIT ?", params + [limit]


def _selector(event_id: Optional[int], routing_key: Optional[RoutingKey], state: Optional[State],
              sender_uid: Optional[int] = None, event_ids: Optional[Sequence[int]] = None) -> Tuple[str, List[Any]]:
    clauses, params = ["1"], []  # type: List[str], List[Any]
    if event_id is not None:
        clauses.append("id = ?")
        params.append(event_id)
    if event_ids is not None:  # whole numbers only (the handler checks), so written inline: no 999-parameter cap
        clauses.append(f"id IN ({','.join(str(int(number)) for number in event_ids) or 'NULL'})")
    if sender_uid is not None:
        clauses.append("sender_uid = ?")
        params.append(sender_uid)
    if routing_key is not None:
        clauses.append("routing_key = ?")
        params.append(routing_key)
    if state is not None:
        clauses.append("state = ?")
        params.append(state.value)
    return " AND ".join(clauses), params
