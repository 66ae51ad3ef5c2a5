"""OpenMetrics text for node_exporter's textfile collector, from the daemon's status (keys masked).

Only gauges, no timestamps, no `_created` samples and no `info` type: the same text must parse both as
OpenMetrics and as the older Prometheus text format that node_exporter's textfile collector reads (for which
`# EOF` is just a comment). Masked keys can collide (same first and last four characters); their figures are
merged, because a duplicated series would make the collector reject the whole file.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from pdagent_sd.protocol import STATUS_MAX_KEYS
from pdagent_sd.statustypes import STATES, KeyStatus, QueueStatus


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Document:
    def __init__(self) -> None:
        self.lines: List[str] = []

    def family(self, name: str, help_text: str, samples: List[str]) -> None:
        self.lines.append(f"# TYPE {name} gauge")
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.extend(samples)

    def text(self) -> str:
        return "\n".join(self.lines + ["# EOF"]) + "\n"


def _merge_masked(keys: Iterable[KeyStatus]) -> Dict[str, Dict[str, Any]]:
    """Per masked key: summed counts, the oldest age, and whether any of the keys is held."""
    merged: Dict[str, Dict[str, Any]] = {}
    for key in keys:
        entry = merged.setdefault(key.routing_key, {**{state: 0 for state in STATES},
                                                    "oldest_pending_age": None, "held": False})
        for state in STATES:
            entry[state] += key.count(state)
        age = key.oldest_pending_age
        if age is not None and (entry["oldest_pending_age"] is None or age > entry["oldest_pending_age"]):
            entry["oldest_pending_age"] = age
        entry["held"] = entry["held"] or key.held
    return merged


def render(status: QueueStatus) -> str:
    keys = _merge_masked(status.keys)
    labels = {key: f'routing_key="{_label(key)}"' for key in keys}
    doc = _Document()
    doc.family("pdagent_up", "1 when the agent answered; 0 (written by pd-queue metrics -o) when it did not.",
               ["pdagent_up 1"])
    doc.family("pdagent_events", "Events in the queue by routing key (masked) and state.",
               [f'pdagent_events{{{labels[key]},state="{state}"}} {entry[state]}'
                for key, entry in keys.items() for state in STATES])
    doc.family("pdagent_oldest_pending_age_seconds", "Age of the oldest pending event by routing key (masked).",
               [f"pdagent_oldest_pending_age_seconds{{{labels[key]}}} {_number(entry['oldest_pending_age'])}"
                for key, entry in keys.items() if entry["oldest_pending_age"] is not None])
    doc.family("pdagent_key_held", "1 while a routing key (masked) is throttled or backing off.",
               [f"pdagent_key_held{{{labels[key]}}} {int(entry['held'])}" for key, entry in keys.items()])
    totals = {state: sum(entry[state] for entry in keys.values()) for state in STATES}
    totals.update(status.totals)
    doc.family("pdagent_queue_events", "Events in the queue by state, all routing keys together.",
               [f'pdagent_queue_events{{state="{state}"}} {totals[state]}' for state in STATES])
    doc.family("pdagent_routing_keys", "Routing keys with events in the queue; the per-key series above cover at "
               f"most {STATUS_MAX_KEYS} of them, those with the most pending, then failed, events.",
               [f"pdagent_routing_keys {int(status.keys_total or len(keys))}"])
    doc.family("pdagent_throttled_keys", "Routing keys throttled or backing off now.",
               [f"pdagent_throttled_keys {int(status.throttled_keys or 0)}"])
    last: Optional[float] = status.last_delivery
    doc.family("pdagent_last_delivery_timestamp_seconds", "When an event was last delivered (Unix time).",
               [f"pdagent_last_delivery_timestamp_seconds {_number(last)}"] if last else [])
    beats = status.heartbeats
    doc.family("pdagent_heartbeats", "Heartbeats (pd-heartbeat) by state: ok, late (overdue, within the grace), "
               "paged (missed; incident open), paused.",
               [f'pdagent_heartbeats{{state="{state}"}} {int(beats.get(state, 0))}'
                for state in ("ok", "late", "paged", "paused")])
    doc.family("pdagent_damaged_queue_files", "Damaged queue databases moved aside and not delivered from.",
               [f"pdagent_damaged_queue_files {len(status.damaged_files)}"])
    return doc.text()


def render_unreachable() -> str:
    """What `pd-queue metrics -o FILE` writes when the agent could not be asked at all."""
    doc = _Document()
    doc.family("pdagent_up", "1 when the agent answered; 0 (written by pd-queue metrics -o) when it did not.",
               ["pdagent_up 0"])
    return doc.text()
