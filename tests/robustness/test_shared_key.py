"""A routing key is shared, an event is its sender's (issue 18): the attacks of another local user on a key it
shares with root, against the real daemon, the user an unprivileged uid (asuser.py).

- nobody cannot supersede root's page: coalescing reads only the sender's own events, and whether a trigger
  opens an incident is judged per sender;
- nobody's backlog on the key does not delay root's page: trusted senders' events go first inside a key, and
  untrusted senders take turns, so root's page waits one token of the key, not the backlog (the old rule: 208 s
  behind 400 events), and another unprivileged user's page waits about one turn of nobody's.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from typing import Any, Dict, Optional

import pytest

from agentproc import Agent
from asuser import OtherUser
from robustlib import runs
from standin import StandIn

JUNK_KEY = "0" * 16 + "0123456789abcdef"  # the key attack_client's single-key flood uses
DEDUP = "systemd/web01/nginx.service"
SHIPPED_PACE = {"PDAGENT_RATE_LIMIT_PER_MINUTE": "110", "PDAGENT_RATE_LIMIT_BURST": "20"}
BOUND_SEC = 10.0


def flood_as_nobody(user: OtherUser, agent: Agent, count: int) -> Dict[str, Any]:
    """`count` junk triggers on JUNK_KEY, pipelined on one connection, sent as nobody with the throwaway
    user's Python and package copy."""
    entry = pwd.getpwnam("nobody")
    argv = [user.python, os.path.join(user.source, "attack_client.py"), "flood", agent.socket, str(count), "600",
            "one"]
    result = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8",
                                       "PYTHONPATH": user.source, "PYTHONDONTWRITEBYTECODE": "1"},
                            cwd="/", user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def arrival(standin: StandIn, dedup_key: str, deadline: float) -> Optional[float]:
    while time.monotonic() < deadline:
        found = next((r.time for r in standin.received(JUNK_KEY) if r.key == dedup_key), None)
        if found is not None:
            return found
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("size", runs({"junk": 400}, {"junk": 10_000}))
def test_roots_page_on_a_key_another_user_filled_goes_out_within_10_s(
        other_user: OtherUser, standin: StandIn, size: Dict[str, Any], figures: Dict[str, Any]) -> None:
    """nobody fills the key; root's page goes first (trusted senders first inside a key), and a third user's
    page on the same key goes within a turn of nobody's (untrusted uids take turns)."""
    agent = Agent(other_user.workdir, standin.url, **SHIPPED_PACE).start()
    try:
        junk = size["junk"]
        flooded = flood_as_nobody(other_user, agent, junk)
        assert flooded["outcomes"] == {"ok": junk}, flooded
        assert standin.wait_for(20, timeout=15, routing_key=JUNK_KEY)  # the burst went: the key is paced now
        sent_at = time.monotonic()
        page = agent.pd_send("-k", JUNK_KEY, "-t", "trigger", "-d", "nginx.service failed", "-i", DEDUP)
        assert page.returncode == 0, page.stderr
        arrived = arrival(standin, DEDUP, sent_at + BOUND_SEC + 20)
        assert arrived is not None, agent.log()[-2000:]
        delay = arrived - sent_at
        ahead = sum(1 for r in standin.received(JUNK_KEY) if sent_at <= r.time < arrived)
        figures.update({f"root_page_delay_behind_{junk}_sec": round(delay, 2), "junk_sent_meanwhile": ahead})
        assert delay <= BOUND_SEC, (delay, ahead)
        assert ahead <= 2, ahead  # one token's worth, whatever the backlog

        user_sent_at = time.monotonic()
        theirs = other_user.run(["-m", "pdagent_sd.cli.send", "-k", JUNK_KEY, "-t", "trigger", "-d", "db down",
                                 "-i", "their/db"], env={"PDAGENT_SOCKET": agent.socket})
        assert theirs.returncode == 0, theirs.stderr
        user_arrived = arrival(standin, "their/db", user_sent_at + BOUND_SEC + 20)
        assert user_arrived is not None, agent.log()[-2000:]
        figures.update(other_user_page_delay_sec=round(user_arrived - user_sent_at, 2))
        assert user_arrived - user_sent_at <= BOUND_SEC
    finally:
        agent.stop()


@pytest.mark.integration
def test_a_user_sharing_the_key_cannot_supersede_roots_page(other_user: OtherUser, standin: StandIn,
                                                            figures: Dict[str, Any]) -> None:
    """The attack of issue 18 with the key granted to the attacker (a shared key is the normal case): nobody
    opens the unit's incident with an info trigger, root's critical page is queued, nobody sends another
    trigger. Root's page reaches PagerDuty; nothing of root's is superseded."""
    agent = Agent(other_user.workdir, standin.url)
    with open(agent.config, "w", encoding="utf-8") as handle:
        handle.write(f"[Keys]\nsystemd = {JUNK_KEY} user:{other_user.name}\n")
    os.chmod(agent.config, 0o600)
    agent.start()
    env = {"PDAGENT_SOCKET": agent.socket}
    try:
        standin.refuse_connections()  # everything waits, as behind a full burst
        nobody = ["-m", "pdagent_sd.cli.send", "-k", "@systemd", "-t", "trigger", "--severity", "info",
                  "-i", DEDUP, "-d"]
        assert other_user.run([*nobody, "planned maintenance"], env=env).returncode == 0
        root = agent.pd_send("-k", "@systemd", "-t", "trigger", "--severity", "critical", "-i", DEDUP,
                             "-d", "nginx.service failed")
        assert root.returncode == 0, root.stderr
        assert other_user.run([*nobody, "planned maintenance, no action needed"], env=env).returncode == 0
        rows = agent.request({"op": "list"})["events"]
        superseded = [row for row in rows if row["state"] == "superseded"]
        figures.update(superseded_across_senders=len(superseded))
        assert superseded == [], superseded
        standin.accept_connections()
        assert standin.wait_for(3, timeout=15, routing_key=JUNK_KEY), agent.log()[-2000:]
        summaries = [body["payload"]["summary"] for body in standin.bodies(JUNK_KEY)]
        assert "nginx.service failed" in summaries, summaries
    finally:
        agent.stop()
