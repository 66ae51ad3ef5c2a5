"""The `heartbeat` wire op, and the daemon's watch over heartbeat deadlines while it runs.

    {"op": "heartbeat", "action": "check_in", "name": N, "every": SEC, "grace": SEC, "routing_key": K|"@name",
     "description": TEXT, "severity": LEVEL}          -> {"ok": true, "heartbeat": {...}, "resolved": bool}
    {"op": "heartbeat", "action": "pause", "name": N, "for": SEC}   -> {"ok": true, "heartbeat": {...}}
    {"op": "heartbeat", "action": "remove", "name": N}              -> {"ok": true, "resolved": bool}
    {"op": "heartbeat", "action": "list"}                           -> {"ok": true, "heartbeats": [...]}

Each acts on the caller's own heartbeats (SO_PEERCRED's uid); `list` shows the caller's own, and an admin's
shows everyone's, routing keys whole (masked to everyone else).
"""

from __future__ import annotations

import logging
import math
import pwd
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from pdagent_sd import heartbeat_rules as rules
from pdagent_sd.errors import BadRequest, InvalidEvent, PdagentError
from pdagent_sd.events import Event
from pdagent_sd.heartbeat_store import Change, HeartbeatBook, booted_at
from pdagent_sd.heartbeat_timer import Arming
from pdagent_sd.journal import Kind, report
from pdagent_sd.keys import NAME, NAME_RULE, RoutingKey
from pdagent_sd.limits import MAX_SUMMARY
from pdagent_sd.queuetypes import Sender

logger = logging.getLogger(__name__)

ACTIONS = ("check_in", "pause", "remove", "list")
RETRY_PAGE_SEC = 5.0  # a page the queue refused (full) is tried again this often


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return str(uid)


def _name(message: Dict[str, Any]) -> str:
    name = message.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidEvent(f"a heartbeat's name is {NAME_RULE}")
    return name


