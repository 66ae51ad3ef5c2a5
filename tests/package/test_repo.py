"""`make repo`'s signed repositories, read by the real clients (issue 22).

- apt, in a booted Debian 12 and 13: the repository served on the host's loopback, the keyring in
  /usr/share/keyrings and the deb822 .sources with Signed-By: (no --allow-unauthenticated anywhere);
  `apt-get install pdagent pdagent-integrations` (the old agent's runbook line) installs pdagent-sd; an upgrade
  from the repository; a tampered Release and a tampered .deb are refused.
- dnf (Debian's), on the host: both gpgcheck and repo_gpgcheck on, `repoquery --whatprovides` resolves pdagent and
  pdagent-integrations to pdagent-sd, `rpm --checksig` verifies the package, a tampered repomd.xml is refused.
- pdagent-metrics.service in the same containers: writes the textfile without starting an idle pdagentd.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest
from conftest import DROP_IN_PATH
from debbuild import BuiltDeb, timed
from debcontainer import DebianContainer, wait_until
from signedrepo import Served, build_repo, serve
from signedrepo import signing_key as make_key

from standin import StandIn
from tiers import missing


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    with serve(root) as url:
        yield root, url


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with make_key(tmp_path_factory.mktemp("keys") / "gnupg") as home:
        yield home


@pytest.fixture(scope="module")
def repos(built_deb: BuiltDeb, served: Served, signing_key: Path) -> Path:
    """dist/ of `make repo` (the RPM built too when this host can), served at served's URL."""
    root, url = served
    with timed("make repo (apt + dnf)"):
        build_repo(root, url, built_deb.path, signing_key)
    return root


@pytest.fixture(scope="module")
def box(rootfs: Path, release: str, repos: Path, events_api: StandIn) -> Iterator[DebianContainer]:
    with timed(f"copy the {release} rootfs and boot it"):
        box = DebianContainer.boot(rootfs, release)
    try:
        box.write(DROP_IN_PATH, f"[Service]\nEnvironment=PDAGENT_EVENTS_URL={events_api.url}\n")
        box.put(repos / "repo" / "pdagent-sd-archive-keyring.gpg", "/usr/share/keyrings/pdagent-sd-archive-keyring.gpg")
        box.put(repos / "repo" / "pdagent-sd.sources", "/etc/apt/sources.list.d/pdagent-sd.sources")
        yield box
    finally:
        box.destroy()


# --- apt -------------------------------------------------------------------------------------------------------


def test_the_repository_is_signed_as_the_issue_asks(repos: Path) -> None:
    inrelease = (repos / "repo" / "dists" / "stable" / "InRelease").read_text()
    assert inrelease.startswith("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n")
    keys = subprocess.run(["gpg", "--batch", "--with-colons", "--show-keys",
                           str(repos / "repo" / "pdagent-sd-archive-keyring.gpg")],
                          stdout=subprocess.PIPE, text=True, check=True).stdout
    pub = next(line.split(":") for line in keys.splitlines() if line.startswith("pub:"))
    assert pub[3] == "1" and int(pub[2]) >= 3072, pub  # RSA, 3072 bits or more
    assert pub[6], "the key must expire"
    sources = (repos / "repo" / "pdagent-sd.sources").read_text()
    assert "Signed-By: /usr/share/keyrings/pdagent-sd-archive-keyring.gpg" in sources
    assert not list(repos.rglob("*.key")) and not list(repos.rglob("secring*")), "no private key is published"


def test_apt_installs_pdagent_and_pdagent_integrations_from_the_signed_repository(box: DebianContainer) -> None:
    with timed(f"{box.release}: apt-get install pdagent pdagent-integrations (from the repository)"):
        box.apt("update")
        done = box.apt("install", "pdagent", "pdagent-integrations")
    assert "pdagent-sd" in done.stdout
    assert "allow-unauthenticated" not in done.stdout
    status = box.run("dpkg-query", "-W", "-f=${Status} ${Version}", "pdagent-sd").stdout
    assert status.startswith("install ok installed"), status
    policy = box.run("apt-cache", "policy", "pdagent-sd").stdout
    assert "127.0.0.1" in policy, policy
    enabled = box.run("systemctl", "is-enabled", "pdagent-metrics.timer", check=False).stdout.strip()
    assert enabled == "disabled", enabled  # shipped, not enabled: docs/fleet.md


