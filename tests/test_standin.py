"""Tests of the Events API stand-in itself: real sockets on 127.0.0.1, a real child process, real TLS."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # until a conftest puts tests/ on sys.path

import standin  # noqa: E402
from standin import StandIn, validate_change, validate_v1, validate_v2  # noqa: E402
from tlsca import make_test_ca  # noqa: E402

requests = pytest.importorskip("requests")

KEY = "0123456789abcdef0123456789abcdef"
OTHER_KEY = "fedcba9876543210fedcba9876543210"
STANDIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standin.py")


def trigger(key: str = KEY, **top: Any) -> Dict[str, Any]:
    payload = {"summary": "disk full on /var", "source": "web1", "severity": "error"}
    event: Dict[str, Any] = {"routing_key": key, "event_action": "trigger", "payload": payload}
    event.update(top)
    return event


def v1_trigger(key: str = KEY, **top: Any) -> Dict[str, Any]:
    return {"service_key": key, "event_type": "trigger", "description": "load high", **top}


def change(key: str = KEY) -> Dict[str, Any]:
    return {"routing_key": key, "payload": {"summary": "deployed v42", "source": "ci"}}


@pytest.fixture
def api() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def session() -> Iterator[Any]:
    with requests.Session() as s:
        s.trust_env = False  # a proxy from the environment must never see loopback test traffic
        yield s


def raw_exchange(port: int, data: bytes) -> Tuple[bytes, socket.socket]:
    """Send data on a fresh connection and return what the first recv() gets, plus the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    return sock.recv(65536), sock


def post_bytes(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def standin_threads(api: StandIn) -> List[threading.Thread]:
    """This stand-in's threads (other tiers may keep a session-wide stand-in running meanwhile)."""
    return [t for t in threading.enumerate() if t.name.startswith("stand-in") and t.name.endswith(f"-{api.port}")]


# --- validation rules, as pure functions ------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("event", [
    trigger(),
    trigger(dedup_key="k" * 255, client="nagios", client_url="https://nagios.example",
            links=[{"href": "https://x.example", "text": "x"}], images=[{"src": "https://x.example/a.png"}],
            payload={"summary": "s" * 1024, "source": "h", "severity": "info",
                     "timestamp": "2024-05-01T10:00:00Z", "component": "db", "group": "prod", "class": "disk",
                     "custom_details": {"free": "1%"}}),
    {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "abc"},
    {"routing_key": KEY, "event_action": "resolve", "dedup_key": "abc"},
])
def test_valid_v2_events_pass(event: Dict[str, Any]) -> None:
    assert validate_v2(event) == []


@pytest.mark.unit
@pytest.mark.parametrize("change_to, message", [
    ({"routing_key": None}, "'routing_key' is missing"),
    ({"routing_key": "short"}, "should be 32 characters"),
    ({"event_action": "explode"}, "'event_action' is invalid"),
    ({"event_action": "resolve"}, "'dedup_key' is missing"),
    ({"event_action": "acknowledge", "dedup_key": ""}, "'dedup_key' is missing"),
    ({"dedup_key": "k" * 256}, "'dedup_key' is too long"),
    ({"payload": None}, "'payload' is missing"),
    ({"payload": {"source": "h", "severity": "error"}}, "'payload.summary' is missing"),
    ({"payload": {"summary": "s" * 1025, "source": "h", "severity": "error"}}, "summary' is too long"),
    ({"payload": {"summary": "s", "severity": "error"}}, "'payload.source' is missing"),
    ({"payload": {"summary": "s", "source": "h", "severity": "fatal"}}, "'payload.severity' is invalid"),
    ({"payload": {"summary": "s", "source": "h", "severity": "info", "timestamp": "yesterday"}}, "ISO 8601"),
    ({"payload": {"summary": "s", "source": "h", "severity": "info", "component": 7}}, "must be a string"),
    ({"links": {"href": "x"}}, "'links' must be a list"),
    ({"links": [{"text": "no href"}]}, "'links[0].href' is missing"),
    ({"images": ["https://x"]}, "'images[0]' must be an object"),
])
def test_invalid_v2_events_are_named(change_to: Dict[str, Any], message: str) -> None:
    event = {k: v for k, v in {**trigger(), **change_to}.items() if v is not None}
    errors = validate_v2(event)
    assert any(message in error for error in errors), errors


