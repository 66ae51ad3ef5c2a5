"""The `pending` marker under the real daemon: a marker that cannot be created is reported (journal record and
STATUS=) while the events are still accepted, and made good once it can be; `pdagentd --check-pending`, the
boot pass's condition. The marker's durability across a power cut is tests/reliability/test_power_cut.py's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from typing import Iterator, List

import pytest

from agentproc import KEY_A, Agent, base_env
from tiers import missing

pytestmark = pytest.mark.integration


class NotifyListener:
    """A datagram socket as NOTIFY_SOCKET: what the daemon tells systemd."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: List[str] = []

    def statuses(self) -> List[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except socket.timeout:
                break
        return [line[len("STATUS="):] for message in self.messages for line in message.splitlines()
                if line.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def inode_starved(tmp_path, standin) -> Iterator[Agent]:  # type: ignore[no-untyped-def]
    """pdagentd whose state directory is a tmpfs with room for queue.db, its WAL and -shm, and not one inode
    more: SQLite's writes go into files that exist, the marker cannot be created (ENOSPC)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        missing("mounting a tmpfs needs root")
    workdir = tmp_path / "agent"
    workdir.mkdir()
    listener = NotifyListener(str(workdir / "notify.sock"))
    agent = Agent(str(workdir), standin.url, NOTIFY_SOCKET=str(workdir / "notify.sock"))
    agent.listener = listener  # type: ignore[attr-defined]
    os.makedirs(agent.state_dir)
    # the root directory, queue.db, queue.db-wal, queue.db-shm, and a filler the test removes to make room
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=5,mode=0700", "tmpfs", agent.state_dir],
                   check=True)
    try:
        standin.refuse_connections()
        agent.start()
        with open(os.path.join(agent.state_dir, "filler"), "w"):
            pass
        yield agent
    finally:
        agent.stop()
        listener.close()
        subprocess.run(["umount", agent.state_dir], check=True)


def test_a_marker_that_cannot_be_created_is_reported_and_made_good_later(inode_starved, standin) -> None:  # type: ignore[no-untyped-def]
    agent = inode_starved
    listener = agent.listener
    for number in range(3):
        sent = agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", f"disk full {number}")
        assert sent.returncode == 0, sent.stderr  # the event is on disk: accepted all the same
    assert not os.path.exists(os.path.join(agent.state_dir, "pending"))
    log = agent.log()
    assert log.count("cannot create") == 1, log  # once per reason, not once per commit
    assert "No space left on device" in log
    assert agent.wait_until(lambda: any("WARNING: cannot create" in status and "pending" in status
                                        for status in listener.statuses()), timeout=10), listener.messages
    os.unlink(os.path.join(agent.state_dir, "filler"))
    assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "disk fine").returncode == 0
    assert os.path.isfile(os.path.join(agent.state_dir, "pending"))
    listener.messages.clear()
    assert agent.wait_until(lambda: any(status.startswith("Pending: 4,") and "WARNING" not in status
                                        for status in listener.statuses()), timeout=10), listener.messages
    standin.accept_connections()
    assert standin.wait_for(4, timeout=20)
    assert agent.wait_until(lambda: not os.path.exists(os.path.join(agent.state_dir, "pending")))


def check_pending(state_dir: str) -> int:
    return subprocess.run([sys.executable, "-m", "pdagent_sd.daemon", "--check-pending", "--state-dir", state_dir],
                          env=base_env(), capture_output=True, timeout=60).returncode


def test_check_pending_is_the_boot_pass_condition(make_agent, standin) -> None:  # type: ignore[no-untyped-def]
    """Exit 0 with the marker made good when events are pending (exit 1 with none: tests/system's third boot,
    and marker.check_pending's unit test)."""
    standin.refuse_connections()
    agent = make_agent()
    assert agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "left pending").returncode == 0
    agent.kill9()
    marker = os.path.join(agent.state_dir, "pending")
    os.unlink(marker)  # by hand
    assert check_pending(agent.state_dir) == 0
    assert os.path.isfile(marker)
    standin.accept_connections()
    agent.start()
    assert standin.wait_for(1, timeout=20)
    assert agent.wait_until(lambda: not os.path.exists(marker))
