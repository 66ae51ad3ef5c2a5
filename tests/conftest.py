"""Shared fixtures: a real Events API stand-in on loopback and the real pdagentd process."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import agentproc  # noqa: E402
import standin as standin_module  # noqa: E402
from agentproc import Agent  # noqa: E402
from standin import StandIn  # noqa: E402


@pytest.fixture(autouse=True)
def no_whole_key_in_agent_logs() -> Iterator[None]:
    """After every test: no log of an agent it started shows whole a routing key a stand-in received."""
    agentproc.CREATED.clear()
    standin_module.CREATED.clear()
    yield
    keys = {key for api in standin_module.CREATED for key in api.keys_seen}
    leaks = agentproc.whole_keys_in_logs(agentproc.CREATED, keys)
    agentproc.CREATED.clear()
    standin_module.CREATED.clear()
    assert not leaks, "a routing key appears whole in the daemon's log:\n" + "\n".join(leaks[:10])


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as api:
        yield api


@pytest.fixture
def make_agent(tmp_path, standin):  # type: ignore[no-untyped-def]
    """Start pdagentd processes (any PDAGENT_* setting as keyword); all are stopped by PID afterwards."""
    started = []

    def make(start: bool = True, **settings: str) -> Agent:
        workdir = tmp_path / f"agent{len(started)}"
        workdir.mkdir()
        agent = Agent(str(workdir), standin.url, **settings)
        started.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture
def agent(make_agent) -> Agent:  # type: ignore[no-untyped-def]
    return make_agent()
