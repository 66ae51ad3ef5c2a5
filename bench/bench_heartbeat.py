"""Benchmarks of heartbeats (issue 20).

  1. cost of a check-in: pd-heartbeat NAME --every 1h against a warm daemon, beside pd-send and a bare
     `python -c pass` in the same run (interleaved)
  2. timer accuracy under a real booted systemd: how long after its deadline a missed heartbeat reaches the
     stand-in, woken by the transient pdagent-heartbeat.timer with no pdagentd running while it waits
     (target: within 30 s); skipped without root and systemd-nspawn

Usage: python bench/bench_heartbeat.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import List

from benchlib import ROOT, StandInProcess, key, line, median, start_agent, workdir

sys.path.insert(0, os.path.join(ROOT, "tests", "system"))

from bootedsystemd import BootedSystemd, skip_reason, wait_until  # noqa: E402
from standin import StandIn  # noqa: E402

QUICK = "--quick" in sys.argv


def bench_check_in(url: str) -> None:
    print("check-in wall time (warm daemon, ack after commit), interleaved with pd-send and python -c pass")
    bindir = os.path.dirname(sys.executable)
    pd_send, pd_heartbeat = os.path.join(bindir, "pd-send"), os.path.join(bindir, "pd-heartbeat")
    if not (os.path.exists(pd_send) and os.path.exists(pd_heartbeat)):
        print("  skipped: pd-send or pd-heartbeat is not installed in the virtualenv (run make venv)")
        return
    with workdir() as path:
        agent = start_agent(path, url)
        try:
            env = dict(agent.env)
            env.pop("PYTHONPATH")  # the installed console scripts, as a user runs them
            runs = 15 if QUICK else 60
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "pd-send": [pd_send, "-k", key(0), "-t", "trigger", "-d", "benchmark event", "-q"],
                "pd-heartbeat": [pd_heartbeat, "bench", "--every", "1h", "-k", key(1)],
            }
            times: dict = {name: [] for name in commands}
            for index in range(runs + 3):
                for name, argv in commands.items():
                    start = time.perf_counter()
                    subprocess.run(argv, env=env, check=True)
                    if index >= 3:  # the first runs warm the page cache
                        times[name].append(time.perf_counter() - start)
            for name in commands:
                line(f"{name} (median)", f"{median(times[name]) * 1000:.1f} ms")
            line("pd-heartbeat / pd-send", f"{median(times['pd-heartbeat']) / median(times['pd-send']):.2f}x")
            line("pd-heartbeat / bare python",
                 f"{median(times['pd-heartbeat']) / median(times['python -c pass']):.2f}x")
        finally:
            agent.stop()


def bench_timer_accuracy() -> None:
    reason = skip_reason()
    if reason:
        print(f"timer accuracy: skipped: {reason}")
        return
    print("timer accuracy: a missed heartbeat --every 20s --grace 5s, pdagentd exited idle (idle_exit_sec 2)")
    cycles = 1 if QUICK else 4
    key_ = "4ea7bea7" + "0" * 24
    lateness: List[float] = []
    with StandIn() as api, BootedSystemd.boot(ROOT) as machine:
        machine.install_agent(events_url=api.url, environment={"PDAGENT_IDLE_EXIT_SEC": "2"})
        host = machine.run(["hostname"]).stdout.strip()
        dedup = f"heartbeat/{host}/root/bench"
        idle_looks = busy_looks = 0
        for cycle in range(cycles):
            machine.run(["pd-heartbeat", "bench", "--every", "20s", "--grace", "5s", "-k", key_])
            [listed] = json.loads(machine.run(["pd-heartbeat", "--list", "--json"]).stdout)
            deadline = listed["next_deadline"]
            machine.wait_for_state("pdagent.service", "inactive", timeout=30)
            while time.time() < deadline - 1:
                if machine.agent_pids():
                    busy_looks += 1
                else:
                    idle_looks += 1
                time.sleep(1)
            wait_until(lambda seen=cycle: sum(1 for e in api.events if e.body.get("dedup_key") == dedup
                                              and e.body.get("event_action") == "trigger") > seen, 60, "the page")
            page = [e for e in api.events if e.body.get("dedup_key") == dedup
                    and e.body.get("event_action") == "trigger"][-1]
            lateness.append(page.wall_time - deadline)
            machine.wait_for_state("pdagent.service", "inactive", timeout=30)
        line("page after its deadline (median)", f"{median(lateness):.1f} s")
        line("page after its deadline (worst)", f"{max(lateness):.1f} s", "target <= 30 s",
             "ok" if max(lateness) <= 30 else "MISSED")
        line("looks with a pdagentd process while waiting", f"{busy_looks} of {busy_looks + idle_looks}",
             "target 0", "ok" if busy_looks == 0 else "MISSED")


def main() -> int:
    standin = StandInProcess()
    try:
        bench_check_in(standin.url)
    finally:
        standin.stop()
    bench_timer_accuracy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