@pytest.mark.unit
def test_v1_and_change_rules() -> None:
    assert validate_v1(v1_trigger()) == []
    assert validate_v1({"service_key": KEY, "event_type": "resolve", "incident_key": "i"}) == []
    resolve = {"service_key": KEY, "event_type": "resolve"}
    assert any("'incident_key' is missing" in e for e in validate_v1(resolve))
    assert any("'description' is missing" in e for e in validate_v1({**resolve, "event_type": "trigger"}))
    assert any("'event_type' is invalid" in e for e in validate_v1(v1_trigger(event_type="boom")))
    assert any("32 characters" in e for e in validate_v1(v1_trigger("x")))
    assert validate_change(change()) == []
    assert any("'payload.summary'" in e for e in validate_change({"routing_key": KEY, "payload": {}}))
    assert any("'routing_key'" in e for e in validate_change({"payload": {"summary": "s"}}))


# --- the HTTP endpoints -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_v2_trigger_is_accepted_recorded_and_given_a_dedup_key(api: StandIn, session: Any) -> None:
    response = session.post(api.endpoint("v2"), json=trigger(), timeout=5)
    assert response.status_code == 202
    answer = response.json()
    assert answer["status"] == "success" and answer["message"] == "Event processed"
    assert len(answer["dedup_key"]) == 32
    [event] = api.events
    assert (event.api, event.path, event.routing_key, event.action) == ("v2", "/v2/enqueue", KEY, "trigger")
    assert event.key == answer["dedup_key"] and event.body == trigger()
    assert event.headers["content-type"] == "application/json"
    assert api.received(KEY) == [event] and api.received(OTHER_KEY) == [] and api.bodies() == [trigger()]


@pytest.mark.integration
def test_v2_keeps_the_given_dedup_key_for_every_action(api: StandIn, session: Any) -> None:
    for action in ("trigger", "acknowledge", "resolve"):
        event = trigger(event_action=action, dedup_key="disk/web1")
        response = session.post(api.endpoint(), json=event, timeout=5)
        assert (response.status_code, response.json()["dedup_key"]) == (202, "disk/web1")
    assert [e.action for e in api.events] == ["trigger", "acknowledge", "resolve"]


@pytest.mark.integration
def test_invalid_event_gets_pagerdutys_answer_counted_not_recorded(api: StandIn, session: Any) -> None:
    response = session.post(api.endpoint(), json=trigger(event_action="resolve"), timeout=5)
    assert response.status_code == 400
    answer = response.json()
    assert answer["status"] == "invalid event" and answer["message"] == "Event object is invalid"
    assert answer["errors"] == ["'dedup_key' is missing or blank"]
    assert api.events == [] and api.request_count == 1 and api.request_count_for(KEY) == 1
    assert api.requests[0].status == 400


@pytest.mark.integration
@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_malformed_or_non_object_json_is_400(api: StandIn, session: Any, body: bytes) -> None:
    response = session.post(api.endpoint(), data=body, timeout=5)
    assert response.status_code == 400 and response.json()["status"] == "invalid event"
    assert api.events == []


