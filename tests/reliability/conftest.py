"""Reliability tests: figures of each run are printed at the end of the session (and written as JSON to
$RELIABILITY_REPORT when it is set), so that docs/reliability.md can quote a full run."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Iterator, List, Tuple

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FIGURES: List[Tuple[str, Dict[str, Any]]] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Dict[str, Any]]:
    """A dict the test fills with what it measured; kept even when the test fails."""
    found: Dict[str, Any] = {}
    yield found
    if found:
        FIGURES.append((request.node.nodeid, found))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for nodeid, found in FIGURES:
        terminalreporter.write_line(f"{nodeid}: {json.dumps(found)}")
    path = os.environ.get("RELIABILITY_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(dict(FIGURES), handle, indent=2)
        terminalreporter.write_line(f"figures written to {path}")
