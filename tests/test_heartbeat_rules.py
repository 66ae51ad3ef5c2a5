"""Heartbeat deadline rules on a fake clock: the pure rules (heartbeat_rules.py), then the same rules through
a real queue.db (heartbeat_store.py, heartbeat_ops.py) with the clock and the boot time given, no daemon.

Check-in, miss, grace, pause, remove, owner, and a restart with deadlines in the past (a stopped daemon, a
machine that was off)."""

from __future__ import annotations

import json
import os
from typing import Iterator, List

import pytest

from pdagent_sd import heartbeat_rules as rules
from pdagent_sd import timespan
from pdagent_sd.errors import InvalidEvent, NotFound, QueueFull
from pdagent_sd.heartbeat_ops import HeartbeatWatch
from pdagent_sd.heartbeat_store import HeartbeatBook, waiting
from pdagent_sd.heartbeat_timer import Arming
from pdagent_sd.keys import KeyBook, RoutingKey
from pdagent_sd.queuetypes import Sender
from pdagent_sd.store import Store

pytestmark = pytest.mark.unit

KEY = "0123456789abcdef0123456789ABCDEF"
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC
BOOT = T0 - 86400.0
ROOT = Sender(0, True)
NOBODY = Sender(65534, False)


def beat(**fields) -> rules.Heartbeat:  # type: ignore[no-untyped-def]
    values = dict(uid=0, name="backup", every=3600.0, grace=60.0, last_checkin=T0, routing_key=RoutingKey(KEY),
                  user="root")
    values.update(fields)
    return rules.Heartbeat(**values)  # type: ignore[arg-type]


# --- time spans (systemd.time(7)) ------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5min", 300), ("1h 30min", 5400), ("1d", 86400),
                                           ("2weeks", 14 * 86400), ("90", 90), ("1.5h", 5400), ("500ms", 0.5),
                                           ("1y", 31557600), ("1M", 2629800), ("3 hours", 10800)])
def test_spans_in_systemds_syntax(text: str, seconds: float) -> None:
    assert timespan.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "x", "5 parsecs", "1..2s", "-1s", "s", "1h-", "9" * 200])
def test_what_is_not_a_span_is_refused(text: str) -> None:
    with pytest.raises(timespan.SpanError):
        timespan.parse(text)


def test_spans_print_as_systemd_prints_them() -> None:
    assert [timespan.show(s) for s in (86400, 5400, 40, 90, 0.4)] == ["1d", "1h 30min", "40s", "1min 30s", "0"]


# --- the pure rules ------------------------------------------------------------------------------------

def test_the_deadline_is_last_check_in_plus_every_plus_grace() -> None:
    hb = beat()
    assert hb.deadline(BOOT) == T0 + 3600 + 60
    assert hb.state(T0 + 3599, BOOT) is rules.HeartbeatState.OK
    assert hb.state(T0 + 3600, BOOT) is rules.HeartbeatState.LATE  # overdue, within the grace
    assert not hb.due(T0 + 3600 + 59.9, BOOT)
    assert hb.due(T0 + 3660, BOOT)
    assert hb.state(T0 + 3660, BOOT) is rules.HeartbeatState.LATE


def test_grace_defaults_to_a_tenth_of_every_and_at_least_30s() -> None:
    assert rules.default_grace(86400) == 8640
    assert rules.default_grace(60) == 30


def test_a_paged_heartbeat_is_not_due_again_and_has_no_deadline() -> None:
    hb = beat(paged=True)
    assert not hb.due(T0 + 10 * 86400, BOOT)
    assert hb.state(T0 + 10 * 86400, BOOT) is rules.HeartbeatState.PAGED
    assert rules.next_deadline([hb], BOOT) is None
    assert rules.next_deadline([hb, beat(name="b", every=60)], BOOT) == T0 + 120


