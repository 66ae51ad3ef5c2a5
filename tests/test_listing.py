"""Bounded listing (issue 12): a non-admin's list reads no bodies, an admin's stops at a byte cap, and the
client reads a long reply in time linear in its length."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import pytest

from pdagent_sd.events import validate
from pdagent_sd.protocol import Client
from pdagent_sd.store import Store

from agentproc import KEY_A, trigger


@pytest.mark.unit
def test_a_page_without_bodies_and_one_cut_at_its_byte_cap(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "state"))
    store.open()
    try:
        for index in range(10):
            store.enqueue(validate("v2", trigger(KEY_A, "x" * 900 + str(index))))
        rows, truncated = store.reads.list_page(None, None, 100, bodies=False)
        assert len(rows) == 10 and not truncated and all(row.body is None for row in rows)
        rows, truncated = store.reads.list_page(None, None, 100, bodies=True, max_bytes=3500)
        assert truncated and 1 <= len(rows) < 10 and sum(len(row.body or "") for row in rows) <= 3500
        rows, truncated = store.reads.list_page(None, None, 100, bodies=True, max_bytes=10)
        assert truncated and len(rows) == 1  # one row always comes, however large
    finally:
        store.close()


def _read_time(tmp_path: Any, size: int) -> float:
    path = os.path.join(str(tmp_path), "reply.sock")
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    reply = b'{"ok":true,"pad":"' + b"x" * size + b'"}\n'

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for start in range(0, len(reply), 65536):  # in small pieces, as a busy daemon writes
                conn.sendall(reply[start:start + 65536])

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Client(path, timeout=60) as client:
            # the reading thread's own CPU time: what a rescan-and-copy per piece would multiply, and what a
            # loaded machine's stalls (another test run beside this one) do not add to
            started = time.thread_time()
            assert len(client.request({"op": "status"})["pad"]) == size
            return time.thread_time() - started
    finally:
        thread.join()
        server.close()


@pytest.mark.unit
def test_the_client_reads_a_long_reply_in_linear_time(tmp_path: Any) -> None:
    small = min(_read_time(tmp_path, 2 << 20) for _ in range(3))
    large = min(_read_time(tmp_path, 16 << 20) for _ in range(2))  # one stall of a loaded machine is not the code
    # 8 times the bytes: about 8 times the time when linear, 64 when each piece rescans and copies the buffer
    assert large / small < 24, (small, large)
