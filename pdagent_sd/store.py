"""The durable queue: one SQLite file, WAL, synchronous=FULL; every change goes through one writer thread
that commits whatever arrived together in one transaction (group commit), so the disk's fsync rate is not the
ceiling, and nothing is acknowledged before it is on disk.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

from pdagent_sd import marker, schema
from pdagent_sd.coalesce import Priority
from pdagent_sd.coalescing import NOT_COALESCED, Claims
from pdagent_sd.commit import Commit
from pdagent_sd.errors import PdagentError, QueueFull, StorageError
from pdagent_sd.events import Event
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queue_reads import QueueReads, imported_names, selector
from pdagent_sd.queuetypes import (
    INTERNAL,
    UNKNOWN_SENDER,
    LegacyEntry,
    Quotas,
    Sender,
    Superseded,
)
from pdagent_sd.quotas import SenderQuotas
from pdagent_sd.statustypes import State

logger = logging.getLogger(__name__)

# The one place a routing key is revealed to be stored (and looked up): SQLite binds a RoutingKey by its value.
sqlite3.register_adapter(RoutingKey, RoutingKey.reveal)

DB_NAME = "queue.db"
PENDING_MARKER = marker.MARKER_NAME
MAX_BATCH = 512
FUTURE_SLACK_SEC = 60.0  # a stored time this far ahead of the clock was written by a clock that ran ahead
PURGE_CHUNK = 500  # expired events deleted per transaction: some 10 ms of the writer's time


# What SQLite says of a file that is not a sound database: SQLITE_CORRUPT, SQLITE_NOTADB. Anything else (full,
# locked, I/O error, cannot open) is a condition of the disk or the system, not of the file.
CORRUPTION_CODES = (11, 26)


def is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in CORRUPTION_CODES
    return type(exc) is sqlite3.DatabaseError  # older Pythons raise exactly this class for those two codes


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
        self.senders = SenderQuotas(self.quotas)  # each sender's usage, charged by the writes
        self.clock = clock
        self.on_corrupt = on_corrupt
        self.on_marker_error = on_marker_error
        self.marker_error: Optional[str] = None  # why the marker could not be created, while that lasts
        self.coalesce = coalesce
        self.on_superseded = on_superseded
        self.claims = Claims(monotonic)  # which events are being sent, which were superseded: the claim lock
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
        self.reads = QueueReads(self.path, self.reader, self._noticed)  # every read view of the queue

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
            self.senders.count(conn)
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
        self.senders.begin()
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
            self.senders.undo()
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.claims.forget(note.id for note in self._batch_superseded)  # still pending after all: may be sent
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
            self.senders.check_room(sender, size, self.pending_count)
            decision, waiting = (self.claims.coalesce(conn, event, sender.party) if self.coalesce
                                 else (NOT_COALESCED, {}))
            cursor = conn.execute(
                "INSERT INTO events (routing_key, api, action, dedup_key, body, state, created, updated, priority, "
                "sender_uid, party) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (event.routing_key, event.api.value, event.action.value, event.dedup_key, body,
                 now, now, int(decision.priority), sender.uid, sender.party))
            event_id = int(cursor.lastrowid or 0)
            self.senders.charge(sender.uid, 1, size)
            if decision.superseded:
                marks = ",".join("?" * len(decision.superseded))
                for uid, count in conn.execute(  # settled: off their senders' event quota, as if delivered
                        f"SELECT sender_uid, COUNT(*) FROM events WHERE state = 'pending' AND id IN ({marks}) "
                        "GROUP BY sender_uid", list(decision.superseded)).fetchall():
                    self.senders.charge(int(uid), -int(count), 0)
                conn.executemany("UPDATE events SET state = 'superseded', superseded_by = ?, updated = ? "
                                 "WHERE id = ? AND state = 'pending'",
                                 [(event_id, now, old) for old in decision.superseded])
                self._batch_superseded.extend(
                    Superseded(old, event_id, event.routing_key, event.dedup_key, *waiting[old])
                    for old in decision.superseded)
            return event_id, 1 - len(decision.superseded)

        return op

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
                self.senders.charge(sender_uid, -1, 0)  # a failed event still counts toward its sender's quota
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
            seen = imported_names(conn, names)
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
                    self.senders.check_room(entry.sender, size, self.pending_count)
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
                self.senders.charge(entry.sender.uid, 1, size)
                pending += entry.state is State.PENDING
                conn.execute("INSERT INTO legacy_imports (name, event_id, imported) VALUES (?, ?, ?)",
                             (entry.name, outcome[entry.name], now))
            return [outcome.get(name) for name in names], pending

        return cast(List[Union[int, str, None]], self.write(op))

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
            where, params = selector(event_id, routing_key, state, sender_uid, event_ids)
            pending = conn.execute(f"SELECT COUNT(*) FROM events WHERE state = 'pending' AND {where}",
                                   params).fetchone()[0]
            self.senders.uncharge_rows(conn, where, params)
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
                self.senders.uncharge_rows(conn, f"id IN ({','.join(str(row[0]) for row in ids)})", [])
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



PRIORITIES = ", ".join(str(int(priority)) for priority in Priority)  # the only values the column holds
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



