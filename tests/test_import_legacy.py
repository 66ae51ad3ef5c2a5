"""Integration: `pd-queue import-legacy` brings the old agent's queued events into the real daemon's queue, and
the stand-in receives them, in the old queue's order, as the old agent would have sent them."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile

import pytest

from agentproc import KEY_A, KEY_B
from legacyagent import event_text, file_name, make_outqueue, put
from tiers import missing

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
    with open(os.path.join(outqueue, "imported", file_name(T_TRIGGER, KEY_A)), "rb") as handle:
        assert records[0].raw == handle.read()  # sent as the old agent would have sent it: the file's bytes
    assert {r.body["incident_key"] for r in records} == {"db01/disk"}
    assert standin.received(KEY_B) == []  # the failed one stays failed
    failed = agent.request({"op": "list", "state": "failed"})["events"]
    assert len(failed) == 1 and "err/" in failed[0]["last_error"] and failed[0]["api"] == "v1"
    assert failed[0]["dedup_key"] == "10442"

    again = import_legacy(agent, outqueue)
    assert again.returncode == 0, again.stderr
    assert "imported: 0 (0 pending" in again.stdout and "already imported before: 1" in again.stdout  # err/ only
    assert agent.wait_until(lambda: agent.status()["totals"] == {"pending": 0, "delivered": 3, "failed": 1,
                                                                 "superseded": 0})
    # the imported pdq/ files are out of the old daemon's reach, in imported/; everything else is left in place
    moved = sorted(os.listdir(os.path.join(outqueue, "imported")))
    assert moved == sorted(file_name(t, KEY_A) for t in (T_TRIGGER, T_ACK, T_RESOLVE))
    after = sorted(os.listdir(os.path.join(outqueue, "pdq"))) + sorted(os.listdir(os.path.join(outqueue, "err")))
    assert after == [name for name in before if name not in moved]
    assert "Moved from pdq/ to imported/ (out of the old daemon's reach, kept for a rollback): 3" in out


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


NOBODY = 65534


@pytest.fixture
def shared_outqueue():  # type: ignore[no-untyped-def]
    """An old outqueue other users can reach, as /var/lib/pdagent/outqueue is: pdq/ writable by anyone."""
    if os.geteuid() != 0:
        missing("planting files as another uid needs root")
    root = tempfile.mkdtemp(prefix="pdagent-oldqueue.")
    os.chmod(root, 0o755)
    try:
        queue = make_outqueue(root)
        os.chmod(queue, 0o755)
        yield queue
    finally:
        shutil.rmtree(root, ignore_errors=True)


def plant(queue: str, name: str, text: str) -> None:
    """Write a file into pdq/ as uid nobody, with the shell, as any local user could."""
    subprocess.run(["/bin/sh", "-c", 'umask 022; cat > "$1"', "plant", os.path.join(queue, "pdq", name)],
                   input=text.encode(), user=NOBODY, group=NOBODY, check=True, timeout=10)


def test_files_planted_by_another_user_never_stop_the_import_and_count_against_their_owner(
        make_agent, standin, shared_outqueue):  # type: ignore[no-untyped-def]
    agent = make_agent(PDAGENT_SENDER_MAX_EVENTS="1")
    queue = shared_outqueue
    # root's events, as the old pd-send wrote them: a trigger without incident key, text escaped to ASCII
    root_trigger = file_name(T_ACK, KEY_A)
    put(queue, "pdq", root_trigger, json.dumps({"service_key": KEY_A, "event_type": "trigger",
                                                "description": "caf\u00e9 \u2603 down", "details": {}},
                                               separators=(",", ":"), sort_keys=True))
    put(queue, "pdq", file_name(T_RESOLVE, KEY_A), event_text("resolve", KEY_A, "db01/disk"))
    # nobody's: a file nested 100,000 deep (json.loads alone raises RecursionError), and two triggers named to
    # go first, of which its quota (sender_max_events = 1) takes one
    deep = file_name(T_TRIGGER - 2, KEY_A)
    plant(queue, deep, '{"service_key":"%s","event_type":"trigger","description":"x","details":%s%s}'
          % (KEY_A, "[" * 100000, "]" * 100000))
    plant(queue, file_name(T_TRIGGER - 1, KEY_A), event_text("trigger", KEY_A, "planted/1", "planted one"))
    plant(queue, file_name(T_TRIGGER, KEY_A), event_text("trigger", KEY_A, "planted/2", "planted two"))
    # and one naming a key by name: the old agent had no named keys, so no file may use one of this agent's
    plant(queue, file_name(T_TRIGGER + 1, "@systemd"), event_text("trigger", "@systemd", "planted/3", "named"))

    dry = import_legacy(agent, queue, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would import: 4 (4 pending from pdq/, 0 failed from err/)" in dry.stdout, dry.stdout
    assert "by owner (the quota each is charged to): root (uid 0) 2, nobody (uid 65534) 2" in dry.stdout
    assert f"pdq/{shown(T_TRIGGER - 2, KEY_A)}: nested more than 100 levels deep" in dry.stdout

    done = import_legacy(agent, queue)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    out = done.stdout
    assert "imported: 3 (3 pending from pdq/, 0 failed from err/)" in out, out
    assert "refused (the owner could not have queued it now): 1" in out
    assert f"pdq/{shown(T_TRIGGER, KEY_A)} of nobody (uid 65534): uid 65534 already has 1" in out
    assert f"pdq/{shown(T_TRIGGER - 2, KEY_A)}: nested more than 100 levels deep" in out
    assert "invalid events: 1" in out and "service_key @systemd is not a configured key name" in out
    assert standin.wait_for(3, timeout=10), agent.log()
    records = standin.received(KEY_A)
    with open(os.path.join(queue, "imported", root_trigger), "rb") as handle:
        raw = handle.read()
    sent = [r for r in records if r.raw == raw]
    assert len(sent) == 1 and "incident_key" not in sent[0].body  # nothing added, nothing re-encoded
    with sqlite3.connect(os.path.join(agent.state_dir, "queue.db")) as db:
        owners = sorted(row[0] for row in db.execute("SELECT sender_uid FROM events"))
    db.close()
    assert owners == [0, 0, NOBODY]
    # what was refused or unreadable stays in pdq/, to be fixed or dropped; a second run imports nothing twice
    assert sorted(os.listdir(os.path.join(queue, "pdq"))) == [deep, file_name(T_TRIGGER, KEY_A),
                                                               file_name(T_TRIGGER + 1, "@systemd")]
    again = import_legacy(agent, queue)
    # nobody's first event was delivered meanwhile, so its quota has room for the one refused: only that is new
    assert "imported: 1 (1 pending" in again.stdout and "refused (the owner could not have queued it now): 0" \
        in again.stdout, again.stdout
