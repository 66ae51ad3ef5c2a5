"""Heartbeats' deadline rules, and the trigger and resolve a miss and a recovery become. Pure: the time and the
boot time are arguments, so every rule is tested on a fake clock (tests/test_heartbeat_rules.py).

A heartbeat belongs to the uid that created it; (uid, name) is its identity. Its deadline is the last
check-in + every + grace. A pause moves it to at least the pause's end + grace (the job gets its grace after
the maintenance). A deadline that passed while the machine was off moves to the boot + grace: a job of a
`Persistent=true` timer runs right after boot and gets its chance to check in before anyone is paged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Iterable, Optional

from pdagent_sd import timespan
from pdagent_sd.keys import RoutingKey

# --grace when not given: a tenth of --every, at least GRACE_MIN_SEC (a job's own run time and cron's or a
# timer's start jitter are seconds even for a job run every minute).
GRACE_FRACTION = 0.1
GRACE_MIN_SEC = 30.0
MIN_EVERY_SEC = 1.0
MAX_SPAN_SEC = 366 * 86400.0  # a year: longer is a typo, and keeps every time a sane float
SEVERITIES = ("critical", "error", "warning", "info")
DEFAULT_SEVERITY = "error"
DEDUP_PREFIX = "heartbeat"


class HeartbeatState(str, Enum):
    OK = "ok"  # the deadline is ahead
    LATE = "late"  # its check-in is overdue, not paged yet: within the grace (also after a boot), or about to be
    PAGED = "paged"  # a trigger was queued; the next check-in resolves it
    PAUSED = "paused"  # no page until the pause ends


STATES = tuple(state.value for state in HeartbeatState)


def default_grace(every: float) -> float:
    return max(every * GRACE_FRACTION, GRACE_MIN_SEC)


@dataclass(frozen=True)
class Heartbeat:
    uid: int
    name: str
    every: float
    grace: float
    last_checkin: float
    routing_key: RoutingKey
    user: str = ""  # the owner's user name when created (the uid, where it has none)
    description: str = ""
    severity: str = DEFAULT_SEVERITY
    paused_until: Optional[float] = None
    paged: bool = False
    incident: str = ""  # the dedup key the page went to, while paged

    @property
    def scheduled(self) -> float:
        """The deadline before any allowance for a boot: last check-in + every + grace, or the pause's."""
        deadline = self.last_checkin + self.every + self.grace
        if self.paused_until is not None:
            deadline = max(deadline, self.paused_until + self.grace)
        return deadline

    def deadline(self, booted_at: float) -> float:
        """When a miss pages: the scheduled deadline, or boot + grace if it passed before this boot."""
        scheduled = self.scheduled
        return booted_at + self.grace if scheduled < booted_at else scheduled

    def state(self, now: float, booted_at: float) -> HeartbeatState:
        if self.paged:
            return HeartbeatState.PAGED
        if self.paused_until is not None and now < self.paused_until:
            return HeartbeatState.PAUSED
        return HeartbeatState.LATE if now >= self.scheduled - self.grace else HeartbeatState.OK

    def due(self, now: float, booted_at: float) -> bool:
        """Whether a miss is to be paged now."""
        return not self.paged and now >= self.deadline(booted_at)


def next_deadline(heartbeats: Iterable[Heartbeat], booted_at: float) -> Optional[float]:
    """The earliest deadline of those that can still page; None when none can (none, or all paged)."""
    deadlines = [beat.deadline(booted_at) for beat in heartbeats if not beat.paged]
    return min(deadlines) if deadlines else None


def counts(heartbeats: Iterable[Heartbeat], now: float, booted_at: float) -> Dict[str, int]:
    result = {state: 0 for state in STATES}
    for beat in heartbeats:
        result[beat.state(now, booted_at).value] += 1
    return result


def dedup_key(host: str, beat: Heartbeat) -> str:
    """heartbeat/<host>/<user>/<NAME>: the same for every miss of one heartbeat; PagerDuty opens a new
    incident for a trigger whose earlier incident was resolved, so a later miss pages again."""
    return f"{DEDUP_PREFIX}/{host}/{beat.user or beat.uid}/{beat.name}"


def utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))


def iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def summary(host: str, beat: Heartbeat) -> str:
    return (f"{beat.name} on {host} missed its check-in: last seen {utc(beat.last_checkin)}, "
            f"expected every {timespan.show(beat.every)}")


def trigger(host: str, beat: Heartbeat, now: float) -> Dict[str, Any]:
    """The v2 trigger a miss queues (validated by events.validate like any other)."""
    details: Dict[str, Any] = {
        "heartbeat": beat.name, "owner": beat.user or str(beat.uid), "uid": beat.uid,
        "every": timespan.show(beat.every), "grace": timespan.show(beat.grace),
        "last_check_in": iso(beat.last_checkin), "deadline": iso(beat.scheduled),
    }
    if beat.description:
        details["description"] = beat.description
    return {"routing_key": beat.routing_key.reveal(), "event_action": "trigger", "dedup_key": dedup_key(host, beat),
            "payload": {"summary": summary(host, beat), "source": host, "severity": beat.severity,
                        "timestamp": iso(now), "component": beat.name, "class": "heartbeat",
                        "custom_details": details},
            "client": "pdagent-sd heartbeat"}


def resolve(host: str, beat: Heartbeat) -> Dict[str, Any]:
    """The resolve of a page: to the dedup key the trigger went to (the hostname may have changed since)."""
    return {"routing_key": beat.routing_key.reveal(), "event_action": "resolve",
            "dedup_key": beat.incident or dedup_key(host, beat)}


def row(beat: Heartbeat, now: float, booted_at: float, host: str) -> Dict[str, Any]:
    """One heartbeat as `pd-heartbeat --list` shows it (the routing key left to the caller to mask)."""
    return {"name": beat.name, "owner": beat.user or str(beat.uid), "uid": beat.uid, "every": beat.every,
            "grace": beat.grace, "last_check_in": beat.last_checkin,
            "next_deadline": None if beat.paged else beat.deadline(booted_at),
            "paused_until": beat.paused_until, "state": beat.state(now, booted_at).value,
            "severity": beat.severity, "description": beat.description, "dedup_key": dedup_key(host, beat)}