def test_metrics_timer_writes_the_textfile_without_starting_an_idle_agent(box: DebianContainer) -> None:
    box.run("mkdir", "-p", "/var/lib/prometheus/node-exporter")
    # an event, delivered or not, gives the queue a file; then the daemon is stopped as after its idle exit
    box.run("pd-send", "-k", "R" * 32, "-t", "trigger", "-d", "fleet test")
    wait_until(lambda: not box.exists("/var/lib/pdagent/pending"), 30, "the event's delivery")
    box.run("systemctl", "stop", "pdagent.service")  # as after its idle exit
    box.run("systemctl", "start", "pdagent-metrics.service")
    text = box.run("cat", "/var/lib/prometheus/node-exporter/pdagent.prom").stdout
    assert "pdagent_up 1" in text and 'pdagent_queue_events{state="delivered"} 1' in text, text
    assert box.run("systemctl", "is-active", "pdagent.service", check=False).stdout.strip() != "active"
    mode = box.run("stat", "-c", "%a %U", "/var/lib/prometheus/node-exporter/pdagent.prom").stdout.split()
    assert mode == ["644", "root"], mode
    owners = box.run("sh", "-c", "stat -c %U /var/lib/pdagent/queue.db*").stdout.split()
    assert set(owners) == {"pdagent"}, owners  # the read-only read left nothing the daemon could not open
    # with the socket stopped, the file says so
    box.run("systemctl", "stop", "pdagent.socket")
    box.run("systemctl", "start", "pdagent-metrics.service")
    assert "pdagent_up 0" in box.run("cat", "/var/lib/prometheus/node-exporter/pdagent.prom").stdout
    box.run("systemctl", "start", "pdagent.socket")


