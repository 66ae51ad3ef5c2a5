"""Shared pieces of the benchmarks: a stand-in Events API in its own process, the real daemon, timing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, Iterator, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from agentproc import Agent  # noqa: E402


class StandInProcess:
    """tests/standin.py in its own process, so it never shares a GIL with what is being measured."""

    def __init__(self, port: int = 0, extra: Optional[List[str]] = None) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "standin.py"), "--port", str(port),
                                      *(extra or [])], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"stand-in did not start: {line!r}")
        self.url = line.split()[-1]

    def control(self, method: str, what: str, body: Optional[Dict[str, Any]] = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/_stand_in/{what}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def events(self) -> List[Dict[str, Any]]:
        return self.control("GET", "events")  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="pdagent-bench-", dir=os.environ.get("BENCH_TMPDIR")) as path:
        yield path


def key(index: int) -> str:
    return f"{index:04d}" + "k" * 28


def trigger(routing_key: str, summary: str, dedup_key: str) -> Dict[str, Any]:
    return {"routing_key": routing_key, "event_action": "trigger", "dedup_key": dedup_key,
            "payload": {"summary": summary, "source": "bench", "severity": "info"}}


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def median(values: List[float]) -> float:
    return statistics.median(values)


def start_agent(path: str, url: str, **settings: str) -> Agent:
    return Agent(path, url, **settings).start()


def wait(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def line(name: str, value: str, target: str = "", verdict: str = "") -> None:
    print(f"  {name:<58} {value:>22}  {target:<22} {verdict}", flush=True)
