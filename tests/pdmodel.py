"""A small model of what PagerDuty ends in, per incident, for tests: every delivery rule is judged by what the
on-call finally sees, not by which requests went out.

An incident is (routing key, dedup key) (v1: service key, incident key; they share PagerDuty's alerts). Its alert
is triggered, acknowledged or resolved:

- a trigger opens a new alert unless one is open (triggered or acknowledged): then it merges into it (the alert
  keeps its state, acknowledged included, and takes the latest summary);
- an acknowledge of an open alert acknowledges it; of a resolved or unknown one, nothing;
- a resolve of an open alert resolves it; otherwise nothing;
- change events open nothing: they are kept in the order they arrived.

    model = PagerDuty()
    model.apply("trigger", "db", "disk full")
    model.apply("resolve", "db")
    model.apply("trigger", "db", "disk full again")   # a new alert: the incident's second
    assert model.end_state()["db"] == Incident(Alert.TRIGGERED, 1 + 1, "disk full again")

`replay()` builds one from arrivals (time, dedup key, action, summary) in the order they landed at PagerDuty;
`fifo()` from events sent one after another as they arrived at the agent, the reference every coalescing and
ordering rule must end equal to.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

T, A, R = "trigger", "acknowledge", "resolve"


class Alert(str, Enum):
    TRIGGERED = "triggered"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class Incident:
    """What the on-call sees of one incident at the end: its alert's state, how many alerts it opened, and the
    open alert's latest summary ("" once resolved)."""

    alert: Optional[Alert]  # None: never triggered
    alerts_opened: int
    summary: str = ""


class PagerDuty:
    """PagerDuty's end state per incident, built by applying events in the order they land."""

    def __init__(self) -> None:
        self.received: Dict[str, List[str]] = {}  # every action that landed, per dedup key, in order
        self.open: Dict[str, bool] = {}
        self.acked: Dict[str, bool] = {}
        self.incidents: Dict[str, int] = {}  # alerts opened per dedup key
        self.summary: Dict[str, str] = {}
        self.change_events: List[str] = []

    def apply(self, action: str, dedup_key: str, summary: str = "", routing_key: str = "") -> None:
        if action == "change":
            self.change_events.append(summary)
            return
        key = f"{routing_key}/{dedup_key}" if routing_key else dedup_key
        self.received.setdefault(key, []).append(action)
        is_open = self.open.get(key, False)
        if action == T:
            if not is_open:
                self.incidents[key] = self.incidents.get(key, 0) + 1
                self.acked[key] = False
            self.open[key] = True
            self.summary[key] = summary
        elif action == A and is_open:
            self.acked[key] = True
        elif action == R:
            self.open[key] = False
            self.acked[key] = False

    def incident(self, key: str) -> Incident:
        opened = self.incidents.get(key, 0)
        if not opened:
            return Incident(None, 0)
        if not self.open.get(key, False):
            return Incident(Alert.RESOLVED, opened)
        alert = Alert.ACKNOWLEDGED if self.acked.get(key, False) else Alert.TRIGGERED
        return Incident(alert, opened, self.summary.get(key, ""))

    def end_state(self) -> Dict[str, Incident]:
        return {key: self.incident(key) for key in sorted(set(self.received) | set(self.incidents))}


def fifo(events: Iterable[Sequence[str]]) -> PagerDuty:
    """PagerDuty after every event is delivered once, in the order given: (action, dedup key[, summary
    [, routing key]])."""
    model = PagerDuty()
    for event in events:
        model.apply(*event)
    return model


def replay(arrivals: Iterable[Tuple[float, str, str, str, str]]) -> PagerDuty:
    """PagerDuty after events land at the times given: (time, routing key, dedup key, action, summary), applied in
    time order (a stable sort: equal times keep the order given)."""
    model = PagerDuty()
    for _, routing_key, dedup_key, action, summary in sorted(arrivals, key=lambda arrival: arrival[0]):
        model.apply(action, dedup_key, summary, routing_key)
    return model


def from_standin(records: Iterable[Any]) -> PagerDuty:
    """PagerDuty after the events a tests/standin.StandIn accepted (its received() records, in the order it
    processed them)."""
    model = PagerDuty()
    for record in records:
        if record.api == "change":
            model.apply("change", "", str((record.body.get("payload") or {}).get("summary", "")))
            continue
        summary = (record.body.get("payload") or {}).get("summary") or record.body.get("description") or ""
        model.apply(str(record.action), str(record.key), str(summary), str(record.routing_key or ""))
    return model
