#!/usr/bin/env python3
"""pd-queue under a 100,000-event backlog (issue 4).

All on this machine (loopback only); whatever it starts it stops by PID:

1. the Events API stand-in in its own process (bench/benchlib.py) and the real pdagentd as a child;
2. baseline, same run: `pd-queue status` and daemon RSS on an empty queue, and the drain rate of a
   6,000-event backlog over 50 keys — the core benchmark's delivery figure (bench/bench_core.py);
3. fills the queue with 100,000 pending events *through the daemon's socket*: 16 concurrent connections
   sending `send` requests, each acknowledged only after its commit, while the stand-in answers every
   delivery with 503 (an outage at PagerDuty), so the events pile up as they would in one;
4. times whole `pd-queue status`, `status --json`, `metrics` and `list` commands (a new Python process each,
   as an operator runs them) and the bare status request, and reads the daemon's VmRSS (/proc/PID/status);
5. ends the outage and times the drain until nothing is pending, polling status once a second (each poll
   also shows whether client connections cost memory; more often, the polls themselves would slow the
   drain: a status over 100,000 rows holds the daemon's GIL for tens of ms); then status again, with the
   delivered events kept;
6. adds ten times as many delivered events, each on its own made-up routing key, straight into queue.db, and
   times status against the same daemon's status a moment before (the 200-key cap, issue 12).

Usage: python bench/bench_queue.py [--quick] [--events N]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tests")]

from agentproc import insert_events, read_line  # noqa: E402
from benchlib import Agent, StandInProcess, key, line, start_agent, trigger, workdir  # noqa: E402

STATUS_TARGET_SEC = 0.3
RSS_TARGET_MB = 60.0
KEYS = 50
CLIENTS = 16
BASELINE_EVENTS = 6000
POLL_SEC = 1.0


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for entry in status:
            if entry.startswith(field + ":"):
                return int(entry.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def timed(agent: Agent, args: List[str], runs: int = 9) -> Tuple[float, float]:
    """Median and best wall time of a whole command (a new interpreter each run)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run([agent.python, *args], env=agent.env, capture_output=True, text=True, timeout=60)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
    return statistics.median(times), min(times)


def pd_queue(agent: Agent, *args: str) -> Tuple[float, float]:
    return timed(agent, ["-m", "pdagent_sd.cli.queue", *args])


