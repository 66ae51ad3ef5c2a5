"""`make demo-local`: the main job end to end on this machine, without systemd or packages.

Starts a stand-in of the PagerDuty Events API on loopback and the real pdagentd on a temporary socket, sends a
trigger, an acknowledge and a resolve with pd-send, shows the queue, and tears everything down.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agentproc import Agent  # noqa: E402
from standin import StandIn  # noqa: E402

KEY = "R0UT1NGKEY0F32CHARACTERSEXAMPLE0"


def step(title: str) -> None:
    print(f"\n=== {title}")


def run(agent: Agent, module: str, *args: str) -> str:
    command = {"pdagent_sd.cli.send": "pd-send", "pdagent_sd.cli.queue": "pd-queue"}[module]
    print(f"$ {command} {' '.join(shlex.quote(arg) for arg in args)}")
    result = agent.client(module, *args)
    print((result.stdout + result.stderr).rstrip())
    if result.returncode != 0:
        raise SystemExit(f"{command} exited with {result.returncode}")
    return result.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pdagent-demo-") as workdir, StandIn() as api:
        step(f"A stand-in of the PagerDuty Events API listens on {api.url}")
        agent = Agent(workdir, api.url, PDAGENT_RATE_LIMIT_PER_MINUTE="110")
        agent.start()
        try:
            step(f"pdagentd (pid {agent.pid}) listens on {agent.socket}, queue in {agent.state_dir}/queue.db")
            out = run(agent, "pdagent_sd.cli.send", "-k", KEY, "-t", "trigger", "-d", "Disk /var is 97% full",
                      "--severity", "critical", "--source", "db01.example.com", "-f", "mount=/var")
            dedup_key = out.strip().rsplit(" ", 1)[-1]
            run(agent, "pdagent_sd.cli.send", "-k", KEY, "-t", "acknowledge", "-i", dedup_key)
            run(agent, "pdagent_sd.cli.send", "-k", KEY, "-t", "resolve", "-i", dedup_key)
            api.wait_for(3, timeout=15)
            step("What the Events API received, in order")
            for record in api.events:
                print(f"POST {record.path}  {json.dumps(record.body)}")
            agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 3)
            step("The queue")
            if os.path.exists(os.path.join(os.path.dirname(__file__), "..", "pdagent_sd", "cli", "queue.py")):
                run(agent, "pdagent_sd.cli.queue", "status")
            else:
                print(json.dumps(agent.status()["totals"]))
        finally:
            agent.stop()
        step("What pdagentd logged (journald under systemd; stderr here)")
        print(agent.log().rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
