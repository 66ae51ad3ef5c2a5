"""What measuring tests report: each fills a `figures` dict; the figures are printed in a section at the end of
the session, and written as JSON to a file when the tier's environment variable names one, so that
docs/reliability.md can quote a full run. One FigureLog per tier, wired up in that tier's conftest.py."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest


class FigureLog:
    def __init__(self, section: str, report_variable: str) -> None:
        self.section = section
        self.report_variable = report_variable
        self.found: List[Tuple[str, Dict[str, Any]]] = []

    def fixture(self) -> Callable[..., Any]:
        @pytest.fixture
        def figures(request: pytest.FixtureRequest) -> Iterator[Dict[str, Any]]:
            """A dict the test fills with what it measured; kept even when the test fails."""
            found: Dict[str, Any] = {}
            yield found
            if found:
                self.found.append((request.node.nodeid, found))

        return figures

    def terminal_summary(self, terminalreporter: Any) -> None:
        if not self.found:
            return
        terminalreporter.section(self.section)
        for nodeid, found in self.found:
            terminalreporter.write_line(f"{nodeid}: {json.dumps(found)}")
        path = os.environ.get(self.report_variable)
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(dict(self.found), handle, indent=2)
            terminalreporter.write_line(f"figures written to {path}")
