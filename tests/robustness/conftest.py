"""Robustness and security tests (bad input, permissions, secrets, TLS). Each measuring test fills the
`figures` fixture; the figures are printed at the end of the session (and written as JSON to
$ROBUSTNESS_REPORT when it is set), so that docs/reliability.md can quote a full run.

Short forms run in `make test`; full forms are marked slow and run only with RELIABILITY_FULL=1 (robustlib.runs).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from figures import FigureLog  # noqa: E402  (tests/ is on sys.path through tests/conftest.py)

from asuser import OtherUser, available  # noqa: E402
from tiers import missing  # noqa: E402

FIGURES = FigureLog("robustness figures", "ROBUSTNESS_REPORT")
figures = FIGURES.fixture()


@pytest.fixture
def other_user() -> Iterator[OtherUser]:
    """A throwaway unprivileged user with a venv of Debian's python3 (asuser.py); skips where there is none."""
    reason = available()
    if reason:
        missing(reason)
    with OtherUser() as user:
        yield user


def pytest_terminal_summary(terminalreporter: Any) -> None:
    FIGURES.terminal_summary(terminalreporter)
