"""Coalescing of pending events per incident, and which events go first: pure rules, no I/O.

An incident is one (routing key, dedup key). PagerDuty holds it open from a delivered trigger until a delivered
resolve. When a new event arrives for an incident, the events of that incident still waiting to be sent, read
in order as if every one of them were sent, decide what the new event makes redundant. The rules see only the
events of the new event's own sender (its party: a uid, or all trusted senders as one; store.py reads them so):
a routing key is shared, an event is its sender's, and another user's event may add to PagerDuty's alert log
but never take one of root's out of it (issue 18). The rules:

- a trigger while the incident is open (or its opening trigger is still waiting) is an *update*: it supersedes
  the updates still waiting since the last resolve, so only the latest update goes;
- the first trigger of an incident (nothing open, or a resolve waiting before it) supersedes nothing and is
  never superseded: someone must learn that the incident happened, even if it is already over;
- a resolve supersedes the updates and acknowledges waiting since the last resolve (not that first trigger);
- an acknowledge and a change event supersede nothing; nothing ever supersedes a resolve or a change event.

Events being sent right now count as sent: they are never superseded. What stays is always a subsequence of what
arrived, so the order within an incident never changes.

v1 events (incident_key, event_type) have the same meaning and share PagerDuty's incidents with v2, so they
follow the same rules with the same key. Change events have no dedup key and stand for nothing that a later
event could replace: they are never coalesced, and go in arrival order among themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, List, Sequence, Tuple

from pdagent_sd.events import Action


class Priority(IntEnum):
    """Which of a routing key's pending events go first when the key cannot send them all now."""

    UPDATE = 0  # a trigger for an incident already open: PagerDuty's state stays what it is
    OTHER = 1  # an acknowledge, a change event
    TRUTH = 2  # the first trigger of an incident, a resolve: what the on-call must see


@dataclass(frozen=True)
class Waiting:
    """One pending event of the incident, as the rules see it."""

    id: int
    action: str
    in_flight: bool = False  # being sent now: counts as sent, cannot be superseded


@dataclass(frozen=True)
class Decision:
    superseded: Tuple[int, ...]  # ids of waiting events the new event makes redundant, in order
    priority: Priority


def decide(waiting: Sequence[Waiting], incident_open: bool, action: str) -> Decision:
    """What a new event with `action` supersedes among `waiting` (the incident's pending events, oldest first),
    given whether PagerDuty has the incident open from what was delivered before them."""
    if action == Action.CHANGE.value:
        return Decision((), Priority.OTHER)
    is_open = incident_open
    updates: List[int] = []  # waiting updates since the last resolve
    acks: List[int] = []  # waiting acknowledges since the last resolve
    for event in waiting:
        if event.action == Action.TRIGGER.value:
            if is_open and not event.in_flight:
                updates.append(event.id)
            is_open = True
        elif event.action == Action.ACKNOWLEDGE.value:
            if not event.in_flight:
                acks.append(event.id)
        elif event.action == Action.RESOLVE.value:
            is_open = False
            updates, acks = [], []
    if action == Action.TRIGGER.value:
        return Decision(tuple(updates), Priority.UPDATE) if is_open else Decision((), Priority.TRUTH)
    if action == Action.RESOLVE.value:
        return Decision(tuple(sorted(updates + acks)), Priority.TRUTH)
    return Decision((), Priority.OTHER)


def open_after(actions: Iterable[str], incident_open: bool = False) -> bool:
    """Whether PagerDuty holds the incident open after these actions are delivered in order."""
    for action in actions:
        if action == Action.TRIGGER.value:
            incident_open = True
        elif action == Action.RESOLVE.value:
            incident_open = False
    return incident_open
