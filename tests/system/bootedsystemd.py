"""A real systemd, booted in a throwaway container, for the system tests (DESIGN.md, "Testing tiers" 3).

    with BootedSystemd.boot(repo) as machine:
        machine.install_agent(events_url=api.url)
        machine.pd_send(KEY, "disk full")
        machine.systemctl("is-active", "pdagent.service")

How the container is made, and why:

- ``systemd-nspawn -D / --volatile=yes -b``: the host's own /usr (so Debian's /usr/bin/python3 with
  python3-systemd, python3-sdnotify and python3-requests, and systemd itself) with an empty tmpfs as / — a
  throwaway /etc and /var, so nothing the host has enabled (apache2, postgresql, ...) starts in the container,
  and nothing the tests do survives it. It boots in well under a second.
  Not ``--volatile=overlay``: that keeps the host's /etc visible (under a tmpfs layer), and with it every
  service the host has enabled, which would then start in the container and bind ports in the shared network
  namespace.
- ``--overlay=/usr::/usr``: a writable tmpfs layer over the read-only /usr, thrown away with the container. The
  agent is installed there the way a package lays it out (/usr/bin/pdagentd, pd-send, pd-queue, the catalog,
  the sysusers.d file), so the shipped units run *unchanged*, ExecStart=/usr/bin/pdagentd included: no drop-in
  replaces ExecStart (with a read-only /usr one would have to). The commands are the console-script launchers
  pip would write for pyproject.toml's [project.scripts], for /usr/bin/python3; a .pth file in dist-packages
  points that Python at the source tree, bound read-only at SOURCE_IN_CONTAINER (what an editable install
  does). The host's /usr is never written: the layer's upper directory is in this module's temporary
  directory (on /dev/shm), removed when the container stops, however it stops.
- ``/etc/machine-id`` is bound in from a file on a tmpfs. Without it the boot counts as a first boot: systemd
  would apply the presets (Debian's enable everything: apache2, rpcbind, ... in the host's network namespace)
  and systemd-firstboot would wait for a key press. On a tmpfs, systemd-machine-id-commit is content too.
- ``--register=no --keep-unit``: the host need not run systemd or machined; ``--machine=`` gives each container
  its own name, so containers of concurrent test runs do not collide.
- The host's /etc/ssl is bound in read-only, so requests finds the CA certificates where Debian puts them.
- The network namespace is the host's: an Events API stand-in on the host's 127.0.0.1 is reachable from the
  agent in the container, and the container's loopback is the host's (pick ports at random).

Commands run inside with ``nsenter -t <container's PID 1> -a``, with a clean environment. The container is
stopped by SIGTERM to the systemd-nspawn process this module started (nspawn then powers the container off in
order), by PID, and waited for; SIGKILL (container PID 1, then nspawn) only if that does not finish in time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from waiting import wait_until  # noqa: E402,F401  (tests/ is on sys.path; the tests import it from here)

SOURCE_IN_CONTAINER = "/srv/pdagent-sd"
DEBIAN_PYTHON = "/usr/bin/python3"
PYTHON_MODULES = {"systemd.daemon": "python3-systemd", "systemd.journal": "python3-systemd",
                  "sdnotify": "python3-sdnotify", "requests": "python3-requests"}
UNITS = ("pdagent.socket", "pdagent.service", "pdagent-retry.timer", "pdagent-retry.service", "pdagent-boot.service",
         "pdagent-unit-rearm.service", "pdagent-unit-failed@.service", "pdagent-unit-ok@.service",
         "pdagent-heartbeat.service", "pdagent-heartbeat-arm.service", "pdagent-heartbeat-arm.path")
# The agent's own units carry a drop-in that masks the host-wide pdagent-alert.conf (docs/systemd-alerts.md).
NO_UNIT_ALERT = tuple(unit for unit in UNITS if unit.endswith(".service"))
UNIT_DIR = "/etc/systemd/system"
SYSUSERS_FILE = "/usr/lib/sysusers.d/pdagent.conf"
CATALOG_FILE = "/usr/lib/systemd/catalog/pdagent.catalog"
# (file in the source tree, where it is installed): copied byte for byte
SHIPPED_FILES = tuple((f"units/{unit}", f"{UNIT_DIR}/{unit}") for unit in UNITS) + (
    ("units/pdagent.sysusers", SYSUSERS_FILE),
    ("units/pdagent.catalog", CATALOG_FILE),
) + tuple(("units/pdagent-no-unit-alert.conf", f"{UNIT_DIR}/{unit}.d/pdagent-alert.conf")
          for unit in NO_UNIT_ALERT)
PTH_FILE = "/usr/lib/python3/dist-packages/pdagent_sd_source.pth"
STATE_DIR = "/var/lib/pdagent"
SOCKET_PATH = "/run/pdagent/pdagent.sock"
CLEAN_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_COLOR": "0",
    "PYTHONDONTWRITEBYTECODE": "1",  # the source tree is read-only in there anyway
}
BOOT_TIMEOUT_SEC = 60.0
STOP_TIMEOUT_SEC = 30.0

Command = Union[str, Sequence[str]]


class ContainerError(RuntimeError):
    """The container did not boot, or a command in it failed; the message carries what is needed to see why."""


def skip_reason() -> Optional[str]:
    """Why booted-systemd tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "system tests boot a container with systemd-nspawn and need root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                          ("systemd-analyze", "systemd")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    if not os.path.exists("/usr/lib/systemd/systemd"):
        return "no /usr/lib/systemd/systemd to boot (apt-get install systemd)"
    if not os.access(DEBIAN_PYTHON, os.X_OK):
        return f"{DEBIAN_PYTHON} not found (apt-get install python3)"
    missing = sorted({package for module, package in PYTHON_MODULES.items() if not _importable(module)})
    if missing:
        return f"{DEBIAN_PYTHON} lacks {', '.join(missing)} (apt-get install {' '.join(missing)})"
    return None


