"""pd-heartbeat against the real pdagentd, the real socket, queue.db and an Events API stand-in on loopback:
a check-in is durable once pd-heartbeat exits 0, a miss pages the stand-in, the next check-in resolves the same
dedup key, another user's same NAME is another heartbeat (it never renews root's), the quota, the exits."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, List

import pytest

from agentproc import KEY_A, KEY_B, ROOT, Agent
from tiers import missing

pytestmark = pytest.mark.integration

HEARTBEAT = "pdagent_sd.cli.heartbeat"
NOBODY = 65534
HOST = socket.gethostname()


def beat(agent: Agent, *args: str, env: Any = None) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([sys.executable, "-m", HEARTBEAT, *args], env=env or agent.env, capture_output=True,
                          text=True, timeout=30)


def actions(standin: Any, dedup_key: str) -> List[str]:
    return [event.action for event in standin.events if event.body.get("dedup_key") == dedup_key]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def test_a_miss_pages_and_the_next_check_in_resolves(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent()
    user = pwd.getpwuid(os.getuid()).pw_name
    dedup = f"heartbeat/{HOST}/{user}/nightly-backup"
    checked_in = time.time()
    done = beat(agent, "nightly-backup", "--every", "1s", "--grace", "1s", "-k", KEY_A, "-d", "restic of /srv",
                "--severity", "critical")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")  # silent: cron mails what a job prints
    listed = json.loads(beat(agent, "--list", "--json").stdout)
    assert [(row["name"], row["state"], row["every"], row["grace"]) for row in listed] == \
        [("nightly-backup", "ok", 1.0, 1.0)]
    wait_for(lambda: actions(standin, dedup) == ["trigger"], 10, "the page of the miss")
    paged = time.time()
    assert paged - checked_in >= 2.0  # not before every + grace
    assert paged - checked_in < 2.0 + 3.0  # the loop looks every second
    event = next(event for event in standin.events if event.body.get("dedup_key") == dedup)
    assert event.routing_key == KEY_A
    payload = event.body["payload"]
    assert payload["summary"].startswith(f"nightly-backup on {HOST} missed its check-in: last seen ")
    assert payload["summary"].endswith(" UTC, expected every 1s")
    assert payload["severity"] == "critical"
    assert payload["custom_details"]["description"] == "restic of /srv"
    assert payload["custom_details"]["every"] == "1s" and payload["custom_details"]["grace"] == "1s"
    status = agent.status()
    assert status["heartbeats"]["paged"] == 1
    text = agent.client("pdagent_sd.cli.queue", "status").stdout
    assert "Heartbeats: 0 ok, 0 late, 1 paged, 0 paused" in text, text
    metrics = agent.client("pdagent_sd.cli.queue", "metrics").stdout
    assert 'pdagent_heartbeats{state="paged"} 1' in metrics.splitlines()
    assert "missed its check-in" in agent.log()

    assert beat(agent, "nightly-backup", "--every", "1h", "-k", KEY_A).returncode == 0
    wait_for(lambda: actions(standin, dedup) == ["trigger", "resolve"], 10, "the resolve of the recovery")
    assert "incident is resolved" in agent.log()
    assert agent.status()["heartbeats"] == {"ok": 1, "late": 0, "paged": 0, "paused": 0}


def test_a_check_in_is_durable_across_a_kill_and_pages_after_the_restart(make_agent, standin
                                                                         ) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent()
    assert beat(agent, "job", "--every", "2s", "--grace", "1s", "-k", KEY_A).returncode == 0
    agent.kill9()  # right after the exit 0: no clean stop
    time.sleep(3.2)  # the deadline passes while no daemon runs
    agent.start()
    wait_for(lambda: actions(standin, f"heartbeat/{HOST}/{pwd.getpwuid(os.getuid()).pw_name}/job") == ["trigger"],
             10, "the page after the restart")
    with open(os.path.join(agent.state_dir, "heartbeat-due")) as due:
        assert int(due.read()) > 0  # the kill left the earliest deadline for systemd's timer


def test_pause_remove_and_usage(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent()
    assert beat(agent, "job", "--every", "1s", "--grace", "0", "-k", KEY_A).returncode == 0
    paused = beat(agent, "job", "--pause", "1h")
    assert paused.returncode == 0 and "paused until" in paused.stdout
    time.sleep(2.5)
    assert standin.events == []
    assert agent.status()["heartbeats"]["paused"] == 1
    removed = beat(agent, "job", "--remove")
    assert removed.returncode == 0 and removed.stdout == "Heartbeat job removed.\n"
    assert beat(agent, "job", "--remove").returncode == 65  # no such heartbeat
    assert beat(agent, "job", "--every", "soon", "-k", KEY_A).returncode == 2
    assert beat(agent, "job", "--every", "1h").returncode == 2  # no key
    assert beat(agent, "job", "--every", "1h", "--remove").returncode == 2
    assert beat(agent, "--every", "1h", "-k", KEY_A).returncode == 2  # no NAME
    bad_key = beat(agent, "job", "--every", "1h", "-k", "@nosuch")
    assert bad_key.returncode == 65 and "@nosuch is not a configured key name" in bad_key.stderr
    env = dict(agent.env, PDAGENT_ROUTING_KEY=KEY_B)
    assert beat(agent, "job", "--every", "1h", env=env).returncode == 0
    listed = beat(agent, "--list")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "OWNER", "EVERY", "GRACE", "LAST", "CHECK-IN", "NEXT",
                                                     "DEADLINE", "STATE"]
    assert "1h" in listed.stdout and "6min" in listed.stdout  # --grace: a tenth of --every
    unreachable = beat(agent, "job", "--every", "1h", "-k", KEY_A, "--socket", os.path.join(agent.workdir, "x.sock"))
    assert unreachable.returncode == 69


@pytest.fixture
def as_nobody(standin) -> Iterator[Callable[..., subprocess.CompletedProcess]]:  # type: ignore[type-arg]
    """pd-heartbeat as uid 65534 against a daemon it can reach (see test_pd_queue.py's outsider): Debian's
    python3 with a world-readable copy of the package."""
    if os.geteuid() != 0:
        missing("running a client as another uid needs root")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        missing("Debian's /usr/bin/python3 is needed to run the client as another user")
    workdir = tempfile.mkdtemp(prefix="pdagent-heartbeat.")
    agent = None
    try:
        source = os.path.join(workdir, "src")
        shutil.copytree(os.path.join(ROOT, "pdagent_sd"), os.path.join(source, "pdagent_sd"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for directory, _subdirs, files in os.walk(workdir):
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        agent_dir = os.path.join(workdir, "agent")
        os.mkdir(agent_dir, 0o755)
        agent = Agent(agent_dir, standin.url, PDAGENT_HEARTBEAT_MAX_PER_USER="2").start()
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONPATH": source,
               "PYTHONDONTWRITEBYTECODE": "1", "PDAGENT_SOCKET": agent.socket}

        def run(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
            return subprocess.run([python, "-m", HEARTBEAT, *args], env=env, cwd=workdir, user=NOBODY,
                                  group=NOBODY, capture_output=True, text=True, timeout=30)

        run.agent = agent  # type: ignore[attr-defined]
        yield run
    finally:
        if agent is not None:
            agent.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_nobodys_check_in_under_the_same_name_does_not_keep_roots_alive(as_nobody, standin
                                                                         ) -> None:  # type: ignore[no-untyped-def]
    agent = as_nobody.agent
    assert beat(agent, "backup", "--every", "2s", "--grace", "1s", "-k", KEY_A).returncode == 0
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:  # nobody checks in as "backup" all along
        done = as_nobody("backup", "--every", "1h", "-k", KEY_B)
        assert done.returncode == 0, done.stderr
        assert as_nobody("backup", "--pause", "1h").returncode == 0  # pauses nobody's own only
        time.sleep(0.3)
    root_user = pwd.getpwuid(0).pw_name
    wait_for(lambda: actions(standin, f"heartbeat/{HOST}/{root_user}/backup") == ["trigger"], 10,
             "root's page, which nobody's check-ins must not hold off")
    assert as_nobody("backup", "--remove").returncode == 0  # removes nobody's own
    nobody_name = pwd.getpwuid(NOBODY).pw_name
    listed = json.loads(beat(agent, "--list", "--json").stdout)
    assert [(row["owner"], row["state"]) for row in listed] == [(root_user, "paged")]
    # nobody sees only nobody's own; and a quota of 2 (PDAGENT_HEARTBEAT_MAX_PER_USER) for an untrusted user
    assert as_nobody("a", "--every", "1h", "-k", KEY_B).returncode == 0
    assert as_nobody("b", "--every", "1h", "-k", KEY_B).returncode == 0
    over = as_nobody("c", "--every", "1h", "-k", KEY_B)
    assert over.returncode == 75 and "heartbeat_max_per_user = 2" in over.stderr
    mine = json.loads(as_nobody("--list", "--json").stdout)
    assert {(row["owner"], row["name"]) for row in mine} == {(nobody_name, "a"), (nobody_name, "b")}
    assert all(KEY_B not in row["routing_key"] for row in mine)  # masked to a non-admin
    assert beat(agent, "c", "--every", "1h", "-k", KEY_A).returncode == 0  # root: no quota


def documented_check_ins() -> List[List[str]]:
    """Every `/usr/bin/pd-heartbeat ...` command line of docs/heartbeats.md's wiring, as argv."""
    import re
    import shlex

    with open(os.path.join(ROOT, "docs", "heartbeats.md"), encoding="utf-8") as docs:
        text = docs.read()
    lines = re.findall(r"/usr/bin/pd-heartbeat ([^\n]*?)(?: && |; fi'|$)", text, re.M)
    return [shlex.split(line) for line in lines]


def test_the_documented_wiring_checks_in(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent(start=False)
    with open(agent.config, "w") as config:
        config.write(f"[Keys]\nops = {KEY_A}\nnagios = {KEY_A}\nzabbix = {KEY_B}\n")
    agent.start()
    commands = documented_check_ins()
    assert len(commands) == 4, commands  # the timer job, cron, Nagios, Zabbix
    for argv in commands:
        done = beat(agent, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), argv
    assert {row["name"] for row in json.loads(beat(agent, "--list", "--json").stdout)} == \
        {"backup", "nagios", "zabbix"}


@pytest.mark.parametrize("request_, code", [
    ({"op": "heartbeat"}, "bad_request"),
    ({"op": "heartbeat", "action": "explode"}, "bad_request"),
    ({"op": "heartbeat", "action": "check_in", "name": 7, "every": 60, "routing_key": KEY_A}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "../x", "every": 60, "routing_key": KEY_A}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": True, "routing_key": KEY_A}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": "60", "routing_key": KEY_A}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": 1e308, "routing_key": KEY_A}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": 60, "routing_key": ["k"]}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": 60, "routing_key": KEY_A,
      "description": {"a": 1}}, "invalid_event"),
    ({"op": "heartbeat", "action": "check_in", "name": "x", "every": 60, "routing_key": KEY_A,
      "severity": "\u202e"}, "invalid_event"),
    ({"op": "heartbeat", "action": "pause", "name": "x", "for": -5}, "invalid_event"),
    ({"op": "heartbeat", "action": "pause", "name": "nosuch", "for": 60}, "not_found"),
])
def test_hostile_requests_get_a_clear_error(agent, request_, code) -> None:  # type: ignore[no-untyped-def]
    reply = agent.request(request_)
    assert reply["ok"] is False and reply["code"] == code, reply
    assert "Traceback" not in agent.log()
    assert agent.request({"op": "heartbeat", "action": "list"}) == {"ok": True, "heartbeats": [],
                                                                   "now": pytest.approx(time.time(), abs=60)}
