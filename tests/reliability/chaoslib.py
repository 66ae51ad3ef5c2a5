"""Shared pieces of the reliability tests: run sizes, sender processes, reading queue.db, and the one analysis
that decides whether a run lost, invented, duplicated or reordered anything.

Each test has a short form (marker integration, part of `make test`) and a full one (marker slow), which
runs only with RELIABILITY_FULL=1 (`make reliability`).
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")
QUIET_AFTER_KILL_SEC = 0.05  # the least time between a kill and the next start (plus any answer delay)
FULL_RUN_REASON = "the full run: make reliability (RELIABILITY_FULL=1 pytest -m slow tests/reliability)"


def runs(short: Dict[str, Any], full: Dict[str, Any]) -> List[Any]:
    """Parameters for the two forms of a test: `short` (marker integration, in `make test`) and `full`
    (marker slow, skipped unless RELIABILITY_FULL=1)."""
    return [pytest.param(short, id="short", marks=pytest.mark.integration),
            pytest.param(full, id="full", marks=[pytest.mark.slow,
                                                 pytest.mark.skipif(not FULL, reason=FULL_RUN_REASON)])]


def routing_key(index: int) -> str:
    return f"chaos{index:03d}" + "c" * 24


class Senders:
    """chaos_sender.py processes; every outcome line is collected as it arrives. Stopped by PID."""

    def __init__(self, socket_path: str, keys: Sequence[str], processes: int, count: int, threads: int = 1,
                 prefix: str = "s", seed: int = 0) -> None:
        self.records: Dict[str, Dict[str, Any]] = {}
        self.outcomes: Counter = Counter()  # type: ignore[type-arg]
        self.lock = threading.Lock()
        self.procs: List[subprocess.Popen] = []  # type: ignore[type-arg]
        self.readers: List[threading.Thread] = []
        self.stop_file = f"{socket_path}.stop-senders-{prefix}"
        for n in range(processes):
            proc = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "chaos_sender.py"), "--socket", socket_path,
                 "--name", f"{prefix}{n}", "--keys", ",".join(keys), "--count", str(count),
                 "--threads", str(threads), "--seed", str(seed * 100 + n), "--stop-file", self.stop_file],
                stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            reader.start()
            self.readers.append(reader)

    def _read(self, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            with self.lock:
                self.records[record["tag"]] = record
                self.outcomes[record["outcome"]] += 1

    def count(self, outcome: Optional[str] = None) -> int:
        with self.lock:
            return len(self.records) if outcome is None else self.outcomes[outcome]

    def done(self) -> bool:
        return all(proc.poll() is not None for proc in self.procs)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        for reader in self.readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return True

    def finish_early(self, timeout: float = 60.0) -> bool:
        """Ask the senders to stop after the event each thread has in hand, and wait for their last lines."""
        with open(self.stop_file, "w"):
            pass
        return self.wait(timeout)

    def stop(self) -> None:
        """Kill whatever still runs (by PID): for the end of a test, pass or fail."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def snapshot(self) -> Dict[str, Dict[str, Any]]:
        with self.lock:
            return dict(self.records)


@dataclass
class QueueRow:
    id: int
    routing_key: str
    state: str
    attempts: int
    delivered_attempts: int


def read_queue(state_dir: str) -> Dict[str, QueueRow]:
    """Every event of queue.db by dedup key (the tests' tags are unique), with its delivered attempts."""
    conn = sqlite3.connect(os.path.join(state_dir, "queue.db"))
    try:
        delivered = Counter(event_id for (event_id,) in conn.execute(
            "SELECT event_id FROM attempts WHERE outcome = 'delivered'"))
        return {dedup_key: QueueRow(event_id, key, state, attempts, delivered[event_id])
                for event_id, key, state, attempts, dedup_key in conn.execute(
                    "SELECT id, routing_key, state, attempts, dedup_key FROM events")}
    finally:
        conn.close()


def quick_check(state_dir: str) -> str:
    conn = sqlite3.connect(os.path.join(state_dir, "queue.db"))
    try:
        return "\n".join(row[0] for row in conn.execute("PRAGMA quick_check"))
    finally:
        conn.close()


@dataclass
class Timeline:
    """When each daemon incarnation started, and the moments it was killed (monotonic clock, system-wide)."""

    starts: List[float] = field(default_factory=list)
    kills: List[float] = field(default_factory=list)

    # Telling daemons apart by time needs a quiet moment between a kill and the next start, longer than the
    # stand-in takes to record a request the killed daemon had already sent: see QUIET_AFTER_KILL_SEC.

    def incarnation(self, moment: float) -> int:
        """Which incarnation an HTTP request seen at `moment` came from: the last one started before it."""
        return bisect.bisect_right(self.starts, moment) - 1


@dataclass
class Verdict:
    figures: Dict[str, Any]
    problems: List[str]