def _importable(module: str) -> bool:
    result = subprocess.run([DEBIAN_PYTHON, "-c", f"import {module}"], capture_output=True, timeout=60)
    return result.returncode == 0


def console_scripts(pyproject: Path) -> Dict[str, str]:
    """[project.scripts] of pyproject.toml as {command: "module:function"} (no tomllib before 3.11)."""
    scripts: Dict[str, str] = {}
    section = ""
    for line in pyproject.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
            continue
        match = re.match(r'^"?([\w.-]+)"?\s*=\s*"([\w.]+):([\w.]+)"\s*(#.*)?$', line)
        if section == "[project.scripts]" and match:
            scripts[match.group(1)] = f"{match.group(2)}:{match.group(3)}"
    return scripts


def launcher(entry_point: str) -> str:
    """The console-script launcher pip writes for /usr/bin/python3: nothing of the agent's own."""
    module, function = entry_point.split(":")
    return (f"#!{DEBIAN_PYTHON}\n"
            "# -*- coding: utf-8 -*-\n"
            "import sys\n"
            f"from {module} import {function}\n"
            "if __name__ == '__main__':\n"
            f"    sys.exit({function}())\n")


class BootedSystemd:
    """One booted container: its systemd-nspawn process, its PID 1, and helpers to act inside it."""

    def __init__(self, name: str, nspawn: subprocess.Popen, workdir: Path, source: Path) -> None:
        self.name = name
        self.nspawn = nspawn
        self.workdir = workdir
        self.source = source
        self.init_pid = 0
        self.boot_seconds = 0.0
        self.startup_finished = ""  # systemd-analyze's "Startup finished in ..." line
        self.system_state = ""

    # --- life cycle -------------------------------------------------------------------------------------

    @classmethod
    def boot(cls, source: Union[str, Path], *, name: Optional[str] = None, extra_args: Iterable[str] = (),
             preinstall: bool = False, environment: Optional[Dict[str, str]] = None,
             stage: Optional[Callable[[Path], None]] = None, timeout: float = BOOT_TIMEOUT_SEC) -> BootedSystemd:
        """Boot a container with `source` bound read-only at SOURCE_IN_CONTAINER; wait until it is up.

        preinstall: boot a system on which the agent is already installed and enabled, as after installing
        the package and rebooting: the /usr files come in through a lower layer of the /usr overlay,
        /etc/systemd/system (units, `systemctl --root=... enable pdagent.socket`, the `environment` drop-in)
        is bound in from a staging tree, and systemd-sysusers.service creates user pdagent during the boot.
        The catalog database is rebuilt after the boot, as the package's dpkg trigger would have.
        stage(root): with preinstall, called with the staging tree once the agent is laid out in it, to add what
        the system had before this boot (root / "etc/systemd/system/..." is the container's
        /etc/systemd/system).
        """
        source = Path(source).resolve()
        name = name or f"pdagent-test-{uuid.uuid4().hex[:10]}"
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=_tmpfs_dir()))
        try:
            command = _nspawn_command(name, source, workdir, preinstall, environment or {}, extra_args, stage)
            log = open(workdir / "console.log", "wb")
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        started = time.monotonic()
        try:
            nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            log.close()
        machine = cls(name, nspawn, workdir, source)
        try:
            machine._wait_booted(started, timeout)
            if preinstall:
                # Debian rebuilds the catalog database from a dpkg trigger, not at boot; on a real host it
                # would persist in /var from the package's installation.
                machine.run(["journalctl", "--update-catalog"])
        except BaseException:
            machine.stop()
            raise
        return machine

    def _wait_booted(self, started: float, timeout: float) -> None:
        deadline = started + timeout
        self.init_pid = wait_until(self._find_init, timeout, f"PID 1 of container {self.name}", interval=0.02)
        # systemctl needs the manager's private bus socket; before it exists `is-system-running --wait` fails
        # at once instead of waiting.
        wait_until(lambda: self._nspawn_running() and os.path.exists(
            f"/proc/{self.init_pid}/root/run/systemd/private"), max(deadline - time.monotonic(), 1),
            "systemd's private socket in the container", interval=0.02)
        result = self.run(["systemctl", "is-system-running", "--wait"], check=False,
                          timeout=max(deadline - time.monotonic(), 1))
        self.system_state = result.stdout.strip()
        self.boot_seconds = time.monotonic() - started
        if self.system_state not in ("running", "degraded"):
            raise ContainerError(f"container {self.name} ended up {self.system_state!r}\n{self.console_log()}")
        self.startup_finished = self.run(["systemd-analyze", "time"], check=False).stdout.strip().splitlines()[0]

    def _nspawn_running(self) -> bool:
        if self.nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited with {self.nspawn.returncode}\n{self.console_log()}")
        return True

    def _find_init(self) -> int:
        """The container's PID 1 as the host sees it: the child of nspawn that has exec'd systemd."""
        self._nspawn_running()
        for child in _children(self.nspawn.pid):
            try:
                if os.readlink(f"/proc/{child}/exe").endswith("/systemd"):
                    return child
            except OSError:
                continue
        return 0

    def stop(self, timeout: float = STOP_TIMEOUT_SEC) -> None:
        """Power the container off through the nspawn process we started; wait for it; remove our files."""
        try:
            if self.nspawn.poll() is None:
                self.nspawn.send_signal(signal.SIGTERM)  # nspawn: SIGRTMIN+3 to the container's systemd
                try:
                    self.nspawn.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._kill()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Power cut, as far as a container can have one: SIGKILL to its PID 1 (the whole PID namespace dies at
        once, no unit is stopped, nothing is synced or unmounted in order), then to nspawn. The host's page
        cache survives, so files written inside are not lost as at a real power cut: tests/reliability's
        lazyfs layer models that. Our files are removed as by stop()."""
        try:
            if self.nspawn.poll() is None:
                self._kill()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _kill(self) -> None:
        if self.init_pid and self.init_pid in _children(self.nspawn.pid):
            os.kill(self.init_pid, signal.SIGKILL)  # PID 1 of a PID namespace: takes the whole container
        self.nspawn.kill()
        self.nspawn.wait(STOP_TIMEOUT_SEC)

    def __enter__(self) -> BootedSystemd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def console_log(self) -> str:
        try:
            return (self.workdir / "console.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # --- running things inside --------------------------------------------------------------------------

    def run(self, cmd: Command, *, check: bool = True, input: Optional[str] = None, timeout: float = 60,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """Run cmd (argv, or a string for sh -c) in the container as root; text output captured."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        result = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", "-r", "-w", *argv],
                                env={**CLEAN_ENV, **(env or {})}, input=input, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerError(f"in {self.name}: {shlex.join(argv)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}")
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def show(self, unit: str, prop: str) -> str:
        """One property of a unit, e.g. show("pdagent.service", "ActiveState") -> "inactive"."""
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def is_active(self, unit: str) -> bool:
        return self.show(unit, "ActiveState") == "active"

    def wait_for_state(self, unit: str, state: str, timeout: float = 30) -> None:
        wait_until(lambda: self.show(unit, "ActiveState") == state, timeout, f"{unit} to be {state}")

    def unit_log(self, *units: str) -> str:
        """The journal of some units, as text: for assertion messages."""
        argv = ["journalctl", "--no-pager", "-o", "short-monotonic"]
        for unit in units:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def journal_json(self, *args: str) -> List[Dict[str, Any]]:
        """journalctl -o json with args (e.g. "-u", "pdagent", "PDAGENT_DEDUP_KEY=k"): one dict per entry."""
        result = self.run(["journalctl", "--no-pager", "-o", "json", *args])
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def pd_send(self, routing_key: str, description: str, *, event_type: str = "trigger",
                dedup_key: Optional[str] = None, extra: Sequence[str] = (), check: bool = True,
                user: Optional[str] = None) -> subprocess.CompletedProcess:
        """`pd-send -k KEY -t TYPE -d TEXT [-i DEDUP]` inside, as root or as `user` (setpriv)."""
        argv = ["pd-send", "-k", routing_key, "-t", event_type, "-d", description]
        if dedup_key is not None:
            argv += ["-i", dedup_key]
        return self.run(self.as_user(user, [*argv, *extra]), check=check)

    def pd_queue(self, *args: str, check: bool = True, user: Optional[str] = None
                 ) -> subprocess.CompletedProcess:
        return self.run(self.as_user(user, ["pd-queue", *args]), check=check)

    @staticmethod
    def as_user(user: Optional[str], argv: List[str]) -> List[str]:
        if user is None:
            return argv
        return ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv]

    def write_file(self, path: str, text: str, mode: str = "0644") -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "sh", path, mode],
                 input=text)

    def remove_file(self, path: str) -> None:
        self.run(["rm", "-f", path])

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def drop_in(self, unit: str, name: str, text: str, reload: bool = True) -> str:
        """Write /etc/systemd/system/UNIT.d/NAME.conf (as `systemctl edit` would) and daemon-reload."""
        path = f"{UNIT_DIR}/{unit}.d/{name}.conf"
        self.write_file(path, text)
        if reload:
            self.systemctl("daemon-reload")
        return path

    def remove_drop_in(self, unit: str, name: str, reload: bool = True) -> None:
        self.remove_file(f"{UNIT_DIR}/{unit}.d/{name}.conf")
        if reload:
            self.systemctl("daemon-reload")

    # --- the agent --------------------------------------------------------------------------------------

    def install_agent(self, *, events_url: Optional[str] = None, environment: Optional[Dict[str, str]] = None,
                      start: bool = True) -> None:
        """Lay the agent out as its package would, with the shipped files unchanged, and start the socket.

        units/ → /etc/systemd/system, pdagent.sysusers → /usr/lib/sysusers.d/pdagent.conf (then
        systemd-sysusers creates user pdagent), pdagent.catalog → /usr/lib/systemd/catalog (then
        journalctl --update-catalog), the console scripts → /usr/bin. Then `systemctl enable pdagent.socket`
        (whose Also= enables the timer) and, with start, start both, as a package's postinst would.
        environment: Environment= lines for pdagent.service in a drop-in (events_url → PDAGENT_EVENTS_URL).
        """
        for relative, target in SHIPPED_FILES:
            self.run(["install", "-D", "-m", "0644", f"{SOURCE_IN_CONTAINER}/{relative}", target])
        for target, (content, mode) in generated_files(self.source).items():
            self.write_file(target, content, mode=mode)
        self.run(["systemd-sysusers", SYSUSERS_FILE])
        self.run(["journalctl", "--update-catalog"])
        env = dict(environment or {})
        if events_url is not None:
            env["PDAGENT_EVENTS_URL"] = events_url
        if env:
            self.set_environment(env, reload=False)
        self.systemctl("daemon-reload")
        self.systemctl("enable", "pdagent.socket")
        if start:
            self.systemctl("start", "pdagent.socket", "pdagent-retry.timer", "pdagent-heartbeat-arm.path")

    def set_environment(self, env: Dict[str, str], name: str = "50-test-environment", reload: bool = True
                        ) -> str:
        """A drop-in for pdagent.service with one Environment= line per variable."""
        return self.drop_in("pdagent.service", name, environment_drop_in(env), reload=reload)

    def agent_pids(self) -> List[int]:
        """PIDs (in the container) of processes running pdagentd: how to see that none is left."""
        return [pid for pid, argv in self.processes().items()
                if any(arg.endswith("/pdagentd") or arg == "pdagent_sd.daemon" for arg in argv)]

    def processes(self) -> Dict[int, List[str]]:
        """{pid: argv} of every process in the container, read from its /proc (no procps needed)."""
        script = 'for p in /proc/[0-9]*; do printf "%s\\0" "${p#/proc/}"; cat "$p/cmdline"; printf "\\0\\n"; done'
        found: Dict[int, List[str]] = {}
        for record in self.run(["sh", "-c", script]).stdout.split("\0\n"):
            fields = record.split("\0")
            if fields[0].isdigit() and len(fields) > 1 and fields[1]:
                found[int(fields[0])] = [field for field in fields[1:] if field]
        return found


