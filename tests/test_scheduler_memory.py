"""Per-key scheduler state is freed once a key is idle (issue 12): the real Scheduler, Store and Deliverer
against the stand-in in its own process on loopback, with this process's Python allocations counted by
tracemalloc (SQLite's page cache, bounded by its own cache_size, is not among them)."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import tracemalloc
from typing import Any, Iterator

import pytest

from pdagent_sd import config as config_module
from pdagent_sd.events import validate
from pdagent_sd.keys import RoutingKey
from pdagent_sd.queuetypes import Sender
from pdagent_sd.scheduler import Scheduler
from pdagent_sd.store import Store

from agentproc import ROOT, trigger
from waiting import wait_until

KEYS = 600
BYTES_PER_KEY = 64  # what may stay behind per key that came and went (was some 1,350)
FIXED_BYTES = 64 * 1024  # caches that fill once whatever the number of keys (statements, pools, a dict's table)


def junk_key(index: int) -> str:
    return f"{index:016x}" + "fedcba9876543210"


@pytest.fixture
def standin_url() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "standin.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain(store: Store, scheduler: Scheduler, first: int, count: int) -> None:
    commits = [store.enqueue_async(validate("v2", trigger(junk_key(n), f"junk {n}")), Sender(65534, False))
               for n in range(first, first + count)]
    for n, commit in zip(range(first, first + count), commits):
        commit.result()
        scheduler.wake(RoutingKey(junk_key(n)), 65534)
    wait_until(lambda: not (store.pending_count or not scheduler.idle() or scheduler.keys), 120,
               "every key delivered and its scheduler state freed")


@pytest.mark.integration
def test_idle_keys_leave_no_scheduler_state_behind(tmp_path: Any, standin_url: str) -> None:
    config = config_module.load(str(tmp_path / "none.conf"), {"PDAGENT_EVENTS_URL": standin_url,
                                                              "PDAGENT_RATE_LIMIT_PER_MINUTE": "6000",
                                                              "PDAGENT_RATE_LIMIT_BURST": "1"})
    store = Store(str(tmp_path / "state"))
    store.open()
    scheduler = Scheduler(store, config)
    scheduler.start()
    agent_log = logging.getLogger("pdagent_sd")
    saved = agent_log.propagate, agent_log.level
    agent_log.propagate, agent_log.level = False, logging.WARNING  # pytest would keep every record
    try:
        tracemalloc.start()
        _drain(store, scheduler, 0, KEYS)  # warm: pools, the keys dict's table, caches
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        _drain(store, scheduler, KEYS, KEYS)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert not scheduler.keys and not scheduler.ready and not scheduler.retiring
        assert after - before <= FIXED_BYTES + BYTES_PER_KEY * KEYS, (before, after)
    finally:
        agent_log.propagate, agent_log.level = saved
        scheduler.stop(5)
        store.close()
