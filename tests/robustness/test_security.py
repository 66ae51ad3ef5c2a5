"""Security: who may see and change what, where secrets may appear, and that TLS is always verified.

- the state directory is 0700 and every file in it 0600 (queue.db, -wal, -shm, the pending marker);
- a local user who is not an admin can send, see status and list without payloads, and nothing else: show,
  retry and drop are refused, the queue is unchanged afterwards, queue.db cannot be opened, and the fuzz
  run as that user gets only documented answers;
- routing keys never appear whole in the daemon's log, for every kind of record and every API, nor in what
  a non-admin gets from status, list or metrics;
- certificates are verified: an untrusted one fails delivery with a TLS error and the event waits; the test
  CA as ca_bundle delivers it (even with REQUESTS_CA_BUNDLE pointing elsewhere), and environment variables
  cannot switch verification off;
- plain http:// events URLs are refused at start unless the host is loopback or allow_insecure_http is set.

`systemd-analyze security pdagent.service` <= 1.5 is tested in tests/system/test_units.py, not here:
test_security_exposure_offline (the unit files) and test_security_exposure_of_the_loaded_unit (in a booted
container).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from typing import Any, Dict, Iterator, List

import pytest

from pdagent_sd.config import ConfigError, is_safe_url, load
from pdagent_sd.keys import mask

from agentproc import KEY_A, KEY_B, Agent, action, send_many, trigger
from asuser import OtherUser
from standin import StandIn
from tlsca import make_test_ca

KEY_V1 = "c" * 16 + "0123456789abcdef"
KEY_CHANGE = "d" * 16 + "0123456789abcdef"
SECRET = "SECRET-PAYLOAD-7f3a"  # a payload text other users must never get back


def _modes(directory: str) -> Dict[str, int]:
    return {name: stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) for name in os.listdir(directory)}


@pytest.mark.integration
def test_state_directory_0700_and_every_file_in_it_0600(make_agent: Any, standin: StandIn) -> None:
    standin.refuse_connections()  # events stay pending: the WAL, its index and the pending marker all exist
    agent = make_agent()
    send_many(agent, [trigger(KEY_A, f"private {i}") for i in range(20)])
    files = _modes(agent.state_dir)
    assert {"queue.db", "queue.db-wal", "queue.db-shm", "pending"} <= set(files), files
    assert stat.S_IMODE(os.stat(agent.state_dir).st_mode) == 0o700
    assert all(mode & 0o077 == 0 for mode in files.values()), {k: oct(v) for k, v in files.items()}
    with open(f"/proc/{agent.pid}/status", encoding="utf-8") as status:
        assert re.search(r"^Umask:\s+0077$", status.read(), re.M)
    standin.accept_connections()
    assert standin.wait_for(20, timeout=15)
    assert all(mode & 0o077 == 0 for mode in _modes(agent.state_dir).values())


# --- another local user -------------------------------------------------------------------------------------


def _queue_rows(agent: Agent) -> List[Any]:
    with sqlite3.connect(os.path.join(agent.state_dir, "queue.db")) as db:
        return db.execute("SELECT id, routing_key, state, body FROM events ORDER BY id").fetchall()


@pytest.mark.integration
def test_a_local_user_cannot_read_or_change_others_events(other_user: OtherUser, standin: StandIn,
                                                          figures: Dict[str, Any]) -> None:
    standin.add_fault(status=400, routing_key=KEY_B)  # KEY_B's events fail: dead letters with PagerDuty's text
    agent = Agent(other_user.workdir, standin.url).start()
    try:
        send_many(agent, [trigger(KEY_A, f"{SECRET} delivered", "d1"), trigger(KEY_B, f"{SECRET} failed", "f1")])
        assert agent.wait_until(lambda: agent.status()["totals"] == {"pending": 0, "delivered": 1, "failed": 1,
                                                                     "superseded": 0})
        standin.refuse_connections()
        send_many(agent, [trigger(KEY_A, f"{SECRET} pending", "p1")])
        assert agent.wait_until(lambda: agent.status()["totals"] == {"pending": 1, "delivered": 1, "failed": 1,
                                                                     "superseded": 0})
        before = _queue_rows(agent)
        ids = [row[0] for row in before]

        reads = other_user.requests(agent.socket, [
            {"op": "status"}, {"op": "status", "routing_key": KEY_A}, {"op": "list", "limit": 10000},
            {"op": "list", "routing_key": KEY_A}, {"op": "list", "state": "failed"}, {"op": "metrics"},
            {"op": "flush"}])
        for raw in reads:
            reply = json.loads(raw)
            assert reply["ok"] is True, raw
            assert KEY_A not in raw and KEY_B not in raw and SECRET not in raw, raw
        assert json.loads(reads[0])["redacted"] is True
        listed = json.loads(reads[2])["events"]
        assert len(listed) == 3 and all("body" not in row for row in listed)
        assert {row["routing_key"] for row in listed} == {mask(KEY_A), mask(KEY_B)}

        changes = [{"op": "show", "id": i} for i in ids] + [
            {"op": "retry", "all": True}, {"op": "retry", "routing_key": KEY_B},
            {"op": "drop", "routing_key": KEY_A, "state": "pending"}, {"op": "drop", "routing_key": KEY_B,
                                                                       "state": "failed"}] + [
            {"op": "drop", "id": i} for i in ids] + [
            {"op": "import_legacy", "events": [{"name": f"1400000000000000_{KEY_A}.txt", "state": "pending",
                                                "queued_at": 1400000000.0, "event": {
                                                    "service_key": KEY_A, "event_type": "trigger",
                                                    "description": "smuggled in as an old event"}}]}]
        refused = other_user.requests(agent.socket, changes)
        for message, raw in zip(changes, refused):
            reply = json.loads(raw)
            assert reply["ok"] is False and reply["code"] == "forbidden", (message, raw)
            assert SECRET not in raw and KEY_A not in raw and KEY_B not in raw
        assert _queue_rows(agent) == before  # nothing retried, nothing dropped

        sent = json.loads(other_user.requests(agent.socket, [
            {"op": "send", "api": "v2", "event": trigger(KEY_A, "any user may send")}])[0])
        assert sent["ok"] is True  # the socket is 0666 on purpose: any local user may raise an alert

        peek = other_user.run(["-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('SELECT 1')",
                               os.path.join(agent.state_dir, "queue.db")])
        assert peek.returncode != 0 and "unable to open" in peek.stderr, peek.stderr
        listing = other_user.run(["-c", "import os, sys; os.listdir(sys.argv[1])", agent.state_dir])
        assert listing.returncode != 0 and "PermissionError" in listing.stderr

        fuzz = other_user.run(["-m", "fuzz_client", agent.socket, "7", "3000"], timeout=300)
        assert fuzz.returncode == 0, fuzz.stderr
        found = json.loads(fuzz.stdout)
        figures.update(user_requests=len(reads) + len(changes) + 1, fuzz_as_user=found["frames"],
                       fuzz_outcomes=found["outcomes"])
        assert not found["failures"], "\n".join(found["failures"])
        assert found["outcomes"].get("forbidden", 0) > 0  # the admin ops were reached, and refused
        assert set(before) <= set(_queue_rows(agent))  # the fuzz, as that user, changed none of them either
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        agent.stop()


# --- routing keys in the log and in status ------------------------------------------------------------------


@pytest.mark.integration
def test_routing_keys_never_appear_whole_in_the_log(make_agent: Any, standin: StandIn,
                                                    figures: Dict[str, Any]) -> None:
    standin.add_fault(status=500, count=2, routing_key=KEY_A)  # deferred, twice
    standin.add_fault(status=429, count=1, routing_key=KEY_A, retry_after=0)  # throttled
    standin.add_fault(status=400, count=1, routing_key=KEY_B)  # failed
    standin.add_fault(status=403, count=1, routing_key=KEY_V1, api="v1")  # v1 throttling
    standin.add_fault(status=500, count=1, routing_key=KEY_CHANGE)
    # throttle by rate too; strict FIFO, so every event here is delivered (tests/test_storm.py checks the
    # superseded records)
    agent = make_agent(PDAGENT_RATE_LIMIT_PER_MINUTE="600", PDAGENT_RATE_LIMIT_BURST="1", PDAGENT_COALESCE="no")
    send_many(agent, [trigger(KEY_A, "a1", "a1"), action(KEY_A, "acknowledge", "a1"), action(KEY_A, "resolve", "a1"),
                      trigger(KEY_B, "b1", "b1")])
    send_many(agent, [{"service_key": KEY_V1, "event_type": "trigger", "description": "v1", "incident_key": "v"}],
              api="v1")
    send_many(agent, [{"routing_key": KEY_CHANGE, "payload": {"summary": "deployed"}}], api="change")
    invalid = agent.request({"op": "send", "api": "v2", "event": {"routing_key": KEY_A, "event_action": "nope"}})
    assert invalid["code"] == "invalid_event" and KEY_A not in json.dumps(invalid)
    assert standin.wait_for(5, timeout=20), agent.log()
    assert agent.wait_until(lambda: agent.status()["totals"]["failed"] == 1, timeout=10)
    assert agent.request({"op": "retry", "routing_key": KEY_B})["count"] == 1
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 6, timeout=10), agent.status()
    standin.add_fault(status=400, routing_key=KEY_B)
    send_many(agent, [trigger(KEY_B, "b2", "b2")])
    assert agent.wait_until(lambda: agent.status()["totals"]["failed"] == 1, timeout=10)
    assert agent.request({"op": "drop", "routing_key": KEY_B, "state": "failed"})["count"] == 1
    agent.stop()

    log = agent.log()
    phrases = {"started": " started: ", "accepted": "accepted event", "delivered": "delivered event",
               "deferred": " deferred ", "throttled": "throttled for", "failed": " failed: ",
               "retried": "set up for retry", "dropped": "dropped by uid", "stopped": "pdagentd stopped"}
    kinds = {kind: phrase in log for kind, phrase in phrases.items()}
    figures.update(log_lines=len(log.splitlines()), kinds_seen=kinds)
    assert all(kinds.values()), kinds  # every kind of record was written...
    for key in (KEY_A, KEY_B, KEY_V1, KEY_CHANGE):
        assert key not in log, log[max(0, log.index(key) - 500): log.index(key) + 500]  # ...none with a key
        assert mask(key) in log  # masked, they are there to tell keys apart


@pytest.mark.integration
def test_status_and_metrics_mask_keys_for_everyone_but_admins(agent: Agent, standin: StandIn) -> None:
    send_many(agent, [trigger(KEY_A, "x")])
    assert standin.wait_for(1)
    # root is an admin: whole keys (the other user's view is in test_a_local_user_cannot_read_...)
    assert agent.status()["keys"][0]["routing_key"] == KEY_A
    assert KEY_A not in agent.request({"op": "metrics"})["text"]  # metrics are for anyone: always masked


# --- TLS --------------------------------------------------------------------------------------------------------


@pytest.fixture
def tls_standin(tmp_path: Any) -> Iterator[Any]:
    ca = make_test_ca(tmp_path / "ca")
    with StandIn(certfile=ca.server_cert, keyfile=ca.server_key) as api:
        api.ca = ca  # type: ignore[attr-defined]
        yield api


@pytest.mark.interpreters
@pytest.mark.integration
@pytest.mark.parametrize("environment", [{}, {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""},
                                         {"PYTHONHTTPSVERIFY": "0"}], ids=["plain", "empty-ca-env", "httpsverify0"])
def test_an_untrusted_certificate_fails_delivery_and_the_event_waits(tmp_path: Any, tls_standin: Any,
                                                                     environment: Dict[str, str]) -> None:
    agent = Agent(str(tmp_path / "agent"), tls_standin.url.replace("http://", "https://"), **environment)
    os.makedirs(agent.workdir)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        if name not in environment:
            agent.env.pop(name, None)
    agent.start()
    try:
        reply = agent.request({"op": "send", "api": "v2", "event": trigger(KEY_A, "over TLS", "tls-1")})
        assert reply["ok"]
        assert agent.wait_until(lambda: "certificate verify failed" in agent.log().lower(), timeout=15), agent.log()
        assert "TLS error" in agent.log()
        assert tls_standin.received() == []

        def shown() -> Dict[str, Any]:
            return agent.request({"op": "show", "id": reply["id"]})["event"]

        # the deferral is logged while its attempt is still being committed: wait for the queue to have it
        assert agent.wait_until(lambda: shown()["attempts"] >= 1), shown()
        event = shown()
        assert event["state"] == "pending" and "TLS" in event["last_error"]
    finally:
        agent.stop()
    # the same queue with the test CA as ca_bundle: the waiting event goes out
    trusted = Agent(agent.workdir, agent.env["PDAGENT_EVENTS_URL"], PDAGENT_CA_BUNDLE=tls_standin.ca.ca_cert,
                    REQUESTS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt", **{
                        k: v for k, v in environment.items() if k != "REQUESTS_CA_BUNDLE"})
    trusted.start()
    try:
        assert tls_standin.wait_for(1, timeout=15), trusted.log()
        assert tls_standin.bodies(KEY_A)[0]["dedup_key"] == "tls-1"
        assert trusted.wait_until(lambda: trusted.status()["totals"]["delivered"] == 1)
    finally:
        trusted.stop()


@pytest.mark.interpreters
@pytest.mark.integration
def test_a_certificate_for_another_name_fails_even_from_a_trusted_ca(tmp_path: Any) -> None:
    """The test CA's server certificate names 127.0.0.1 and localhost; served on 127.0.0.2 (loopback too)
    with ca_bundle trusting its CA, delivery must still fail: the name is verified, not just the chain."""
    ca = make_test_ca(tmp_path / "ca")
    with StandIn("127.0.0.2", certfile=ca.server_cert, keyfile=ca.server_key) as api:
        agent = Agent(str(tmp_path), api.url.replace("http://", "https://"), PDAGENT_CA_BUNDLE=ca.ca_cert).start()
        try:
            send_many(agent, [trigger(KEY_A, "wrong name")])
            assert agent.wait_until(lambda: "IP address mismatch" in agent.log(), timeout=15), agent.log()
            assert api.received() == [] and agent.pending() == 1
        finally:
            agent.stop()


# --- plain http -------------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("url, safe", [
    ("https://events.pagerduty.com", True), ("https://events.eu.pagerduty.com/", True),
    ("http://127.0.0.1:8080", True), ("http://127.1.2.3", True), ("http://localhost:80/x", True),
    ("http://LOCALHOST", True), ("http://[::1]:8080", True),
    ("http://events.pagerduty.com", False), ("http://10.0.0.1", False), ("http://localhost.evil.example", False),
    ("http://127.0.0.1.nip.io", False), ("http://127.0.0.1@evil.example", False),
    ("http://127.0.0.1:80@evil.example/x", False), ("http://127.0.0.1\\@evil.example", False),
    ("http://2130706433", False), ("http://[::1", False), ("ftp://127.0.0.1", False),
])
def test_which_http_urls_count_as_loopback(url: str, safe: bool) -> None:
    assert is_safe_url(url) is safe


@pytest.mark.unit
def test_plain_http_needs_allow_insecure_http() -> None:
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        load("/nonexistent", {"PDAGENT_EVENTS_URL": "http://127.0.0.1.nip.io"})
    config = load("/nonexistent", {"PDAGENT_EVENTS_URL": "http://events.example", "PDAGENT_ALLOW_INSECURE_HTTP": "yes"})
    assert config.events_url == "http://events.example"


@pytest.mark.interpreters
@pytest.mark.integration
@pytest.mark.parametrize("url, starts", [("http://events.example.com", False),
                                         ("http://127.0.0.1@events.example", False),
                                         ("http://127.0.0.1.nip.io", False), ("https://events.example.com", True)])
def test_the_daemon_refuses_plain_http_at_start(tmp_path: Any, url: str, starts: bool) -> None:
    agent = Agent(str(tmp_path), url)
    daemon = [sys.executable, "-m", "pdagent_sd.daemon"]
    if starts:
        agent.start()
        agent.stop()
        return
    result = subprocess.run(daemon, env=agent.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 78, result.stderr
    assert "allow_insecure_http" in result.stderr and "Traceback" not in result.stderr
    allowed = Agent(str(tmp_path), url, PDAGENT_ALLOW_INSECURE_HTTP="yes")
    allowed.start()  # explicitly allowed: it starts (and sends nothing here)
    allowed.stop()
