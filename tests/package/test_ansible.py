"""packaging/ansible's role, run by real ansible-core over SSH against booted Debian 12 and 13 (issue 22).

One container per release for the whole module, each with openssh-server (from Debian's mirror) listening on its
own port of the shared loopback, root logging in with a key made for the run. The inventory's variables are an
Ansible Vault file (the keys among them); the repository is `make repo`'s, served on loopback and signed by a
key made for the run; the agents page the Events API stand-in on the host.

- the first run converges both hosts, and `pd-send -k @ops` from each reaches the stand-in; no key is in
  ansible's output; the keys file is 0640 root:pdagent;
- the second run reports changed=0 on both;
- `--check --diff` with one variable changed shows the one file that would change, and changes nothing;
- ansible-lint passes on the role and the playbook (its one exception is justified in the handler).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from debbuild import BuiltDeb, timed
from debcontainer import APT_ARCHIVES, REPO, DebianContainer, cached_rootfs, wait_until
from signedrepo import build_repo, serve
from signedrepo import signing_key as make_key

from standin import StandIn
from tiers import missing

ANSIBLE_DIR = REPO / "packaging" / "ansible"
BIN = Path(sys.executable).parent
KEYS = {"ops": "0123456789abcdef0123456789abc0ps", "systemd": "fedcba9876543210fedcba987654sy5d"}
HOSTS = (("deb12", "bookworm"), ("deb13", "trixie"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ansible_skip(package_skip: None) -> None:
    for tool in ("ansible-playbook", "ansible-vault", "ansible-lint"):
        if not (BIN / tool).exists():
            missing(f"{tool} is missing in the test venv (pip install -e '.[fleet]')")
    if shutil.which("ssh") is None:
        missing("ssh is missing (apt-get install openssh-client)")


class Fleet:
    def __init__(self, work: Path, api: StandIn) -> None:
        self.work = work
        self.api = api
        self.boxes: Dict[str, DebianContainer] = {}
        self.env = {**os.environ, "ANSIBLE_HOME": str(work / "ansible-home"), "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
                    "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"), "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
                    "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        (work / "ansible.cfg").write_text("[defaults]\nstdout_callback = default\n"
                                          "[ssh_connection]\npipelining = True\n")

    def playbook(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """ansible-playbook site.yml, holding the host's locks on the containers' shared apt archives (see
        DebianContainer.apt: apt inside cannot see another container's lock)."""
        with contextlib.ExitStack() as stack:
            for _, release in HOSTS:
                lock = stack.enter_context(open(APT_ARCHIVES / f"{release}.lock", "w"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            return self._playbook(*args, check=check)

    def _playbook(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(self.work / "inventory"),
                               "--vault-password-file", str(self.work / "vault-pass"), str(ANSIBLE_DIR / "site.yml"),
                               *args], cwd=self.work, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        if check:
            assert done.returncode == 0, done.stdout[-6000:]
        return done

    def ad_hoc(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ansible"), "-i", str(self.work / "inventory"), "--vault-password-file",
                               str(self.work / "vault-pass"), "pdagent", "-m",
                               "ansible.builtin.command", "-a", command], cwd=self.work, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def recap(output: str) -> Dict[str, Dict[str, int]]:
    """PLAY RECAP's counters per host."""
    hosts: Dict[str, Dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


@pytest.fixture(scope="module")
def fleet(ansible_skip: None, built_deb: BuiltDeb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    work.chmod(0o700)
    with StandIn() as api, make_key(work / "gnupg") as gnupg, serve(work / "www") as url:
        fleet = Fleet(work, api)
        (work / "www").mkdir(exist_ok=True)
        with timed("ansible: make repo"):
            build_repo(work / "www", url, built_deb.path, gnupg, rpm=False)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "id_ed25519")], check=True)
        lines: List[str] = ["[pdagent]"]
        try:
            for name, release in HOSTS:
                with timed(f"ansible: boot {release} and install openssh-server"):
                    box = fleet.boxes[name] = DebianContainer.boot(cached_rootfs(release), release)
                    port = _free_port()
                    box.write("/etc/ssh/sshd_config.d/50-test.conf",
                              f"Port {port}\nListenAddress 127.0.0.1\nPasswordAuthentication no\n")
                    box.write("/root/.ssh/authorized_keys", (work / "id_ed25519.pub").read_text())
                    box.run("chmod", "-R", "go-rwx", "/root/.ssh")
                    box.apt("update")
                    box.apt("install", "--no-install-recommends", "openssh-server", "python3-apt")
                    box.run("systemctl", "restart", "ssh.service")
                    wait_until(lambda port=port: _accepts(port), 30, f"sshd of {name}")
                    # a unit to page for, as a fleet's backup job would be
                    box.write("/etc/systemd/system/fleet-backup.service",
                              "[Service]\nType=oneshot\nExecStart=/bin/false\n")
                lines.append(f"{name} ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
                             f"ansible_ssh_private_key_file={work / 'id_ed25519'} "
                             "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null' "
                             "ansible_python_interpreter=/usr/bin/python3")
            (work / "inventory").mkdir()
            (work / "inventory" / "hosts").write_text("\n".join(lines) + "\n")
            group_vars = work / "inventory" / "group_vars" / "pdagent"
            group_vars.mkdir(parents=True)
            (group_vars / "main.yml").write_text(
                f"pdagent_sd_repo_url: {url}/repo\n"
                f"pdagent_sd_keyring_src: {work / 'www' / 'repo' / 'pdagent-sd-archive-keyring.gpg'}\n"
                f"pdagent_sd_settings: {{events_url: '{api.url}', backoff_max_sec: 2}}\n"
                "pdagent_sd_trusted_groups: [adm]\n"
                "pdagent_sd_https_proxy: http://127.0.0.1:9\n"
                "pdagent_sd_no_proxy: localhost,127.0.0.1,::1\n"
                "pdagent_sd_unit_alerts: [fleet-backup.service]\n"
                "pdagent_sd_node_exporter: false\n"
                "pdagent_sd_keys: '{{ vault_pdagent_sd_keys }}'\n")
            (work / "vault-pass").write_text(os.urandom(16).hex() + "\n")
            (work / "vault-pass").chmod(0o600)
            vault = group_vars / "vault.yml"
            vault.write_text("vault_pdagent_sd_keys:\n" + "".join(f"  {k}: {v}\n" for k, v in KEYS.items()))
            subprocess.run([str(BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(work / "vault-pass"),
                            str(vault)], env=fleet.env, check=True, stdout=subprocess.DEVNULL)
            for box in fleet.boxes.values():  # the textfile directory a node_exporter of the host would read
                box.run("mkdir", "-p", "/var/lib/prometheus/node-exporter")
            yield fleet
        finally:
            for box in fleet.boxes.values():
                box.destroy()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_first_run_converges_and_every_host_pages(fleet: Fleet) -> None:
    with timed("ansible: first run (two hosts)"):
        done = fleet.playbook()
    counts = recap(done.stdout)
    assert set(counts) == {"deb12", "deb13"}, done.stdout[-3000:]
    for host, numbers in counts.items():
        assert numbers["failed"] == 0 and numbers["unreachable"] == 0 and numbers["changed"] > 0, (host, numbers)
    for key in KEYS.values():
        assert key not in done.stdout, "a routing key reached ansible's output"
    for box in fleet.boxes.values():
        assert box.run("stat", "-c", "%a %U %G", "/etc/pdagent/agent.conf.d/50-keys.conf").stdout.split() == \
            ["640", "root", "pdagent"]
        on_failure = box.unit_property("fleet-backup.service", "OnFailure")
        assert on_failure == "pdagent-unit-failed@fleet-backup.service.service", on_failure
        assert "HTTPS_PROXY=http://127.0.0.1:9" in box.unit_property("pdagent.service", "Environment")
        assert box.run("systemctl", "is-active", "pdagent-metrics.timer").stdout.strip() == "active"
        assert box.run("systemctl", "is-active", "pdagent.socket").stdout.strip() == "active"
    sent = fleet.ad_hoc("pd-send -k @ops -t trigger -d 'fleet test from {{ inventory_hostname }}'")
    assert sent.returncode == 0, sent.stdout
    assert wait_until(lambda: len(fleet.api.received(routing_key=KEYS["ops"])) >= 2, 60, "a test event from each host")
    summaries = sorted(str(event.body.get("payload", {}).get("summary") or event.body.get("description"))
                       for event in fleet.api.received(routing_key=KEYS["ops"]))
    assert summaries == ["fleet test from deb12", "fleet test from deb13"], summaries
    for box in fleet.boxes.values():  # the metrics timer's service writes the textfile
        box.run("systemctl", "start", "pdagent-metrics.service")
        assert 'pdagent_queue_events{state="delivered"} 1' in box.run(
            "cat", "/var/lib/prometheus/node-exporter/pdagent.prom").stdout


def test_second_run_changes_nothing(fleet: Fleet) -> None:
    with timed("ansible: second run"):
        done = fleet.playbook()
    counts = recap(done.stdout)
    assert set(counts) == {"deb12", "deb13"}
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers, done.stdout[-4000:])


def test_check_diff_shows_the_one_file_a_changed_variable_would_change(fleet: Fleet) -> None:
    before = {name: box.run("cat", "/etc/pdagent/agent.conf.d/40-ansible.conf").stdout
              for name, box in fleet.boxes.items()}
    done = fleet.playbook("--check", "--diff", "-e", '{"pdagent_sd_trusted_groups": ["adm", "nagios"]}')
    counts = recap(done.stdout)
    for host, numbers in counts.items():
        assert numbers["changed"] == 1, (host, numbers, done.stdout[-4000:])
    diffs = re.findall(r"^--- before: (\S+)", done.stdout, re.MULTILINE)
    assert diffs == ["/etc/pdagent/agent.conf.d/40-ansible.conf"] * 2, done.stdout[-4000:]
    assert "+trusted_groups = adm nagios" in done.stdout
    for key in KEYS.values():
        assert key not in done.stdout
    after = {name: box.run("cat", "/etc/pdagent/agent.conf.d/40-ansible.conf").stdout
             for name, box in fleet.boxes.items()}
    assert after == before  # --check changed nothing


def test_ansible_lint_passes() -> None:
    if not (BIN / "ansible-lint").exists():
        missing("ansible-lint is missing in the test venv (pip install -e '.[fleet]')")
    started = time.monotonic()
    done = subprocess.run([str(BIN / "ansible-lint"), "--offline", "site.yml"], cwd=ANSIBLE_DIR,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    assert done.returncode == 0, done.stdout
    assert "0 failure(s), 0 warning(s)" in done.stdout, done.stdout
    assert time.monotonic() - started < 300