def _nspawn_command(name: str, source: Path, workdir: Path, preinstall: bool, environment: Dict[str, str],
                    extra_args: Iterable[str], stage: Optional[Callable[[Path], None]] = None) -> List[str]:
    """The systemd-nspawn command line (the module doc says why each part is there); prepares workdir."""
    (workdir / "machine-id").write_text(uuid.uuid4().hex + "\n")
    upper = workdir / "usr-upper"
    upper.mkdir()
    usr_layers = "/usr"
    etc_binds: List[str] = []
    if preinstall:
        root = _stage_agent(source, workdir / "root", environment)
        if stage is not None:
            stage(root)
        usr_layers = f"/usr:{root}/usr"
        etc_binds = [f"--bind={root}{UNIT_DIR}:{UNIT_DIR}"]
    return ["systemd-nspawn", "--directory=/", "--volatile=yes", "--register=no", "--keep-unit",
            f"--machine={name}", "--console=read-only", f"--overlay={usr_layers}:{upper}:/usr", *etc_binds,
            f"--bind-ro={workdir / 'machine-id'}:/etc/machine-id",
            f"--bind-ro={source}:{SOURCE_IN_CONTAINER}",
            "--bind-ro=/etc/ssl",  # the host's CA certificates, where requests looks for them
            *extra_args, "--boot"]


