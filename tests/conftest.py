"""Shared fixtures: a real Events API stand-in on loopback and the real pdagentd process."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from agentproc import Agent  # noqa: E402
from standin import StandIn  # noqa: E402


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
