"""A tier whose tool is missing: skipped on a developer's machine, a failure under CI.

CI sets CI=true (as GitHub Actions, GitLab and most others do; .ci/run sets it too): there a missing systemd-nspawn,
root, fuse3, nagios4, other user or loop device must not turn a tier green by skipping it silently.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Skip for `reason`; under CI fail with it instead."""
    if CI:
        pytest.fail(f"{reason} (CI=true: a tier that cannot run fails instead of skipping)", pytrace=False)
    pytest.skip(reason)

