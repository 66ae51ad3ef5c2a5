"""Integration: `pd-queue import-legacy` brings the old agent's queued events into the real daemon's queue, and
the stand-in receives them, in the old queue's order, as the old agent would have sent them."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from agentproc import KEY_A, KEY_B
from legacyagent import event_text, file_name, make_outqueue, put

pytestmark = pytest.mark.integration

# Enqueue times chosen so that sorting the names as text would put the trigger last: 15 digits against 16.
T_TRIGGER, T_ACK, T_RESOLVE = 999999999000000, 1400000000000000, 1400000001000000


@pytest.fixture
def outqueue(tmp_path):  # type: ignore[no-untyped-def]
    queue = make_outqueue(str(tmp_path / "old"))
    put(queue, "pdq", file_name(T_TRIGGER, KEY_A),
        event_text("trigger", KEY_A, "db01/disk", "Disk /var is 97% full", {"used": "97%"}, "pd-nagios"))
    put(queue, "pdq", file_name(T_ACK, KEY_A), event_text("acknowledge", KEY_A, "db01/disk"))
    put(queue, "pdq", file_name(T_RESOLVE, KEY_A), event_text("resolve", KEY_A, "db01/disk"))
    put(queue, "err", file_name(T_ACK + 5, KEY_B), event_text("trigger", KEY_B, "10442", "zabbix problem",
                                                              queued_by="pd-zabbix"))
    # What must be counted and named, never abort the import:
    put(queue, "pdq", "notes.txt", "{}")  # not the old agent's name
    put(queue, "pdq", file_name(T_RESOLVE + 1, KEY_A), "{not json")
    put(queue, "pdq", file_name(T_RESOLVE + 2, KEY_A), json.dumps({"service_key": KEY_A}))  # no event_type
    with open(os.path.join(queue, "err", file_name(T_RESOLVE + 3, KEY_B)), "wb") as handle:
        handle.write(b"\xff\xfe not utf-8")
    os.symlink("/etc/passwd", os.path.join(queue, "pdq", file_name(T_RESOLVE + 4, KEY_A)))
    os.mkdir(os.path.join(queue, "pdq", file_name(T_RESOLVE + 5, KEY_A)))
    put(queue, "suc", file_name(T_TRIGGER - 10, KEY_A), event_text("trigger", KEY_A, "delivered-long-ago", "x"))
    return queue


def shown(micros: int, key: str) -> str:
    return f"{micros}_{key[:4]}…{key[-4:]}.txt"


def import_legacy(agent, *args):  # type: ignore[no-untyped-def]
    return agent.client("pdagent_sd.cli.queue", "import-legacy", *args)


def test_import_delivers_pending_in_order_keeps_failed_and_names_every_bad_file(agent, standin, outqueue):
    before = sorted(os.listdir(os.path.join(outqueue, "pdq"))) + sorted(os.listdir(os.path.join(outqueue, "err")))

    dry = import_legacy(agent, outqueue, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would import: 4 (3 pending from pdq/, 1 failed from err/)" in dry.stdout, dry.stdout
    assert agent.status()["totals"] == {"pending": 0, "delivered": 0, "failed": 0, "superseded": 0}

    done = import_legacy(agent, outqueue)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "imported: 4 (3 pending from pdq/, 1 failed from err/)" in out
    assert "invalid events: 1" in out and f"pdq/{shown(T_RESOLVE + 2, KEY_A)}: event_type" in out
    assert "unreadable or malformed files: 5" in out
    for path, reason in (("pdq/notes.txt", "name is not"), (f"pdq/{shown(T_RESOLVE + 1, KEY_A)}", "not JSON"),
                          (f"err/{shown(T_RESOLVE + 3, KEY_B)}", "not UTF-8"),
                          (f"pdq/{shown(T_RESOLVE + 4, KEY_A)}", "symbolic link"),
                          (f"pdq/{shown(T_RESOLVE + 5, KEY_A)}", "not a regular file")):
        assert f"  {path}: " in out and reason in out.split(f"  {path}: ", 1)[1].splitlines()[0], (path, out)
    assert "root:" not in out  # the symlink's target is never read
    assert KEY_A not in out and KEY_B not in out  # the keys in the file names are masked

    assert standin.wait_for(3, timeout=10), agent.log()
    records = standin.received(KEY_A)
    assert [r.path for r in records] == ["/generic/2010-04-15/create_event.json"] * 3
    assert [r.body["event_type"] for r in records] == ["trigger", "acknowledge", "resolve"]
    with open(os.path.join(outqueue, "pdq", file_name(T_TRIGGER, KEY_A)), encoding="utf-8") as handle:
        assert records[0].body == json.loads(handle.read())  # sent as the old agent would have sent it
    assert {r.body["incident_key"] for r in records} == {"db01/disk"}
    assert standin.received(KEY_B) == []  # the failed one stays failed
    failed = agent.request({"op": "list", "state": "failed"})["events"]
    assert len(failed) == 1 and "err/" in failed[0]["last_error"] and failed[0]["api"] == "v1"
    assert failed[0]["dedup_key"] == "10442"

    again = import_legacy(agent, outqueue)
    assert again.returncode == 0, again.stderr
    assert "imported: 0 (0 pending" in again.stdout and "already imported before: 4" in again.stdout
    assert agent.wait_until(lambda: agent.status()["totals"] == {"pending": 0, "delivered": 3, "failed": 1,
                                                                 "superseded": 0})
    after = sorted(os.listdir(os.path.join(outqueue, "pdq"))) + sorted(os.listdir(os.path.join(outqueue, "err")))
    assert after == before  # the old files are left in place


def test_import_of_a_missing_directory_says_so(agent, tmp_path):
    done = import_legacy(agent, str(tmp_path / "nowhere"))
    assert done.returncode == 65 and "is not a directory" in done.stderr and "Traceback" not in done.stderr


def test_queue_db_from_before_the_import_table_upgrades_in_place(make_agent, standin, tmp_path, outqueue):
    agent = make_agent(start=False)
    os.makedirs(agent.state_dir, mode=0o700)
    with sqlite3.connect(os.path.join(agent.state_dir, "queue.db")) as db:  # the 0.1 schema, events only
        db.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, routing_key TEXT NOT NULL, "
                   "api TEXT NOT NULL, action TEXT NOT NULL, dedup_key TEXT NOT NULL, body TEXT NOT NULL, "
                   "state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, attempts INTEGER NOT NULL "
                   "DEFAULT 0, next_attempt REAL NOT NULL DEFAULT 0, last_status INTEGER, last_error TEXT)")
    db.close()
    agent.start()
    done = import_legacy(agent, outqueue)
    assert done.returncode == 0 and "imported: 4" in done.stdout, done.stdout + done.stderr
