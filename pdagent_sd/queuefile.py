"""The queue's figures read straight from queue.db, read-only, for `pd-queue metrics --from-queue DIR`.

pdagent-metrics.service uses it while pdagentd is not running: asking the daemon through its socket would start
it (socket activation) once a minute on every host for nothing. The daemon exits only with no pending event,
and every write to the queue goes through it, so while it is down the file does not change under this read.
If it starts meanwhile, SQLite's WAL keeps the read consistent. Run it as the service's user: the state
directory is 0700, and SQLite may create queue.db-wal/-shm beside the file, which must stay the daemon's.

The result is a QueueStatus like the daemon's (keys masked), so metrics.render() renders both alike.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from typing import Dict, Optional

from pdagent_sd.keys import mask
from pdagent_sd.protocol import STATUS_MAX_KEYS
from pdagent_sd.statustypes import STATES, KeyCounts, KeyStatus, QueueStatus, State
from pdagent_sd.store import DB_NAME

PER_KEY = ("SELECT routing_key, state, COUNT(*), MIN(CASE WHEN state = 'pending' THEN created END) "
           "FROM events GROUP BY routing_key, state")


def read_status(state_dir: str, now: Optional[float] = None) -> QueueStatus:
    """The status of the queue in state_dir; raises sqlite3.Error or OSError if it cannot be read."""
    now = time.time() if now is None else now
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no queue at {path}")
    damaged = sorted(os.path.join(state_dir, name) for name in os.listdir(state_dir)
                     if name.startswith(DB_NAME + ".corrupt-") and not name.endswith(("-wal", "-shm")))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for every query
        per_key: Dict[str, KeyCounts] = {}
        for key, state, count, oldest in conn.execute(PER_KEY):
            if not isinstance(key, str) or state not in STATES:
                continue
            entry = replace(per_key.get(key, KeyCounts()), **{state: int(count)})
            if state == State.PENDING.value and isinstance(oldest, (int, float)):
                entry = replace(entry, oldest_pending=float(oldest))
            per_key[key] = entry
        row = conn.execute("SELECT at FROM attempts WHERE outcome = 'delivered' ORDER BY rowid DESC LIMIT 1").fetchone()
        conn.execute("COMMIT")
    finally:
        conn.close()
    chosen = sorted(per_key, key=lambda k: (-per_key[k].pending, -per_key[k].failed, k))[:STATUS_MAX_KEYS]
    keys = []
    for key in sorted(chosen):
        entry = per_key[key]
        oldest = entry.oldest_pending
        keys.append(KeyStatus.of(mask(key), entry, round(now - oldest, 3) if oldest is not None else None))
    totals = {state: sum(entry.count(state) for entry in per_key.values()) for state in STATES}
    return QueueStatus(tuple(keys), len(per_key), totals,
                       last_delivery=row[0] if row and isinstance(row[0], (int, float)) else None,
                       throttled_keys=0, damaged_files=tuple(damaged))
