"""Integration: pd-queue against the real pdagentd (a real socket, SQLite file and Events API stand-in),
and as another uid, to check that the daemon's SO_PEERCRED rules hold."""

from __future__ import annotations

import grp
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from pdagent_sd.store import Store

from agentproc import KEY_A, KEY_B, ROOT, Agent, insert_events, send_many, trigger
from tiers import missing

pytestmark = pytest.mark.integration

QUEUE = "pdagent_sd.cli.queue"
HEADER = "Service Key                           Pending   Success  In Error"  # the seed agent's, byte for byte
INVALID = {"status": "invalid event", "message": "Event object is invalid",
           "errors": ["'payload.summary' is too clever"]}
MASK_A = KEY_A[:4] + "…" + KEY_A[-4:]
MASK_B = KEY_B[:4] + "…" + KEY_B[-4:]


def pd_queue(agent: Agent, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return agent.client(QUEUE, *args, **kwargs)


def ok(result: subprocess.CompletedProcess) -> str:  # type: ignore[type-arg]
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    return str(result.stdout)


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:  # type: ignore[type-arg]
    """A refusal or error: the exit code asked for, no traceback, and a first line naming pd-queue."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("pd-queue: ")
    return str(result.stderr)


def make_failed(agent: Agent, standin: Any, key: str, count: int) -> List[int]:
    """Queue `count` events that PagerDuty refuses with 400: they end in state failed."""
    standin.add_fault(status=400, count=count, routing_key=key, body=INVALID)
    ids = [reply["id"] for reply in send_many(agent, [trigger(key, f"bad {i}") for i in range(count)])]
    assert agent.wait_until(lambda: _count(agent, key, "failed") >= count), agent.log()
    return ids


def _count(agent: Agent, key: str, state: str) -> int:
    keys = agent.request({"op": "status", "routing_key": key})["keys"]
    return int(keys[0][state]) if keys else 0


# --- status -----------------------------------------------------------------------------------------------------


@pytest.mark.interpreters
def test_status_prints_the_seed_table_with_totals(agent, standin):
    send_many(agent, [trigger(KEY_A, f"fine {i}") for i in range(2)])
    assert standin.wait_for(2, timeout=10)
    make_failed(agent, standin, KEY_B, 1)
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 2)
    lines = ok(pd_queue(agent, "status")).splitlines()
    assert lines[0] == HEADER
    # the seed's columns: key left in 35, then three counts right-aligned in 9, one space apart
    assert lines[1] == f"{KEY_A:<35} {0:>9} {2:>9} {0:>9}"
    assert lines[2] == f"{KEY_B:<35} {0:>9} {0:>9} {1:>9}"
    assert lines[3] == f"{'Total':<35} {0:>9} {2:>9} {1:>9}"
    assert re.fullmatch(r"Last delivery: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+s ago\)", lines[-1])


def test_status_for_one_key_and_for_an_unknown_key(agent, standin):
    send_many(agent, [trigger(KEY_A, "one"), trigger(KEY_B, "two")])
    assert standin.wait_for(2, timeout=10)
    # the stand-in has the events before the daemon has their answers, and it commits them after that
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 2), agent.status()
    lines = ok(pd_queue(agent, "status", "-k", KEY_B)).splitlines()
    assert lines[:2] == [HEADER, f"{KEY_B:<35} {0:>9} {1:>9} {0:>9}"]
    assert not any(line.startswith((KEY_A, "Total")) for line in lines)
    unknown = "c" * 32
    lines = ok(pd_queue(agent, "status", "--service-key", unknown)).splitlines()
    assert lines[:2] == [HEADER, f"{unknown:<35} {0:>9} {0:>9} {0:>9}"]


def test_status_shows_oldest_pending_age_and_backoff(agent, standin):
    standin.refuse_connections()
    send_many(agent, [trigger(KEY_A, "stuck")])
    assert agent.wait_until(lambda: agent.request({"op": "show", "id": 1})["event"]["attempts"] >= 1)
    out = ok(pd_queue(agent, "status"))
    assert f"{KEY_A:<35} {1:>9} {0:>9} {0:>9}" in out.splitlines()
    detail = [line for line in out.splitlines() if line.startswith(KEY_A + ":")]
    assert detail and "oldest pending " in detail[0], out
    assert "Last delivery: none on record" in out
    reply = json.loads(ok(pd_queue(agent, "status", "--json")))
    assert reply["keys"][0]["oldest_pending_age"] >= 0
    standin.accept_connections()


def test_a_key_whose_pending_events_were_dropped_no_longer_counts_as_held(agent, standin):
    standin.refuse_connections()
    event_id = send_many(agent, [trigger(KEY_A, "stuck")])[0]["id"]
    assert agent.wait_until(lambda: agent.request({"op": "status"})["throttled_keys"] == 1), agent.log()
    ok(pd_queue(agent, "drop", str(event_id), "--yes"))
    reply = json.loads(ok(pd_queue(agent, "status", "--json")))
    assert reply["throttled_keys"] == 0
    assert reply["keys"] == [] or reply["keys"][0]["backoff_until"] is None
    standin.accept_connections()


def test_status_json_is_the_daemons_answer(agent, standin):
    make_failed(agent, standin, KEY_A, 2)
    reply = json.loads(ok(pd_queue(agent, "status", "--json")))
    assert reply["totals"] == {"pending": 0, "delivered": 0, "failed": 2, "superseded": 0}
    assert reply["keys"][0]["routing_key"] == KEY_A
    assert reply["redacted"] is False
    assert reply["warnings"] == [] and reply["daemon"]["pid"] == agent.pid
    assert "ok" not in reply


def test_status_details_at_most_200_keys_most_pending_first_and_counts_the_rest(make_agent, standin):
    """A queue holding a flood of made-up keys: status and metrics stay 200 keys long, the keys with events
    waiting among them, and Total and keys_total still count everything."""
    agent = make_agent(start=False)
    junk = [f"{n:032x}" for n in range(230)]
    Store(agent.state_dir).open()
    insert_events(agent.state_dir, [(key, "delivered") for key in junk] + [(KEY_A, "failed")] * 3
                  + [(KEY_B, "pending")] * 2)
    standin.refuse_connections()  # KEY_B's events stay pending
    agent.start()
    reply = json.loads(ok(pd_queue(agent, "status", "--json")))
    assert len(reply["keys"]) == 200
    assert reply["keys_total"] == 232 and reply["keys_omitted"] == 32
    shown = {entry["routing_key"]: entry for entry in reply["keys"]}
    assert shown[KEY_B]["pending"] == 2 and shown[KEY_A]["failed"] == 3
    assert reply["totals"] == {"pending": 2, "delivered": 230, "failed": 3, "superseded": 0}
    lines = ok(pd_queue(agent, "status")).splitlines()
    assert lines[201] == f"{'Total':<35} {2:>9} {230:>9} {3:>9}"
    assert lines[202] == "(and 32 more routing key(s), fewer events each; -k KEY shows any one)"
    one = json.loads(ok(pd_queue(agent, "status", "-k", junk[-1], "--json")))
    assert [entry["delivered"] for entry in one["keys"]] == [1] and one["keys_omitted"] == 0
    families = parse_openmetrics(ok(pd_queue(agent, "metrics")))
    assert families["pdagent_routing_keys"]["samples"][()] == 232
    assert len({labels for labels in families["pdagent_events"]["samples"]}) <= 200 * 4
    assert families["pdagent_queue_events"]["samples"][(("state", "delivered"),)] == 230
    standin.accept_connections()


def test_status_warns_when_the_queue_was_found_damaged(make_agent):
    agent = make_agent(start=False)
    os.makedirs(agent.state_dir, mode=0o700)
    with open(os.path.join(agent.state_dir, "queue.db"), "wb") as damaged:
        damaged.write(b"this is not an SQLite database, and it is long enough to be read as one" * 20)
    agent.start()
    result = pd_queue(agent, "status")
    assert ok(result).splitlines()[0] == HEADER
    assert re.search(r"pd-queue: warning: the queue database was found damaged and moved aside to \S+"
                     r"queue\.db\.corrupt-", result.stderr), result.stderr
    metrics = ok(pd_queue(agent, "metrics"))
    assert "pdagent_damaged_queue_files 1" in metrics.splitlines()


# --- retry ------------------------------------------------------------------------------------------------------


def test_retry_by_key_then_all_keys(agent, standin):
    make_failed(agent, standin, KEY_A, 2)
    make_failed(agent, standin, KEY_B, 1)
    assert ok(pd_queue(agent, "retry", "-k", KEY_A)).strip() == "2 event(s) set up for retry."
    assert standin.wait_for(2, timeout=10, routing_key=KEY_A), agent.log()
    assert [body["payload"]["summary"] for body in standin.bodies(KEY_A)] == ["bad 0", "bad 1"]  # in order
    assert _count(agent, KEY_B, "failed") == 1
    assert ok(pd_queue(agent, "retry", "--all-keys")).strip() == "1 event(s) set up for retry."
    assert standin.wait_for(1, timeout=10, routing_key=KEY_B)
    assert ok(pd_queue(agent, "retry", "-a")).strip() == "0 event(s) set up for retry."


def test_retry_needs_exactly_one_of_key_or_all(agent):
    for args in (["retry"], ["retry", "-a", "-k", KEY_A]):
        result = pd_queue(agent, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "usage: pd-queue retry" in result.stderr


def test_retried_events_keep_their_place_in_their_keys_order(agent, standin):
    ids = make_failed(agent, standin, KEY_A, 1)
    standin.refuse_connections()
    send_many(agent, [trigger(KEY_A, "later")])
    ok(pd_queue(agent, "retry", "-k", KEY_A))
    listed = json.loads(ok(pd_queue(agent, "list", "--state", "pending", "--json")))["events"]
    assert [row["id"] for row in listed][0] == ids[0]
    standin.accept_connections()
    assert standin.wait_for(2, timeout=15), agent.log()
    assert [body["payload"]["summary"] for body in standin.bodies(KEY_A)] == ["bad 0", "later"]


# --- list, show -------------------------------------------------------------------------------------------------


@pytest.mark.interpreters
def test_list_table_filters_and_json(agent, standin):
    send_many(agent, [trigger(KEY_A, "delivered one", dedup_key="srv01/disk")])
    assert standin.wait_for(1, timeout=10)
    assert agent.wait_until(lambda: _count(agent, KEY_A, "delivered") == 1)  # committed, not only sent
    make_failed(agent, standin, KEY_B, 1)
    lines = ok(pd_queue(agent, "list")).splitlines()
    assert lines[0].split() == ["ID", "STATE", "ROUTING", "KEY", "EVENT", "TRIES", "QUEUED", "HTTP", "SENDER",
                                "DEDUP", "KEY", "DETAIL"]
    assert len(lines) == 3
    assert lines[1].split()[:5] == ["1", "delivered", KEY_A, "v2", "trigger"]
    assert lines[1].split()[8:10] == ["202", str(os.getuid())]  # HTTP, SENDER
    assert "srv01/disk" in lines[1] and "delivered one" in lines[1] and " 202 " in lines[1]
    assert lines[2].split()[:2] == ["2", "failed"] and "error: Event object is invalid" in lines[2]

    failed = ok(pd_queue(agent, "list", "--state", "failed")).splitlines()
    assert len(failed) == 2 and failed[1].split()[0] == "2"
    by_key = ok(pd_queue(agent, "list", "-k", KEY_A)).splitlines()
    assert len(by_key) == 2 and by_key[1].split()[2] == KEY_A

    limited = pd_queue(agent, "list", "--limit", "1")
    assert len(ok(limited).splitlines()) == 2
    assert "showing the first 1 events" in limited.stderr

    listed = json.loads(ok(pd_queue(agent, "list", "--json")))
    assert listed["redacted"] is False
    assert [row["id"] for row in listed["events"]] == [1, 2]
    assert listed["events"][0]["body"]["payload"]["summary"] == "delivered one"  # the body, parsed

    assert ok(pd_queue(agent, "list", "--state", "pending")).strip() == "No events."
    bad = pd_queue(agent, "list", "--limit", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.interpreters
def test_show_gives_the_event_and_every_attempt_with_pagerdutys_words(agent, standin):
    standin.add_fault(status=500, count=1, routing_key=KEY_A)
    standin.add_fault(status=400, count=1, routing_key=KEY_A, body=INVALID)
    event_id = send_many(agent, [trigger(KEY_A, "Server is on fire", dedup_key="srv01/fire")])[0]["id"]
    assert agent.wait_until(lambda: _count(agent, KEY_A, "failed") == 1), agent.log()
    out = ok(pd_queue(agent, "show", str(event_id)))
    lines = out.splitlines()
    assert lines[0] == f"Event {event_id}: v2 trigger, failed"
    assert f"  Routing key:   {KEY_A}" in lines and "  Dedup key:     srv01/fire" in lines
    assert "  Attempts:      2" in lines
    attempts = lines[lines.index("Attempts:") + 1:lines.index("Attempts:") + 3]
    assert re.match(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  deferred   HTTP 500", attempts[0]), attempts
    assert re.match(r"  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  failed     HTTP 400: Event object is invalid.*too clever",
                    attempts[1]), attempts
    assert '"summary": "Server is on fire"' in out  # the body, whole

    shown = json.loads(ok(pd_queue(agent, "show", str(event_id), "--json")))
    assert [a["http_status"] for a in shown["attempts_log"]] == [500, 400]
    assert shown["body"]["dedup_key"] == "srv01/fire"

    missing = one_line_error(pd_queue(agent, "show", "999"), 65)
    assert "no event with id 999" in missing


# --- drop -------------------------------------------------------------------------------------------------------


def test_drop_one_event_and_a_keys_failed_events(agent, standin):
    ids = make_failed(agent, standin, KEY_A, 3)
    assert ok(pd_queue(agent, "drop", str(ids[0]), "--yes")).strip() == "1 event(s) dropped."
    one_line_error(pd_queue(agent, "show", str(ids[0])), 65)
    # not on a terminal: no question asked, as a script would run it
    assert ok(pd_queue(agent, "drop", "-k", KEY_A, "--state", "failed")).strip() == "2 event(s) dropped."
    assert _count(agent, KEY_A, "failed") == 0
    assert ok(pd_queue(agent, "drop", "-k", KEY_A, "--state", "failed", "-y")).strip() == "0 event(s) dropped."


@pytest.mark.interpreters
@pytest.mark.parametrize("args", [["drop"], ["drop", "1", "-k", KEY_A, "--state", "failed"], ["drop", "-k", KEY_A],
                                  ["drop", "1", "--state", "failed"], ["drop", "-k", KEY_A, "--state", "gone"]])
def test_drop_usage_errors_exit_2(agent, args):
    result = pd_queue(agent, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "pd-queue" in result.stderr


def _on_terminal(agent: Agent, answer: str, *args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    """Run pd-queue with a pseudo-terminal as stdin, typing `answer` at its prompt."""
    master, slave = os.openpty()
    try:
        os.write(master, answer.encode())
        return subprocess.run([agent.python, "-m", QUEUE, *args], env=agent.env, stdin=slave,
                              capture_output=True, text=True, timeout=30)
    finally:
        os.close(master)
        os.close(slave)


def test_drop_asks_on_a_terminal(agent, standin):
    ids = make_failed(agent, standin, KEY_A, 2)
    declined = _on_terminal(agent, "n\n", "drop", str(ids[0]))
    assert declined.returncode == 1, declined.stderr
    assert f"Drop event {ids[0]} (v2 trigger, failed) \"bad 0\"? [y/N]" in declined.stdout
    assert "Nothing dropped." in declined.stdout
    assert _count(agent, KEY_A, "failed") == 2

    accepted = _on_terminal(agent, "y\n", "drop", "-k", KEY_A, "--state", "failed")
    assert accepted.returncode == 0, accepted.stderr
    assert f"Drop 2 failed event(s) of routing key {KEY_A}?" in accepted.stdout
    assert accepted.stdout.rstrip().endswith("2 event(s) dropped.")

    make_failed(agent, standin, KEY_B, 1)
    unasked = _on_terminal(agent, "", "drop", "-k", KEY_B, "--state", "failed", "--yes")
    assert unasked.returncode == 0 and "[y/N]" not in unasked.stdout
    assert unasked.stdout.strip() == "1 event(s) dropped."


def _prompting(agent: Agent, *args: str) -> Any:
    """pd-queue on a pseudo-terminal, stopped at its [y/N] prompt: (process, master fd, what it printed)."""
    master, slave = os.openpty()
    process = subprocess.Popen([agent.python, "-m", QUEUE, *args], env=agent.env, stdin=slave,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    printed = ""
    while "[y/N]" not in printed:
        chunk = process.stdout.read(1)  # type: ignore[union-attr]
        if not chunk:
            raise AssertionError(f"no prompt: {printed!r} {process.stderr.read()!r}")  # type: ignore[union-attr]
        printed += chunk
    return process, master, printed


def test_drop_drops_only_the_events_it_asked_about(agent, standin):
    standin.refuse_connections()  # everything stays pending
    try:
        junk = [reply["id"] for reply in send_many(agent, [trigger(KEY_A, f"junk {i}") for i in range(30)])]
        process, master, printed = _prompting(agent, "drop", "-k", KEY_A, "--state", "pending")
        try:
            assert f"Drop 30 pending event(s) of routing key {KEY_A}?" in printed
            # root's page arrives while the prompt waits; another key's event as well
            page = send_many(agent, [trigger(KEY_A, "nginx.service failed", dedup_key="web01/nginx")])[0]["id"]
            other = send_many(agent, [trigger(KEY_B, "unrelated")])[0]["id"]
            os.write(master, b"y\n")
            out, err = process.communicate(timeout=30)
        finally:
            os.close(master)
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, err
        assert out.strip().endswith("30 event(s) dropped."), out
        for event_id in junk:
            one_line_error(pd_queue(agent, "show", str(event_id)), 65)
        assert _count(agent, KEY_A, "pending") == 1
        assert "nginx.service failed" in ok(pd_queue(agent, "show", str(page)))
        assert ok(pd_queue(agent, "show", str(other))).startswith(f"Event {other}: v2 trigger, pending")

        # An event that changed state while the prompt waited is left alone, and the count says so.
        ids = [reply["id"] for reply in send_many(agent, [trigger(KEY_B, f"more {i}") for i in range(2)])]
        process, master, printed = _prompting(agent, "drop", "-k", KEY_B, "--state", "pending")
        try:
            assert "Drop 3 pending event(s)" in printed
            assert ok(pd_queue(agent, "drop", str(ids[0]), "--yes")).strip() == "1 event(s) dropped."
            os.write(master, b"yes\n")
            out, err = process.communicate(timeout=30)
        finally:
            os.close(master)
        assert out.strip().endswith("2 event(s) dropped.") and "1 of the 3 event(s)" in err, (out, err)
    finally:
        standin.accept_connections()


def test_drop_one_event_asked_about_is_dropped_only_in_the_state_shown(agent, standin):
    standin.refuse_connections()
    try:
        event_id = send_many(agent, [trigger(KEY_A, "disk full")])[0]["id"]
        process, master, printed = _prompting(agent, "drop", str(event_id))
        try:
            assert f"Drop event {event_id} (v2 trigger, pending)" in printed
            standin.accept_connections()  # delivered while the prompt waits
            assert standin.wait_for(1, timeout=15, routing_key=KEY_A), agent.log()
            assert agent.wait_until(lambda: _count(agent, KEY_A, "delivered") == 1), agent.log()
            os.write(master, b"y\n")
            out, err = process.communicate(timeout=30)
        finally:
            os.close(master)
        assert out.strip().endswith("0 event(s) dropped.") and "left alone" in err, (out, err)
        assert ok(pd_queue(agent, "show", str(event_id))).startswith(f"Event {event_id}: v2 trigger, delivered")
    finally:
        standin.accept_connections()


# --- flush, metrics, errors, help -------------------------------------------------------------------------------


def test_flush_starts_a_pass_for_keys_with_pending_events(agent, standin):
    assert ok(pd_queue(agent, "flush")).strip() == "No pending events."
    standin.refuse_connections()
    send_many(agent, [trigger(KEY_A, "a"), trigger(KEY_B, "b")])
    assert ok(pd_queue(agent, "flush")).strip() == "Delivery pass started for 2 routing key(s) with pending events."
    standin.accept_connections()
    ok(pd_queue(agent, "flush"))
    assert standin.wait_for(2, timeout=10), agent.log()


def parse_openmetrics(text: str) -> Dict[str, Dict[str, Any]]:
    """A strict reading of the OpenMetrics text format as this agent writes it (gauges only).

    Returns {family: {"help": str, "samples": {labels-tuple: value}}}; any deviation fails the test.
    """
    assert text.endswith("# EOF\n"), "must end with # EOF and a newline"
    lines = text[:-1].split("\n")
    assert lines.pop() == "# EOF"
    name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    label_re = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
    sample_re = re.compile(rf"({name_re})(?:\{{((?:{label_re})(?:,{label_re})*)\}})? (\S+)")
    families: Dict[str, Dict[str, Any]] = {}
    current: Optional[str] = None
    for line in lines:
        assert line, "no blank lines in OpenMetrics"
        if line.startswith("#"):
            match = re.fullmatch(rf"# (TYPE|HELP) ({name_re}) (.+)", line)
            assert match, f"bad metadata line: {line!r}"
            kind, name, rest = match.groups()
            if kind == "TYPE":
                assert name not in families, f"family {name} declared twice"
                assert rest == "gauge", f"{name}: only gauges parse in both formats, got {rest}"
                families[name] = {"help": None, "samples": {}}
                current = name
            else:
                assert name == current, f"HELP for {name} outside its family"
                families[name]["help"] = rest
            continue
        match = sample_re.fullmatch(line)
        assert match, f"bad sample line: {line!r}"
        name, value = match.group(1), match.group(len(match.groups()))
        assert name == current, f"sample {name} outside its family {current}"
        labels = tuple(re.findall(label_re, match.group(2) or ""))
        assert labels not in families[name]["samples"], f"duplicate series {name}{labels}"
        number = float(value)
        assert not math.isnan(number)
        families[name]["samples"][labels] = number
    return families


@pytest.mark.interpreters
def test_metrics_parse_and_carry_the_queue(make_agent, standin):
    # a backoff far longer than the test, so the key is still held when metrics reads it after status did
    agent = make_agent(PDAGENT_BACKOFF_MIN_SEC="60", PDAGENT_BACKOFF_MAX_SEC="120")
    send_many(agent, [trigger(KEY_A, "fine")])
    assert standin.wait_for(1, timeout=10)
    make_failed(agent, standin, KEY_B, 1)
    standin.refuse_connections()
    send_many(agent, [trigger(KEY_B, "waiting")])
    assert agent.wait_until(lambda: agent.request({"op": "status"})["throttled_keys"] == 1)
    text = ok(pd_queue(agent, "metrics"))
    families = parse_openmetrics(text)
    assert KEY_A not in text and KEY_B not in text  # keys masked
    events = families["pdagent_events"]["samples"]
    assert events[(("routing_key", MASK_A), ("state", "delivered"))] == 1
    assert events[(("routing_key", MASK_B), ("state", "failed"))] == 1
    assert events[(("routing_key", MASK_B), ("state", "pending"))] == 1
    assert families["pdagent_up"]["samples"][()] == 1
    assert families["pdagent_oldest_pending_age_seconds"]["samples"][(("routing_key", MASK_B),)] >= 0
    assert families["pdagent_key_held"]["samples"][(("routing_key", MASK_B),)] == 1
    assert families["pdagent_throttled_keys"]["samples"][()] == 1
    assert families["pdagent_queue_events"]["samples"][(("state", "pending"),)] == 1
    assert abs(families["pdagent_last_delivery_timestamp_seconds"]["samples"][()] - time.time()) < 60
    assert all(family["help"] for family in families.values())
    standin.accept_connections()


PROMETHEUS_PARSE = """
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
print(json.dumps({parse.__module__: {family.name: [family.type, [[s.labels, s.value] for s in family.samples]]
                                     for family in parse(text)} for parse in (openmetrics, classic)}))
"""


def test_metrics_parse_with_prometheus_client(agent, standin):
    """The real Prometheus client (Debian's python3-prometheus-client, under Debian's python3: the venvs do
    not carry it) reads `pd-queue metrics` both as OpenMetrics and as the classic text format that
    node_exporter's textfile collector reads."""
    python = "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import prometheus_client"], capture_output=True, text=True) \
        if os.access(python, os.X_OK) else None
    if probe is None or probe.returncode != 0:
        missing("Debian's python3 with prometheus_client is needed (apt-get install python3-prometheus-client)")
    send_many(agent, [trigger(KEY_A, "fine")])
    assert standin.wait_for(1, timeout=10)
    assert agent.wait_until(lambda: agent.status()["totals"]["delivered"] == 1)  # committed, not only sent
    text = ok(pd_queue(agent, "metrics"))
    parsed = subprocess.run([python, "-c", PROMETHEUS_PARSE], input=text, capture_output=True, text=True,
                            timeout=60, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert parsed.returncode == 0, parsed.stderr
    by_parser = json.loads(parsed.stdout)
    assert len(by_parser) == 2, by_parser.keys()
    for families in by_parser.values():
        kind, samples = families["pdagent_events"]
        assert kind == "gauge"
        assert {labels["state"]: value for labels, value in samples} == \
            {"pending": 0, "delivered": 1, "failed": 0, "superseded": 0}
        assert families["pdagent_up"][1][0][1] == 1


def test_metrics_output_file_is_written_atomically_and_says_when_the_agent_is_down(agent, tmp_path):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    target = textfile_dir / "pdagent.prom"
    assert ok(pd_queue(agent, "metrics", "-o", str(target))) == ""
    assert "pdagent_up 1" in target.read_text().splitlines()
    assert oct(target.stat().st_mode & 0o777) == "0o644"  # node_exporter runs as another user
    assert [p.name for p in textfile_dir.iterdir()] == ["pdagent.prom"]  # no temporary file left behind
    down = pd_queue(agent, "--socket", str(tmp_path / "nothing.sock"), "metrics", "--output", str(target))
    one_line_error(down, 69)
    families = parse_openmetrics(target.read_text())
    assert families["pdagent_up"]["samples"][()] == 0
    assert [p.name for p in textfile_dir.iterdir()] == ["pdagent.prom"]


@pytest.mark.interpreters
def test_unreachable_agent_exits_69_naming_the_socket(agent, tmp_path):
    missing = str(tmp_path / "missing.sock")
    for args in (["--socket", missing, "status"], ["status", "--socket", missing], ["list", "--socket", missing]):
        error = one_line_error(pd_queue(agent, *args), 69)
        assert missing in error.splitlines()[0]


@pytest.mark.interpreters
@pytest.mark.parametrize("command", ["status", "retry", "list", "show", "drop", "flush", "metrics"])
def test_every_subcommand_has_help(agent, command):
    out = ok(pd_queue(agent, command, "--help"))
    assert out.startswith(f"usage: pd-queue {command} ")
    assert "--socket PATH" in out


@pytest.mark.interpreters
def test_top_level_help_and_missing_command(agent):
    out = ok(pd_queue(agent, "--help"))
    for command in ("status", "retry", "list", "show", "drop", "flush", "metrics"):
        assert command in out
    missing = pd_queue(agent)
    assert missing.returncode == 2 and missing.stderr.startswith("usage: pd-queue")


# --- another uid: the daemon's SO_PEERCRED rules ----------------------------------------------------------------


NOBODY = 65534


@pytest.fixture
def outsider(standin) -> Iterator[Callable[..., subprocess.CompletedProcess]]:  # type: ignore[type-arg]
    """Runs pd-queue as uid 65534 (not root, not the service's user) against a daemon whose socket it can reach.

    The client runs on Debian's /usr/bin/python3 with a world-readable copy of the package, because the
    test's own interpreter may live where other users cannot go (pyenv under /root). With admin_group=True
    the process gets group pdagent as a supplementary group (the group is created for the test if it is
    missing, and removed afterwards).
    """
    if os.geteuid() != 0:
        missing("running a client as another uid needs root")
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        missing("Debian's /usr/bin/python3 is needed to run the client as another user")
    workdir = tempfile.mkdtemp(prefix="pdagent-outsider.")
    os.chmod(workdir, 0o755)
    created_group = False
    agent: Optional[Agent] = None
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
        os.chmod(agent_dir, 0o755)
        agent = Agent(agent_dir, standin.url).start()
        try:
            admin_gid = grp.getgrnam("pdagent").gr_gid
        except KeyError:
            subprocess.run(["groupadd", "--system", "pdagent"], check=True, capture_output=True)
            created_group = True
            admin_gid = grp.getgrnam("pdagent").gr_gid
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8", "PYTHONPATH": source,
               "PYTHONDONTWRITEBYTECODE": "1", "PDAGENT_SOCKET": agent.socket}

        def run(*args: str, admin_group: bool = False, module: str = QUEUE
                ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
            return subprocess.run([python, "-m", module, *args], env=env, cwd=workdir, user=NOBODY, group=NOBODY,
                                  extra_groups=[admin_gid] if admin_group else [], capture_output=True, text=True,
                                  timeout=30)

        run.agent = agent  # type: ignore[attr-defined]
        yield run
    finally:
        if agent is not None:
            agent.stop()
        if created_group:
            subprocess.run(["groupdel", "pdagent"], check=False, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_other_users_may_see_status_metrics_and_flush_with_keys_masked(outsider, standin):
    agent = outsider.agent
    make_failed(agent, standin, KEY_A, 1)
    status = outsider("status")
    lines = ok(status).splitlines()
    assert lines[:2] == [HEADER, f"{MASK_A:<35} {0:>9} {0:>9} {1:>9}"]
    assert KEY_A not in status.stdout
    assert "routing keys are masked" in status.stderr and "sudo" in status.stderr
    assert json.loads(ok(outsider("status", "--json")))["redacted"] is True
    metrics = ok(outsider("metrics"))
    assert KEY_A not in metrics and parse_openmetrics(metrics)["pdagent_up"]["samples"][()] == 1
    assert ok(outsider("flush")).strip() == "No pending events."
    listed = json.loads(ok(outsider("list", "--json")))
    assert listed["redacted"] is True
    assert listed["events"][0]["routing_key"] == MASK_A and "body" not in listed["events"][0]


@pytest.mark.parametrize("args", [["show", "1"], ["retry", "-a"], ["retry", "-k", KEY_A], ["drop", "1", "--yes"],
                                  ["drop", "-k", KEY_A, "--state", "failed", "--yes"]])
def test_other_users_are_refused_admin_ops_with_77_and_one_line(outsider, standin, args):
    agent = outsider.agent
    make_failed(agent, standin, KEY_A, 1)
    refused = outsider(*args)
    error = one_line_error(refused, 77)
    assert len(error.splitlines()) == 1, error
    assert "permission denied" in error and "sudo" in error and "group pdagent" in error
    assert _count(agent, KEY_A, "failed") == 1  # nothing changed


def test_members_of_group_pdagent_are_admins(outsider, standin):
    agent = outsider.agent
    make_failed(agent, standin, KEY_A, 1)
    assert ok(outsider("status", admin_group=True)).splitlines()[1].startswith(KEY_A)
    assert "too clever" in ok(outsider("show", "1", admin_group=True))
    assert ok(outsider("retry", "-k", KEY_A, admin_group=True)).strip() == "1 event(s) set up for retry."
    assert standin.wait_for(1, timeout=10, routing_key=KEY_A)


def test_drop_and_list_by_sender_touch_only_that_senders_events(outsider, standin):
    """An admin removes what nobody queued on a shared key, and only that: root's page on the same key, and
    nobody's events on another key when the drop names the key, stay."""
    agent = outsider.agent
    standin.refuse_connections()  # everything stays pending
    try:
        for key, number in [(KEY_A, n) for n in range(4)] + [(KEY_B, 9)]:
            ok(outsider("-k", key, "-t", "trigger", "-d", f"junk {number}", "-i", f"junk/{number}",
                        module="pdagent_sd.cli.send"))
        page = send_many(agent, [trigger(KEY_A, "nginx.service failed", dedup_key="web01/nginx")])[0]["id"]
        assert _count(agent, KEY_A, "pending") == 5

        listed = json.loads(ok(pd_queue(agent, "list", "--sender", "nobody", "--json")))["events"]
        assert [(row["routing_key"], row["sender_uid"]) for row in listed] == [(KEY_A, NOBODY)] * 4 + [(KEY_B, NOBODY)]
        table = ok(pd_queue(agent, "list", "-k", KEY_A, "--sender", str(NOBODY))).splitlines()
        assert len(table) == 5 and all(line.split()[9] == str(NOBODY) for line in table[1:]), table
        assert [row["id"] for row in json.loads(ok(pd_queue(agent, "list", "--sender", "0", "--json")))["events"]] \
            == [page]
        mine = json.loads(ok(outsider("list", "--sender", str(NOBODY), "--json")))["events"]  # one's own ...
        assert len(mine) == 5 and all("sender_uid" not in row for row in mine)  # ... but says no sender
        refused = one_line_error(outsider("list", "--sender", "root"), 77)  # not another user's
        assert "listing another user's events is only for root" in refused and "sudo" in refused

        # on a terminal: the question names the sender, and only nobody's events on KEY_A go
        process, master, printed = _prompting(agent, "drop", "-k", KEY_A, "--sender", "nobody", "--state",
                                              "pending")
        try:
            assert f"Drop 4 pending event(s) of routing key {KEY_A} sent by uid {NOBODY}?" in printed
            os.write(master, b"y\n")
            out, err = process.communicate(timeout=30)
        finally:
            os.close(master)
        assert out.strip().endswith("4 event(s) dropped."), (out, err)
        assert _count(agent, KEY_A, "pending") == 1 and _count(agent, KEY_B, "pending") == 1
        assert "nginx.service failed" in ok(pd_queue(agent, "show", str(page)))
        assert "  Sender:        uid 0 (root)" in ok(pd_queue(agent, "show", str(page))).splitlines()

        # off a terminal, by sender alone, across keys: root's page still stays
        assert ok(pd_queue(agent, "drop", "--sender", str(NOBODY), "--state", "pending")).strip() \
            == "1 event(s) dropped."
        assert _count(agent, KEY_B, "pending") == 0 and _count(agent, KEY_A, "pending") == 1
    finally:
        standin.accept_connections()
    assert standin.wait_for(1, timeout=15), agent.log()
    assert [body["payload"]["summary"] for body in standin.bodies()] == ["nginx.service failed"]


@pytest.mark.parametrize("args", [["drop", "--sender", "1"], ["drop", "--sender", "no-such-user-x", "--state",
                                  "pending"], ["list", "--sender", "4294967295"], ["drop", "1", "--sender", "0",
                                  "--state", "failed"]])
def test_sender_usage_errors_exit_2(agent, args):
    result = pd_queue(agent, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "pd-queue" in result.stderr
