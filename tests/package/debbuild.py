"""Building the .deb for the package tests, and the time each phase of the tier took."""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

from debcontainer import REPO

BUILD_SCRIPT = REPO / "packaging" / "build-deb.sh"
TIMINGS: Dict[str, float] = {}


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Add the time the block takes to TIMINGS[what] (printed at the end of the run)."""
    started = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[what] = TIMINGS.get(what, 0.0) + time.monotonic() - started


@dataclass(frozen=True)
class BuiltDeb:
    path: Path
    version: str
    returncode: int  # of build-deb.sh: non-zero when lintian reported an error
    output: str


def build_deb(outdir: Path, *args: str) -> BuiltDeb:
    """Run packaging/build-deb.sh into outdir; the build must succeed, lintian's verdict is in returncode."""
    outdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "--outdir", str(outdir), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    debs = sorted(outdir.glob("pdagent-sd_*_all.deb"))
    if not debs:
        raise AssertionError(f"build-deb.sh made no .deb (exit {done.returncode}):\n{done.stdout}")
    version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], stdout=subprocess.PIPE, text=True,
                             check=True).stdout.strip()
    return BuiltDeb(debs[0], version, done.returncode, done.stdout)
