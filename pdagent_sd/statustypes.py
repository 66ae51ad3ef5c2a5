"""The queue's states (`State`) and its status as values: one routing key's figures (`KeyStatus`), a key's
hold (`Held`) and the whole answer (`QueueStatus`), built once where the queue is read and turned into the
wire's JSON only at the socket.

The daemon builds them (store, scheduler, handlers) and renders metrics from them; `pd-queue metrics
--from-queue` builds them from queue.db (queuefile.py); `pd-queue status` reads them back with `from_wire`. The
wire's shape (protocol.py, docs/pd-queue.md) must not change: `to_wire` writes exactly the fields, in the order, that
the daemon has always sent. Only the standard library is imported: pd-queue status must answer fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Mapping, Optional, Tuple


class State(str, Enum):
    """An event's state, as the wire and queue.db spell it. The SQL in store.py, marker.py and queuefile.py
    spells these values in its text (a literal in a WHERE clause is what the partial indexes match)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # made redundant by a later event of its incident before it was sent


STATES = tuple(state.value for state in State)  # the status's per-state fields, in the wire's order


@dataclass(frozen=True)
class Held:
    """Wall-clock times until which a key is throttled or backing off; None when it is not."""

    throttled_until: Optional[float] = None
    backoff_until: Optional[float] = None


NOT_HELD = Held()


@dataclass(frozen=True)
class KeyCounts:
    """One routing key's events per state and the oldest pending one's creation time, as read from queue.db."""

    pending: int = 0
    delivered: int = 0
    failed: int = 0
    superseded: int = 0
    oldest_pending: Optional[float] = None

    def count(self, state: str) -> int:
        return int(getattr(self, state))


@dataclass(frozen=True)
class KeyStatus:
    """One routing key's line of the status: `routing_key` as shown to the asker (whole for admins, masked
    otherwise), its events per state, how old its oldest pending event is and any throttle or backoff."""

    routing_key: str
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    superseded: int = 0
    oldest_pending_age: Optional[float] = None
    throttled_until: Optional[float] = None
    backoff_until: Optional[float] = None

    @classmethod
    def of(cls, shown: str, counts: KeyCounts, oldest_pending_age: Optional[float],
           held: Held = NOT_HELD) -> KeyStatus:
        return cls(shown, counts.pending, counts.delivered, counts.failed, counts.superseded, oldest_pending_age,
                   held.throttled_until, held.backoff_until)

    def count(self, state: str) -> int:
        return int(getattr(self, state))

    @property
    def held(self) -> bool:
        return bool(self.throttled_until or self.backoff_until)

    def to_wire(self) -> Dict[str, Any]:
        return {"routing_key": self.routing_key, **{state: self.count(state) for state in STATES},
                "oldest_pending_age": self.oldest_pending_age, "throttled_until": self.throttled_until,
                "backoff_until": self.backoff_until}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> KeyStatus:
        # an agent older than coalescing sends no superseded count
        counts = {state: (wire.get(state) or 0) if state == State.SUPERSEDED.value else wire[state]
                  for state in STATES}
        return cls(wire["routing_key"], **counts, oldest_pending_age=wire.get("oldest_pending_age"),
                   throttled_until=wire.get("throttled_until"), backoff_until=wire.get("backoff_until"))


@dataclass(frozen=True)
class DaemonInfo:
    pid: int
    version: str
    uptime: float
    tracked_keys: int

    def to_wire(self) -> Dict[str, Any]:
        return {"pid": self.pid, "version": self.version, "uptime": self.uptime, "tracked_keys": self.tracked_keys}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> DaemonInfo:
        return cls(wire["pid"], wire["version"], wire["uptime"], wire["tracked_keys"])


