"""The power-cut layer itself (lazyfs.py through powercut.py): what was made durable survives a cut, and only
that. Needs root and FUSE (fuse3, python3-fusepy); skipped otherwise."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from typing import Iterator

import pytest

from powercut import PowerCutFS, skip_reason
from tiers import missing

pytestmark = [pytest.mark.integration, pytest.mark.powercut]

SKIP = skip_reason()


@pytest.fixture
def fs(tmp_path) -> Iterator[PowerCutFS]:  # type: ignore[no-untyped-def]
    if SKIP:
        missing(SKIP)
    layer = PowerCutFS(str(tmp_path / "layer"), str(tmp_path / "mnt"))
    with layer:
        yield layer


def write(path: str, data: bytes, sync: bool = False, mode: str = "wb") -> None:
    with open(path, mode) as handle:
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_unsynced_data_is_gone_and_synced_data_survives(fs) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(fs.mountpoint, "f")
    write(path, b"durable", sync=True)
    sync_dir(fs.mountpoint)
    write(path, b" and more", mode="ab")  # written, readable, never synced
    assert read(path) == b"durable and more"
    fs.cut()
    assert read(path) == b"durable"
    write(path, b" and more", sync=True, mode="ab")
    fs.cut()
    assert read(path) == b"durable and more"


def test_a_new_file_is_gone_unless_its_directory_was_synced(fs) -> None:  # type: ignore[no-untyped-def]
    synced_data_only = os.path.join(fs.mountpoint, "a")
    synced_entry_only = os.path.join(fs.mountpoint, "b")
    write(synced_data_only, b"data", sync=True)
    fs.cut()
    assert not os.path.exists(synced_data_only)  # its own fsync does not make its name durable
    write(synced_entry_only, b"data")
    write(synced_data_only, b"data", sync=True)
    sync_dir(fs.mountpoint)
    fs.cut()
    assert read(synced_data_only) == b"data"
    assert read(synced_entry_only) == b""  # the name survived, the data never synced did not


def test_unlink_and_rename_are_undone_unless_the_directory_was_synced(fs) -> None:  # type: ignore[no-untyped-def]
    for name in ("x", "y"):
        write(os.path.join(fs.mountpoint, name), name.encode(), sync=True)
    sync_dir(fs.mountpoint)
    os.unlink(os.path.join(fs.mountpoint, "x"))
    os.rename(os.path.join(fs.mountpoint, "y"), os.path.join(fs.mountpoint, "z"))
    fs.cut()
    assert sorted(os.listdir(fs.mountpoint)) == ["x", "y"]
    os.unlink(os.path.join(fs.mountpoint, "x"))
    os.rename(os.path.join(fs.mountpoint, "y"), os.path.join(fs.mountpoint, "z"))
    sync_dir(fs.mountpoint)
    fs.cut()
    assert sorted(os.listdir(fs.mountpoint)) == ["z"] and read(os.path.join(fs.mountpoint, "z")) == b"y"


def test_a_reused_inode_number_is_a_new_file(fs) -> None:  # type: ignore[no-untyped-def]
    """The backing file system may give a new file the inode number of one just removed: the removed file's
    durable name must not take the new file's data."""
    old = os.path.join(fs.mountpoint, "old")
    write(old, b"old", sync=True)
    sync_dir(fs.mountpoint)
    for number in range(20):
        os.unlink(old) if number == 0 else os.unlink(os.path.join(fs.mountpoint, f"new{number - 1}"))
        write(os.path.join(fs.mountpoint, f"new{number}"), b"new", sync=True)
    fs.cut()
    assert os.listdir(fs.mountpoint) == ["old"] and read(old) == b"old"


def test_truncation_is_durable_only_when_synced(fs) -> None:  # type: ignore[no-untyped-def]
    path = os.path.join(fs.mountpoint, "t")
    write(path, b"0123456789", sync=True)
    sync_dir(fs.mountpoint)
    os.truncate(path, 4)
    write(path, b"ab", mode="ab")
    fs.cut()
    assert read(path) == b"0123456789"
    os.truncate(path, 4)
    write(path, b"\0\0ab", mode="r+b")  # rewrite through the same range
    with open(path, "r+b") as handle:
        handle.seek(6)
        handle.write(b"xy")
        handle.flush()
        os.fsync(handle.fileno())
    fs.cut()
    assert read(path) == b"\0\0ab\0\0xy"


def sqlite_rows(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone() is None:
            return 0  # without fsync, even the table's creation is gone
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("synchronous, survives", [("FULL", True), ("OFF", False)])
def test_sqlite_wal_commits_survive_only_when_synced(fs, synchronous, survives) -> None:  # type: ignore[no-untyped-def]
    """SQLite in WAL mode on the layer (its -shm mapped shared): with synchronous=FULL every commit survives a
    cut; with synchronous=OFF (no fsync) they do not, which shows the layer does throw unsynced data away."""
    path = os.path.join(fs.mountpoint, "q.db")
    script = ("import sqlite3, sys\n"
              "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "conn.execute('PRAGMA journal_mode = WAL')\n"
              f"conn.execute('PRAGMA synchronous = {synchronous}')\n"
              "conn.execute('CREATE TABLE IF NOT EXISTS t (x)')\n"
              "reader = sqlite3.connect(sys.argv[1])\n"
              "for n in range(50):\n"
              "    conn.execute('INSERT INTO t VALUES (?)', (n,))\n"
              "    assert reader.execute('SELECT COUNT(*) FROM t').fetchone()[0] == n + 1\n"
              "print('committed', flush=True)\n"
              "import os; os.kill(os.getpid(), 9)\n")
    # SQLite creates the database file, but syncs only the WAL's directory entry: a database that existed
    # before is what the daemon has too (it syncs the directory after opening).
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    sync_dir(fs.mountpoint)
    result = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=120)
    assert "committed" in result.stdout, result.stderr
    fs.cut()
    rows = sqlite_rows(path) if os.path.exists(path) else 0
    assert (rows == 50) if survives else (rows < 50), rows
