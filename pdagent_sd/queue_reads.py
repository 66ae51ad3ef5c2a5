"""The queue's read views: what the scheduler sends next (per key, per party, in coalescing order), the status
counts, list and show rows, the attempts log read back. Every read runs on the calling thread's own connection
(WAL lets readers run beside the writer); the Store owns the connections and composes one QueueReads as
`store.reads`.
"""

from __future__ import annotations

import functools
import sqlite3
from dataclasses import replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, TypeVar, cast

from pdagent_sd.coalesce import Priority
from pdagent_sd.errors import NotFound, StorageError
from pdagent_sd.events import Action, Api
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queuetypes import TRUSTED_PARTY, EventRow, QueuedEvent
from pdagent_sd.statustypes import STATES, Attempt, KeyCounts, State

UNKNOWN_OUTCOME = "unknown"  # an attempt's outcome when the request went out and no answer came
RECENT_ATTEMPTS = 10000  # how far back recent_unknown() reads the attempts log at most

F = TypeVar("F", bound=Callable[..., Any])


def _read_op(method: F) -> F:
    """A read of the queue: SQLite's errors become StorageError (clients get storage_error, not an internal
    error), and damage met on the way is noted in store.damage (through `noticed`)."""

    @functools.wraps(method)
    def read(self: "QueueReads", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            self._noticed(exc)
            raise StorageError(f"cannot read the queue at {self.path}: {exc}",
                               hint="see the daemon's journal") from None

    return cast(F, read)


class QueueReads:
    """Reads of queue.db; SQLite's errors become StorageError, and damage met is passed to `noticed`."""

    def __init__(self, path: str, reader: Callable[[], sqlite3.Connection],
                 noticed: Callable[[BaseException], None]) -> None:
        self.path = path
        self.reader = reader  # the calling thread's read connection
        self._noticed = noticed

    @_read_op
    def imported_before(self, names: Sequence[str]) -> List[str]:
        """Which of these old-agent file names were imported already."""
        return sorted(imported_names(self.reader(), names))

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
        where, params = selector(None, routing_key, state, sender_uid)
        return [row[0] for row in self.reader().execute(f"SELECT id FROM events WHERE {where} ORDER BY id",
                                                        params)]

    @_read_op
    def show(self, event_id: int) -> EventRow:
        """One event whole, with every attempt made to deliver it."""
        where, params = selector(event_id, None, None)
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
# A key's events of one party in one state, oldest first, at most :n: the :n oldest of each priority's run of
# events_by_party, merged. ORDER BY id over the index's (priority, id) order would sort every event of the key.
PARTY_IN_ORDER = "id IN (" + " UNION ALL ".join(
    f"SELECT id FROM (SELECT id FROM events WHERE state = :state AND routing_key = :key AND party = :party "
    f"AND priority = {int(priority)} ORDER BY id LIMIT :n)" for priority in Priority) + ") ORDER BY id LIMIT :n"


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


def imported_names(conn: sqlite3.Connection, names: Sequence[str]) -> set:
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
    where, params = selector(None, routing_key, state, sender_uid)
    return f"SELECT {fields} FROM events WHERE {where} ORDER BY id LIMIT ?", params + [limit]


def selector(event_id: Optional[int], routing_key: Optional[RoutingKey], state: Optional[State],
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