def generated_files(source: Path) -> Dict[str, Tuple[str, str]]:
    """{path: (content, mode)} of what installing the Python package would add: launchers and a .pth."""
    files = {PTH_FILE: (SOURCE_IN_CONTAINER + "\n", "0644")}
    for command, entry_point in console_scripts(source / "pyproject.toml").items():
        files[f"/usr/bin/{command}"] = (launcher(entry_point), "0755")
    return files


def environment_drop_in(env: Dict[str, str]) -> str:
    return "[Service]\n" + "".join(f'Environment="{key}={value}"\n' for key, value in env.items())


def _stage_agent(source: Path, root: Path, environment: Dict[str, str]) -> Path:
    """Lay the agent out under `root` (usr/..., etc/systemd/system/...) and enable it there, on the host."""
    for relative, target in SHIPPED_FILES:
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, path)
        path.chmod(0o644)
    for target, (content, mode) in generated_files(source).items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(int(mode, 8))
    if environment:
        drop_in = root / UNIT_DIR.lstrip("/") / "pdagent.service.d" / "50-test-environment.conf"
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(environment_drop_in(environment))
    result = subprocess.run(["systemctl", f"--root={root}", "enable", "pdagent.socket"], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise ContainerError(f"systemctl --root={root} enable pdagent.socket: {result.stderr.strip()}")
    return root


def _children(pid: int) -> List[int]:
    children: List[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return children


def _tmpfs_dir() -> Optional[str]:
    """/dev/shm when it is a tmpfs (see the module doc: machine-id), else the default temp dir."""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if fields[1] == "/dev/shm" and fields[2] == "tmpfs":
                    return "/dev/shm"
    except OSError:
        pass
    return None


def assert_no_whole_key_in_journal(machine: BootedSystemd, keys: Iterable[str]) -> None:
    """No journal entry of the booted machine, in any field, shows whole one of `keys` (routing keys a stand-in
    received; those of 12 characters or more, which the agent logs as their first and last four)."""
    long_keys = [key for key in keys if len(key) >= 12]
    if not long_keys or machine.nspawn.poll() is not None:
        return
    journal = machine.run(["journalctl", "--no-pager", "-o", "verbose"], check=False, timeout=120).stdout
    lines = (re.sub(r"PDAGENT_DEDUP_KEY=\S*", "PDAGENT_DEDUP_KEY=", line) for line in journal.splitlines())
    leaks = [line.strip()[:300] for line in lines if any(key in line for key in long_keys)]  # dedup keys: whole
    assert not leaks, "a routing key appears whole in the journal:\n" + "\n".join(leaks[:10])
