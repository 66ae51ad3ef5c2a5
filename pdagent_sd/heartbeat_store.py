"""Heartbeats in queue.db (table `heartbeats`, schema.py): check-in, pause, remove and the page of a miss.

Every change is one op of the store's writer, committed before it is answered, so a check-in acknowledged is
as durable as an event. The trigger of a miss and the resolve of a recovery are queued in the same
transaction as the heartbeat's new state: a page is never lost between the two, nor sent twice.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from pdagent_sd import heartbeat_rules as rules
from pdagent_sd.errors import NotFound, PdagentError, QueueFull
from pdagent_sd.events import NO_KEYS, Event, validate
from pdagent_sd.keys import KeyBook, RoutingKey
from pdagent_sd.queuetypes import Sender
from pdagent_sd.store import Store

logger = logging.getLogger(__name__)

FIELDS = ("uid, name, user, every, grace, last_checkin, routing_key, description, severity, paused_until, "
          "paged, incident")
DB_NAME = "queue.db"


BOOT_STAMP = "booted"


def booted_at(state_dir: Optional[str] = None) -> float:
    """This boot's start as a Unix time: the kernel's (CLOCK_BOOTTIME; the service cannot read /proc/stat,
    ProcSubset=pid), or, if later, the time in the state directory's `booted` stamp, which pdagent-boot.service
    writes early in each boot (note_boot): in a container, which shares the host's kernel, that is the
    container's own boot."""
    kernel = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    if state_dir is None:
        return kernel
    try:
        with open(os.path.join(state_dir, BOOT_STAMP), encoding="ascii") as stamp:
            noted = float(stamp.read(64).strip())
    except (OSError, ValueError):
        return kernel
    return max(kernel, noted) if noted <= time.time() else kernel


def note_boot(state_dir: str, now: Optional[float] = None) -> None:
    """At boot (pdagentd --check-pending): stamp the state directory with this boot's time (see booted_at).
    Not made durable: a stamp lost to a power cut is one from before the cut's boot, read as this kernel's boot.
    Where it cannot be written (no state directory yet: nothing to watch), nothing is said."""
    path = os.path.join(state_dir, BOOT_STAMP)
    temporary = path + ".new"
    try:
        with open(temporary, "w", encoding="ascii") as stamp:
            stamp.write(f"{time.time() if now is None else now:.3f}\n")
        os.rename(temporary, path)
    except OSError as exc:
        logger.debug("cannot stamp the boot in %s: %s", path, exc)


def _beat(row: Tuple[Any, ...]) -> rules.Heartbeat:
    uid, name, user, every, grace, last, key, description, severity, paused, paged, incident = row
    return rules.Heartbeat(int(uid), name, float(every), float(grace), float(last), RoutingKey(key), user, description,
                           severity, None if paused is None else float(paused), bool(paged), incident)


@dataclass(frozen=True)
class Change:
    """What a write did: the heartbeat as it is now (None once removed) and the event it queued, if any."""

    beat: Optional[rules.Heartbeat]
    event_id: Optional[int] = None
    event: Optional[Event] = None


