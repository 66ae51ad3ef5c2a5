"""The queue's plain value types: a queued event as the scheduler reads it, who sends an event and the quotas
and usage that bound it, an event to import from the old agent, an event coalesced away. An event's states
(`State`) live in statustypes.py, which pd-queue imports without the event model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from pdagent_sd.events import Action, Api, Event
from pdagent_sd.keys import RoutingKey, mask
from pdagent_sd.statustypes import Attempt, ListedEvent, State

# sender_uid of events queued before it was recorded, and of the daemon's own.
UNKNOWN_SENDER = -1
# The party of every trusted sender's event: root, the service's user, group pdagent and trusted_groups are one
# sender for coalescing and fair delivery. They may already drop, retry and read every event (pd-queue), so
# keeping them apart would protect nothing, and pd-unit-alert (root) and an admin's `pd-send` (sudo) must
# coalesce with each other: an admin's resolve supersedes the unit alert's updates.
TRUSTED_PARTY = -1


@dataclass(frozen=True)
class QueuedEvent:
    id: int
    routing_key: RoutingKey
    api: Api  # read from its row once (store._queued), not parsed again on every attempt
    action: Action
    dedup_key: str
    body: str
    attempts: int
    next_attempt: float
    created: float
    sender_uid: int = UNKNOWN_SENDER
    party: int = TRUSTED_PARTY


@dataclass(frozen=True)
class EventRow:
    """An event as the store reads it for `list` and `show`, its columns as stored (a damaged row is listed,
    not refused): `body` is None when it was not read, `attempts_log` None outside `show`. The reply carries
    its `shown()` form (statustypes.ListedEvent)."""

    id: int
    routing_key: RoutingKey
    api: str
    action: str
    dedup_key: str
    state: str
    created: float
    updated: float
    attempts: int
    next_attempt: float
    last_status: Optional[int]
    last_error: Optional[str]
    superseded_by: Optional[int]
    sender_uid: int
    body: Optional[str] = None
    attempts_log: Optional[Tuple[Attempt, ...]] = None

    def shown(self, reveal: bool) -> ListedEvent:
        """The event as the asker sees it. Unrevealed (anyone may list): the routing key and the dedup key
        masked, since a dedup key is all it takes to resolve an incident, and no sender: who pages about what
        is the admins' to know."""
        return ListedEvent(self.id, self.routing_key.reveal() if reveal else str(self.routing_key), self.api,
                           self.action, self.dedup_key if reveal else mask(self.dedup_key), self.state, self.created,
                           self.updated, self.attempts, self.next_attempt, self.last_status, self.last_error,
                           self.superseded_by, self.sender_uid if reveal else None, self.body, self.attempts_log)


@dataclass(frozen=True)
class Sender:
    """Who queues an event: its uid, and whether it is trusted (root, the service's user, group pdagent,
    trusted_groups), which spares it the per-sender quotas and lets it use the reserved room."""

    uid: int
    trusted: bool

    @property
    def party(self) -> int:
        """Whose its events are for coalescing and fair delivery: all trusted senders are one party."""
        return TRUSTED_PARTY if self.trusted else self.uid


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
    routing_key: RoutingKey
    dedup_key: str
    action: str
    api: str
