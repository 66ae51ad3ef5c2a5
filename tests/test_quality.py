"""Linters as ordinary tests (skipped where the tool is missing), and the pd-send hot-path import rule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from agentproc import ROOT, base_env
from tiers import missing

pytestmark = pytest.mark.unit


def _tool(name: str) -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    found = candidate if os.path.exists(candidate) else shutil.which(name)
    if not found:
        missing(f"{name} is not installed")
    return found


@pytest.mark.quality
def test_ruff_is_clean() -> None:
    result = subprocess.run([_tool("ruff"), "check", "pdagent_sd", "tests", "bench"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.quality
def test_mypy_is_clean() -> None:
    result = subprocess.run([_tool("mypy"), "pdagent_sd"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", ["pdagent_sd.cli.send", "pdagent_sd.cli.heartbeat", "pdagent_sd.protocol"])
def test_hot_path_imports_nothing_heavy(module: str) -> None:
    probe = (f"import sys, {module}; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('requests', 'urllib3', 'systemd', 'sdnotify', 'sqlite3', 'pdagent_sd.daemon')); print(heavy)")
    result = subprocess.run([sys.executable, "-c", probe], env=base_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