def bare_status(agent: Agent, runs: int = 9) -> float:
    """The daemon's share: one status request on a fresh socket, no interpreter start."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        agent.request({"op": "status"})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fill(agent: Agent, total: int, first: int = 0) -> float:
    """Send `total` triggers over CLIENTS connections; return events per second (commit-acknowledged)."""
    errors: List[str] = []

    def client(index: int) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(agent.socket)
            for number in range(first + index, first + total, CLIENTS):
                body = trigger(key(number % KEYS), f"backlog event {number}", f"bench-{number}")
                sock.sendall(json.dumps({"op": "send", "api": "v2", "event": body}).encode() + b"\n")
                reply = json.loads(read_line(sock))
                if not reply.get("ok"):
                    errors.append(str(reply))
                    return

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"sends refused: {errors[0]}")
    return total / elapsed


def outage(standin: StandInProcess) -> None:
    standin.control("POST", "faults", {"status": 503})  # every delivery refused until cleared


def drain(agent: Agent, standin: StandInProcess, timeout: float) -> Dict[str, float]:
    """End the outage and wait until nothing is pending (status polled once a second). The rate comes from
    the stand-in's own arrival times, first to last event, so neither the polling interval nor the keys'
    last backoff (at most backoff_max_sec) is charged to it."""
    standin.control("DELETE", "events")
    peak = rss_mb(agent.pid)
    standin.control("DELETE", "faults")
    begun = time.monotonic()
    while True:
        pending = agent.status()["totals"]["pending"]
        peak = max(peak, rss_mb(agent.pid))
        if pending == 0:
            break
        if time.monotonic() - begun > timeout:
            raise RuntimeError(f"backlog not drained within {timeout}s: {pending} pending")
        time.sleep(POLL_SEC)
    arrivals = sorted(event["time"] for event in standin.events())
    span = arrivals[-1] - arrivals[0]
    return {"rate": (len(arrivals) - 1) / span if span > 0 else float("inf"), "wall": time.monotonic() - begun,
            "rss_peak": peak, "delivered": float(len(arrivals))}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def times(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}x"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="pd-queue under a large backlog (issue 4)")
    parser.add_argument("--quick", action="store_true", help="10,000 events instead of 100,000")
    parser.add_argument("--events", type=int, help="backlog size (default: 100000, or 10000 with --quick)")
    args = parser.parse_args(argv)
    events = args.events or (10_000 if args.quick else 100_000)
    load = " / ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"pd-queue benchmark: {events} pending events over {KEYS} routing keys; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores, load average {load} at start")
    standin = StandInProcess()
    try:
        with workdir() as path:
            agent = start_agent(path, standin.url, PDAGENT_MAX_PENDING_EVENTS=str(events + BASELINE_EVENTS))
            try:
                run(agent, standin, events)
            finally:
                code = agent.stop()
                print(f"daemon stopped by pid (exit {code}); load average at the end "
                      f"{' / '.join(f'{value:.1f}' for value in os.getloadavg())}")
    finally:
        standin.stop()
    return 0


def run(agent: Agent, standin: StandInProcess, events: int) -> None:
    print("baseline, same run")
    floor, _ = timed(agent, ["-c", "pass"])
    empty, _ = pd_queue(agent, "status")
    empty_bare = bare_status(agent)
    idle = rss_mb(agent.pid)
    line("python -c pass (interpreter start, the floor)", ms(floor))
    line("pd-queue status, empty queue (median of 9)", ms(empty))
    line("status request alone, empty queue", ms(empty_bare))
    line("daemon VmRSS, empty queue", f"{idle:.1f} MB")
    outage(standin)
    fill(agent, BASELINE_EVENTS)
    base = drain(agent, standin, timeout=600)
    line(f"drain of a {BASELINE_EVENTS}-event backlog ({KEYS} keys; = bench_core)", f"{base['rate']:.0f} events/s")

    print(f"with {events} pending events")
    outage(standin)
    fill_rate = fill(agent, events, first=BASELINE_EVENTS)
    status = agent.status()
    full_rss = rss_mb(agent.pid)
    median, best = pd_queue(agent, "status")
    as_json, _ = pd_queue(agent, "status", "--json")
    metrics, _ = pd_queue(agent, "metrics")
    listed, _ = pd_queue(agent, "list", "--limit", "100")
    bare = bare_status(agent)
    rss = max(full_rss, rss_mb(agent.pid))
    line("filled through the socket, 16 clients, stand-in answering 503", f"{fill_rate:.0f} events/s")
    line("pending", str(status["totals"]["pending"]))
    line("pd-queue status (median of 9)", ms(median), f"target <= {ms(STATUS_TARGET_SEC)}",
         "ok" if median <= STATUS_TARGET_SEC else "MISSED")
    line("pd-queue status, best of 9", ms(best))
    line("pd-queue status / empty queue", times(median, empty))
    line("pd-queue status --json", ms(as_json))
    line("pd-queue metrics", ms(metrics))
    line("pd-queue list --limit 100", ms(listed))
    line("status request alone", ms(bare), f"{times(bare, empty_bare)} of empty")
    line("daemon VmRSS", f"{rss:.1f} MB", f"target <= {RSS_TARGET_MB:.0f} MB",
         "ok" if rss <= RSS_TARGET_MB else "MISSED")
    line("daemon VmRSS / empty queue", times(rss, idle))

    print(f"drain of the {events}-event backlog")
    backlog = drain(agent, standin, timeout=1800)
    line("drain rate", f"{backlog['rate']:.0f} events/s")
    line("drain rate / 6,000-event baseline", times(backlog["rate"], base["rate"]), "target ~1.0x",
         "ok" if backlog["rate"] >= 0.8 * base["rate"] else "MISSED")
    line("wall time to empty", f"{backlog['wall']:.1f} s")
    line("daemon VmRSS peak while draining (status every second)", f"{backlog['rss_peak']:.1f} MB",
         f"target <= {RSS_TARGET_MB:.0f} MB", "ok" if backlog["rss_peak"] <= RSS_TARGET_MB else "MISSED")

    kept = agent.status()["totals"]["delivered"]
    after, _ = pd_queue(agent, "status")
    print(f"after the drain, {kept} delivered events kept (keep_delivered)")
    line("pd-queue status (median of 9)", ms(after), f"target <= {ms(STATUS_TARGET_SEC)}",
         "ok" if after <= STATUS_TARGET_SEC else "MISSED")
    line("status request alone", ms(bare_status(agent)))
    line("daemon VmRSS; VmHWM", f"{rss_mb(agent.pid):.1f} MB; {rss_mb(agent.pid, 'VmHWM'):.1f} MB")

    many = events * 10
    settled = bare_status(agent)
    rss_before = rss_mb(agent.pid)
    insert_events(agent.state_dir, ((f"{n:016x}fedcba9876543210", "delivered") for n in range(many)), age=0)
    print(f"with {many} more delivered events, each on its own routing key (a local user's junk keys)")
    bare_many = bare_status(agent, runs=3)
    reply = agent.request({"op": "status"})
    metrics_many, _ = pd_queue(agent, "metrics")
    line("routing keys in the queue; detailed in status", f"{reply['keys_total']}; {len(reply['keys'])}")
    line("status request alone", ms(bare_many), f"{times(bare_many, settled)} of {KEYS} keys")
    line("pd-queue metrics", ms(metrics_many))
    line("daemon VmRSS before; after", f"{rss_before:.1f} MB; {rss_mb(agent.pid):.1f} MB",
         f"target <= {RSS_TARGET_MB:.0f} MB", "ok" if rss_mb(agent.pid) <= RSS_TARGET_MB else "MISSED")


if __name__ == "__main__":
    sys.exit(main())
