"""Fixtures of the system tier: a real systemd booted in a container the tests make (see bootedsystemd.py).

- ``systemd_machine``: a freshly booted container, nothing installed (function scope).
- ``agent_machine``: a fresh container with the agent installed from this tree and pdagent.socket started;
  pdagent.service points at ``events_api``, a stand-in of the Events API on the host's 127.0.0.1.
- ``agent_machine_shared``: the same, booted once per test module, for tests that only look.
- ``boot_machine``: the factory behind them, for tests that need other arguments.

Every container is stopped by signalling the systemd-nspawn process the fixture started, pass or fail. All
skip, with the reason, when not root or when systemd-nspawn (or Debian's python3 modules) are missing.
Boot times are printed at the end of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from bootedsystemd import BootedSystemd, assert_no_whole_key_in_journal, skip_reason

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from standin import StandIn  # noqa: E402  (tests/ has no __init__.py and no conftest of its own)
from tiers import missing  # noqa: E402

BOOT_TIMES: List[BootedSystemd] = []


@pytest.fixture(scope="session")
def system_skip() -> None:
    reason = skip_reason()
    if reason:
        missing(reason)


@pytest.fixture(scope="session")
def boot_machine(system_skip: None) -> Iterator[Callable[..., BootedSystemd]]:
    """boot_machine(**kwargs of BootedSystemd.boot) -> BootedSystemd; whatever is still up at the end is stopped.

    Callers should stop theirs (``with`` or ``.stop()``) as soon as they are done; this is the backstop.
    """
    machines: List[BootedSystemd] = []

    def boot(**kwargs: object) -> BootedSystemd:
        machine = BootedSystemd.boot(REPO, **kwargs)  # type: ignore[arg-type]
        machines.append(machine)
        BOOT_TIMES.append(machine)
        return machine

    yield boot
    for machine in machines:
        machine.stop()


@pytest.fixture
def systemd_machine(boot_machine: Callable[..., BootedSystemd]) -> Iterator[BootedSystemd]:
    with boot_machine() as machine:
        yield machine


@pytest.fixture
def events_api() -> Iterator[StandIn]:
    with StandIn() as api:
        yield api


@pytest.fixture
def agent_machine(boot_machine: Callable[..., BootedSystemd], events_api: StandIn) -> Iterator[BootedSystemd]:
    with boot_machine() as machine:
        machine.install_agent(events_url=events_api.url)
        yield machine
        assert_no_whole_key_in_journal(machine, events_api.keys_seen)


@pytest.fixture(scope="module")
def agent_machine_shared(boot_machine: Callable[..., BootedSystemd]) -> Iterator[BootedSystemd]:
    """Installed but pointed at no stand-in (PDAGENT_EVENTS_URL unset): for tests that send nothing."""
    with boot_machine() as machine:
        machine.install_agent()
        yield machine


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not BOOT_TIMES:
        return
    times = sorted(machine.boot_seconds for machine in BOOT_TIMES)
    terminalreporter.section("booted systemd containers")
    terminalreporter.write_line(
        f"{len(times)} container(s) booted; nspawn start to `is-system-running --wait`: "
        f"min {times[0]:.2f}s, median {times[len(times) // 2]:.2f}s, max {times[-1]:.2f}s")
    terminalreporter.write_line(f"last one: {BOOT_TIMES[-1].startup_finished} "
                                f"(state {BOOT_TIMES[-1].system_state})")
