"""Robustness and security tests (bad input, permissions, secrets, TLS). Each measuring test fills the
`figures` fixture; the figures are printed at the end of the session (and written as JSON to
$ROBUSTNESS_REPORT when it is set), so that docs/reliability.md can quote a full run.

Short forms run in `make test`; full forms are marked slow and run only with RELIABILITY_FULL=1 (robustlib.runs).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterator, List, Tuple

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROBUSTNESS_FIGURES: List[Tuple[str, Dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Dict[str, Any]]:
    """A dict the test fills with what it measured; kept even when the test fails."""
    found: Dict[str, Any] = {}
    yield found
    if found:
        ROBUSTNESS_FIGURES.append((request.node.nodeid, found))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROBUSTNESS_FIGURES:
        return
    terminalreporter.section("robustness figures")
    for nodeid, found in ROBUSTNESS_FIGURES:
        terminalreporter.write_line(f"{nodeid}: {json.dumps(found)}")
    path = os.environ.get("ROBUSTNESS_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(dict(ROBUSTNESS_FIGURES), handle, indent=2)
        terminalreporter.write_line(f"figures written to {path}")
