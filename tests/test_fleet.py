"""The agents watched from outside (issue 22): the shipped Prometheus rules and the metrics that feed them.

- `promtool check rules` and `promtool test rules` on packaging/prometheus/ (the rule tests are in
  pdagent.rules.test.yml beside the rules).
- `pd-queue metrics --from-queue DIR` (what pdagent-metrics.service runs while pdagentd is idle) says what the
  running daemon says about the same queue, and needs no daemon.
- End to end with Debian's real prometheus and prometheus-node-exporter on loopback: two real pdagentd
  "hosts", one whose Events API is unreachable; their metrics written to each host's textfile directory every
  second (standing in for pdagent-metrics.timer's minute); the shipped rules with the pending-too-long
  threshold and its `for:` shortened (the only change). The unreachable host's alert fires within `for:` plus
  one scrape interval (and one evaluation) of the page being older than the threshold; the other host's never.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from agentproc import KEY_A, Agent
from standin import StandIn
from tiers import missing

RULES_DIR = Path(__file__).resolve().parent.parent / "packaging" / "prometheus"
RULES = RULES_DIR / "pdagent.rules.yml"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter")

THRESHOLD_SEC = 4
FOR_SEC = 4
SCRAPE_SEC = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing (apt-get install prometheus)")
def test_promtool_checks_and_tests_the_rules() -> None:
    check = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout
    test = subprocess.run([str(PROMTOOL), "test", "rules", "pdagent.rules.test.yml"], cwd=RULES_DIR,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout


@pytest.mark.integration
@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing (apt-get install prometheus)")
def test_the_rule_tests_can_fail(tmp_path: Path) -> None:
    """A rule that says 60 minutes instead of 10 must fail the shipped tests: they test the rules."""
    (tmp_path / "pdagent.rules.yml").write_text(RULES.read_text().replace(
        "(pdagent_oldest_pending_age_seconds) > 600", "(pdagent_oldest_pending_age_seconds) > 3600"))
    shutil.copy(RULES_DIR / "pdagent.rules.test.yml", tmp_path)
    test = subprocess.run([str(PROMTOOL), "test", "rules", "pdagent.rules.test.yml"], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert test.returncode != 0, test.stdout


@pytest.mark.integration
def test_metrics_from_the_queue_file_match_the_daemons(tmp_path: Path) -> None:
    with StandIn() as api:
        agent = Agent(str(tmp_path), api.url).start()
        try:
            for number in range(3):
                assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", f"delivered {number}").returncode == 0
            assert agent.wait_until(lambda: agent.pending() == 0)
            api.refuse_connections()
            assert agent.pd_send("-k", "b" * 32, "-t", "trigger", "-d", "held").returncode == 0
            live = agent.client("pdagent_sd.cli.queue", "metrics").stdout
        finally:
            agent.stop()
    done = agent.client("pdagent_sd.cli.queue", "metrics", "--from-queue", agent.state_dir)
    assert done.returncode == 0, done.stderr
    offline = done.stdout

    def series(text: str) -> Dict[str, str]:
        return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines()
                if line and not line.startswith("#") and "age_seconds" not in line and "key_held" not in line
                and "throttled" not in line}

    last = "pdagent_last_delivery_timestamp_seconds"
    offline_series, live_series = series(offline), series(live)
    # the daemon's own clock reading at delivery, the file's recorded attempt time: the same to the millisecond
    assert abs(float(offline_series.pop(last)) - float(live_series.pop(last))) < 0.01
    assert offline_series == live_series
    assert 'pdagent_queue_events{state="delivered"} 3' in offline
    assert 'pdagent_queue_events{state="pending"} 1' in offline
    assert "pdagent_oldest_pending_age_seconds{" in offline
    # a missing queue is one clear line, not a traceback
    missing = agent.client("pdagent_sd.cli.queue", "metrics", "--from-queue", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("pd-queue: cannot read the queue in"), missing.stderr


# --- a real Prometheus ----------------------------------------------------------------------------------------


class _Process:
    def __init__(self, argv: List[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _get(url: str) -> Optional[Dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class _MetricsWriter(threading.Thread):
    """pdagent-metrics.timer's work, every second instead of every minute: `pd-queue metrics -o`."""

    def __init__(self, agent: Agent, path: Path) -> None:
        super().__init__(daemon=True)
        self.agent, self.path, self.stopping = agent, path, threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.agent.client("pdagent_sd.cli.queue", "metrics", "-o", str(self.path))
            self.stopping.wait(1)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    if PROMETHEUS is None or NODE_EXPORTER is None:
        missing("prometheus or prometheus-node-exporter is missing (apt-get install prometheus "
                    "prometheus-node-exporter)")
    started: List[Any] = []
    hosts: Dict[str, Any] = {}
    with StandIn() as api:
        try:
            for name, url in (("reachable", api.url), ("unreachable", f"http://127.0.0.1:{_free_port()}/")):
                work = tmp_path / name
                (work / "textfile").mkdir(parents=True)
                agent = Agent(str(work), url)
                started.append(agent)
                agent.start()
                writer = _MetricsWriter(agent, work / "textfile" / "pdagent.prom")
                started.append(writer)
                writer.start()
                port = _free_port()
                started.append(_Process([str(NODE_EXPORTER), f"--web.listen-address=127.0.0.1:{port}",
                                         "--collector.disable-defaults", "--collector.textfile",
                                         f"--collector.textfile.directory={work / 'textfile'}"],
                                        work / "node-exporter.log"))
                hosts[name] = {"agent": agent, "target": f"127.0.0.1:{port}"}
            rules = RULES.read_text()
            shortened = rules.replace("(pdagent_oldest_pending_age_seconds) > 600\n        for: 2m",
                                      f"(pdagent_oldest_pending_age_seconds) > {THRESHOLD_SEC}\n"
                                      f"        for: {FOR_SEC}s")
            assert shortened != rules, "the pending-too-long rule changed shape: update this test"
            (tmp_path / "rules.yml").write_text(shortened)
            targets = ", ".join(f"'{host['target']}'" for host in hosts.values())
            (tmp_path / "prometheus.yml").write_text(
                f"global: {{scrape_interval: {SCRAPE_SEC}s, evaluation_interval: {SCRAPE_SEC}s}}\n"
                "rule_files: [rules.yml]\n"
                f"scrape_configs:\n  - job_name: node\n    static_configs: [{{targets: [{targets}]}}]\n")
            port = _free_port()
            started.append(_Process([str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], tmp_path / "prometheus.log"))
            hosts["prometheus"] = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while _get(hosts["prometheus"] + "/api/v1/status/runtimeinfo") is None:
                if time.monotonic() > deadline:
                    raise AssertionError("prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text())
                time.sleep(0.2)
            yield hosts
        finally:
            for thing in reversed(started):
                if isinstance(thing, _MetricsWriter):
                    thing.stopping.set()
                    thing.join(timeout=10)
                else:
                    thing.stop()


def _firing(prometheus: str) -> List[Dict[str, str]]:
    reply = _get(prometheus + "/api/v1/alerts") or {"data": {"alerts": []}}
    return [alert["labels"] for alert in reply["data"]["alerts"] if alert["state"] == "firing"]


@pytest.mark.integration
def test_prometheus_fires_pending_too_long_for_the_host_that_cannot_reach_pagerduty(
        two_hosts: Dict[str, Any]) -> None:
    prometheus = two_hosts["prometheus"]
    for name in ("reachable", "unreachable"):
        sent = two_hosts[name]["agent"].pd_send("-k", KEY_A, "-t", "trigger", "-d", f"page from {name}")
        assert sent.returncode == 0, sent.stderr
    queued = time.monotonic()
    deadline = queued + THRESHOLD_SEC + FOR_SEC + 30
    fired: List[Dict[str, str]] = []
    while time.monotonic() < deadline and not fired:
        fired = [labels for labels in _firing(prometheus) if labels["alertname"] == "PagerDutyAgentEventsNotDelivered"]
        time.sleep(0.2)
    assert fired, "the alert never fired"
    took = time.monotonic() - queued - THRESHOLD_SEC
    # for:, plus one scrape interval, one evaluation interval and the writer's one-second period; 2 s for load
    budget = FOR_SEC + SCRAPE_SEC + SCRAPE_SEC + 1 + 2
    print(f"\npending-too-long fired {took:.1f} s after the page passed the threshold "
          f"(for: {FOR_SEC} s, scrape interval {SCRAPE_SEC} s)")
    assert took <= budget, f"fired {took:.1f} s after the threshold, more than {budget} s"
    assert [labels["instance"] for labels in fired] == [two_hosts["unreachable"]["target"]]
    assert two_hosts["reachable"]["agent"].pending() == 0
    # every host's agent is up, and the reachable one never fired
    up = _get(prometheus + "/api/v1/query?query=pdagent_up") or {}
    assert sorted(sample["value"][1] for sample in up["data"]["result"]) == ["1", "1"], up
