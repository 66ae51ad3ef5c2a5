"""The queue's plain value types: an event's states, a queued event as the scheduler reads it, who sends an
event and the quotas and usage that bound it, an event to import from the old agent, an event coalesced away.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pdagent_sd.events import Event

# sender_uid of events queued before it was recorded, and of the daemon's own.
UNKNOWN_SENDER = -1


class State(str, Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # made redundant by a later event of its incident before it was sent


STATE_NAMES = frozenset(state.value for state in State)


@dataclass(frozen=True)
class QueuedEvent:
    id: int
    routing_key: str
    api: str
    action: str
    dedup_key: str
    body: str
    attempts: int
    next_attempt: float
    created: float
    sender_uid: int = UNKNOWN_SENDER


@dataclass(frozen=True)
class Sender:
    """Who queues an event: its uid, and whether it is trusted (root, the service's user, group pdagent,
    trusted_groups), which spares it the per-sender quotas and lets it use the reserved room."""

    uid: int
    trusted: bool


INTERNAL = Sender(UNKNOWN_SENDER, True)


@dataclass(frozen=True)
class Quotas:
    max_pending: int = 1000000
    reserved_pending: int = 0  # of max_pending, for trusted senders only
    sender_events: int = 0  # pending + failed events per untrusted uid; 0 = no limit
    sender_bytes: int = 0  # stored body bytes per untrusted uid; 0 = no limit


class Usage:
    """What one sender has in the queue: events pending or failed, and bytes of bodies stored."""

    __slots__ = ("events", "bytes")

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0


@dataclass(frozen=True)
class LegacyEntry:
    """One event file of the old agent's outqueue, validated, to import: `name` is its file name there."""

    name: str
    event: Event
    state: State
    queued_at: float
    note: str = ""
    sender: Sender = INTERNAL  # the file's owner: whose quota the event is charged to


@dataclass(frozen=True)
class Superseded:
    """An event coalesced away, told to on_superseded once its transaction has committed."""

    id: int
    by: int
    routing_key: str
    dedup_key: str
    action: str
    api: str
