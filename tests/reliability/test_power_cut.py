"""Power cuts: the daemon's state directory on the lazyfs layer (powercut.py), which at a cut keeps only what
was fsync'd (file data) and what a directory fsync covered (names). Every cut: SIGKILL the daemon (from then on
nothing can fsync, so this is the cut's instant), drop what was not durable, mount again, start again.

What must hold is chaoslib.analyse's (every event whose pd-send exited 0 is in the queue and is delivered;
duplicates only across a cut, bounded by what can be in flight), plus, at each of the daemon's own write
points, that the queue and the `pending` marker agree after the cut. Needs root and FUSE; skipped otherwise.
"""

from __future__ import annotations

import glob
import os
import random
import time
from typing import Any, Iterator, List, Tuple

import pytest

from pdagent_sd.scheduler import BATCH_PER_TURN

from agentproc import Agent, trigger
from chaoslib import (
    FULL,
    FULL_RUN_REASON,
    QUIET_AFTER_KILL_SEC,
    Senders,
    Timeline,
    analyse,
    deliveries_of,
    quick_check,
    read_queue,
    routing_key,
    summary,
)
from powercut import PowerCutFS, skip_reason
from tiers import missing
from waiting import quiet_for, wait_until

pytestmark = pytest.mark.powercut

SKIP = skip_reason()
KEY = routing_key(900)


@pytest.fixture
def on_layer(tmp_path, make_agent) -> Iterator[Tuple[Agent, PowerCutFS]]:  # type: ignore[no-untyped-def]
    """A pdagentd (not started) whose state directory is a lazyfs mount; stopped before the unmount."""
    if SKIP:
        missing(SKIP)
    agent = make_agent(start=False)
    fs = PowerCutFS(str(tmp_path / "layer"), agent.state_dir).mount()
    try:
        yield agent, fs
    finally:
        agent.stop()
        fs.unmount()


def cut(agent: Agent, fs: PowerCutFS, timeline: Timeline, start: bool = True) -> None:
    timeline.kills.append(time.monotonic())
    agent.kill9()
    fs.cut()
    time.sleep(QUIET_AFTER_KILL_SEC)
    if start:
        timeline.starts.append(time.monotonic())
        agent.start(timeout=60)


def marker(agent: Agent) -> bool:
    return os.path.exists(os.path.join(agent.state_dir, "pending"))


def pending_rows(agent: Agent) -> int:
    return sum(1 for row in read_queue(agent.state_dir).values() if row.state == "pending")


def send(agent: Agent, tag: str, key: str = KEY) -> int:
    reply = agent.request({"op": "send", "api": "v2", "event": trigger(key, tag, dedup_key=tag)})
    assert reply.get("ok"), reply
    return int(reply["id"])


# --- cuts at random moments of a stream of events -----------------------------------------------------------


def stream_sizes() -> List[Any]:
    return [pytest.param({"events": 800, "cuts": 4, "senders": 8, "keys": 6}, id="short"),
            pytest.param({"events": 20000, "cuts": 200, "senders": 8, "keys": 6}, id="full",
                         marks=[pytest.mark.slow, pytest.mark.skipif(not FULL, reason=FULL_RUN_REASON)])]