@pytest.mark.integration
def test_v1_answers_200_with_an_incident_key(api: StandIn, session: Any) -> None:
    response = session.post(api.endpoint("v1"), json=v1_trigger(), timeout=5)
    assert response.status_code == 200
    assert response.json()["incident_key"] == api.events[0].key and len(api.events[0].key or "") == 32
    resolve = {"service_key": KEY, "event_type": "resolve", "incident_key": "inc-1"}
    response = session.post(api.endpoint("v1"), json=resolve, timeout=5)
    assert response.json() == {"status": "success", "message": "Event processed", "incident_key": "inc-1"}
    bad = session.post(api.endpoint("v1"), json={"service_key": KEY, "event_type": "resolve"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["errors"] == ["'incident_key' is missing or blank"]
    assert [(e.api, e.routing_key) for e in api.events] == [("v1", KEY), ("v1", KEY)]


@pytest.mark.integration
def test_change_event_is_accepted(api: StandIn, session: Any) -> None:
    response = session.post(api.endpoint("change"), json=change(), timeout=5)
    assert response.status_code == 202
    assert response.json() == {"status": "success", "message": "Change event processed"}
    assert [(e.api, e.path, e.key) for e in api.events] == [("change", "/v2/change/enqueue", None)]


@pytest.mark.integration
def test_body_over_512_kb_is_an_invalid_event(api: StandIn, session: Any) -> None:
    event = trigger()
    event["payload"]["custom_details"] = {"blob": "x" * (512 * 1024)}
    response = session.post(api.endpoint(), json=event, timeout=5)
    assert response.status_code == 400 and "larger than 512 KB" in response.json()["errors"][0]


@pytest.mark.integration
def test_unknown_path_and_wrong_method(api: StandIn, session: Any) -> None:
    assert session.post(api.url + "/v1/enqueue", json=trigger(), timeout=5).status_code == 404
    response = session.get(api.endpoint(), timeout=5)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"
    assert api.request_count == 2 and api.events == []


# --- HTTP mechanics ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_keep_alive_with_whole_responses_in_one_segment(api: StandIn) -> None:
    body = json.dumps(trigger()).encode()
    first, sock = raw_exchange(api.port, post_bytes("/v2/enqueue", body))
    with sock:
        # the whole response (head and body) arrived in the first recv: it left in one send, without Nagle
        head, _, payload = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202 Accepted") and b"Connection: close" not in head
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(headers[b"Content-Length"])
        assert len(payload) == length and json.loads(payload)["status"] == "success"
        sock.sendall(post_bytes("/v2/enqueue", body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 202")
    assert api.connection_count == 1 and len(api.events) == 2


@pytest.mark.integration
def test_session_reuses_one_connection(api: StandIn, session: Any) -> None:
    for _ in range(20):
        session.post(api.endpoint(), json=trigger(), timeout=5)
    assert api.connection_count == 1 and api.wait_for(20, timeout=1)


@pytest.mark.integration
@pytest.mark.parametrize("version, extra", [("HTTP/1.1", "Connection: close\r\n"), ("HTTP/1.0", "")])
def test_connection_close_is_honoured(api: StandIn, version: str, extra: str) -> None:
    request = post_bytes("/v2/enqueue", json.dumps(trigger()).encode(), extra)
    request = request.replace(b"HTTP/1.1", version.encode())
    answer, sock = raw_exchange(api.port, request)
    with sock:
        assert answer.startswith(b"HTTP/1.1 202") and b"Connection: close" in answer
        assert sock.recv(100) == b""  # the server closed its end


@pytest.mark.integration
def test_expect_100_continue_and_chunked_bodies(api: StandIn) -> None:
    body = json.dumps(trigger()).encode()
    head = post_bytes("/v2/enqueue", body, "Expect: 100-continue\r\n")[:-len(body)]  # the head alone
    interim, sock = raw_exchange(api.port, head)
    with sock:
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 202")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
        chunked = (b"POST /v2/enqueue HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + chunks + b"0\r\n\r\n")
        sock.sendall(chunked)
        assert sock.recv(65536).startswith(b"HTTP/1.1 202")
    assert api.bodies() == [trigger(), trigger()]


@pytest.mark.integration
def test_garbage_request_line_is_400_and_closed(api: StandIn) -> None:
    answer, sock = raw_exchange(api.port, b"HELLO\r\n\r\n")
    with sock:
        assert answer.startswith(b"HTTP/1.1 400") and sock.recv(100) == b""


# --- faults -----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_counted_500s_then_success(api: StandIn, session: Any) -> None:
    rule = api.add_fault(status=500, count=2)
    statuses = [session.post(api.endpoint(), json=trigger(), timeout=5).status_code for _ in range(3)]
    assert statuses == [500, 500, 202]
    assert api.request_count == 3 and len(api.events) == 1 and rule.hits == 2 and api.faults == []
    assert [r.fault for r in api.requests] == [True, True, False]


@pytest.mark.integration
def test_429_with_retry_after_and_pagerdutys_throttle_body(api: StandIn, session: Any) -> None:
    api.add_fault(status=429, retry_after=7)
    response = session.post(api.endpoint(), json=trigger(), timeout=5)
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json()["status"] == "throttle event"
    api.clear_faults()
    assert session.post(api.endpoint(), json=trigger(), timeout=5).status_code == 202


@pytest.mark.integration
def test_fault_for_one_routing_key_and_one_api(api: StandIn, session: Any) -> None:
    api.add_fault(status=403, routing_key=OTHER_KEY, api="v1", body="throttled")
    assert session.post(api.endpoint("v1"), json=v1_trigger(), timeout=5).status_code == 200
    assert session.post(api.endpoint("v2"), json=trigger(OTHER_KEY), timeout=5).status_code == 202
    throttled = session.post(api.endpoint("v1"), json=v1_trigger(OTHER_KEY), timeout=5)
    assert (throttled.status_code, throttled.text) == (403, "throttled")
    assert api.request_count_for(OTHER_KEY) == 2 and [e.routing_key for e in api.events] == [KEY, OTHER_KEY]


@pytest.mark.integration
def test_first_matching_rule_wins_and_counted_rules_run_out(api: StandIn, session: Any) -> None:
    api.add_fault(status=502, count=1)
    api.add_fault(status=503, count=1)
    statuses = [session.post(api.endpoint(), json=trigger(), timeout=5).status_code for _ in range(3)]
    assert statuses == [502, 503, 202]


@pytest.mark.integration
def test_disconnect_fault_drops_the_connection(api: StandIn, session: Any) -> None:
    api.add_fault(disconnect=True, count=1)
    with pytest.raises(requests.ConnectionError):
        session.post(api.endpoint(), json=trigger(), timeout=5)
    assert session.post(api.endpoint(), json=trigger(), timeout=5).status_code == 202
    assert [r.status for r in api.requests] == [0, 202] and len(api.events) == 1


@pytest.mark.integration
def test_delay_makes_clients_time_out_and_never_delays_stop(session: Any) -> None:
    api = StandIn().start()
    try:
        api.add_fault(status=None, delay=30)  # delay only: the request would then proceed normally
        with pytest.raises(requests.ReadTimeout):
            session.post(api.endpoint(), json=trigger(), timeout=0.3)
        begun = time.monotonic()
    finally:
        api.stop()
    assert time.monotonic() - begun < 2 and standin_threads(api) == []


@pytest.mark.integration
def test_global_delay_slows_every_answer(api: StandIn, session: Any) -> None:
    api.delay = 0.2
    begun = time.monotonic()
    assert session.post(api.endpoint(), json=trigger(), timeout=5).status_code == 202
    assert time.monotonic() - begun >= 0.2


@pytest.mark.integration
def test_refused_connections_are_a_real_outage_on_the_same_port(api: StandIn, session: Any) -> None:
    assert session.post(api.endpoint(), json=trigger(), timeout=5).status_code == 202
    port = api.port
    api.refuse_connections()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with pytest.raises(requests.ConnectionError):  # the pooled keep-alive connection is gone too
        session.post(api.endpoint(), json=trigger(), timeout=5)
    api.accept_connections()
    assert api.port == port
    assert session.post(api.endpoint(), json=trigger(), timeout=5).status_code == 202
    assert len(api.events) == 2 and api.request_count == 2


@pytest.mark.integration
def test_refused_connection_errno(api: StandIn) -> None:
    api.refuse_connections()
    sock = socket.socket()
    try:
        assert sock.connect_ex(("127.0.0.1", api.port)) == errno.ECONNREFUSED
    finally:
        sock.close()


# --- recording and waiting --------------------------------------------------------------------------------


@pytest.mark.integration
def test_concurrent_senders_are_all_recorded_in_order_per_key(api: StandIn) -> None:
    keys = [f"{i:032d}" for i in range(4)]

    def send(key: str) -> None:
        with requests.Session() as s:
            s.trust_env = False
            for n in range(50):
                s.post(api.endpoint(), json=trigger(key, dedup_key=str(n)), timeout=5)

    threads = [threading.Thread(target=send, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    assert api.wait_for(200, timeout=30)
    for t in threads:
        t.join()
    for key in keys:
        assert [e.key for e in api.received(key)] == [str(n) for n in range(50)]
        assert api.request_count_for(key) == 50
    times = [e.time for e in api.events]
    assert times == sorted(times) and api.connection_count == 4


@pytest.mark.integration
def test_wait_for_times_out_or_wakes_on_arrival(api: StandIn, session: Any) -> None:
    begun = time.monotonic()
    assert api.wait_for(1, timeout=0.2) is False
    assert 0.2 <= time.monotonic() - begun < 2
    sender = threading.Timer(0.1, lambda: session.post(api.endpoint(), json=trigger(OTHER_KEY), timeout=5))
    sender.start()
    try:
        assert api.wait_for(1, timeout=5, routing_key=OTHER_KEY)
    finally:
        sender.join()
    api.add_fault(status=500)
    session.post(api.endpoint(), json=trigger(), timeout=5)
    assert api.wait_for_requests(2, timeout=1) and not api.wait_for(2, timeout=0.1)


@pytest.mark.integration
def test_record_file_gets_one_json_line_per_accepted_event(tmp_path: Path, session: Any) -> None:
    record = tmp_path / "events.jsonl"
    with StandIn(record=str(record)) as api:
        session.post(api.endpoint(), json=trigger(), timeout=5)
        session.post(api.endpoint(), json={"bad": True}, timeout=5)
        session.post(api.endpoint("change"), json=change(), timeout=5)
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["api"], line["body"]) for line in lines] == [("v2", trigger()), ("change", change())]


@pytest.mark.integration
def test_stop_closes_the_port_and_joins_every_thread(session: Any) -> None:
    api = StandIn().start()
    session.post(api.endpoint(), json=trigger(), timeout=5)  # leaves an idle keep-alive connection open
    idle = socket.create_connection(("127.0.0.1", api.port))
    try:
        api.stop()
        api.stop()  # twice is harmless
        assert standin_threads(api) == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", api.port), timeout=5).close()
    finally:
        idle.close()


# --- TLS --------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_https_is_verified_with_the_test_ca_and_rejected_without(tmp_path: Path, session: Any) -> None:
    ca = make_test_ca(tmp_path)
    with StandIn(certfile=ca.server_cert, keyfile=ca.server_key) as api:
        assert api.url.startswith("https://127.0.0.1:")
        response = session.post(api.endpoint(), json=trigger(), timeout=5, verify=ca.ca_cert)
        assert response.status_code == 202
        localhost = api.endpoint().replace("127.0.0.1", "localhost")
        assert session.post(localhost, json=trigger(), timeout=5, verify=ca.ca_cert).status_code == 202
        with requests.Session() as strict:
            strict.trust_env = False
            with pytest.raises(requests.exceptions.SSLError):
                strict.post(api.endpoint(), json=trigger(), timeout=5)  # certifi's bundle: not our CA
        with pytest.raises(requests.ConnectionError):  # plain http on the TLS port
            session.post(api.endpoint().replace("https", "http"), json=trigger(), timeout=5)
        assert len(api.events) == 2


# --- as a separate process --------------------------------------------------------------------------------


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Tuple[subprocess.Popen, str, Path]]:
    record = tmp_path / "record.jsonl"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, STANDIN_PY, "--port", "0", "--record", str(record), "-v"],
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    stdout = proc.stdout
    assert stdout is not None
    try:
        ready, _, _ = select.select([stdout], [], [], 15)
        assert ready, "the stand-in did not say where it listens"
        line = stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield proc, line.split()[-1], record
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stdout.close()


@pytest.mark.integration
def test_process_records_serves_control_endpoints_and_exits_on_sigterm(
        process: Tuple[subprocess.Popen, str, Path], session: Any) -> None:
    proc, url, record = process
    assert session.post(url + "/v2/enqueue", json=trigger(), timeout=5).status_code == 202
    events = session.get(url + "/_stand_in/events", timeout=5).json()
    assert [e["body"] for e in events] == [trigger()] and events[0]["routing_key"] == KEY

    rule = {"status": 429, "count": 1, "retry_after": 3, "routing_key": KEY}
    assert session.post(url + "/_stand_in/faults", json=rule, timeout=5).status_code == 201
    throttled = session.post(url + "/v2/enqueue", json=trigger(), timeout=5)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    session.post(url + "/_stand_in/faults", json={"status": 500}, timeout=5)
    assert session.post(url + "/v2/enqueue", json=trigger(), timeout=5).status_code == 500
    assert session.delete(url + "/_stand_in/faults", timeout=5).status_code == 200
    assert session.post(url + "/v2/enqueue", json=trigger(), timeout=5).status_code == 202
    stats = session.get(url + "/_stand_in/stats", timeout=5).json()
    assert (stats["requests"], stats["events"], stats["requests_by_key"]) == (4, 2, {KEY: 4})
    assert session.post(url + "/_stand_in/faults", json={"colour": "red"}, timeout=5).status_code == 400

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 0
    assert [json.loads(line)["body"] for line in record.read_text().splitlines()] == [trigger(), trigger()]
    log = (record.parent / "stderr.txt").read_text(encoding="utf-8")  # -v: one line per request, key masked
    assert "202 /v2/enqueue routing_key=0123…cdef" in log and "429 /v2/enqueue" in log and KEY not in log


@pytest.mark.integration
def test_process_outage_endpoint_refuses_then_recovers(
        process: Tuple[subprocess.Popen, str, Path], session: Any) -> None:
    _, url, _ = process
    port = int(url.rsplit(":", 1)[1])
    assert session.post(url + "/_stand_in/outage", json={"seconds": 2.0}, timeout=5).status_code == 200
    deadline = time.monotonic() + 5
    seen: List[int] = []
    # The outage starts right after the answer. A SYN that races the listener's close is dropped by the kernel
    # and retried after 1 s, so the outage must outlast that retry for the probe to see the refusal.
    while time.monotonic() < deadline and errno.ECONNREFUSED not in seen:
        sock = socket.socket()
        seen.append(sock.connect_ex(("127.0.0.1", port)))
        sock.close()
        time.sleep(0.01)
    assert errno.ECONNREFUSED in seen, seen
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if session.post(url + "/v2/enqueue", json=trigger(), timeout=5).status_code == 202:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        pytest.fail("the stand-in did not come back after its outage")


@pytest.mark.unit
def test_module_exposes_the_paths() -> None:
    assert standin.PATH_OF_API == {"v2": "/v2/enqueue", "v1": "/generic/2010-04-15/create_event.json",
                                   "change": "/v2/change/enqueue"}
