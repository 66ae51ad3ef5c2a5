"""The .rpm: packaging/build-rpm.sh builds it and rpmlint (with packaging/rpm/rpmlint.toml) reports no error;
the package carries what the .deb carries for the switch from the old agent. It is not installed anywhere:
these machines cannot boot a RHEL-family system (docs/packaging.md, "What is not tested here")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from debcontainer import REPO

from tiers import CI

pytestmark = pytest.mark.package

BUILD_SCRIPT = REPO / "packaging" / "build-rpm.sh"


def rpm_query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, check=True).stdout


@pytest.mark.skipif(not CI and (shutil.which("rpmbuild") is None or shutil.which("rpmlint") is None),
                    reason="rpmbuild and rpmlint are needed (.ci/install-deps.sh installs rpm and rpmlint)")
def test_rpm_builds_lints_clean_and_replaces_the_old_agent(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(BUILD_SCRIPT), "--outdir", str(tmp_path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "rpmlint: no errors" in done.stdout
    binary = next(tmp_path.glob("pdagent-sd-*.noarch.rpm"))
    files = rpm_query(binary, "--list").split()
    for path in ("/usr/bin/pd-send", "/usr/bin/pdagentd", "/usr/lib/systemd/system/pdagent.socket",
                 "/usr/lib/systemd/system/pdagent-boot.service", "/usr/lib/systemd/system/pdagent-unit-rearm.service",
                 "/usr/lib/systemd/system/pdagent-unit-rearm.service.d/pdagent-alert.conf", "/etc/pdagent/agent.conf",
                 "/usr/share/pdagent-integrations/bin/pd-nagios", "/usr/share/pdagent-integrations/bin/pd-zabbix",
                 "/usr/share/pdagent-integrations/bin/pd-sensu"):
        assert path in files, path
    # Every doc beside README.md, as in the tree, so that README's docs/*.md links resolve on the host.
    for doc in ["README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md")))]:
        assert f"/usr/share/doc/pdagent-sd/{doc}" in files, doc
    obsoletes = rpm_query(binary, "--obsoletes")
    assert "pdagent < 1.8" in obsoletes and "pdagent-integrations < 1.7" in obsoletes, obsoletes
    owners = dict(line.rsplit(" ", 1) for line in rpm_query(
        binary, "--qf", "[%{FILENAMES} %{FILEMODES:perms}:%{FILEUSERNAME}:%{FILEGROUPNAME}\n]").splitlines())
    assert owners["/etc/pdagent/agent.conf"] == "-rw-r-----:root:pdagent"  # it may hold routing keys
    assert owners["/etc/pdagent/agent.conf.d"] == "drwxr-x---:root:pdagent"
