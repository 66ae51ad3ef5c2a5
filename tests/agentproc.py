"""The real pdagentd as a child process on a temporary socket and state directory, for integration tests
and benchmarks. Whatever it starts it stops by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from waiting import poll

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_A = "a" * 16 + "0123456789abcdef"
KEY_B = "b" * 16 + "0123456789abcdef"

# Fast retries so tests finish in seconds; each test may override any PDAGENT_* setting.
TEST_SETTINGS = {
    "PDAGENT_BACKOFF_MIN_SEC": "0.05",
    "PDAGENT_BACKOFF_MAX_SEC": "0.5",
    "PDAGENT_RATE_LIMIT_PER_MINUTE": "0",
    "PDAGENT_IDLE_EXIT_SEC": "0",
}


def base_env(**settings: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PDAGENT_", "LISTEN_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(TEST_SETTINGS)
    env.update(settings)
    return env


# Every Agent made in this process, for tests/conftest.py's check of their logs; emptied before each test.
CREATED: List["Agent"] = []


class Agent:
    """One pdagentd process. `start()` returns once it answers on its socket."""

    def __init__(self, workdir: str, events_url: str, python: str = sys.executable, **settings: str) -> None:
        self.workdir = workdir
        self.socket = os.path.join(workdir, "pdagent.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.log_path = os.path.join(workdir, "pdagentd.log")
        self.config = os.path.join(workdir, "agent.conf")
        self.python = python
        self.env = base_env(PDAGENT_EVENTS_URL=events_url, PDAGENT_SOCKET=self.socket,
                            PDAGENT_STATE_DIR=self.state_dir, PDAGENT_CONFIG=self.config, **settings)
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.last_log = ""  # the log as it was at the last stop, for a check after the workdir is gone
        CREATED.append(self)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> Agent:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.python, "-m", "pdagent_sd.daemon"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pdagentd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.request({"op": "status"})
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"pdagentd did not answer within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> Optional[int]:
        """Signal the daemon by PID and wait for it; SIGKILL if it does not go. Returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.last_log = self.log() or self.last_log
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def request(self, message: Dict[str, Any]) -> Dict[str, Any]:
        """One raw request line and its raw reply (errors are returned, not raised)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.socket)
            sock.sendall(json.dumps(message).encode() + b"\n")
            return json.loads(read_line(sock))

    def client(self, module: str, *args: str, stdin: Optional[str] = None,
               timeout: float = 30.0) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """Run one of the commands (pdagent_sd.cli.send, ...) against this agent."""
        return subprocess.run([self.python, "-m", module, *args], env=self.env, input=stdin,
                              capture_output=True, text=True, timeout=timeout)

    def pd_send(self, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        return self.client("pdagent_sd.cli.send", *args)

    def status(self) -> Dict[str, Any]:
        return self.request({"op": "status"})

    def wait_until(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Whether predicate() came true within timeout (waiting.poll); the caller asserts with its own message."""
        return bool(poll(predicate, timeout))

    def pending(self) -> int:
        return int(self.status()["totals"]["pending"])


def whole_keys_in_logs(agents: Iterable[Agent], keys: Iterable[str]) -> List[str]:
    """Lines of the agents' logs that show one of `keys` whole: the daemon masks every routing key it logs
    (first and last four characters of a key of 12 or more), so any such line is a leak. Keys shorter than 12
    characters are left out: the daemon shows them as stars, and so short a string may match by chance. The
    dedup key field is left out too: it is logged whole by design, and a sender (the fuzzer) may choose a
    routing key's text as its dedup key."""
    long_keys = [key for key in set(keys) if len(key) >= 12]
    found = []
    for agent in agents:
        text = agent.log() or agent.last_log
        for line in text.splitlines():
            line = re.sub(r"PDAGENT_DEDUP_KEY=\S*", "PDAGENT_DEDUP_KEY=", line)
            if any(key in line for key in long_keys):
                found.append(f"{agent.log_path}: {line.strip()[:300]}")
    return found


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def trigger(key: str, summary: str, dedup_key: Optional[str] = None, **payload: Any) -> Dict[str, Any]:
    body: Dict[str, Any] = {"routing_key": key, "event_action": "trigger",
                            "payload": {"summary": summary, "source": "test-host", "severity": "error", **payload}}
    if dedup_key:
        body["dedup_key"] = dedup_key
    return body


def action(key: str, event_action: str, dedup_key: str) -> Dict[str, Any]:
    return {"routing_key": key, "event_action": event_action, "dedup_key": dedup_key}


def send_many(agent: Agent, bodies: List[Dict[str, Any]], api: str = "v2") -> List[Dict[str, Any]]:
    return [agent.request({"op": "send", "api": api, "event": body}) for body in bodies]


def insert_events(state_dir: str, rows: Iterable[Tuple[str, str]], age: float = 60.0) -> None:
    """Rows (routing_key, state), `age` seconds old, written into an existing queue.db in one transaction,
    with or without a daemon running on it (WAL: it reads on): a queue filled faster than any sender could."""
    body = '{"routing_key":"%s","event_action":"trigger","payload":{"summary":"s","source":"s","severity":"info"}}'
    then = time.time() - age
    with sqlite3.connect(os.path.join(state_dir, "queue.db"), timeout=60, isolation_level=None) as db:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO events (routing_key, api, action, dedup_key, body, state, created, updated, "
                       "attempts) VALUES (?, 'v2', 'trigger', ?, ?, ?, ?, ?, 0)",
                       ((key, f"d{n}", body % key, state, then, then) for n, (key, state) in enumerate(rows)))
        db.execute("COMMIT")
