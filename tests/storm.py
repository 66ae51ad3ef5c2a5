"""An alert storm on one routing key, as tests and benchmarks send it and judge what PagerDuty received (issue 15).

Pure standard library plus the project's own client, so bench/ can use it beside the tests.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

SENDERS = 8  # client connections sending the storm at once; each owns some incidents, so each one's order holds


def storm_events(incidents: int, per_incident: int, flapping: int) -> List[Tuple[str, str]]:
    """(dedup key, action) in arrival order, round robin over the incidents: triggers, one acknowledge a third of
    the way, and a resolve last; the first `flapping` incidents also resolve halfway and open again."""
    events = []
    for position in range(per_incident):
        for number in range(incidents):
            if position == per_incident - 1 or (position == per_incident // 2 and number < flapping):
                kind = "resolve"
            elif position == per_incident // 3:
                kind = "acknowledge"
            else:
                kind = "trigger"
            events.append((f"storm-{number}", kind))
    return events


def body(routing_key: str, dedup_key: str, kind: str, index: int) -> Dict[str, Any]:
    if kind == "trigger":
        return {"routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup_key,
                "payload": {"summary": f"{dedup_key} #{index}", "source": "storm", "severity": "error"}}
    return {"routing_key": routing_key, "event_action": kind, "dedup_key": dedup_key}


def send_storm(socket_path: str, routing_key: str, events: List[Tuple[str, str]], duration: float = 0.0) -> float:
    """Send every event, each incident's in order, as fast as possible or spread evenly over `duration` seconds;
    return time.monotonic() once the last one is committed."""
    from pdagent_sd.protocol import Client

    shares: List[List[Tuple[int, Dict[str, Any]]]] = [[] for _ in range(SENDERS)]
    for index, (dedup_key, kind) in enumerate(events):
        shares[hash(dedup_key) % SENDERS].append((index, body(routing_key, dedup_key, kind, index)))
    failures: List[str] = []
    spacing = duration / len(events) if events else 0.0
    start = time.monotonic()

    def sender(bodies: List[Tuple[int, Dict[str, Any]]]) -> None:
        with Client(socket_path) as conn:
            for index, event in bodies:
                pause = start + index * spacing - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                reply = conn.request({"op": "send", "api": "v2", "event": event})
                if not reply.get("ok"):
                    failures.append(str(reply))

    threads = [threading.Thread(target=sender, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} sends refused, the first: {failures[0]}")
    return time.monotonic()


def resolved_at(history: Dict[str, List[Tuple[str, float]]]) -> Dict[str, Optional[float]]:
    """Per dedup key: when the incident was last resolved, or None while it is open (or never opened)."""
    result: Dict[str, Optional[float]] = {}
    for key, actions in history.items():
        last = [(kind, at) for kind, at in actions if kind in ("trigger", "resolve")]
        result[key] = last[-1][1] if last and last[-1][0] == "resolve" else None
    return result


def wrongs(history: Dict[str, List[Tuple[str, float]]], events: List[Tuple[str, str]]) -> List[str]:
    """What PagerDuty received that breaks the rules: an incident's order changed, a resolve lost, an incident
    resolved without a trigger, an incident never resolved. Empty when all is well."""
    sent: Dict[str, List[str]] = {}
    for dedup_key, kind in events:
        sent.setdefault(dedup_key, []).append(kind)
    problems = []
    for dedup_key, kinds in sent.items():
        received = [kind for kind, _ in history.get(dedup_key, [])]
        remaining = iter(kinds)
        if not all(kind in remaining for kind in received):
            problems.append(f"{dedup_key}: order changed: {received}")
        if not received or received[-1] != "resolve":
            problems.append(f"{dedup_key}: not resolved: {received[-3:]}")
        if received.count("resolve") != kinds.count("resolve"):
            problems.append(f"{dedup_key}: {kinds.count('resolve')} resolves sent, {received.count('resolve')} "
                            "received")
        incident: List[str] = []
        for kind in received:
            if kind == "resolve":
                if "trigger" not in incident:
                    problems.append(f"{dedup_key}: an incident resolved without a trigger: {received}")
                incident = []
            else:
                incident.append(kind)
    return problems
