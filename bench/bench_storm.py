"""An alert storm on one routing key (issue 15): how long PagerDuty shows incidents that are already over.

A stand-in that limits each key to PagerDuty's 120 events/min runs in its own process; the real daemon runs at
its default rate limit (110/min, burst 20). A storm is sent as fast as 8 client connections can (incidents
round robin: triggers, an acknowledge, a resolve last; a few incidents resolve and open again halfway). Figures:

- time to truth: from the storm's last acknowledged send until the stand-in has every incident resolved;
- events sent: how many the stand-in accepted.

Both with coalescing (the default) and, in the same run, with `coalesce = no` (strict FIFO), on the issue's
scaled-down storm (20 incidents x 10 events). The 5,000-event storm (50 x 100) runs with coalescing only: FIFO
needs (5,000 - 20) / 110 per minute = 45 minutes for it, printed as computed, not measured.

Usage: python bench/bench_storm.py [--quick]   (--quick: the scaled-down storm only, at 10x the rate)
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Tuple

from benchlib import StandInProcess, line, start_agent, wait, workdir
from storm import resolved_at, send_storm, storm_events, wrongs

QUICK = "--quick" in sys.argv
SCALE = 10 if QUICK else 1  # --quick runs the agent and the stand-in ten times faster
AGENT_PER_MINUTE = 110 * SCALE
PAGERDUTY_PER_MINUTE = 120 * SCALE
ROUTING_KEY = "s" * 16 + "0123456789abcdef"


def run(incidents: int, per_incident: int, coalesce: bool, limit: float) -> Tuple[float, int]:
    """One storm against a fresh stand-in and daemon: (seconds to truth, events the stand-in accepted)."""
    events = storm_events(incidents, per_incident, flapping=max(1, incidents // 10))
    standin = StandInProcess(extra=["--rate-limit", str(PAGERDUTY_PER_MINUTE)])
    try:
        with workdir() as path:
            agent = start_agent(path, standin.url, PDAGENT_RATE_LIMIT_PER_MINUTE=str(AGENT_PER_MINUTE),
                                PDAGENT_BACKOFF_MIN_SEC="1", PDAGENT_BACKOFF_MAX_SEC="300",
                                PDAGENT_COALESCE="yes" if coalesce else "no")
            try:
                storm_end = send_storm(agent.socket, ROUTING_KEY, events)
                wanted = {dedup_key for dedup_key, _ in events}

                def history() -> Dict[str, list]:  # type: ignore[type-arg]
                    return {key: [(kind, at) for kind, at in actions]
                            for key, actions in standin.control("GET", "incidents").items()}

                def truth() -> bool:
                    resolved = resolved_at(history())
                    return all(resolved.get(key) is not None for key in wanted)

                if not wait(truth, limit, step=0.25):
                    raise RuntimeError(f"not every incident resolved within {limit:.0f}s")
                final = history()
                problems = wrongs(final, events)
                if problems:
                    raise RuntimeError(f"PagerDuty received something wrong: {problems[:3]}")
                resolved = resolved_at(final)
                seconds = max(float(at or 0.0) for at in resolved.values()) - storm_end
                return seconds, sum(len(actions) for actions in final.values())
            finally:
                agent.stop()
    finally:
        standin.stop()


def main() -> int:
    print(f"storm benchmark ({'quick: 10x rate' if QUICK else 'full'}), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores; agent {AGENT_PER_MINUTE}/min, stand-in {PAGERDUTY_PER_MINUTE}/min per key")
    print("scaled-down storm: 20 incidents x 10 events = 200 events on one routing key")
    fifo_time, fifo_sent = run(20, 10, coalesce=False, limit=600 / SCALE)
    time_, sent = run(20, 10, coalesce=True, limit=600 / SCALE)
    line("FIFO (coalesce = no): time to truth", f"{fifo_time:.1f} s")
    line("FIFO (coalesce = no): events sent", f"{fifo_sent}")
    line("coalescing: time to truth", f"{time_:.1f} s", f"FIFO / coalescing {fifo_time / max(time_, 0.01):.1f}x")
    line("coalescing: events sent", f"{sent}")
    if not QUICK:
        print("full storm: 50 incidents x 100 events = 5,000 events on one routing key")
        time_, sent = run(50, 100, coalesce=True, limit=600)
        line("coalescing: time to truth", f"{time_:.1f} s", "target <= 60 s", "ok" if time_ <= 60 else "MISSED")
        line("coalescing: events sent", f"{sent}")
        line("FIFO (computed, not run): time to truth", f"{(5000 - 20) / 110:.0f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
