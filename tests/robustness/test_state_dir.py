"""The state directory and the socket path: checked, and never followed through a symlink.

- a state directory that group or others can write, or that another uid owns, is refused with a clear error
  naming it (the daemon stays up answering with the reason: pd-send exits 75), and taken as soon as it is
  fixed; another local user cannot plant anything in it;
- a symlink planted as `pending` is neither written through nor followed: its target is never created;
- the socket is created 0666 by bind() itself, with no chmod of the path afterwards.
"""

from __future__ import annotations

import os
import stat
import subprocess
from typing import Any

import pytest

from pdagent_sd import statedir
from pdagent_sd.errors import StorageError

from agentproc import KEY_A, Agent, send_many, trigger
from asuser import OtherUser
from standin import StandIn
from tiers import missing


def _send(agent: Agent) -> "subprocess.CompletedProcess[str]":
    return agent.pd_send("-k", KEY_A, "-t", "trigger", "-d", "disk full")


@pytest.mark.integration
def test_a_state_directory_others_can_write_is_refused_until_fixed(other_user: OtherUser,
                                                                   standin: StandIn) -> None:
    agent = Agent(other_user.workdir, standin.url)
    os.makedirs(agent.state_dir)
    os.chmod(agent.state_dir, 0o777)  # e.g. a --state-dir made by hand in a shared place
    agent.start()
    try:
        refused = _send(agent)
        assert refused.returncode == 75, refused.stderr
        assert f"the state directory {agent.state_dir} can be written by its group and every user (mode 0777)" \
            in refused.stderr and "chmod 0700" in refused.stderr
        assert not os.path.exists(os.path.join(agent.state_dir, "queue.db"))  # nothing opened in it
        # as another local user: it cannot page through the directory, and gets the same clear answer
        planted = other_user.run(["-c", "import os, sys; os.symlink('/etc/shadow', sys.argv[1])",
                                  os.path.join(agent.state_dir, "queue.db-wal")])
        assert planted.returncode == 0  # the directory really was open to everyone...
        os.unlink(os.path.join(agent.state_dir, "queue.db-wal"))
        os.chmod(agent.state_dir, 0o700)  # ...until the admin follows the hint
        assert agent.wait_until(lambda: _send(agent).returncode == 0, timeout=20), agent.log()
        assert "can be written by" in agent.log()
        assert standin.wait_for(1, timeout=10)
    finally:
        agent.stop()


@pytest.mark.unit
def test_a_state_directory_owned_by_another_uid_is_refused(tmp_path: Any) -> None:
    """The same check as above, without a daemon: the 0777 test shows the daemon's answer."""
    if os.geteuid() != 0:
        missing("chown to another uid needs root")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)  # nobody
    with pytest.raises(StorageError) as caught:
        statedir.prepare(str(state))
    assert caught.value.message == (f"the state directory {state} is owned by uid 65534, not by the daemon's uid "
                                    f"{os.geteuid()}")
    assert caught.value.hint and "chown" in caught.value.hint
    os.chown(state, 0, 0)
    os.chmod(state, 0o720)
    with pytest.raises(StorageError, match=r"can be written by its group \(mode 0720\)"):
        statedir.prepare(str(state))
    os.chmod(state, 0o700)
    statedir.prepare(str(state))  # passes
    statedir.prepare(str(tmp_path / "new" / "dir"))  # made 0700 (umask permitting), then passes


@pytest.mark.integration
def test_a_symlink_planted_as_the_pending_marker_is_not_followed(make_agent: Any, standin: StandIn,
                                                                 tmp_path: Any) -> None:
    agent = make_agent(start=False)
    os.makedirs(agent.state_dir, mode=0o700)
    target = tmp_path / "victim"  # where a symlinked marker would make the daemon create (or truncate) a file
    marker = os.path.join(agent.state_dir, "pending")
    os.symlink(str(target), marker)
    standin.refuse_connections()
    agent.start()  # with nothing pending it removes the marker: the link itself, not its target
    send_many(agent, [trigger(KEY_A, "held")])
    assert agent.pending() == 1
    assert not target.exists()
    info = os.lstat(marker)
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    standin.accept_connections()
    assert standin.wait_for(1, timeout=15)
    assert agent.wait_until(lambda: not os.path.lexists(marker), timeout=10)

    os.symlink(str(target), marker)  # planted while the daemon runs with an empty queue
    standin.refuse_connections()
    send_many(agent, [trigger(KEY_A, "held again")])
    assert agent.pending() == 1 and not target.exists()  # not created through the link
    standin.accept_connections()
    assert standin.wait_for(2, timeout=15)
    assert agent.wait_until(lambda: not os.path.lexists(marker), timeout=10)  # the link removed, not followed
    assert not target.exists()


@pytest.mark.integration
def test_the_socket_is_made_0666_by_bind_without_a_chmod(agent: Agent) -> None:
    info = os.lstat(agent.socket)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o666
    with open(f"/proc/{agent.pid}/status", encoding="utf-8") as status:
        assert "Umask:\t0077" in status.read()  # the umask was lowered for bind() only
