"""Bad input on the real daemon's socket: random and malformed frames, oversized lines, invalid UTF-8,
half-closed, idle and trickling connections, more connections than max_connections.

The daemon must stay up, answer every complete line exactly once with a JSON object (a refusal carries a
documented code; internal_error is a bug), keep its memory bounded, and still deliver a valid event afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional

import pytest

from pdagent_sd.errors import PdagentError
from pdagent_sd.protocol import Client

from agentproc import KEY_A, Agent, read_line, trigger
from fuzzlib import KEY, MAX_LINE, Frame, FrameMaker, check_reply
from robustlib import client_connections, rss_mib, runs, threads

FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20240501"))
REPLY_TIMEOUT_SEC = 30.0


class Fuzzer:
    """Sends frames on `parallel` connections at once, each connection carrying `per_connection` frames (a
    writer thread sends while the reader checks each reply in order), and records what went wrong."""

    def __init__(self, agent: Agent, frames: Iterator[Frame], parallel: int, per_connection: int) -> None:
        self.agent = agent
        self.frames = frames
        self.parallel = parallel
        self.per_connection = per_connection
        self.lock = threading.Lock()
        self.sent: Counter = Counter()  # type: ignore[type-arg]
        self.outcomes: Counter = Counter()  # type: ignore[type-arg]
        self.failures: List[str] = []
        self.connections = 0
        self.replies = 0

    def run(self) -> None:
        workers = [threading.Thread(target=self._worker, name=f"fuzz{i}") for i in range(self.parallel)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _next_batch(self) -> List[Frame]:
        with self.lock:
            return [frame for _, frame in zip(range(self.per_connection), self.frames)]

    def _fail(self, text: str) -> None:
        with self.lock:
            if len(self.failures) < 30:
                self.failures.append(text)

    def _worker(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self._connection(batch)
            except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                self._fail(f"connection failed: {exc!r}")
                return

    def _connection(self, batch: List[Frame]) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(REPLY_TIMEOUT_SEC)
        sock.connect(self.agent.socket)
        writer_error: List[BaseException] = []

        def write() -> None:
            try:
                for frame in batch:
                    sock.sendall(frame.data)
                sock.shutdown(socket.SHUT_WR)  # every frame ends in a newline: nothing is left half-sent
            except OSError as exc:
                writer_error.append(exc)

        writer = threading.Thread(target=write)
        writer.start()
        buffer = b""
        try:
            for frame in batch:
                for _ in range(frame.replies):
                    while b"\n" not in buffer:
                        try:
                            chunk = sock.recv(1 << 20)
                        except OSError as exc:
                            self._fail(f"{exc!r} waiting for the reply to {frame.describe()}")
                            return
                        if not chunk:
                            self._fail(f"connection closed before the reply to {frame.describe()}")
                            return
                        buffer += chunk
                    line, _, buffer = buffer.partition(b"\n")
                    problem = check_reply(frame, line)
                    reply = json.loads(line) if problem is None else {}
                    with self.lock:
                        self.replies += 1
                        self.outcomes["ok" if reply.get("ok") else str(reply.get("code"))] += 1
                    if problem:
                        self._fail(f"{problem}\n    for {frame.describe()}")
                with self.lock:
                    self.sent[frame.category] += 1
            while True:  # after the last reply, only the end of the connection: never a reply too many
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                buffer += chunk
            if buffer:
                self._fail(f"{len(buffer)} bytes after the last expected reply: {buffer[:200]!r}")
        finally:
            writer.join()
            sock.close()
            with self.lock:
                self.connections += 1
        if writer_error:
            self._fail(f"sending failed: {writer_error[0]!r}")


def _assert_daemon_healthy(agent: Agent, standin: Any, summary: str) -> None:
    assert agent.proc is not None and agent.proc.poll() is None, agent.log()[-3000:]
    sent = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", summary, "-i", summary)
    assert sent.returncode == 0, sent.stderr
    assert agent.wait_until(lambda: any(e.body.get("dedup_key") == summary for e in standin.received(KEY_A)),
                            timeout=15), agent.log()[-3000:]


def _assert_clean_log(agent: Agent) -> None:
    log = agent.log()
    for marker in ("internal error", "Traceback"):
        assert marker not in log, log[log.index(marker) - 2000: log.index(marker) + 3000]


@pytest.mark.interpreters
@pytest.mark.parametrize("size", runs({"frames": 10000, "parallel": 4, "per_connection": 200, "rss_growth": 40},
                                      {"frames": 100000, "parallel": 8, "per_connection": 500, "rss_growth": 40}))
def test_fuzzed_frames_get_one_documented_reply_each(make_agent: Any, standin: Any, figures: Dict[str, Any],
                                                     size: Dict[str, Any]) -> None:
    agent = make_agent()
    frames = FrameMaker(FUZZ_SEED).frames(size["frames"])
    warm_up = max(500, size["frames"] // 20)  # the first frames bring in every code path and its caches
    started = time.monotonic()
    first = Fuzzer(agent, iter([next(frames) for _ in range(warm_up)]), size["parallel"], size["per_connection"])
    first.run()
    rss_warm = rss_mib(agent.pid)
    rest = Fuzzer(agent, frames, size["parallel"], size["per_connection"])
    rest.run()
    elapsed = time.monotonic() - started
    rss_end = rss_mib(agent.pid)
    sent = first.sent + rest.sent
    outcomes = first.outcomes + rest.outcomes
    figures.update(frames=sum(sent.values()), replies=first.replies + rest.replies,
                   connections=first.connections + rest.connections, seconds=round(elapsed, 1),
                   frames_per_sec=round(sum(sent.values()) / elapsed), rss_warm_mib=round(rss_warm, 1),
                   rss_end_mib=round(rss_end, 1), threads_end=threads(agent.pid), by_category=dict(sent),
                   outcomes=dict(outcomes))
    failures = first.failures + rest.failures
    assert not failures, "\n".join(failures)
    assert sum(sent.values()) == size["frames"]
    assert rss_end - rss_warm < size["rss_growth"], figures
    _assert_daemon_healthy(agent, standin, "after the fuzz")
    _assert_clean_log(agent)
    queued = [e for e in standin.received() if e.routing_key == KEY]
    figures["valid_events_delivered"] = len(queued)


def _send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """Send without blocking the test; the daemon may close the connection before it has read it all."""
    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _reply_then_eof(sock: socket.socket) -> Dict[str, Any]:
    reply = json.loads(read_line(sock))
    rest = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        rest += chunk
    assert rest == b"", rest[:200]
    return reply


@pytest.mark.integration
def test_oversized_lines_are_refused_and_the_connection_closed(agent: Agent, standin: Any,
                                                               figures: Dict[str, Any]) -> None:
    cases = [b"x" * (MAX_LINE + 1), b"x" * (MAX_LINE + 1) + b"\n", b'{"op":"status","pad":"' + b"y" * (2 * MAX_LINE),
             b"z" * (16 * MAX_LINE) + b"\n", b"\xff" * (MAX_LINE + 5)]
    rss_before = rss_mib(agent.pid)
    for _ in range(4):
        for data in cases:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(15)
                sock.connect(agent.socket)
                sender = _send_in_background(sock, data)
                reply = _reply_then_eof(sock)
                assert reply["ok"] is False and reply["code"] == "bad_request", reply
                assert "longer than" in reply["error"]
                sock.close()
                sender.join(15)
    # the largest line that fits is answered like any other: the limit counts the newline
    just_fits = b'{"op":"status","pad":"' + b"p" * (MAX_LINE - 25) + b'"}\n'
    assert len(just_fits) == MAX_LINE
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(agent.socket)
        sock.sendall(just_fits + b'{"op":"status"}\n')
        replies = b""
        while replies.count(b"\n") < 2:  # both answers may come in one read: read_line would return them joined
            chunk = sock.recv(65536)
            assert chunk, replies
            replies += chunk
        assert [json.loads(line)["ok"] for line in replies.splitlines()] == [True, True]
    rss_after = rss_mib(agent.pid)
    figures.update(oversized_lines=4 * len(cases), largest_mib=16, rss_before_mib=round(rss_before, 1),
                   rss_after_mib=round(rss_after, 1))
    assert rss_after - rss_before < 40
    _assert_daemon_healthy(agent, standin, "after oversized lines")


@pytest.mark.integration
def test_half_closed_connections_get_answers_for_what_they_sent(agent: Agent, standin: Any) -> None:
    status = b'{"op":"status"}\n'
    # complete lines, then half a line and shutdown(SHUT_WR): each complete line is answered, the unfinished
    # one is answered as it stands (here: not JSON), then the daemon closes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket)
        sock.sendall(status * 3 + b'{"op":"send","api":"v2","ev')
        sock.shutdown(socket.SHUT_WR)
        replies = [json.loads(line) for line in _read_all(sock).splitlines()]
    assert [r["ok"] for r in replies] == [True, True, True, False]
    assert replies[3]["code"] == "bad_request" and "not valid JSON" in replies[3]["error"]
    # a whole request without its newline, then SHUT_WR: answered (printf '{"op":"status"}' | nc -U works)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket)
        sock.sendall(status.rstrip(b"\n"))
        sock.shutdown(socket.SHUT_WR)
        assert [json.loads(line)["ok"] for line in _read_all(sock).splitlines()] == [True]
    # nothing at all, then SHUT_WR: closed without a word
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket)
        sock.shutdown(socket.SHUT_WR)
        assert _read_all(sock) == b""
    # clients that vanish mid-line or without reading their replies: their connections are all closed
    for data in (b'{"op":"sta', status * 200, b"x" * 100000):
        for _ in range(20):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(agent.socket)
            sock.sendall(data)
            sock.close()
    assert agent.wait_until(lambda: client_connections(agent.pid, agent.socket) == 0, timeout=10), \
        client_connections(agent.pid, agent.socket)
    _assert_daemon_healthy(agent, standin, "after half-closed connections")


@pytest.mark.integration
def test_a_client_that_sends_ahead_gets_every_reply_in_order_and_one_that_never_reads_is_let_go(
        make_agent: Any) -> None:
    timeout = 3.0
    agent = make_agent(PDAGENT_CLIENT_TIMEOUT_SEC=str(timeout))
    count = 3000  # some 1.5 MB of replies: far more than a socket buffer holds while nobody reads
    requests = b"".join(b'{"op":"show","id":%d}\n' % (n + 1) if n % 2 else b'{"op":"status"}\n'
                        for n in range(count))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(agent.socket)
        sender = _send_in_background(sock, requests)
        time.sleep(0.5)  # replies pile up unread meanwhile, within the daemon's patience
        with sock.makefile("rb") as stream:
            replies = [json.loads(stream.readline()) for _ in range(count)]
        sender.join(20)
    assert all(reply["ok"] for reply in replies[::2])
    assert all(reply["code"] == "not_found" for reply in replies[1::2]), replies[1]
    # a client that asks for much and reads nothing is closed once its reply has waited client_timeout_sec
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket)
        sender = _send_in_background(sock, b'{"op":"status"}\n' * count)
        assert agent.wait_until(lambda: client_connections(agent.pid, agent.socket) == 0, timeout=10)
        sender.join(10)
    assert agent.status()["ok"]


def _settled_threads(pid: int) -> int:
    """The daemon's thread count once short-lived threads (the start-up FQDN lookup) have ended."""
    counts = []
    for _ in range(10):
        counts.append(threads(pid))
        time.sleep(0.05)
    return min(counts)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _seconds_until_closed(sock: socket.socket, trickle: Optional[bytes] = None, limit: float = 15.0) -> float:
    """How long the daemon keeps this connection open; with `trickle`, one byte of it is sent every 0.2 s."""
    started = time.monotonic()
    sock.settimeout(0.2)
    position = 0
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except socket.timeout:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if trickle is not None and position < len(trickle):
            try:
                sock.sendall(trickle[position:position + 1])
            except OSError:
                return time.monotonic() - started
            position += 1
    return limit


