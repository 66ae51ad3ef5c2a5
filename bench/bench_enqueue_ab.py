"""A/B of the durable enqueue path across source trees, interleaved in one run (bench_core.py's enqueue part).

For each tree, in turn and for several rounds (the order reversed every other round): start that tree's
pdagentd (PYTHONPATH=TREE) with deliveries held back, let 32 client processes send 400 events each over one
connection apiece, as fast as each reply comes, and take the rate and the daemon's CPU per event (utime + stime
from /proc). The clients speak the wire protocol with the standard library only, so they cost
the same whatever tree is measured. Ratios between trees are the figure: on a shared machine, absolute rates
drift from run to run.

Usage: python bench/bench_enqueue_ab.py [--rounds N] [--per-client N] TREE [TREE...]
       e.g. git worktree add --detach /tmp/old 53c1376; python bench/bench_enqueue_ab.py /tmp/old .
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

CLIENTS = 32


def key(index: int) -> str:
    return f"{index:04d}" + "k" * 28


def client(path: str, index: int, count: int, go: Any, done: Any) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        replies = sock.makefile("rb")
        go.wait()
        for n in range(count):
            event = {"routing_key": key(index), "event_action": "trigger", "dedup_key": f"e{index}-{n}",
                     "payload": {"summary": "enqueue", "source": "bench", "severity": "info"}}
            sock.sendall(json.dumps({"op": "send", "api": "v2", "event": event}).encode() + b"\n")
            reply = json.loads(replies.readline())
            if not reply.get("ok"):
                raise SystemExit(f"refused: {reply}")
    done.put(index)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole daemon, every thread."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(tree: str, per_client: int) -> Tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="pdagent-ab-") as work:
        path = os.path.join(work, "pdagent.sock")
        env = {name: value for name, value in os.environ.items() if not name.startswith("PDAGENT_")}
        env.update(PYTHONPATH=os.path.abspath(tree), PDAGENT_EVENTS_URL="http://127.0.0.1:9", PDAGENT_SOCKET=path,
                   PDAGENT_STATE_DIR=os.path.join(work, "state"), PDAGENT_CONFIG=os.path.join(work, "agent.conf"),
                   PDAGENT_BACKOFF_MIN_SEC="600", PDAGENT_BACKOFF_MAX_SEC="600",
                   PDAGENT_RATE_LIMIT_PER_MINUTE="0", PDAGENT_IDLE_EXIT_SEC="0")
        with open(os.path.join(work, "log"), "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "pdagent_sd.daemon"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, cwd=work)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.connect(path)
                    break
                except OSError:
                    if time.monotonic() > deadline or daemon.poll() is not None:
                        raise RuntimeError(f"pdagentd of {tree} did not start") from None
                    time.sleep(0.02)
            context = multiprocessing.get_context("fork")
            go, done = context.Event(), context.Queue()
            clients = [context.Process(target=client, args=(path, index, per_client, go, done))
                       for index in range(CLIENTS)]
            for process in clients:
                process.start()
            time.sleep(0.5)  # every client connected and waiting
            before = cpu_seconds(daemon.pid)
            start = time.perf_counter()
            go.set()
            for _ in clients:
                done.get(timeout=300)
            elapsed = time.perf_counter() - start
            after = cpu_seconds(daemon.pid)
            for process in clients:
                process.join()
            if any(process.exitcode for process in clients):
                raise RuntimeError("an enqueue client failed")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        count = CLIENTS * per_client
        return count / elapsed, (after - before) / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-client", type=int, default=400)
    parser.add_argument("trees", nargs="+")
    args = parser.parse_args()
    results: Dict[str, List[Tuple[float, float]]] = {tree: [] for tree in args.trees}
    for round_ in range(args.rounds):
        for tree in args.trees if round_ % 2 == 0 else list(reversed(args.trees)):
            rate, cpu = run(tree, args.per_client)
            results[tree].append((rate, cpu))
            print(f"round {round_} {tree}: {rate:7.0f} events/s, daemon CPU {cpu:6.1f} us/event", flush=True)
    base = statistics.median(rate for rate, _ in results[args.trees[0]])
    print(f"medians ({args.rounds} rounds; ratio to {args.trees[0]}):")
    for tree in args.trees:
        rate = statistics.median(rate for rate, _ in results[tree])
        cpu = statistics.median(cpu for _, cpu in results[tree])
        print(f"  {tree}: {rate:7.0f} events/s ({rate / base:.2f}x), daemon CPU {cpu:6.1f} us/event; "
              f"runs {[round(rate) for rate, _ in results[tree]]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