def _span(message: Dict[str, Any], field: str, low: float) -> float:
    value = message.get(field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
            or not low <= value <= rules.MAX_SPAN_SEC:
        raise InvalidEvent(f"{field} must be a time span from {low:g}s to {rules.MAX_SPAN_SEC / 86400:g}d")
    return float(value)


class HeartbeatWatch:
    """Keeps the heartbeats in memory between writes (a few hundred at most: quotas), pages misses while the
    daemon runs, and hands the earliest deadline to systemd (heartbeat_timer.py) for when it does not."""

    def __init__(self, book: HeartbeatBook, arming: Arming, *, clock: Callable[[], float] = time.time,
                 booted: Optional[float] = None,
                 on_queued: Callable[[RoutingKey, int, bool], None] = lambda key, uid, trusted: None) -> None:
        self.book = book
        self.arming = arming
        self.clock = clock
        self.on_queued = on_queued  # an event was committed for (routing key, uid): the scheduler's wake
        self.booted = booted_at(book.store.state_dir) if booted is None else booted
        self.beats: List[rules.Heartbeat] = []
        self.next: Optional[float] = None
        self._retry_after = 0.0
        self.loaded = False  # until the heartbeats were read once, nothing is known to hand to the timer
        self._lock = threading.Lock()  # beats and next: written on the ops thread, read by the main loop

    def refresh(self) -> None:
        """Read the heartbeats again (after every write). A failed read keeps what was known: forgetting the
        deadlines would stop the timer that is to page them."""
        try:
            beats = self.book.all()
        except sqlite3.Error as exc:
            logger.error("cannot read the heartbeats from the queue: %s", exc)
            return
        self.loaded = True
        with self._lock:
            self.beats = beats
            self.next = rules.next_deadline(beats, self.booted)
        if self.arming.needs_earlier(self.next):
            self.arming.arm(self.next)

    def due(self, now: float) -> bool:
        return self.next is not None and now >= self.next and now >= self._retry_after

    def counts(self) -> Dict[str, int]:
        with self._lock:
            return rules.counts(self.beats, self.clock(), self.booted)

    def page(self) -> None:
        """Page every heartbeat past its deadline (on the ops thread)."""
        now = self.clock()
        try:
            changes = self.book.page_due(now, self.booted)
        except PdagentError as error:  # the queue cannot be written (a full disk): try again shortly
            logger.error("cannot page missed heartbeats: %s", error.message)
            self._retry_after = now + RETRY_PAGE_SEC
            return
        for change in changes:
            beat = change.beat
            assert beat is not None and change.event is not None
            self.on_queued(change.event.routing_key, beat.uid, True)
            report(Kind.HEARTBEAT_MISSED, rules.summary(self.book.host, beat) + f" (uid {beat.uid}; event "
                   f"{change.event_id} queued)", event_id=change.event_id, dedup_key=change.event.dedup_key,
                   routing_key=change.event.routing_key, action="trigger", api="v2", heartbeat=beat.name,
                   heartbeat_uid=beat.uid)
        self.refresh()
        if self.due(now):  # still due: the queue refused a page; not again on every tick
            self._retry_after = now + RETRY_PAGE_SEC

    def exiting(self) -> None:
        """The daemon is about to exit: the timer must take over at the earliest deadline (a deadline already
        past, a page the queue refused, is tried again a second after the exit)."""
        if not self.loaded:
            return
        deadline = self.next
        if deadline is not None:
            deadline = max(deadline, self.clock() + 1)
        self.arming.arm(deadline)

    # --- the wire op --------------------------------------------------------------------------------

    def handle(self, message: Dict[str, Any], sender: Sender, admin: bool,
               check: Optional[Callable[[Dict[str, Any]], Event]] = None) -> Dict[str, Any]:
        """One request of the op; `check` validates the trigger a check-in would send as the send op does."""
        action = message.get("action")
        if action not in ACTIONS:
            raise BadRequest(f"heartbeat action must be one of: {', '.join(ACTIONS)}")
        if action == "list":
            return self._list(sender.uid, admin)
        name = _name(message)
        if action == "check_in":
            reply = self._check_in(message, sender, name, check)
        elif action == "pause":
            until = self.clock() + _span(message, "for", 1.0)
            change = self.book.pause(sender.uid, name, until)
            reply = {"ok": True, "heartbeat": self._row(change, admin)}
        else:
            change = self.book.remove(sender, name)
            self._recovered(change, name, sender, "removed")
            reply = {"ok": True, "resolved": change.event_id is not None}
        self.refresh()
        return reply

    def _check_in(self, message: Dict[str, Any], sender: Sender, name: str,
                  check: Optional[Callable[[Dict[str, Any]], Event]]) -> Dict[str, Any]:
        every = _span(message, "every", rules.MIN_EVERY_SEC)
        grace = rules.default_grace(every) if message.get("grace") is None else _span(message, "grace", 0.0)
        key = message.get("routing_key")
        if not isinstance(key, str) or not key:
            raise InvalidEvent("a heartbeat needs a routing key (-k KEY or @name, or $PDAGENT_ROUTING_KEY)")
        description = message.get("description") or ""
        if not isinstance(description, str) or len(description) > MAX_SUMMARY:
            raise InvalidEvent(f"description must be text of at most {MAX_SUMMARY} characters")
        severity = message.get("severity") or rules.DEFAULT_SEVERITY
        if severity not in rules.SEVERITIES:
            raise InvalidEvent(f"severity must be one of: {', '.join(rules.SEVERITIES)}")
        change = self.book.check_in(sender, _user_name(sender.uid), name, every, grace, key, description,
                                    severity, self.clock(), check)
        self._recovered(change, name, sender, "checked in again")
        return {"ok": True, "heartbeat": self._row(change, False), "resolved": change.event_id is not None}

    def _recovered(self, change: Change, name: str, sender: Sender, how: str) -> None:
        if change.event is None:
            return
        uid = sender.uid
        self.on_queued(change.event.routing_key, uid, sender.trusted)
        report(Kind.HEARTBEAT_RECOVERED, f"heartbeat {name} of uid {uid} {how}: its incident is resolved "
               f"(event {change.event_id} queued)", event_id=change.event_id, dedup_key=change.event.dedup_key,
               routing_key=change.event.routing_key, action="resolve", api="v2", heartbeat=name,
               heartbeat_uid=uid)

    def _row(self, change: Change, admin: bool) -> Dict[str, Any]:
        assert change.beat is not None
        return self._shown(change.beat, self.clock(), admin)

    def _shown(self, beat: rules.Heartbeat, now: float, admin: bool) -> Dict[str, Any]:
        row = rules.row(beat, now, self.booted, self.book.host)
        row["routing_key"] = beat.routing_key.reveal() if admin else str(beat.routing_key)
        return row

    def _list(self, uid: int, admin: bool) -> Dict[str, Any]:
        now = self.clock()
        with self._lock:
            beats = [beat for beat in self.beats if admin or beat.uid == uid]
        return {"ok": True, "heartbeats": [self._shown(beat, now, admin) for beat in beats], "now": now}
