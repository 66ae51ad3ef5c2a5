"""Integration: the real pdagentd process, a real Unix socket, a real SQLite file and the Events API stand-in."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from agentproc import KEY_A, KEY_B, Agent, action, base_env, read_line, send_many, trigger
from waiting import quiet_for

# the daemon's life on each interpreter (sockets, signals, SQLite, HTTP, socket activation): `interpreters`
pytestmark = [pytest.mark.integration, pytest.mark.interpreters]


def test_trigger_acknowledge_resolve_round_trip_in_order(agent, standin):
    sent = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "Server is on fire", "-f", "disk=/var")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("Event processed. Incident Key: ")
    dedup_key = sent.stdout.strip().rsplit(" ", 1)[1]
    for event_type in ("acknowledge", "resolve"):
        result = agent.pd_send("-k", KEY_A, "-t", event_type, "-i", dedup_key)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"Event processed. Incident Key: {dedup_key}"
    assert standin.wait_for(3, timeout=10), agent.log()
    bodies = standin.bodies(KEY_A)
    assert [body["event_action"] for body in bodies] == ["trigger", "acknowledge", "resolve"]
    assert {body["dedup_key"] for body in bodies} == {dedup_key}
    assert bodies[0]["payload"]["summary"] == "Server is on fire"
    assert bodies[0]["payload"]["severity"] == "error"
    assert bodies[0]["payload"]["source"]  # the agent filled in this host's name
    assert bodies[0]["payload"]["custom_details"] == {"disk": "/var"}
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 3)


def test_v1_and_change_events_reach_their_endpoints(agent, standin):
    v1 = agent.pd_send("--api", "v1", "-k", KEY_A, "-t", "trigger", "-d", "legacy", "-i", "v1-key",
                       "-c", "cron", "-u", "https://cron.example/job")
    change = agent.pd_send("--change", "-k", KEY_B, "-d", "Deployed v1.2.3",
                           "--link", "https://ci.example/42|build 42")
    assert v1.returncode == 0 and change.returncode == 0, v1.stderr + change.stderr
    assert v1.stdout.strip() == "Event processed. Incident Key: v1-key"
    assert change.stdout.strip() == "Event processed."
    assert standin.wait_for(2, timeout=10), agent.log()
    by_api = {record.api: record for record in standin.events}
    assert by_api["v1"].path == "/generic/2010-04-15/create_event.json"
    assert by_api["v1"].body == {"service_key": KEY_A, "event_type": "trigger", "incident_key": "v1-key",
                                 "description": "legacy", "client": "cron",
                                 "client_url": "https://cron.example/job"}
    assert by_api["change"].path == "/v2/change/enqueue"
    assert by_api["change"].body["payload"]["summary"] == "Deployed v1.2.3"
    assert by_api["change"].body["links"] == [{"href": "https://ci.example/42", "text": "build 42"}]


def test_server_errors_and_throttling_delay_only_that_key_and_keep_its_order(make_agent, standin):
    standin.add_fault(status=500, count=2, routing_key=KEY_A)
    standin.add_fault(status=429, count=1, routing_key=KEY_A, retry_after=1)
    # Retry-After is honoured up to backoff_max_sec; strict FIFO, so the acknowledge is not coalesced away
    agent = make_agent(PDAGENT_BACKOFF_MAX_SEC="2", PDAGENT_COALESCE="no")
    send_many(agent, [trigger(KEY_A, "a1", "a1"), action(KEY_A, "acknowledge", "a1"),
                      action(KEY_A, "resolve", "a1")])
    send_many(agent, [trigger(KEY_B, f"b{i}", f"b{i}") for i in range(3)])
    assert standin.wait_for(3, timeout=5, routing_key=KEY_B)
    b_done = standin.received(KEY_B)[-1].time
    assert standin.wait_for(3, timeout=15, routing_key=KEY_A), agent.log()
    a_events = standin.received(KEY_A)
    assert [e.action for e in a_events] == ["trigger", "acknowledge", "resolve"]
    assert [e.body["dedup_key"] for e in standin.received(KEY_B)] == ["b0", "b1", "b2"]
    assert b_done < a_events[0].time  # B went through while A was failing
    first_a_request = min(r.time for r in standin.requests if r.routing_key == KEY_A)
    assert a_events[0].time - first_a_request >= 1.0  # Retry-After: 1 was honoured
    assert standin.request_count_for(KEY_A) == 6  # 2 x 500, 1 x 429, then three deliveries


def test_invalid_event_at_pagerduty_goes_to_failed_with_its_error_text(make_agent, standin):
    standin.add_fault(status=400, count=1, body={"status": "invalid event", "message": "Event object is invalid",
                                                 "errors": ["'payload.summary' is too clever"]})
    agent = make_agent()
    reply = agent.request({"op": "send", "api": "v2", "event": trigger(KEY_A, "bad one")})
    assert reply["ok"]
    send_many(agent, [trigger(KEY_A, "good one")])
    assert standin.wait_for(1, timeout=10)
    assert standin.bodies(KEY_A)[0]["payload"]["summary"] == "good one"
    assert agent.wait_until(lambda: agent.status()["totals"]["failed"] == 1)
    shown = agent.request({"op": "show", "id": reply["id"]})["event"]
    assert shown["state"] == "failed"
    assert shown["last_status"] == 400
    assert "too clever" in shown["last_error"]
    assert shown["attempts_log"][0]["http_status"] == 400


def test_kill_9_after_acknowledgement_loses_nothing_and_delivers_once(make_agent, standin):
    standin.refuse_connections()
    agent = make_agent()
    replies = send_many(agent, [trigger(KEY_A, f"event {i}", f"k{i}") for i in range(5)])
    assert all(reply["ok"] for reply in replies)
    agent.kill9()
    standin.accept_connections()
    agent.start()
    assert standin.wait_for(5, timeout=15), agent.log()
    quiet_for(standin, 0.5)  # no duplicate arrives
    assert [body["dedup_key"] for body in standin.bodies(KEY_A)] == [f"k{i}" for i in range(5)]


def test_bad_input_gets_error_replies_and_the_daemon_keeps_serving(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket)
        for line, code in ((b"this is not json\n", "bad_request"), (b"[1,2]\n", "bad_request"),
                           (b'{"op":"explode"}\n', "bad_request"), (b"\xff\xfe\n", "bad_request"),
                           (json.dumps({"op": "send", "api": "v2",
                                        "event": {"routing_key": KEY_A, "event_action": "trigger"}}).encode()
                            + b"\n", "invalid_event")):
            sock.sendall(line)
            reply = json.loads(read_line(sock))
            assert reply["ok"] is False and reply["code"] == code, (line, reply)
            assert reply["error"]
        sock.sendall(b'{"op":"status"}\n')
        assert json.loads(read_line(sock))["ok"] is True  # same connection still served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket)
        sock.sendall(b"x" * (1024 * 1024 + 10) + b"\n")
        reply = json.loads(read_line(sock))
        assert reply["code"] == "bad_request" and "longer than" in reply["error"]
    assert agent.status()["ok"] is True
    assert agent.proc is not None and agent.proc.poll() is None


def test_invalid_event_names_the_field_and_exits_65(agent):
    result = agent.pd_send("-k", KEY_A, "--change", "--source", "db01")
    assert result.returncode == 65
    assert "payload.summary" in result.stderr
    assert "Traceback" not in result.stderr
    result = agent.pd_send("-k", "tooshort", "-t", "trigger", "-d", "x")
    assert result.returncode == 65 and "routing_key" in result.stderr
    # What the old pd-send refused itself (a trigger without description, a resolve without incident key) is a
    # usage error, exit status 2, as it was there: tests/test_cli_compat.py.
    result = agent.pd_send("-k", KEY_A, "-t", "resolve")
    assert result.returncode == 2 and "-t resolve needs -i/--incident-key" in result.stderr


def test_a_description_too_long_for_a_summary_is_cut_and_sent_whole_in_the_details(agent, standin):
    text = "disk full on /var: " + "x" * 1500
    v2 = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", text, "-i", "long-v2", "-f", "disk=/var")
    v1 = agent.pd_send("--api", "v1", "-k", KEY_B, "-t", "trigger", "-d", text, "-i", "long-v1")
    own = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", text, "-i", "long-own", "-f", "description=mine")
    for result in (v2, v1, own):
        assert result.returncode == 0, result.stderr
        assert f"the description is {len(text)} characters" in result.stderr
    assert "sent as custom_details.description" in v2.stderr
    assert "sent as details.description" in v1.stderr
    assert "is your -f description" in own.stderr
    assert standin.wait_for(3, timeout=10), agent.log()
    bodies = {body["dedup_key" if "dedup_key" in body else "incident_key"]: body
              for body in standin.bodies(KEY_A) + standin.bodies(KEY_B)}
    summary = bodies["long-v2"]["payload"]["summary"]
    assert len(summary) == 1024 and summary.endswith("…") and text.startswith(summary[:-1])
    assert bodies["long-v2"]["payload"]["custom_details"] == {"disk": "/var", "description": text}
    assert len(bodies["long-v1"]["description"]) == 1024 and bodies["long-v1"]["details"] == {"description": text}
    assert bodies["long-own"]["payload"]["custom_details"] == {"description": "mine"}
    short = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "x" * 1024, "-i", "just-fits")
    assert short.returncode == 0 and short.stderr == ""


def test_pd_send_without_an_agent_exits_69_and_names_the_socket(tmp_path):
    missing = str(tmp_path / "nobody-home.sock")
    env = base_env(PDAGENT_SOCKET=missing)
    result = subprocess.run([sys.executable, "-m", "pdagent_sd.cli.send", "-k", KEY_A, "-t", "trigger", "-d", "x"],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 69
    assert missing in result.stderr
    assert "systemctl status pdagent.socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(agent):
    assert agent.pd_send("-t", "trigger").returncode == 2
    assert agent.pd_send("-k", KEY_A, "-t", "explode").returncode == 2
    assert agent.pd_send("-k", KEY_A, "-d", "no type").returncode == 2
    bad_field = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "x", "-f", "novalue")
    assert bad_field.returncode == 2 and "KEY=VALUE" in bad_field.stderr


def test_full_queue_refuses_with_75_and_drops_nothing(make_agent, standin):
    standin.refuse_connections()
    agent = make_agent(PDAGENT_MAX_PENDING_EVENTS="2")
    assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "one").returncode == 0
    assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "two").returncode == 0
    refused = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "three")
    assert refused.returncode == 75
    assert "max_pending_events" in refused.stderr
    assert "hint: " in refused.stderr and "pd-queue status" in refused.stderr  # the daemon's hint reaches the user
    assert agent.pending() == 2
    # The refusal is on record (once, however many follow within the minute), not only in the sender's output.
    for _ in range(3):
        assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "again").returncode == 75
    assert agent.wait_until(lambda: "refused 1 event(s) from uid" in agent.log())
    assert agent.log().count("event(s) from uid") == 1 and "max_pending_events" in agent.log()
    standin.accept_connections()
    assert standin.wait_for(2, timeout=15)
    assert [body["payload"]["summary"] for body in standin.bodies()] == ["one", "two"]


def test_pending_marker_exists_exactly_while_events_are_pending(make_agent, standin):
    standin.refuse_connections()
    agent = make_agent()
    marker = os.path.join(agent.state_dir, "pending")
    assert not os.path.exists(marker)
    send_many(agent, [trigger(KEY_A, "wait for me")])
    assert os.path.exists(marker)
    standin.accept_connections()
    assert standin.wait_for(1, timeout=10)
    assert agent.wait_until(lambda: not os.path.exists(marker))


def test_state_is_private_to_the_service(agent):
    send_many(agent, [trigger(KEY_A, "x")])
    assert os.stat(agent.state_dir).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(agent.state_dir, "queue.db")).st_mode & 0o777 == 0o600
    assert os.stat(agent.socket).st_mode & 0o777 == 0o666


def test_sigterm_keeps_pending_events_and_exits_0(make_agent, standin):
    standin.refuse_connections()
    agent = make_agent()
    send_many(agent, [trigger(KEY_A, "survive a stop", "stop-1")])
    assert agent.stop(signal.SIGTERM) == 0
    assert "1 pending event(s) kept" in agent.log()
    with sqlite3.connect(os.path.join(agent.state_dir, "queue.db")) as db:
        assert db.execute("SELECT state, dedup_key FROM events").fetchall() == [("pending", "stop-1")]
    assert not os.path.exists(agent.socket)  # it bound the socket itself, so it removes it
    standin.accept_connections()
    agent.start()
    assert standin.wait_for(1, timeout=10)


def test_daemon_closes_every_queue_connection_it_opened(make_agent, standin):
    """Python 3.13 warns of a SQLite connection left to the garbage collector (ResourceWarning, shown with -X dev).
    Reads from the main loop, a status thread and delivery workers each open their own connection; stopping
    the daemon must close them all. Under Python < 3.13 sqlite3 does not warn, and this proves less."""
    agent = make_agent(PYTHONDEVMODE="1", PYTHONWARNINGS="error::ResourceWarning")
    dedup = "rw-check"
    assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "read by several threads", "-i", dedup).returncode == 0
    assert standin.wait_for(1, timeout=10), agent.log()
    for op in ({"op": "status"}, {"op": "list", "state": "delivered"}):
        assert agent.request(op)["ok"] is True
    assert agent.client("pdagent_sd.cli.queue", "status").returncode == 0
    assert agent.stop(signal.SIGTERM) == 0
    log = agent.log()
    assert "pdagentd stopped" in log
    assert "ResourceWarning" not in log and "unclosed" not in log, log


def test_per_key_token_bucket_spaces_events(make_agent, standin):
    agent = make_agent(PDAGENT_RATE_LIMIT_PER_MINUTE="120", PDAGENT_RATE_LIMIT_BURST="2")
    sent = time.monotonic()  # the key's bucket is made, full, after this: with the first event
    send_many(agent, [trigger(KEY_A, f"t{i}", f"t{i}") for i in range(4)] + [trigger(KEY_B, "other", "o")])
    assert standin.wait_for(5, timeout=10)
    times = [event.time for event in standin.received(KEY_A)]
    # 2 at once, then one every 0.5 s at 120/min: the 4th token exists 1 s after the bucket was made at the
    # earliest. (From the first arrival, a first request 0.1 s slower than the fourth failed the old bound.)
    assert times[3] - sent >= 0.99
    assert standin.received(KEY_B)[0].time < times[3]  # another key is not held back
    assert "throttled" in agent.log()


def test_bad_config_stops_the_daemon_naming_file_and_key(tmp_path, standin):
    agent = Agent(str(tmp_path), standin.url)
    with open(agent.config, "w") as config:
        config.write("[Agent]\nrate_limit_per_minute = fast\n")
    result = subprocess.run([sys.executable, "-m", "pdagent_sd.daemon"], env=agent.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 78
    assert agent.config in result.stderr and "rate_limit_per_minute" in result.stderr
    assert "Traceback" not in result.stderr


def test_socket_activated_with_a_bad_setting_holds_the_socket_and_starts_once_fixed(tmp_path, standin):
    """Exiting 78 under socket activation had systemd restart pdagentd until the start limit failed
    pdagent.socket too, and every pd-send then failed until someone restarted it by hand. Now the daemon holds
    the socket, refuses each request naming the file and the key (pd-send exits 78), leaves the queue alone,
    and once the file is fixed goes on with the same socket."""
    agent = Agent(str(tmp_path), standin.url)
    with open(agent.config, "w") as config:
        config.write("[Agent]\nidle_exit_sec = soon\n")
    check = subprocess.run([sys.executable, "-m", "pdagent_sd.daemon", "--check-config"], env=agent.env,
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 78, check
    assert agent.config in check.stderr and "idle_exit_sec" in check.stderr and "Traceback" not in check.stderr
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(agent.socket)
    listener.listen(16)
    daemon = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m pdagent_sd.daemon'],
        env=agent.env, pass_fds=(3,), preexec_fn=lambda: os.dup2(listener.fileno(), 3),
        stderr=subprocess.PIPE, text=True)
    try:
        reply = _send_over(agent.socket, trigger(KEY_A, "while misconfigured", "bad-1"))
        assert reply["ok"] is False and reply["code"] == "config_error", reply
        assert agent.config in reply["error"] and "idle_exit_sec" in reply["error"]
        sent = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "still misconfigured")
        assert sent.returncode == 78 and "idle_exit_sec" in sent.stderr, sent
        assert daemon.poll() is None, "it holds the socket instead of exiting"
        assert not os.path.exists(os.path.join(agent.state_dir, "queue.db")), "the queue is left alone"

        with open(agent.config, "w") as config:
            config.write("[Agent]\nidle_exit_sec = 30s\n")
        deadline = time.monotonic() + 10
        while True:
            reply = _send_over(agent.socket, trigger(KEY_A, "fixed", "fixed-1"))
            if reply["ok"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert reply["ok"], reply
        assert standin.wait_for(1, timeout=10)
        assert [body["dedup_key"] for body in standin.bodies(KEY_A)] == ["fixed-1"]
        assert daemon.poll() is None
        ok = subprocess.run([sys.executable, "-m", "pdagent_sd.daemon", "--check-config"], env=agent.env,
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0 and "configuration OK" in ok.stdout, ok
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=15)
        listener.close()
    assert "configuration error, not delivering" in err and "configuration fixed" in err, err
    assert "Traceback" not in err


def test_plain_http_to_a_remote_host_is_refused(tmp_path):
    agent = Agent(str(tmp_path), "http://events.example.com")
    result = subprocess.run([sys.executable, "-m", "pdagent_sd.daemon"], env=agent.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 78 and "allow_insecure_http" in result.stderr


def test_socket_activated_daemon_exits_when_idle_and_keeps_the_socket(tmp_path, standin):
    agent = Agent(str(tmp_path), standin.url, PDAGENT_IDLE_EXIT_SEC="1")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(agent.socket)
    listener.listen(16)
    try:
        def activate() -> "subprocess.Popen[bytes]":
            # LISTEN_PID must be the daemon's own pid: set it in the shell that then execs Python.
            return subprocess.Popen(
                ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m pdagent_sd.daemon'],
                env=agent.env, pass_fds=(3,),
                preexec_fn=lambda: os.dup2(listener.fileno(), 3), stderr=subprocess.PIPE)

        daemon = activate()
        try:
            reply = _send_over(agent.socket, trigger(KEY_A, "activated", "act-1"))
            assert reply["ok"], reply
            assert standin.wait_for(1, timeout=10)
            assert daemon.wait(timeout=10) == 0  # idle exit after delivering
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        # systemd would start it again on the next connection; the socket itself kept listening
        pending_client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        pending_client.connect(agent.socket)
        pending_client.sendall(json.dumps({"op": "send", "api": "v2",
                                           "event": trigger(KEY_A, "second", "act-2")}).encode() + b"\n")
        daemon = activate()
        try:
            assert json.loads(read_line(pending_client))["ok"]
            assert standin.wait_for(2, timeout=10)
        finally:
            pending_client.close()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
        assert os.path.exists(agent.socket)  # an adopted socket is systemd's: never unlinked by the daemon
    finally:
        listener.close()


def test_an_idle_daemon_with_an_undelivered_event_does_not_exit_until_it_is_delivered(tmp_path, standin):
    """Idle exit only with an empty queue: the API down, one event pending and waiting out its backoff (longer
    than the idle time, so no worker is busy meanwhile), the daemon stays; once delivered, it goes."""
    agent = Agent(str(tmp_path), standin.url, PDAGENT_IDLE_EXIT_SEC="1", PDAGENT_BACKOFF_MIN_SEC="4",
                  PDAGENT_BACKOFF_MAX_SEC="4")
    standin.add_fault(status=503)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(agent.socket)
    listener.listen(16)
    daemon = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{sys.executable}" -m pdagent_sd.daemon'],
        env=agent.env, pass_fds=(3,), preexec_fn=lambda: os.dup2(listener.fileno(), 3),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _send_over(agent.socket, trigger(KEY_A, "waits out the outage", "idle-1"))["ok"]
        assert standin.wait_for_requests(1, timeout=10)  # the first attempt failed: backing off for 4 s
        time.sleep(2.5)  # time itself: more than twice the idle time passes with nothing in flight
        assert daemon.poll() is None, "the daemon exited idle with an event still pending"
        standin.clear_faults()
        assert standin.wait_for(1, timeout=10)  # the retry delivers it
        assert daemon.wait(timeout=10) == 0  # and now, idle with an empty queue, it exits
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        listener.close()


def _send_over(path: str, event: dict) -> dict:  # type: ignore[type-arg]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(json.dumps({"op": "send", "api": "v2", "event": event}).encode() + b"\n")
        return json.loads(read_line(sock))


def test_retention_deletes_old_delivered_events_at_start(make_agent, standin):
    agent = make_agent(PDAGENT_KEEP_DELIVERED="1s")
    send_many(agent, [trigger(KEY_A, "old news")])
    assert standin.wait_for(1, timeout=10)
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 1)
    agent.stop()
    time.sleep(1.2)  # time itself: the delivered event grows older than keep_delivered (1 s)
    agent.start()
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 0)


def test_concurrent_senders_share_commits(agent):
    import threading

    errors = []

    def sender(index: int) -> None:
        try:
            replies = send_many(agent, [trigger(KEY_A, f"s{index}-{n}") for n in range(20)])
            errors.extend(reply for reply in replies if not reply["ok"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    ids = [row[0] for row in sqlite3.connect(os.path.join(agent.state_dir, "queue.db")).execute(
        "SELECT id FROM events")]
    assert len(ids) == 320 and len(set(ids)) == 320