class HeartbeatBook:
    def __init__(self, store: Store, *, host: str, keys: KeyBook = NO_KEYS, per_user: int = 20) -> None:
        self.store = store
        self.host = host
        self.keys = keys
        self.per_user = per_user

    # --- reads ----------------------------------------------------------------------------------------

    def all(self) -> List[rules.Heartbeat]:
        """Every heartbeat; sqlite3.Error if the queue cannot be read."""
        rows = self.store.reader().execute(f"SELECT {FIELDS} FROM heartbeats ORDER BY uid, name").fetchall()
        return [_beat(row) for row in rows]

    # --- writes ---------------------------------------------------------------------------------------

    def check_in(self, sender: Sender, user: str, name: str, every: float, grace: float, routing_key: str,
                 description: str, severity: str, now: float,
                 check: Optional[Callable[[Dict[str, Any]], Event]] = None) -> Change:
        """Create or renew (sender.uid, name). A paged heartbeat's incident is resolved in the same commit.

        The trigger a miss would send is checked now, with the key as given, by `check` (handlers.py passes the
        send op's own validation, so an @name is resolved, and allowed or not, exactly as for the caller's
        pd-send): a bad, unknown or forbidden key is refused at the check-in, not found out at the miss."""
        draft = rules.Heartbeat(sender.uid, name, every, grace, now, RoutingKey(routing_key), user, description,
                                severity)
        body = rules.trigger(self.host, draft, now)
        key = (check(body) if check is not None else validate("v2", body, keys=self.keys)).routing_key

        def op(conn: sqlite3.Connection) -> Tuple[Change, int]:
            found = conn.execute(f"SELECT {FIELDS} FROM heartbeats WHERE uid = ? AND name = ?",
                                 (sender.uid, name)).fetchone()
            old = None if found is None else _beat(found)
            if old is None and not sender.trusted and self.per_user:
                count = conn.execute("SELECT COUNT(*) FROM heartbeats WHERE uid = ?", (sender.uid,)).fetchone()[0]
                if count >= self.per_user:
                    raise QueueFull(f"uid {sender.uid} already has {count} heartbeats "
                                    f"(heartbeat_max_per_user = {self.per_user})",
                                    hint="remove one with pd-heartbeat NAME --remove; trusted_groups in "
                                         "agent.conf lifts the quota")
            event_id, event, delta = None, None, 0
            if old is not None and old.paged:  # recovered: resolve, with the key the trigger went to
                event = validate("v2", rules.resolve(self.host, old), owned=True)
                event_id, delta = self.store.enqueue_op(event, sender)(conn)
            beat = replace(draft, routing_key=key, paused_until=None if old is None else old.paused_until)
            conn.execute(f"INSERT OR REPLACE INTO heartbeats ({FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, '')",
                         (beat.uid, beat.name, beat.user, beat.every, beat.grace, beat.last_checkin,
                          beat.routing_key, beat.description, beat.severity, beat.paused_until))
            return Change(beat, event_id, event), delta

        return self.store.write(op)  # type: ignore[no-any-return]

    def pause(self, uid: int, name: str, until: float) -> Change:
        def op(conn: sqlite3.Connection) -> Tuple[Change, int]:
            found = conn.execute(f"SELECT {FIELDS} FROM heartbeats WHERE uid = ? AND name = ?",
                                 (uid, name)).fetchone()
            if found is None:
                raise _not_found(uid, name)
            conn.execute("UPDATE heartbeats SET paused_until = ? WHERE uid = ? AND name = ?", (until, uid, name))
            return Change(replace(_beat(found), paused_until=until)), 0

        return self.store.write(op)  # type: ignore[no-any-return]

    def remove(self, sender: Sender, name: str) -> Change:
        def op(conn: sqlite3.Connection) -> Tuple[Change, int]:
            found = conn.execute(f"SELECT {FIELDS} FROM heartbeats WHERE uid = ? AND name = ?",
                                 (sender.uid, name)).fetchone()
            if found is None:
                raise _not_found(sender.uid, name)
            old = _beat(found)
            event_id, event, delta = None, None, 0
            if old.paged:
                event = validate("v2", rules.resolve(self.host, old), owned=True)
                event_id, delta = self.store.enqueue_op(event, sender)(conn)
            conn.execute("DELETE FROM heartbeats WHERE uid = ? AND name = ?", (sender.uid, name))
            return Change(None, event_id, event), delta

        return self.store.write(op)  # type: ignore[no-any-return]

    def page_due(self, now: float, booted: float) -> List[Change]:
        """Queue a trigger for every heartbeat whose deadline has passed, each in the commit that marks it
        paged. A page the queue refuses (full) is tried again at the next look."""

        def op(conn: sqlite3.Connection) -> Tuple[List[Change], int]:
            paged: List[Change] = []
            delta = 0
            for row in conn.execute(f"SELECT {FIELDS} FROM heartbeats WHERE paged = 0").fetchall():
                beat = _beat(row)
                if not beat.due(now, booted):
                    continue
                try:
                    event = validate("v2", rules.trigger(self.host, beat, now), owned=True)
                    # the owner's, but trusted: the owner's own event quota must not silence its page
                    event_id, added = self.store.enqueue_op(event, Sender(beat.uid, True))(conn)
                except PdagentError as error:
                    logger.error("cannot page the missed heartbeat %s of uid %d: %s", beat.name, beat.uid,
                                 error.message)
                    continue
                delta += added
                conn.execute("UPDATE heartbeats SET paged = 1, incident = ? WHERE uid = ? AND name = ?",
                             (event.dedup_key, beat.uid, beat.name))
                paged.append(Change(replace(beat, paged=True, incident=event.dedup_key), event_id, event))
            return paged, delta

        return self.store.write(op)  # type: ignore[no-any-return]


def _not_found(uid: int, name: str) -> NotFound:
    return NotFound(f"uid {uid} has no heartbeat named {name!r}",
                    hint="pd-heartbeat --list shows yours; a heartbeat belongs to the user who created it")


def waiting(state_dir: str) -> bool:
    """At boot, read straight from queue.db (no daemon): whether a heartbeat can still page, so that the
    daemon is started to watch it (the timer armed before the boot is gone)."""
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("SELECT 1 FROM heartbeats WHERE paged = 0 LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)  # a queue from before heartbeats has none
    except sqlite3.Error:
        return True
    return row is not None