def test_apt_upgrades_from_the_repository_and_refuses_tampering(box: DebianContainer,
                                                                 upgrade_deb: BuiltDeb, repos: Path, served: Served,
                                                                 signing_key: Path, tmp_path: Path) -> None:
    root, url = served
    saved = tmp_path / "saved"
    shutil.copytree(root / "repo", saved)
    try:
        with timed(f"{box.release}: upgrade from the repository"):
            build_repo(root, url, upgrade_deb.path, signing_key, rpm=False)
            box.apt("update")
            box.apt("install", "--only-upgrade", "pdagent-sd")
        assert box.run("dpkg-query", "-W", "-f=${Version}", "pdagent-sd").stdout == upgrade_deb.version
        upgraded = tmp_path / "upgraded"
        shutil.copytree(root / "repo", upgraded)

        # the Release changed after signing: refused
        inrelease = root / "repo" / "dists" / "stable" / "InRelease"
        inrelease.write_text(inrelease.read_text().replace("Label: pdagent-sd", "Label: pdagent-sx"))
        failed = box.run("apt-get", "-q", "update", check=False)
        said = failed.stdout + failed.stderr
        # bookworm's gpgv says BADSIG; trixie's sqv "Message has been manipulated" (and apt exits 0 with a warning)
        assert "BADSIG" in said or "Message has been manipulated" in said, said
        assert "The repository is not updated" in said or failed.returncode != 0, said

        # signed by another key than the keyring's: refused
        build_repo(root, url, upgrade_deb.path, rpm=False)
        failed = box.run("apt-get", "-q", "update", check=False)
        said = failed.stdout + failed.stderr
        assert "NO_PUBKEY" in said or "Missing key" in said, said
        assert "The repository is not updated" in said or failed.returncode != 0, said

        # a .deb swapped under the signed Packages' name: its hash does not match, nothing is installed
        shutil.rmtree(root / "repo")
        shutil.copytree(upgraded, root / "repo")
        box.apt("update")
        box.apt("remove", "pdagent-sd")
        box.run("sh", "-c", "rm -f /var/cache/apt/archives/pdagent-sd_*.deb")
        pooled = next((root / "repo" / "pool").rglob("pdagent-sd_*.deb"))
        tampered = bytearray(pooled.read_bytes())
        tampered[len(tampered) // 2] ^= 0x01  # one bit, same size
        pooled.write_bytes(bytes(tampered))
        failed = box.run("apt-get", "-y", "-q", "install", "pdagent-sd", check=False)
        said = failed.stdout + failed.stderr
        assert failed.returncode != 0 and "Hash Sum mismatch" in said, said
        assert box.run("dpkg-query", "-W", "-f=${Status}", "pdagent-sd", check=False).stdout != \
            "install ok installed"
    finally:
        box.run("sh", "-c", "rm -f /var/cache/apt/archives/pdagent-sd_*.deb", check=False)
        shutil.rmtree(root / "repo", ignore_errors=True)
        shutil.copytree(saved, root / "repo")


# --- dnf -------------------------------------------------------------------------------------------------------


def _dnf(tmp: Path, baseurl: str, *args: str) -> subprocess.CompletedProcess:
    (tmp / "repos").mkdir(parents=True, exist_ok=True)
    (tmp / "repos" / "pdagent-sd.repo").write_text(
        f"[pdagent-sd]\nname=pdagent-sd\nbaseurl={baseurl}\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=1\n"
        f"gpgkey={baseurl}/RPM-GPG-KEY-pdagent-sd\n")
    (tmp / "dnf.conf").write_text(f"[main]\nreposdir={tmp}/repos\ncachedir={tmp}/cache\nlogdir={tmp}/log\n"
                                  f"persistdir={tmp}/persist\n")
    try:
        return subprocess.run(["dnf", "-y", "-q", "--config", str(tmp / "dnf.conf"), "--installroot",
                               str(tmp / "root"), "--releasever", "1", "--setopt", f"reposdir={tmp}/repos", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    finally:
        # repo_gpgcheck has dnf import the key into keyrings of its own under the installroot, each of which
        # starts a gpg-agent that outlives dnf: end them, as everything a test starts is ended.
        for keyring in (tmp / "root").rglob("pubring.kbx"):
            subprocess.run(["gpgconf", "--homedir", str(keyring.parent), "--kill", "all"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


@pytest.fixture(scope="module")
def rpmrepo(repos: Path) -> Path:
    if shutil.which("dnf") is None:
        missing("dnf is missing (apt-get install dnf)")
    if not (repos / "rpmrepo").is_dir():
        missing("this host did not build the RPM (build-rpm.sh's tools), so there is no dnf repository")
    return repos / "rpmrepo"


def test_dnf_resolves_pdagent_and_pdagent_integrations_with_both_checks_on(rpmrepo: Path, served: Served,
                                                                          tmp_path: Path) -> None:
    repo_file = (rpmrepo / "pdagent-sd.repo").read_text()
    assert "gpgcheck=1" in repo_file and "repo_gpgcheck=1" in repo_file
    assert (rpmrepo / "repodata" / "repomd.xml.asc").is_file()
    url = served[1] + "/rpmrepo"
    for name in ("pdagent", "pdagent-integrations"):
        done = _dnf(tmp_path, url, "repoquery", "--whatprovides", name)
        assert done.returncode == 0, done.stdout
        found: List[str] = [line for line in done.stdout.splitlines() if line.startswith("pdagent-sd-")]
        assert found and found[0].startswith("pdagent-sd-0:"), done.stdout


def test_rpm_checksig_verifies_the_package(rpmrepo: Path, tmp_path: Path) -> None:
    rpm = next(rpmrepo.glob("pdagent-sd-*.noarch.rpm"))
    without = subprocess.run(["rpm", "--dbpath", str(tmp_path), "--checksig", str(rpm)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    assert without.returncode != 0, without.stdout  # signed, and the key is not known yet
    subprocess.run(["rpm", "--dbpath", str(tmp_path), "--import", str(rpmrepo / "RPM-GPG-KEY-pdagent-sd")],
                   check=True)
    done = subprocess.run(["rpm", "--dbpath", str(tmp_path), "-Kv", str(rpm)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0 and "RSA/SHA512 Signature" in done.stdout and ": OK" in done.stdout, done.stdout


def test_dnf_refuses_a_tampered_repomd(rpmrepo: Path, served: Served, tmp_path: Path) -> None:
    root, url = served
    copy = root / "rpmrepo-tampered"
    shutil.copytree(rpmrepo, copy)
    try:
        repomd = copy / "repodata" / "repomd.xml"
        repomd.write_text(repomd.read_text().replace("</repomd>", "<!-- changed --></repomd>"))
        done = _dnf(tmp_path, url + "/rpmrepo-tampered", "repoquery", "--whatprovides", "pdagent")
        assert done.returncode != 0, done.stdout
        assert "GPG signature verification error" in done.stdout, done.stdout
    finally:
        shutil.rmtree(copy)