@pytest.mark.parametrize("size", stream_sizes())
def test_random_power_cuts_while_sending_and_delivering(size, on_layer, standin, figures) -> None:  # type: ignore[no-untyped-def]
    agent, fs = on_layer
    rng = random.Random(13)
    keys = [routing_key(n) for n in range(size["keys"])]
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    thresholds = sorted(rng.sample(range(1, int(size["events"] * 0.9)), size["cuts"]))
    started = time.monotonic()
    senders = Senders(agent.socket, keys, size["senders"], size["events"] // size["senders"], seed=3)
    try:
        for threshold in thresholds:
            while senders.count("acked") < threshold and not senders.done():
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
            cut(agent, fs, timeline)
        assert senders.wait(1200), "senders did not finish"
        figures["sending_sec"] = round(time.monotonic() - started, 1)
        records = senders.snapshot()
        acked = [tag for tag, record in records.items() if record["outcome"] == "acked"]
        deadline = time.monotonic() + 60 + size["events"] / 20
        while time.monotonic() < deadline:
            have = {event.body.get("dedup_key") for event in standin.events}
            if set(acked) <= have and agent.pending() == 0:
                break
            time.sleep(0.2)
        quiet_for(standin, 0.5)  # no late duplicate arrives
        assert not marker(agent), "pending marker left with nothing pending"
        assert agent.stop() == 0
        verdict = analyse(records, deliveries_of(standin.events), read_queue(agent.state_dir), timeline,
                          size["keys"] * (BATCH_PER_TURN + 1))
        figures.update(verdict.figures)
        figures.update(cuts=fs.cuts, fsyncs=sum(s.get("fsync", 0) for s in fs.syncs),
                       dir_fsyncs=sum(s.get("fsyncdir", 0) for s in fs.syncs),
                       total_sec=round(time.monotonic() - started, 1))
        assert not verdict.problems, summary(verdict.problems)
        assert quick_check(agent.state_dir) == "ok"
        assert not glob.glob(os.path.join(agent.state_dir, "*.corrupt-*")), "a cut left a queue SQLite calls damaged"
        assert "Traceback" not in agent.log()
    finally:
        senders.stop()
    assert figures["events"] == size["events"] and figures["cuts"] == size["cuts"]


# --- a cut right after each of the daemon's own write points ----------------------------------------------


def test_cut_right_after_the_marker_is_created(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    """The send that makes the queue non-empty is answered only once the marker and its name are on disk:
    after the cut the marker is there for pdagent-retry.service's ConditionPathExists=."""
    agent, fs = on_layer
    standin.refuse_connections()
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    for attempt in range(3):  # the queue empty again each time: the marker is created anew
        tag = f"first-{attempt}"
        send(agent, tag)
        cut(agent, fs, timeline, start=False)
        assert marker(agent), f"cut {attempt}: the marker did not survive"
        assert read_queue(agent.state_dir)[tag].state == "pending"
        standin.accept_connections()
        agent.start(timeout=60)
        assert standin.wait_for(attempt + 1, timeout=30)
        wait_until(lambda: not marker(agent), 30, "the marker to go once delivered")
        standin.refuse_connections()


def test_cut_right_after_the_marker_is_removed(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    """Removing the marker need not be durable: if it comes back, the next start finds nothing pending and
    removes it; nothing is sent again."""
    agent, fs = on_layer
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    for number in range(5):
        send(agent, f"gone-{number}")
    assert standin.wait_for(5, timeout=30)
    wait_until(lambda: not marker(agent), 30, "the marker to go")
    cut(agent, fs, timeline, start=False)
    assert pending_rows(agent) == 0  # the results were committed before the marker went
    agent.start(timeout=60)
    assert not marker(agent)
    quiet_for(standin, 1.0)  # nothing delivered before the cut is sent again
    assert len(standin.events) == 5


def test_cut_right_after_the_retention_purge(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    agent, fs = on_layer
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    for number in range(30):
        send(agent, f"old-{number}")
    assert standin.wait_for(30, timeout=30)
    wait_until(lambda: agent.pending() == 0, 30, "all delivered")
    standin.refuse_connections()
    for number in range(5):
        send(agent, f"kept-{number}")
    agent.stop()
    time.sleep(1.1)  # time itself: the delivered events grow older than keep_delivered (1 s)
    agent.env["PDAGENT_KEEP_DELIVERED"] = "1s"
    timeline.starts.append(time.monotonic())
    agent.start(timeout=60)  # the purge runs at start
    wait_until(lambda: not any(tag.startswith("old-") for tag in read_queue(agent.state_dir)), 30, "the purge")
    cut(agent, fs, timeline, start=False)
    rows = read_queue(agent.state_dir)
    assert not any(tag.startswith("old-") and row.state != "delivered" for tag, row in rows.items())
    assert sorted(tag for tag, row in rows.items() if row.state == "pending") == [f"kept-{n}" for n in range(5)]
    assert marker(agent)
    assert quick_check(agent.state_dir) == "ok"
    standin.accept_connections()
    agent.start(timeout=60)
    assert standin.wait_for(35, timeout=30)
    quiet_for(standin, 0.5)
    assert len(standin.events) == 35  # nothing purged or delivered came back to be sent again


def test_cut_right_after_a_damaged_queue_is_moved_aside(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    """The damaged file's move and the new queue.db's name are durable before the first event is accepted:
    after a cut the new queue is still queue.db, with that event in it."""
    agent, fs = on_layer
    standin.refuse_connections()
    with open(os.path.join(agent.state_dir, "queue.db"), "wb") as handle:
        handle.write(b"this is not a database " * 512)
        handle.flush()
        os.fsync(handle.fileno())
    fd = os.open(agent.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    assert glob.glob(os.path.join(agent.state_dir, "queue.db.corrupt-*"))
    send(agent, "after-the-move")
    cut(agent, fs, timeline, start=False)
    assert len(glob.glob(os.path.join(agent.state_dir, "queue.db.corrupt-*"))) == 1
    assert read_queue(agent.state_dir)["after-the-move"].state == "pending"
    assert marker(agent)
    standin.accept_connections()
    agent.start(timeout=60)
    assert standin.wait_for(1, timeout=30)


def test_cut_right_after_wal_checkpoints(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    """An automatic checkpoint (queue.db written from the WAL, which is then reused from its start) while events
    arrive, and the checkpoint of a clean stop (then the WAL is deleted): nothing acknowledged is lost."""
    agent, fs = on_layer
    standin.refuse_connections()
    timeline = Timeline([time.monotonic()])
    agent.start(timeout=60)
    live_db = lambda: os.path.join(fs.live_dir(), "queue.db")  # noqa: E731 - the backing file, no page cache
    size_before = os.path.getsize(live_db())
    sent: List[str] = []
    while os.path.getsize(live_db()) == size_before:  # queue.db grows only by a checkpoint
        assert len(sent) < 20000, "no checkpoint"
        for _ in range(50):
            sent.append(f"cp-{len(sent)}")
            send(agent, sent[-1])
    cut(agent, fs, timeline, start=False)
    assert sorted(tag for tag, row in read_queue(agent.state_dir).items() if row.state == "pending") == sorted(sent)
    agent.start(timeout=60)
    send(agent, "last")
    assert agent.stop() == 0  # the last connection's checkpoint, then the WAL goes
    assert not os.path.exists(os.path.join(agent.state_dir, "queue.db-wal"))
    fs.cut()
    assert pending_rows(agent) == len(sent) + 1
    standin.accept_connections()
    agent.start(timeout=60)
    assert standin.wait_for(len(sent) + 1, timeout=120)


def test_cut_right_after_pd_queue_retry_and_drop(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    agent, fs = on_layer
    timeline = Timeline([time.monotonic()])
    standin.add_fault(status=400, count=4)
    agent.start(timeout=60)
    for number in range(4):
        send(agent, f"refused-{number}", key=routing_key(901 + number % 2))
    wait_until(lambda: agent.status()["totals"]["failed"] == 4, 30, "four failed events")
    assert not marker(agent)
    standin.refuse_connections()
    retried = agent.client("pdagent_sd.cli.queue", "retry", "-k", routing_key(901))
    assert retried.returncode == 0, retried.stderr
    cut(agent, fs, timeline, start=False)
    rows = read_queue(agent.state_dir)
    assert sorted(tag for tag, row in rows.items() if row.state == "pending") == ["refused-0", "refused-2"]
    assert marker(agent)  # retry made the queue non-empty: the marker is as durable as the rows
    agent.start(timeout=60)
    dropped = agent.client("pdagent_sd.cli.queue", "drop", "-k", routing_key(902), "--state", "failed", "--yes")
    assert dropped.returncode == 0, dropped.stderr
    cut(agent, fs, timeline, start=False)
    rows = read_queue(agent.state_dir)
    assert "refused-1" not in rows and "refused-3" not in rows
    standin.accept_connections()
    agent.start(timeout=60)
    assert standin.wait_for(2, timeout=30)
    quiet_for(standin, 0.5)  # the refused event stays refused
    assert sorted(e.body["dedup_key"] for e in standin.events) == ["refused-0", "refused-2"]


def test_the_layer_saw_the_daemon_sync(on_layer, standin) -> None:  # type: ignore[no-untyped-def]
    """What the layer counts: an acknowledged send costs the daemon at least one fsync (SQLite's WAL), and the
    first one of an empty queue a directory fsync (the marker's)."""
    agent, fs = on_layer
    standin.refuse_connections()
    agent.start(timeout=60)
    before = fs.live_syncs()
    send(agent, "one")
    after = fs.live_syncs()
    assert after["fsync"] > before["fsync"] and after["fsyncdir"] > before["fsyncdir"]