def analyse(records: Dict[str, Dict[str, Any]], deliveries: Iterable[Tuple[str, str, float]],
            queue: Dict[str, QueueRow], timeline: Timeline, max_dups_per_kill: int) -> Verdict:
    """Judge a run. `records`: each sent tag's outcome; `deliveries`: (tag, routing key, arrival time) in
    arrival order at the stand-in; `queue`: queue.db after a clean stop.

    The rules: every acknowledged event is delivered and recorded delivered under the id it was acknowledged
    with; nothing is delivered that was refused or never sent; a delivered copy is repeated only across a kill
    (the daemon died between the HTTP answer and the commit of its result), never within one daemon's life; a
    row says delivered only if the stand-in has it; per routing key, first deliveries come in id order."""
    problems: List[str] = []
    outcomes = Counter(record["outcome"] for record in records.values())
    copies: Dict[str, List[float]] = defaultdict(list)
    first_order: Dict[str, List[str]] = defaultdict(list)
    for tag, key, moment in deliveries:
        if not copies[tag]:
            first_order[key].append(tag)
        copies[tag].append(moment)

    for tag, record in records.items():
        if record["outcome"] == "acked":
            row = queue.get(tag)
            if tag not in copies:
                problems.append(f"acknowledged event {tag} (id {record['id']}) was never delivered")
            if row is None:
                problems.append(f"acknowledged event {tag} (id {record['id']}) is not in queue.db")
            elif row.id != record["id"]:
                problems.append(f"event {tag} was acknowledged as id {record['id']} but is id {row.id}")
        elif record["outcome"] in ("refused", "rejected") and (tag in copies or tag in queue):
            problems.append(f"event {tag} was {record['outcome']} yet is delivered or queued")
    for tag in copies:
        if tag not in records:
            problems.append(f"the stand-in received {tag}, which no sender sent")
    for tag, row in queue.items():
        if tag not in records:
            problems.append(f"queue.db holds {tag}, which no sender sent")
        if row.state == "delivered" and tag not in copies:
            problems.append(f"queue.db says {tag} (id {row.id}) was delivered, but the stand-in never got it")
        if row.state != "delivered" and records.get(tag, {}).get("outcome") == "acked":
            problems.append(f"acknowledged event {tag} (id {row.id}) ends {row.state}")
        if row.state == "delivered" and row.delivered_attempts != 1:
            problems.append(f"{tag} has {row.delivered_attempts} delivered attempts recorded")

    duplicated = {tag: moments for tag, moments in copies.items() if len(moments) > 1}
    per_kill: Counter = Counter()  # type: ignore[type-arg]
    for tag, moments in duplicated.items():
        lives = [timeline.incarnation(moment) for moment in moments]
        if any(later <= earlier for earlier, later in zip(lives, lives[1:])):
            problems.append(f"{tag} was delivered twice by one daemon (no kill in between): incarnations {lives}")
        for life in lives[:-1]:
            per_kill[life] += 1
    if per_kill and max(per_kill.values()) > max_dups_per_kill:
        problems.append(f"{max(per_kill.values())} events duplicated by one kill (at most {max_dups_per_kill} "
                        "can be in flight)")

    order_breaks = 0
    for key, tags in first_order.items():
        ids = [queue[tag].id for tag in tags if tag in queue]
        breaks = [(a, b) for a, b in zip(ids, ids[1:]) if b <= a]
        order_breaks += len(breaks)
        if breaks:
            problems.append(f"routing key {key[:8]}: first deliveries out of id order, e.g. {breaks[:3]}")

    in_doubt = [tag for tag, record in records.items() if record["outcome"] == "in_doubt"]
    figures = {
        "events": outcomes["acked"] + outcomes["in_doubt"],
        "acknowledged": outcomes["acked"],
        "in_doubt": len(in_doubt),
        "in_doubt_committed": sum(1 for tag in in_doubt if tag in queue),
        "in_doubt_delivered": sum(1 for tag in in_doubt if tag in copies),
        "tries_refused_while_down": outcomes["refused"],
        "tries_rejected": outcomes["rejected"],
        "delivered_events": len(copies),
        "deliveries": sum(len(moments) for moments in copies.values()),
        "duplicated_events": len(duplicated),
        "max_duplicates_per_kill": max(per_kill.values()) if per_kill else 0,
        "lost": sum(1 for tag, r in records.items() if r["outcome"] == "acked" and tag not in copies),
        "order_breaks": order_breaks,
        "kills": len(timeline.kills),
    }
    return Verdict(figures, problems)


def deliveries_of(events: Iterable[Any]) -> List[Tuple[str, str, float]]:
    """(tag, routing key, arrival time) from the stand-in's EventRecords."""
    return [(event.body.get("dedup_key"), event.routing_key, event.time) for event in events]


def summary(problems: List[str], limit: int = 20) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s):\n  {shown}{more}"
