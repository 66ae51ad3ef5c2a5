"""A clean Debian 12 or 13 system, booted with systemd-nspawn from a debootstrap tree, for the package tests.

    rootfs = cached_rootfs("trixie")              # packaging/debian-rootfs.sh: built once, then reused
    with DebianContainer.boot(rootfs, "trixie") as box:     # a private copy of the tree, booted
        box.apt("install", "/root/pdagent-sd.deb")
        box.run("systemctl", "is-active", "pdagent.socket")

How, and why:

- The cached tree (``packaging/debian-rootfs.sh RELEASE``, keyed by a hash of its release and package list) is
  never booted
  itself: each container gets its own ``cp -a`` copy (about 250 MB, under a second), removed when it stops. So
  the cache stays clean across tests and runs, and nothing needs unmounting afterwards.
- The copy gets its own /etc/machine-id before the first boot: the boot is then not a "first boot", so
  systemd neither applies presets nor runs systemd-firstboot.
- ``--register=no --keep-unit``: no machined needed on the host. ``--machine=`` a unique name per container.
- The host's network namespace is shared: apt inside reaches Debian's mirror (``--resolv-conf=copy-host``), and
  an Events API stand-in on the host's 127.0.0.1 is reachable from the agent inside.
- ``/var/cache/apt/archives`` is bound to a host directory per release beside the rootfs cache
  (``apt-archives/<release>``), so the .debs apt fetches
  (python3-systemd, python3-requests, ...) are downloaded once, not on every run. apt still resolves and
  installs them in the container like on any machine.
- Commands run inside with ``nsenter -t <container PID 1> -a`` and a clean environment.
- Stopping: SIGTERM to the systemd-nspawn process this module started (nspawn powers the container off in
  order), by PID, waited for; SIGKILL to the container's PID 1 and then nspawn only if that takes too long.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Union

from waiting import wait_until  # noqa: E402,F401  (tests/ is on sys.path; the tests import it from here)

REPO = Path(__file__).resolve().parents[2]
ROOTFS_SCRIPT = REPO / "packaging" / "debian-rootfs.sh"
CACHE_DIR = Path(os.environ.get("PDAGENT_TEST_CACHE", "/var/cache/pdagent-sd-test"))
APT_ARCHIVES = CACHE_DIR / "apt-archives"  # one directory per release below it
RELEASES = ("bookworm", "trixie")  # Debian 12 and 13
APT_LOCK_WAIT_SEC = 300.0
INSIDE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "HOME": "/root", "DEBIAN_FRONTEND": "noninteractive", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

TOOLS = (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"), ("debootstrap", "debootstrap"),
         ("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"), ("pybuild", "dh-python"),
         ("help2man", "help2man"), ("lintian", "lintian"))
PYPROJECT_PLUGIN = Path("/usr/share/dh-python/dhpython/build/plugin_pyproject.py")


def skip_reason() -> Optional[str]:
    """Why the package tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "package tests build a rootfs with debootstrap and boot it with systemd-nspawn: they need root"
    for tool, package in TOOLS:
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{tool} is missing (apt-get install {package})"
    if not PYPROJECT_PLUGIN.exists():
        return "pybuild's pyproject plugin is missing (apt-get install pybuild-plugin-pyproject)"
    return None