@dataclass(frozen=True)
class QueueStatus:
    """The whole status: at most STATUS_MAX_KEYS keys' lines, how many keys the queue holds, events per state
    (every key together), the last delivery, keys held now, damaged files, heartbeats and the daemon itself."""

    keys: Tuple[KeyStatus, ...]
    keys_total: int
    totals: Mapping[str, int]
    last_delivery: Optional[float] = None
    throttled_keys: int = 0
    warnings: Tuple[str, ...] = ()
    damaged_files: Tuple[str, ...] = ()
    heartbeats: Mapping[str, int] = field(default_factory=dict)
    daemon: Optional[DaemonInfo] = None

    @property
    def keys_omitted(self) -> int:
        return max(0, self.keys_total - len(self.keys))

    def to_wire(self) -> Dict[str, Any]:
        return {"keys": [key.to_wire() for key in self.keys], "keys_total": self.keys_total,
                "keys_omitted": self.keys_omitted, "totals": dict(self.totals), "last_delivery": self.last_delivery,
                "throttled_keys": self.throttled_keys, "warnings": list(self.warnings),
                "damaged_files": list(self.damaged_files), "heartbeats": dict(self.heartbeats),
                "daemon": self.daemon.to_wire() if self.daemon is not None else None}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> QueueStatus:
        """Read a status reply; fields an older agent does not send take their empty values."""
        keys = tuple(KeyStatus.from_wire(key) for key in wire["keys"])
        omitted = wire.get("keys_omitted") or 0
        daemon = wire.get("daemon")
        return cls(keys, int(wire.get("keys_total") or len(keys) + omitted), dict(wire.get("totals") or {}),
                   wire.get("last_delivery"), int(wire.get("throttled_keys") or 0),
                   tuple(wire.get("warnings") or ()), tuple(wire.get("damaged_files") or ()),
                   dict(wire.get("heartbeats") or {}), DaemonInfo.from_wire(daemon) if daemon else None)


@dataclass(frozen=True)
class Attempt:
    """One try to deliver an event, as `show` lists it."""

    at: float
    outcome: str
    http_status: Optional[int] = None
    error: Optional[str] = None

    def to_wire(self) -> Dict[str, Any]:
        return {"at": self.at, "outcome": self.outcome, "http_status": self.http_status, "error": self.error}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Attempt:
        return cls(wire["at"], wire["outcome"], wire.get("http_status"), wire.get("error"))


@dataclass(frozen=True)
class ListedEvent:
    """An event as `list` and `show` answer it: the keys as shown to the asker (the daemon's EventRow.shown
    decides), columns as stored; `sender_uid` None when not shown, `body` None when not sent, `attempts_log`
    None outside `show`."""

    id: int
    routing_key: str
    api: str
    action: str
    dedup_key: str
    state: str
    created: float
    updated: float = 0.0
    attempts: int = 0
    next_attempt: float = 0.0
    last_status: Optional[int] = None
    last_error: Optional[str] = None
    superseded_by: Optional[int] = None
    sender_uid: Optional[int] = None
    body: Optional[str] = None
    attempts_log: Optional[Tuple[Attempt, ...]] = None

    def to_wire(self) -> Dict[str, Any]:
        wire: Dict[str, Any] = {
            "id": self.id, "routing_key": self.routing_key, "api": self.api, "action": self.action,
            "dedup_key": self.dedup_key, "state": self.state, "created": self.created, "updated": self.updated,
            "attempts": self.attempts, "next_attempt": self.next_attempt, "last_status": self.last_status,
            "last_error": self.last_error, "superseded_by": self.superseded_by}
        if self.sender_uid is not None:
            wire["sender_uid"] = self.sender_uid
        if self.body is not None:
            wire["body"] = self.body
        if self.attempts_log is not None:
            wire["attempts_log"] = [attempt.to_wire() for attempt in self.attempts_log]
        return wire

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> ListedEvent:
        log = wire.get("attempts_log")
        return cls(wire["id"], wire["routing_key"], wire["api"], wire["action"], wire["dedup_key"], wire["state"],
                   wire["created"], wire.get("updated", 0.0), wire["attempts"], wire.get("next_attempt", 0.0),
                   wire.get("last_status"), wire.get("last_error"), wire.get("superseded_by"),
                   wire.get("sender_uid"), wire.get("body"),
                   None if log is None else tuple(Attempt.from_wire(attempt) for attempt in log))


def sum_totals(keys: List[KeyStatus]) -> Dict[str, int]:
    return {state: sum(key.count(state) for key in keys) for state in STATES}
