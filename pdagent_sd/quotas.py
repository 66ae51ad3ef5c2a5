"""Per-sender quotas: each sender uid's usage of the queue (events held, bytes of bodies stored), counted once
when queue.db opens and then charged by every write, and the check that refuses an event the queue or its
sender has no room for. Kept in memory: a quota check must not cost a query per event. Only the store's writer
thread changes it, inside its transaction; undo() reverts the charges of a batch whose transaction failed.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List, Tuple

from pdagent_sd.errors import QueueFull
from pdagent_sd.queuetypes import Quotas, Sender, Usage

# Rows that count toward a sender's event quota: what it has in the queue that is not settled as delivered.
HELD_STATES = "('pending', 'failed')"
# Per sender uid: events held, bytes of bodies stored. Each row is measured before the GROUP BY: measured after
# it, every body went through SQLite's sorter whole, which took 250 ms of the daemon's start on a queue of
# 100,000 events (80 ms this way). LIMIT -1 keeps SQLite from folding the subquery back into the GROUP BY.
USAGE_BY_SENDER = (f"SELECT sender_uid, SUM(held), SUM(size) FROM (SELECT sender_uid, state IN {HELD_STATES} AS held, "
                   "LENGTH(CAST(body AS BLOB)) AS size FROM events WHERE {where} LIMIT -1) GROUP BY sender_uid")


class SenderQuotas:
    """The quotas (Quotas) and every sender's usage against them."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas
        self.usage: Dict[int, Usage] = {}
        self._undo: List[Tuple[int, int, int]] = []  # the charges of the open transaction

    def count(self, conn: sqlite3.Connection) -> None:
        """Count every sender's usage from queue.db (when it opens)."""
        self.usage = {}
        for uid, held, size in conn.execute(USAGE_BY_SENDER.format(where="1")):
            usage = self.usage[int(uid)] = Usage()
            usage.events, usage.bytes = int(held or 0), int(size or 0)

    def begin(self) -> None:
        """A transaction begins: the charges from here on are undone if it fails."""
        self._undo = []

    def undo(self) -> None:
        """The transaction failed: revert its charges."""
        for uid, events, size in self._undo:
            self.charge(uid, -events, -size, undo=False)

    def charge(self, uid: int, events: int, size: int, undo: bool = True) -> None:
        """Change a sender's usage (writer thread only); undone if the batch's transaction fails."""
        usage = self.usage.get(uid)
        if usage is None:
            usage = self.usage[uid] = Usage()
        usage.events += events
        usage.bytes += size
        if undo:
            self._undo.append((uid, events, size))

    def check_room(self, sender: Sender, size: int, pending_count: int) -> None:
        """Refuse an event the queue has no room for: past max_pending_events for everyone, past the part not
        reserved for trusted senders, or past the sender's own quotas."""
        quotas = self.quotas
        if pending_count >= quotas.max_pending:
            raise QueueFull(f"the queue already holds {pending_count} pending events "
                            f"(max_pending_events = {quotas.max_pending})",
                            hint="the agent cannot reach PagerDuty fast enough; check `pd-queue status`")
        if sender.trusted:
            return
        if pending_count >= quotas.max_pending - quotas.reserved_pending:
            raise QueueFull(f"the queue already holds {pending_count} pending events; the last "
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

    def uncharge_rows(self, conn: sqlite3.Connection, where: str, params: List[Any]) -> None:
        """Take the rows about to be deleted off their senders' usage."""
        for uid, held, size in conn.execute(USAGE_BY_SENDER.format(where=where), params):
            self.charge(int(uid), -int(held or 0), -int(size or 0))