@pytest.mark.integration
def test_idle_and_trickling_connections_are_closed_after_client_timeout(make_agent: Any,
                                                                        figures: Dict[str, Any]) -> None:
    timeout = 1.0
    agent = make_agent(PDAGENT_CLIENT_TIMEOUT_SEC=str(timeout), PDAGENT_FIRST_LINE_TIMEOUT_SEC=str(timeout))
    found: Dict[str, float] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # connected, silent
        sock.connect(agent.socket)
        found["silent"] = _seconds_until_closed(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # half a line, then silent
        sock.connect(agent.socket)
        sock.sendall(b'{"op":"sta')
        found["half_line"] = _seconds_until_closed(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # a request answered, then silent
        sock.settimeout(5)
        sock.connect(agent.socket)
        sock.sendall(b'{"op":"status"}\n')
        assert json.loads(read_line(sock))["ok"] is True
        found["after_a_reply"] = _seconds_until_closed(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # one byte every 0.2 s, never a newline
        sock.connect(agent.socket)
        found["trickle"] = _seconds_until_closed(sock, trickle=b'{"op":"status","pad":"' + b"." * 200)
    figures.update(client_timeout_sec=timeout, **{f"closed_after_{k}_sec": round(v, 2) for k, v in found.items()})
    for case, seconds in found.items():
        # measured by the client, which starts its clock a moment after the daemon started its own
        assert timeout * 0.5 <= seconds <= timeout + 1.5, (case, found)
    assert agent.status()["ok"]


@pytest.mark.integration
def test_connections_beyond_max_connections_wait_and_none_harms_the_daemon(make_agent: Any, standin: Any,
                                                                           figures: Dict[str, Any]) -> None:
    limit = 4
    agent = make_agent(PDAGENT_MAX_CONNECTIONS=str(limit), PDAGENT_CLIENT_TIMEOUT_SEC="20",
                       PDAGENT_FIRST_LINE_TIMEOUT_SEC="20")
    baseline = _settled_threads(agent.pid)
    idle = []
    for _ in range(limit):  # take every slot with a silent client
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(agent.socket)
        idle.append(sock)
        time.sleep(0.05)
    assert agent.wait_until(lambda: client_connections(agent.pid, agent.socket) == limit, timeout=5)
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.settimeout(1.5)
    waiting.connect(agent.socket)  # in the listen backlog: connected, not yet accepted
    waiting.sendall(b'{"op":"status"}\n')
    with pytest.raises(socket.timeout):
        waiting.recv(65536)
    idle.pop().close()  # a slot frees up: the waiting client is served
    waiting.settimeout(10)
    assert json.loads(read_line(waiting))["ok"] is True
    waiting.close()
    for sock in idle:
        sock.close()

    # a crowd: 300 clients at once, each one request; all answered, connections never beyond the limit and
    # no thread per client. With listen(128) and max_connections 4, a third of them once found the backlog
    # full and failed with EAGAIN.
    replies: List[Any] = []
    peak = [0]
    peak_threads = [0]
    lock = threading.Lock()

    def client() -> None:  # the client pd-send uses, which must wait for a busy daemon, not give up
        try:
            with Client(agent.socket, timeout=60) as connection:
                reply: Any = connection.request({"op": "status"})
        except PdagentError as exc:
            reply = repr(exc)
        with lock:
            replies.append(reply)

    def watch() -> None:
        while len(replies) < 300:
            peak[0] = max(peak[0], client_connections(agent.pid, agent.socket))
            peak_threads[0] = max(peak_threads[0], threads(agent.pid))
            time.sleep(0.005)

    started = time.monotonic()
    crowd = [threading.Thread(target=client) for _ in range(300)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    for thread in crowd:
        thread.start()
    for thread in crowd:
        thread.join()
    watcher.join()
    figures.update(max_connections=limit, crowd=300, crowd_seconds=round(time.monotonic() - started, 2),
                   peak_connections=peak[0], baseline_threads=baseline, peak_threads=peak_threads[0])
    assert all(isinstance(r, dict) and r["ok"] for r in replies), [r for r in replies if not isinstance(r, dict)]
    assert peak[0] <= limit
    assert peak_threads[0] <= baseline + 1  # +1: a thread of the daemon's pools not yet started at baseline
    _assert_daemon_healthy(agent, standin, "after the crowd")


@pytest.mark.interpreters
@pytest.mark.integration
@pytest.mark.parametrize("request_", [{"op": "show", "id": 2**64}, {"op": "drop", "id": 2**63},
                                      {"op": "drop", "id": -(2**70)}, {"op": "show", "id": 0}])
def test_ids_beyond_sqlite_integers_are_bad_requests(agent: Agent, request_: Dict[str, Any]) -> None:
    """Found by the fuzz: such an id raised OverflowError in the query; in `drop` it killed the store's writer
    thread, after which every send waited forever."""
    reply = agent.request(request_)
    assert reply["ok"] is False and reply["code"] == "bad_request", reply
    sent = agent.request({"op": "send", "api": "v2", "event": trigger(KEY_A, "still writing")})
    assert sent["ok"] is True


@pytest.mark.unit
def test_a_write_op_that_fails_unexpectedly_does_not_stop_the_writer(tmp_path: Any) -> None:
    from pdagent_sd.errors import StorageError
    from pdagent_sd.store import Store

    store = Store(str(tmp_path))
    store.open()
    try:
        def broken(conn: Any) -> Any:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

        with pytest.raises(StorageError, match="OverflowError|too large"):
            store.write(broken)
        assert store.writer_alive()
        assert store.write(lambda conn: (conn.execute("SELECT 1").fetchone()[0], 0)) == 1
    finally:
        store.close()


@pytest.mark.unit
def test_the_client_waits_for_room_in_a_full_listen_backlog(tmp_path: Any) -> None:
    """With a timeout set, connect() on a Unix socket whose backlog is full fails at once with EAGAIN; the
    client used by pd-send must wait for room instead (a burst of alerts beyond the backlog lost some)."""
    path = str(tmp_path / "busy.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    queued = []
    try:
        while True:  # fill the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)
        threading.Timer(0.3, lambda: [server.accept()[0].close() for _ in queued]).start()
        started = time.monotonic()
        with Client(path, timeout=5):
            waited = time.monotonic() - started
        assert 0.25 < waited < 3
        with pytest.raises(PdagentError, match="temporarily unavailable"):  # and gives up at its timeout
            for _ in range(len(queued) + 2):
                queued.append(Client(path, timeout=0.3).sock)
    finally:
        for sock in queued:
            sock.close()
        server.close()
