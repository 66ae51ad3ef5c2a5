"""The `pending` marker and the durability of the state directory's entries.

pdagentd keeps the file `pending` in its state directory while events are pending, so that
pdagent-retry.service's ConditionPathExists= starts nothing at all when the queue is empty. The marker must
survive a power cut as surely as the rows it stands for: it is created, fsync'd and its directory fsync'd
before the commit that made the queue non-empty is acknowledged. Its removal is not made durable: a marker
that comes back after a cut costs one delivery pass, which finds nothing and removes it again.

A marker lost anyway (removed by hand, or never written: a full disk, a read-only directory) is made good at
boot by pdagent-boot.service, whose `pdagentd --check-pending` looks at queue.db itself.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Optional

MARKER_NAME = "pending"
DB_NAME = "queue.db"


def fsync_directory(path: str) -> None:
    """Make the directory's entries (files created, renamed, removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(path: str) -> None:
    """Create the marker, durably; never through a symlink someone left in its place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(os.path.dirname(path) or ".")


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def queue_has_pending(state_dir: str, *, due_by: Optional[float] = None) -> bool:
    """Whether queue.db holds pending events, read straight from the file (no daemon). A queue that cannot be
    read counts as holding some: the daemon, once started, will say what is wrong with it. With `due_by`,
    pending events waiting out a retry time later than that are made due then, in the same transaction."""
    path = os.path.join(state_dir, DB_NAME)
    if not os.path.exists(path):
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30)
        try:
            with conn:
                if due_by is not None:
                    conn.execute("UPDATE events SET next_attempt = ? WHERE state = 'pending' AND next_attempt > ?",
                                 (due_by, due_by))
                row = conn.execute("SELECT 1 FROM events WHERE state = 'pending' LIMIT 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True
    return row is not None


def check_pending(state_dir: str) -> bool:
    """At boot: if queue.db holds pending events, make sure the marker exists (durably) and return True.

    Events deferred before the boot are made due now. A retry time is a wall-clock time written during the
    outage that came before the boot (up to backoff_max_sec, 5 min, ahead); a boot is a new start, the network
    may well be back, and a page must not wait out a backoff chosen for a host that no longer runs."""
    if not queue_has_pending(state_dir, due_by=time.time()):
        return False
    path = os.path.join(state_dir, MARKER_NAME)
    if not os.path.lexists(path):
        create(path)
    return True