def test_a_pause_holds_the_page_until_its_end_plus_grace() -> None:
    hb = beat(paused_until=T0 + 7200)
    assert hb.state(T0 + 7199, BOOT) is rules.HeartbeatState.PAUSED
    assert not hb.due(T0 + 7200 + 59, BOOT)
    assert hb.due(T0 + 7260, BOOT)
    # a short pause does not bring a later deadline forward
    assert beat(paused_until=T0 + 10).deadline(BOOT) == T0 + 3660


def test_a_deadline_that_passed_while_the_machine_was_off_gets_the_grace_after_boot() -> None:
    hb = beat()  # deadline T0 + 3660
    boot = T0 + 86400
    assert hb.deadline(boot) == boot + 60
    assert hb.state(boot + 1, boot) is rules.HeartbeatState.LATE
    assert not hb.due(boot + 59, boot)
    assert hb.due(boot + 60, boot)
    # one that passes after the boot is not moved
    assert hb.deadline(T0) == T0 + 3660


def test_the_page_says_what_was_missed() -> None:
    hb = beat(name="nightly-backup", every=86400, grace=7200, last_checkin=T0 - 3 * 86400, description="restic")
    event = rules.trigger("db1", hb, T0)
    assert event["dedup_key"] == "heartbeat/db1/root/nightly-backup"
    assert event["payload"]["summary"] == ("nightly-backup on db1 missed its check-in: last seen 2027-01-12 "
                                           "08:00 UTC, expected every 1d")
    assert event["payload"]["severity"] == "error"
    assert event["payload"]["custom_details"] == {
        "heartbeat": "nightly-backup", "owner": "root", "uid": 0, "every": "1d", "grace": "2h",
        "last_check_in": "2027-01-12T08:00:00Z", "deadline": "2027-01-13T10:00:00Z", "description": "restic"}
    assert rules.resolve("db1", hb) == {"routing_key": KEY, "event_action": "resolve",
                                        "dedup_key": "heartbeat/db1/root/nightly-backup"}
    # a resolve goes to the incident its trigger opened, though the host be renamed since
    paged = rules.Heartbeat(**{**hb.__dict__, "paged": True, "incident": "heartbeat/db1/root/nightly-backup"})
    assert rules.resolve("db1-renamed", paged)["dedup_key"] == "heartbeat/db1/root/nightly-backup"


# --- through queue.db, on a fake clock -------------------------------------------------------------------