def cached_rootfs(release: str = "bookworm") -> Path:
    """The clean tree of a Debian release, built by debootstrap on first use (90 s to two minutes), then reused
    across runs."""
    done = subprocess.run(["bash", str(ROOTFS_SCRIPT), release], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, "PDAGENT_TEST_CACHE": str(CACHE_DIR)})
    if done.returncode != 0:
        raise RuntimeError(f"{ROOTFS_SCRIPT.name} failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


class DebianContainer:
    """One booted copy of the rootfs: its systemd-nspawn process, its PID 1, and helpers to act inside it."""

    def __init__(self, root: Path, workdir: Path, name: str, release: str = "bookworm") -> None:
        self.release = release
        self.archives = APT_ARCHIVES / release
        self.root = root
        self.workdir = workdir
        self.name = name
        self.nspawn: Optional[subprocess.Popen] = None
        self.init_pid = 0
        self.boot_seconds: List[float] = []
        self.log_path = workdir / "console.log"

    @classmethod
    def boot(cls, rootfs: Path, release: str = "bookworm") -> DebianContainer:
        workdir = Path(tempfile.mkdtemp(prefix="pdagent-pkg-", dir="/var/tmp"))
        root = workdir / "root"
        box = cls(root, workdir, "pdagent-pkg-" + uuid.uuid4().hex[:8], release)
        try:
            subprocess.run(["cp", "-a", str(rootfs), str(root)], check=True)
            (root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
            box.archives.joinpath("partial").mkdir(parents=True, exist_ok=True)
            box.start()
        except BaseException:
            box.destroy()
            raise
        return box

    # -- life cycle

    def start(self) -> None:
        """Boot the tree (again) and wait until systemd has finished starting up."""
        assert self.nspawn is None, "already running"
        started = time.monotonic()
        command = ["systemd-nspawn", f"--directory={self.root}", f"--machine={self.name}", "--register=no",
                   "--keep-unit", "--boot", "--link-journal=no", "--resolv-conf=copy-host",
                   f"--bind={self.archives}:/var/cache/apt/archives"]
        with open(self.log_path, "ab") as log:
            self.nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           cwd="/")
        try:
            self.init_pid = wait_until(self._find_init, 30, "the container's systemd (PID 1)")
            state = wait_until(self._system_state, 120, "the container to finish booting")
            if state not in ("running", "degraded"):
                raise RuntimeError(f"container booted into state {state!r}; console log: {self.log_path}")
        except BaseException:
            self.stop()
            raise
        self.boot_seconds.append(time.monotonic() - started)

    def _find_init(self) -> int:
        if self.nspawn is None or self.nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited early; console log:\n{self.console()}")
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
        except OSError:
            return 0
        for child in children:
            try:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
            except OSError:
                continue
        return 0

    def _system_state(self) -> str:
        done = self.run("systemctl", "is-system-running", check=False, timeout=10)
        state = done.stdout.strip()
        return "" if state in ("", "initializing", "starting", "offline", "unknown") else state

    def stop(self, timeout: float = 60) -> None:
        """Power the container off: SIGTERM to our systemd-nspawn (by PID), then SIGKILL if it hangs."""
        nspawn, self.nspawn = self.nspawn, None
        if nspawn is None:
            return
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)
            try:
                nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if self.init_pid:
                    try:
                        os.kill(self.init_pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                nspawn.kill()
                nspawn.wait(timeout=30)
        self.init_pid = 0

    def reboot(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the container if it runs and delete its copy of the tree."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DebianContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- acting inside

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            input: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        """Run a command inside the container; stdout and stderr captured as text."""
        assert self.init_pid, "container is not running"
        command = ["nsenter", "-t", str(self.init_pid), "-a", *argv]
        done = subprocess.run(command, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, env={**INSIDE_ENV, **(env or {})}, cwd="/")
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode} in the container\n"
                                 f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
        return done

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run("sh", "-ec", script, check=check, timeout=timeout)

    def apt(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """apt-get in the container, holding a host lock on the shared archive cache of this release: apt inside
        locks /var/cache/apt/archives too, but not across containers (in another PID namespace the holder shows as
        "process 0" and apt gives up at once), and two test runs on one host share the cache."""
        with open(APT_ARCHIVES / f"{self.release}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Another booted container of this release (another test run's, whose apt-daily may be fetching)
            # can hold the archives' own lock without our host lock: wait for it, a few minutes at most.
            deadline = time.monotonic() + APT_LOCK_WAIT_SEC
            while True:
                done = self.run("apt-get", "-y", "-q", "-o", "Dpkg::Use-Pty=0", *args, timeout=timeout, check=False)
                if done.returncode == 0 or "Could not get lock /var/cache/apt/archives/lock" not in done.stderr \
                        or time.monotonic() > deadline:
                    break
                time.sleep(5)
            if done.returncode != 0:
                raise AssertionError(f"apt-get {' '.join(args)} exited {done.returncode} in the container\n"
                                     f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}")
            return done

    def put(self, source: Union[str, Path], inside: str) -> str:
        """Copy a host file into the container's tree (the root is a plain directory here)."""
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        return inside

    def write(self, inside: str, text: str) -> None:
        target = self.root / inside.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def exists(self, inside: str) -> bool:
        return self.run("test", "-e", inside, check=False).returncode == 0

    def unit_property(self, unit: str, name: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", name, unit).stdout.strip()

    def console(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
