"""OpenMetrics text for node_exporter's textfile collector, from the daemon's status (keys masked)."""

from __future__ import annotations

from typing import Any, Dict, List


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(status: Dict[str, Any]) -> str:
    lines: List[str] = []

    def family(name: str, kind: str, help_text: str, samples: List[str]) -> None:
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"# HELP {name} {help_text}")
        lines.extend(samples)

    keys = status["keys"]
    family("pdagent_events", "gauge", "Events in the queue by routing key (masked) and state.",
           [f'pdagent_events{{routing_key="{_label(key["routing_key"])}",state="{state}"}} {key[state]}'
            for key in keys for state in ("pending", "delivered", "failed")])
    family("pdagent_oldest_pending_age_seconds", "gauge", "Age of the oldest pending event by routing key.",
           [f'pdagent_oldest_pending_age_seconds{{routing_key="{_label(key["routing_key"])}"}} '
            f'{key["oldest_pending_age"]}' for key in keys if key["oldest_pending_age"] is not None])
    family("pdagent_key_held", "gauge", "1 while a routing key is throttled or backing off.",
           [f'pdagent_key_held{{routing_key="{_label(key["routing_key"])}"}} '
            f'{int(bool(key["throttled_until"] or key["backoff_until"]))}' for key in keys])
    family("pdagent_throttled_keys", "gauge", "Routing keys throttled or backing off now.",
           [f"pdagent_throttled_keys {status['throttled_keys']}"])
    last = status.get("last_delivery")
    family("pdagent_last_delivery_timestamp_seconds", "gauge", "When an event was last delivered.",
           [f"pdagent_last_delivery_timestamp_seconds {last}"] if last else [])
    lines.append("# EOF")
    return "\n".join(lines) + "\n"
