"""Coalescing's state in the running daemon: which pending events a new one supersedes (read from queue.db in
the writer's transaction, decided by coalesce.decide), and the claim lock between that and the delivery
workers. An event being sent (claimed) is never superseded, and an event superseded is never sent: both sides
decide under one lock. The rules themselves are coalesce.py's; the Store composes one Claims as `store.claims`.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from typing import Callable, Deque, Dict, Iterable, List, Set, Tuple

from pdagent_sd.coalesce import Decision, Priority, Waiting, decide
from pdagent_sd.events import Action, Event

SUPERSEDED_MEMORY_SEC = 900.0  # how long the writer remembers an id it superseded, for claim()
NOT_COALESCED = Decision((), Priority.OTHER)
# An incident's pending events of one party (flag 1) and that party's last delivered trigger or resolve
# (flag 0), through events_by_party_incident.
COALESCE_READ = (
    "SELECT id, action, api, 1 FROM events WHERE routing_key = ? AND dedup_key = ? AND party = ? "
    "AND state = 'pending' UNION ALL SELECT * FROM (SELECT id, action, api, 0 FROM events WHERE routing_key = ? "
    "AND dedup_key = ? AND party = ? AND state = 'delivered' AND action IN ('trigger', 'resolve') "
    "ORDER BY id DESC LIMIT 1)")


class Claims:
    """The events claimed by delivery workers and those superseded (committed or in the open transaction, for
    SUPERSEDED_MEMORY_SEC), under one lock."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self._claim_lock = threading.Lock()
        self._claimed: Set[int] = set()
        self._superseded_ids: Set[int] = set()  # committed or in the open transaction, for SUPERSEDED_MEMORY_SEC
        self._superseded_order: Deque[Tuple[float, int]] = collections.deque()  # (when, id), oldest first

    def coalesce(self, conn: sqlite3.Connection, event: Event,
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

    def forget(self, event_ids: Iterable[int]) -> None:
        """The transaction that superseded these failed: they are still pending after all, and may be sent."""
        with self._claim_lock:
            for event_id in event_ids:
                self._superseded_ids.discard(event_id)
