"""Fixtures of the package tier (``pytest -m package``): the real .deb, installed with apt on a clean Debian 12
("bookworm") and a clean Debian 13 ("trixie"), each booted with systemd (see debcontainer.py for how).

- ``built_deb``: ``packaging/build-deb.sh`` run once per session into a temporary dist dir (lintian included).
- ``upgrade_deb``: the same tree built again under a higher Debian version, for the upgrade test.
- ``release``: "bookworm" or "trixie"; every test that uses a container runs once on each.
- ``rootfs``: the cached debootstrap tree of that release (built on first use, 90 s to two minutes; reused).
- ``events_api``: a stand-in of the Events API on the host's 127.0.0.1, reachable from inside the container.
- ``installed``: one container per test module, booted from a fresh copy of the tree, with the .deb installed
  by apt (its dependencies come from Debian's mirror) and a drop-in pointing pdagent.service at ``events_api``.

Everything that is started is stopped by PID and every copy deleted, pass or fail. The whole tier skips, with
the reason, when not root or when a tool is missing. How long each phase took is printed at the end of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, List

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent
TESTS_DIR = PACKAGE_DIR.parent
for path in (PACKAGE_DIR, TESTS_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from debbuild import TIMINGS, BuiltDeb, build_deb, timed  # noqa: E402
from debcontainer import RELEASES, DebianContainer, cached_rootfs, skip_reason  # noqa: E402

from standin import StandIn  # noqa: E402
from tiers import missing  # noqa: E402

DROP_IN_PATH = "/etc/systemd/system/pdagent.service.d/50-package-test.conf"


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if PACKAGE_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.package)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if TIMINGS:
        terminalreporter.section("package tier: time per phase")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {what}")


@pytest.fixture(scope="session")
def package_skip() -> None:
    reason = skip_reason()
    if reason:
        missing(reason)


@pytest.fixture(scope="session")
def built_deb(package_skip: None, tmp_path_factory: pytest.TempPathFactory) -> BuiltDeb:
    with timed("build the .deb (dpkg-buildpackage + lintian)"):
        return build_deb(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def upgrade_deb(built_deb: BuiltDeb, tmp_path_factory: pytest.TempPathFactory) -> BuiltDeb:
    with timed("build the upgrade .deb"):
        return build_deb(tmp_path_factory.mktemp("dist-upgrade"), "--version", built_deb.version + "+pkgtest1",
                         "--no-lintian")


@pytest.fixture(scope="session", params=RELEASES)
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def rootfs(package_skip: None, release: str) -> Path:
    with timed(f"clean {release} rootfs (debootstrap, or the cache)"):
        return cached_rootfs(release)


@pytest.fixture(scope="session")
def events_api() -> Iterator[StandIn]:
    with StandIn() as api:
        yield api


@pytest.fixture(scope="module")
def installed(rootfs: Path, release: str, built_deb: BuiltDeb, events_api: StandIn) -> Iterator[DebianContainer]:
    with timed(f"copy the {release} rootfs and boot it"):
        box = DebianContainer.boot(rootfs, release)
    try:
        deb = box.put(built_deb.path, "/root/" + built_deb.path.name)
        with timed(f"{release}: apt-get install the .deb (dependencies from Debian's mirror)"):
            box.apt("update")
            box.apt("install", deb)
        # What an admin would do with `systemctl edit pdagent`: point the agent at the stand-in, and keep the
        # retry backoff short so that a test does not wait minutes for a retry.
        box.write(DROP_IN_PATH, f"[Service]\nEnvironment=PDAGENT_EVENTS_URL={events_api.url}\n"
                           "Environment=PDAGENT_BACKOFF_MAX_SEC=2\n")
        box.run("systemctl", "daemon-reload")
        yield box
    finally:
        with timed("stop the container and delete its copy"):
            box.destroy()