class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state_dir(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return str(tmp_path / "state")


class Rig:
    """A store, a heartbeat book and the daemon's watch over them, on a fake clock and a given boot time."""

    def __init__(self, state_dir: str, now: float, booted: float = BOOT, per_user: int = 3,
                 max_pending: int = 1000000) -> None:
        self.clock = Clock(now)
        self.store = Store(state_dir, clock=self.clock, max_pending=max_pending)
        self.store.open()
        self.book = HeartbeatBook(self.store, host="db1", keys=KeyBook({"ops": KEY}), per_user=per_user)
        self.watch = HeartbeatWatch(self.book, Arming(state_dir), clock=self.clock, booted=booted)
        self.watch.refresh()

    def close(self) -> None:
        self.store.close()

    def check_in(self, name: str = "backup", sender: Sender = ROOT, **fields: object) -> dict:
        message = {"action": "check_in", "name": name, "every": 3600, "grace": 60, "routing_key": "@ops",
                   **fields}
        return self.watch.handle(message, sender, sender.uid == 0)

    def tick(self) -> None:
        """What the daemon's loop does every second."""
        if self.watch.due(self.clock.now):
            self.watch.page()

    def events(self) -> List[tuple]:
        rows = self.store.reader().execute("SELECT action, dedup_key, sender_uid, body FROM events ORDER BY id")
        return [(action, dedup, uid, json.loads(body)) for action, dedup, uid, body in rows]

    def state(self, name: str = "backup", uid: int = 0) -> str:
        return next(beat.state(self.clock.now, self.watch.booted).value for beat in self.watch.beats
                    if beat.name == name and beat.uid == uid)


@pytest.fixture
def rig(state_dir: str) -> Iterator[Rig]:
    made = Rig(state_dir, T0)
    yield made
    made.close()


def test_a_check_in_is_committed_and_renews_the_deadline(rig: Rig) -> None:
    reply = rig.check_in()
    assert reply["heartbeat"]["next_deadline"] == T0 + 3660 and reply["resolved"] is False
    rig.clock.now = T0 + 3000
    rig.check_in()
    rig.clock.now = T0 + 3661
    rig.tick()
    assert rig.events() == []  # renewed at T0 + 3000: the deadline is T0 + 6660
    assert rig.watch.next == T0 + 6660
    assert rig.events() == [] and rig.state() == "ok"


def test_a_miss_pages_once_and_the_next_check_in_resolves_it(rig: Rig) -> None:
    rig.check_in(description="restic", severity="critical")
    rig.clock.now = T0 + 3659
    rig.tick()
    assert rig.events() == []
    rig.clock.now = T0 + 3660
    rig.tick()
    rig.clock.now += 3600
    rig.tick()  # paged already: no second trigger
    [(action, dedup, uid, body)] = rig.events()
    assert (action, dedup, uid) == ("trigger", "heartbeat/db1/root/backup", 0)
    assert body["routing_key"] == KEY  # @ops resolved as for pd-send
    assert body["payload"]["severity"] == "critical"
    assert body["payload"]["custom_details"]["description"] == "restic"
    assert rig.state() == "paged" and rig.watch.counts()["paged"] == 1
    assert rig.check_in()["resolved"] is True
    assert [event[:2] for event in rig.events()] == [("trigger", "heartbeat/db1/root/backup"),
                                                     ("resolve", "heartbeat/db1/root/backup")]
    assert rig.state() == "ok"
    rig.clock.now += 3660  # a later miss opens a new incident: same dedup key, new trigger
    rig.tick()
    assert [event[0] for event in rig.events()] == ["trigger", "resolve", "trigger"]


def test_the_grace_is_given_before_a_page(rig: Rig) -> None:
    rig.check_in(every=60, grace=30)
    rig.clock.now = T0 + 89
    rig.tick()
    assert rig.state() == "late" and rig.events() == []
    rig.check_in(every=60, grace=30)  # late but within the grace: no page, nothing to resolve
    rig.clock.now = T0 + 89 + 89
    rig.tick()
    assert rig.events() == []


def test_a_pause_holds_the_page(rig: Rig) -> None:
    rig.check_in()
    rig.watch.handle({"action": "pause", "name": "backup", "for": 7200}, ROOT, True)
    rig.clock.now = T0 + 7199
    rig.tick()
    assert rig.state() == "paused" and rig.events() == []
    rig.clock.now = T0 + 7260
    rig.tick()
    assert [event[0] for event in rig.events()] == ["trigger"]


def test_remove_forgets_and_resolves(rig: Rig) -> None:
    rig.check_in()
    rig.check_in("other")
    rig.clock.now = T0 + 3660
    rig.tick()
    assert rig.watch.handle({"action": "remove", "name": "backup"}, ROOT, True) == {"ok": True, "resolved": True}
    assert rig.watch.handle({"action": "remove", "name": "other"}, ROOT, True)["resolved"] is True
    assert [event[0] for event in rig.events()] == ["trigger", "trigger", "resolve", "resolve"]
    assert rig.watch.beats == [] and rig.watch.next is None
    with pytest.raises(NotFound):
        rig.watch.handle({"action": "remove", "name": "backup"}, ROOT, True)


def test_another_users_same_name_is_their_own_heartbeat(rig: Rig) -> None:
    rig.check_in()
    rig.clock.now = T0 + 3000
    rig.check_in(sender=NOBODY)  # nobody's "backup" does not renew root's
    with pytest.raises(NotFound):
        rig.watch.handle({"action": "pause", "name": "other", "for": 9999}, NOBODY, False)
    rig.watch.handle({"action": "pause", "name": "backup", "for": 99999}, NOBODY, False)  # nobody's own
    rig.clock.now = T0 + 3660
    rig.tick()
    [(action, dedup, uid, _)] = rig.events()
    assert (action, dedup, uid) == ("trigger", "heartbeat/db1/root/backup", 0)
    rig.watch.handle({"action": "remove", "name": "backup"}, NOBODY, False)
    assert [(beat.uid, beat.name) for beat in rig.watch.beats] == [(0, "backup")]
    # each sees their own in a list; root sees everyone's
    rig.check_in(sender=NOBODY)
    assert [row["uid"] for row in rig.watch.handle({"action": "list"}, NOBODY, False)["heartbeats"]] == [65534]
    assert len(rig.watch.handle({"action": "list"}, ROOT, True)["heartbeats"]) == 2


def test_untrusted_users_have_a_quota_of_heartbeats(rig: Rig) -> None:
    for n in range(3):
        rig.check_in(f"job{n}", sender=NOBODY)
    rig.check_in("job0", sender=NOBODY)  # renewing one is not a new one
    with pytest.raises(QueueFull, match="heartbeat_max_per_user = 3"):
        rig.check_in("job3", sender=NOBODY)
    for n in range(5):
        rig.check_in(f"job{n}", sender=ROOT)  # trusted: no quota


@pytest.mark.parametrize("fields, error", [
    ({"routing_key": "@nosuch"}, "not a configured key name"),
    ({"routing_key": "short"}, "routing_key"),
    ({"every": 0.5}, "every must be"),
    ({"every": 10 ** 12}, "every must be"),
    ({"every": float("nan")}, "every must be"),
    ({"grace": -1}, "grace must be"),
    ({"severity": "fatal"}, "severity"),
    ({"description": "x" * 1025}, "description"),
    ({"name": "a/b"}, "name"),
    ({"name": "x" * 65}, "name"),
])
def test_bad_check_ins_are_refused_and_write_nothing(rig: Rig, fields: dict, error: str) -> None:
    name = fields.pop("name", "backup")
    with pytest.raises(InvalidEvent, match=error):
        rig.check_in(name, **fields)
    assert rig.watch.beats == []


def test_a_restart_pages_deadlines_that_passed_while_the_daemon_was_stopped(state_dir: str) -> None:
    first = Rig(state_dir, T0)
    first.check_in()
    first.check_in("later", every=86400)
    first.watch.exiting()
    assert Arming(state_dir).armed == T0 + 3660  # the timer file says the earliest deadline
    first.close()
    assert waiting(state_dir)  # what pdagent-boot.service looks at
    second = Rig(state_dir, T0 + 5000)  # the same boot, later: paged at once
    assert second.watch.due(second.clock.now)
    second.tick()
    assert [event[:2] for event in second.events()] == [("trigger", "heartbeat/db1/root/backup")]
    second.watch.exiting()
    assert Arming(state_dir).armed == T0 + 86400 + 60
    second.close()


def test_a_boot_after_the_deadline_gives_each_heartbeat_its_grace(state_dir: str) -> None:
    first = Rig(state_dir, T0)
    first.check_in(grace=60)
    first.check_in("slow", grace=600)
    first.close()
    boot = T0 + 86400
    second = Rig(state_dir, boot + 5, booted=boot)
    second.tick()
    assert second.events() == [] and second.state() == "late"
    assert second.watch.next == boot + 60
    second.check_in()  # the Persistent=true job ran after the boot: no page
    second.clock.now = boot + 60
    second.tick()
    assert second.events() == []
    second.clock.now = boot + 600
    second.tick()
    assert [event[1] for event in second.events()] == ["heartbeat/db1/root/slow"]
    second.close()


def test_no_heartbeat_to_watch_arms_nothing(state_dir: str) -> None:
    rig = Rig(state_dir, T0)
    rig.watch.exiting()
    assert not os.path.exists(os.path.join(state_dir, "heartbeat-due"))  # never armed: no file at all
    rig.check_in()
    rig.watch.exiting()
    assert os.path.exists(os.path.join(state_dir, "heartbeat-due"))
    rig.watch.handle({"action": "remove", "name": "backup"}, ROOT, True)
    rig.watch.exiting()
    with open(os.path.join(state_dir, "heartbeat-due")) as due:
        assert due.read() == "none\n"  # the arm service stops the timer armed before
    assert not waiting(state_dir)
    rig.close()


def test_the_boot_is_the_later_of_the_kernels_and_the_boot_stamp(state_dir: str) -> None:
    from pdagent_sd.heartbeat_store import booted_at, note_boot

    kernel = booted_at()
    assert booted_at(state_dir) == pytest.approx(kernel, abs=0.01)  # no stamp (no state directory, even)
    note_boot(state_dir)  # no directory: nothing written, nothing raised
    os.makedirs(state_dir)
    note_boot(state_dir, kernel - 3600)  # a stamp from an earlier boot: the kernel's is later
    assert booted_at(state_dir) == pytest.approx(kernel, abs=0.01)
    container = kernel + 5  # a container booted after the host: its stamp is later
    note_boot(state_dir, container)
    assert booted_at(state_dir) == pytest.approx(container)


def test_a_queue_from_before_heartbeats_has_none_to_wait_for(state_dir: str) -> None:
    import sqlite3

    os.makedirs(state_dir)
    from pdagent_sd import schema

    db = sqlite3.connect(os.path.join(state_dir, "queue.db"))
    db.executescript(schema.SCHEMA)  # the tables of a queue.db from before heartbeats
    db.close()
    assert not waiting(state_dir)  # no heartbeats table yet: the boot pass starts nothing for heartbeats
    rig = Rig(state_dir, T0)  # opening it adds the table in place
    rig.check_in()
    rig.close()
    assert waiting(state_dir)


def test_a_failed_read_keeps_the_deadlines_and_the_timer(state_dir: str) -> None:
    import sqlite3

    rig = Rig(state_dir, T0)
    rig.check_in()
    db = sqlite3.connect(os.path.join(state_dir, "queue.db"))
    db.execute("ALTER TABLE heartbeats RENAME TO heartbeats_away")  # every read of the table fails now
    db.commit()
    db.close()
    rig.watch.refresh()
    assert rig.watch.next == T0 + 3660
    rig.watch.exiting()
    assert Arming(state_dir).armed == T0 + 3660  # not "none": the timer stays armed for the deadline
    rig.close()
    unread = HeartbeatWatch(rig.book, Arming(state_dir), clock=Clock(T0), booted=BOOT)
    unread.exiting()  # never read: hands nothing to the timer, rather than "none"
    assert Arming(state_dir).armed == T0 + 3660


def test_a_page_the_full_queue_refuses_is_tried_again(state_dir: str) -> None:
    from pdagent_sd.events import validate

    rig = Rig(state_dir, T0, max_pending=1)
    rig.check_in()
    filler = rig.store.enqueue(validate("v2", {"routing_key": KEY, "event_action": "trigger", "payload": {
        "summary": "s", "source": "s", "severity": "info"}}))
    rig.clock.now = T0 + 3660
    rig.tick()
    assert rig.state() == "late" and len(rig.events()) == 1  # refused: not marked paged, nothing lost
    assert not rig.watch.due(rig.clock.now + 1)  # not again on every tick
    rig.store.drop(event_id=filler)
    rig.clock.now += 5
    rig.tick()
    assert rig.state() == "paged" and [event[0] for event in rig.events()] == ["trigger"]
    rig.close()
