"""Reliability tests: figures of each run are printed at the end of the session (and written as JSON to
$RELIABILITY_REPORT when it is set), so that docs/reliability.md can quote a full run."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from figures import FigureLog  # noqa: E402  (tests/ is on sys.path through tests/conftest.py)

FIGURES = FigureLog("reliability figures", "RELIABILITY_REPORT")
figures = FIGURES.fixture()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    FIGURES.terminal_summary(terminalreporter)
