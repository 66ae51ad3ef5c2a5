"""Corrupt state: a damaged queue.db is moved aside under a timestamped name, a critical CORRUPT_QUEUE record is
written, the status op warns, and the agent goes on accepting and delivering; the same when the damage is
found while the daemon runs (it exits so that the next start moves the file aside: systemd restarts it)."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from typing import Callable, Dict, List

import pytest

from pdagent_sd import config as config_module
from pdagent_sd.daemon import Daemon
from pdagent_sd.journal import Kind

from agentproc import Agent, trigger
from chaoslib import quick_check, routing_key, runs

KEYS = [routing_key(n) for n in range(2)]
PAGE = 4096
MOVED_ASIDE = re.compile(r"^queue\.db\.corrupt-\d{8}T\d{6}(\.\d+)?$")


def garbage(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))


def truncated(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 3)


def damaged_pages(path: str) -> None:
    """The header and schema page stay valid; table and index pages in the middle are overwritten."""
    pages = os.path.getsize(path) // PAGE
    with open(path, "r+b") as handle:
        handle.seek(PAGE * (pages // 3))
        handle.write(os.urandom(PAGE * max(2, pages // 4)))


def damaged_schema(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(100)  # past the 100-byte header: the sqlite_schema table's page
        handle.write(os.urandom(PAGE - 100))


DAMAGE: Dict[str, Callable[[str], None]] = {
    "garbage": garbage, "truncated": truncated, "damaged_pages": damaged_pages, "damaged_schema": damaged_schema}


def send(agent: Agent, key: str, tag: str) -> dict:  # type: ignore[type-arg]
    return agent.request({"op": "send", "api": "v2", "event": trigger(key, tag + " " + "x" * 300, tag)})


def queue_with_pending(agent: Agent, standin, count: int) -> List[str]:  # type: ignore[no-untyped-def]
    """A real queue.db written by the daemon: `count` events pending (the API is down), then a clean stop."""
    standin.refuse_connections()
    agent.start()
    tags = [f"before-{n}" for n in range(count)]
    for n, tag in enumerate(tags):
        assert send(agent, KEYS[n % 2], tag)["ok"]
    assert agent.stop() == 0
    return tags


def moved_aside(state_dir: str) -> List[str]:
    return sorted(name for name in os.listdir(state_dir) if MOVED_ASIDE.match(name))


def assert_agent_works(agent: Agent, standin, tags: List[str]) -> None:  # type: ignore[no-untyped-def]
    for tag in tags:
        assert send(agent, KEYS[0], tag)["ok"]
    assert agent.wait_until(lambda: set(tags) <= {e.body["dedup_key"] for e in standin.events}, timeout=15), \
        agent.log()[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_queue_is_moved_aside_loudly_and_the_agent_goes_on(damage, make_agent, standin, figures) -> None:  # type: ignore[no-untyped-def]
    agent = make_agent(start=False)
    queue_with_pending(agent, standin, 300)
    path = os.path.join(agent.state_dir, "queue.db")
    DAMAGE[damage](path)
    with open(path, "rb") as handle:
        damaged_bytes = handle.read()
    standin.accept_connections()
    agent.start()

    aside = moved_aside(agent.state_dir)
    assert len(aside) == 1, os.listdir(agent.state_dir)
    with open(os.path.join(agent.state_dir, aside[0]), "rb") as handle:
        assert handle.read() == damaged_bytes  # kept as it was, for an operator to look at
    assert quick_check(agent.state_dir) == "ok"

    def critical() -> List[str]:
        return [line for line in agent.log().splitlines() if line.startswith("pdagentd: critical: ")]

    # the record is written by the daemon's log thread, which need not have done so when start() returns
    assert agent.wait_until(lambda: any("queue database damaged" in line and aside[0] in line
                                        for line in critical())), agent.log()[-2000:]
    status = agent.status()
    assert status["warnings"] and aside[0] in status["warnings"][0]
    assert status["damaged_files"] == [os.path.join(agent.state_dir, aside[0])]
    assert_agent_works(agent, standin, ["after-0", "after-1"])
    salvaged = sorted({e.body["dedup_key"] for e in standin.events} - {"after-0", "after-1"})
    figures.update(damage=damage, pending_in_damaged_file=300, delivered_from_it=len(salvaged),
                   reason=critical()[0][:160])
    assert agent.status()["warnings"]  # the warning stays until an operator removes the file


@pytest.mark.integration
def test_damage_record_is_critical_with_its_message_id(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The daemon's own wiring, in process: a damaged file at open gives one CRITICAL record with the
    CORRUPT_QUEUE MESSAGE_ID (journald shows it as priority 2; the catalog explains it)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "queue.db").write_bytes(b"\x00not a database\x00" * 512)
    config = config_module.load(str(tmp_path / "none.conf"), {"PDAGENT_EVENTS_URL": "http://127.0.0.1:9"})
    left, right = socket.socketpair()
    try:
        daemon = Daemon(config, left, False, str(state))
        with caplog.at_level(logging.INFO, logger="pdagent_sd.journal"):
            daemon.store.open()
        daemon.store.close()
    finally:
        left.close()
        right.close()
    records = [r for r in caplog.records if getattr(r, "MESSAGE_ID", None) == Kind.CORRUPT_QUEUE.value]
    assert len(records) == 1 and records[0].levelno == logging.CRITICAL
    assert "moved aside" in records[0].getMessage() and records[0].PDAGENT_ERROR


@pytest.mark.integration
def test_damaged_wal_after_a_crash_does_not_stop_the_agent(make_agent, standin, figures) -> None:  # type: ignore[no-untyped-def]
    """The WAL checksums every frame: SQLite ignores a damaged WAL from the first bad frame on. Whatever was
    committed in those frames is gone without an error (SQLite cannot tell it from a crash before the
    commit); the agent starts, keeps what the database file holds, and works."""
    agent = make_agent(start=False)
    standin.refuse_connections()
    agent.start()
    for n in range(200):
        assert send(agent, KEYS[n % 2], f"before-{n}")["ok"]
    agent.kill9()  # the WAL is left as it is, not checkpointed
    wal = os.path.join(agent.state_dir, "queue.db-wal")
    size = os.path.getsize(wal)
    with open(wal, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(os.urandom(PAGE * 4))
    standin.accept_connections()
    agent.start()
    assert agent.status()["warnings"] == []
    assert_agent_works(agent, standin, ["after-0"])
    kept = agent.status()["totals"]
    figures.update(committed=200, kept=kept["pending"] + kept["delivered"] - 1)


@pytest.mark.parametrize("size", runs({"events": 300}, {"events": 5000}))
def test_damage_found_while_running_ends_the_daemon_and_the_next_start_moves_it_aside(
        size, make_agent, standin, figures) -> None:  # type: ignore[no-untyped-def]
    """Pages overwritten under the running daemon: the first read or write that meets them reports damage; the
    daemon then exits with status 74 (EX_IOERR) instead of answering internal errors forever, and the
    restart (systemd's Restart=on-failure; here the test) moves the file aside and goes on."""
    agent = make_agent(start=False)
    standin.refuse_connections()
    agent.start()
    for n in range(size["events"]):
        assert send(agent, KEYS[n % 2], f"before-{n}")["ok"]
    agent.request({"op": "flush"})
    time.sleep(1.5)  # let a checkpoint move the pages into queue.db
    damaged_pages(os.path.join(agent.state_dir, "queue.db"))
    standin.accept_connections()
    assert agent.proc is not None
    try:
        agent.request({"op": "flush"})  # delivery reads the damaged pages
    except (OSError, ValueError):  # a retry due meanwhile read them first, and the daemon is already going
        pass
    deadline = time.monotonic() + 30
    replies = []
    while agent.proc.poll() is None and time.monotonic() < deadline:
        try:
            replies.append(agent.request({"op": "status"}).get("code", "ok"))
        except (OSError, ValueError):  # the daemon went while answering: no reply line
            pass
        time.sleep(0.2)
    assert agent.proc.poll() == 74, agent.log()[-3000:]
    assert "internal_error" not in replies
    critical = [line for line in agent.log().splitlines() if line.startswith("pdagentd: critical: ")]
    assert any("damaged while running" in line for line in critical), agent.log()[-3000:]
    agent.start()
    assert len(moved_aside(agent.state_dir)) == 1
    assert agent.status()["warnings"]
    assert_agent_works(agent, standin, ["after-0"])
    figures.update(events=size["events"], seconds_to_exit=round(30 - (deadline - time.monotonic()), 1),
                   status_replies_meanwhile=sorted(set(replies)))
