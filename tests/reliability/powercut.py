"""Power cuts for tests: a directory mounted through lazyfs.py (a FUSE layer that keeps on the side only what
was fsync'd), cut (unmounted, and its backing directory rebuilt from only that) and mounted again.

    with PowerCutFS(str(tmp_path / "layer"), mountpoint) as fs:
        ...  # a process writes under mountpoint
        kill it (SIGKILL, waited for): from then on nothing can fsync, so the cut is as at that instant
        fs.cut()  # what was not durable is gone; mountpoint is mounted again over the rebuilt directory

The layer runs as its own process with Debian's /usr/bin/python3 and python3-fusepy (the tests' own Python
may be a virtualenv or another version). Needs root and /dev/fuse; skip_reason() says why not.
Whatever it mounts it unmounts, and the layer process it starts it stops by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional

LAYER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazyfs.py")
DEBIAN_PYTHON = "/usr/bin/python3"
MOUNT_TIMEOUT_SEC = 20.0


def skip_reason() -> Optional[str]:
    if os.geteuid() != 0:
        return "power-cut tests mount a FUSE file system and need root"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    probe = subprocess.run([DEBIAN_PYTHON, "-c", "import fusepy"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        return f"{DEBIAN_PYTHON} lacks fusepy (apt-get install fuse3 python3-fusepy)"
    return None


def rebuild(durable: str, target: str) -> None:
    """Make `target` what lazyfs's durable copy says survived: the root directory's durable entries, and so
    on down; a file's data as of its last fsync (empty if it never had one)."""
    with open(os.path.join(durable, "tree.json")) as handle:
        tree = json.load(handle)
    os.mkdir(target, 0o755)
    made: Dict[int, str] = {}  # file id -> first path made for it (hard links)

    def fill(dir_id: int, path: str, depth: int) -> None:
        assert depth < 64, "directory loop in the durable tree"
        for name, entry in sorted(tree["dirs"].get(str(dir_id), {}).items()):
            child = os.path.join(path, name)
            if entry["kind"] == "dir":
                os.mkdir(child, entry["mode"])
                fill(entry["id"], child, depth + 1)
            elif entry["kind"] == "link":
                os.symlink(entry["target"], child)
            elif entry["id"] in made:
                os.link(made[entry["id"]], child)
            else:
                data = os.path.join(durable, "data", str(entry["id"]))
                if os.path.exists(data):
                    shutil.copyfile(data, child)
                else:
                    open(child, "wb").close()
                os.chmod(child, entry["mode"])
                made[entry["id"]] = child

    fill(tree["root"], target, 0)


class PowerCutFS:
    """`mountpoint` through lazyfs, its backing and durable copies under `workdir`."""

    def __init__(self, workdir: str, mountpoint: str) -> None:
        self.workdir = workdir
        self.mountpoint = mountpoint
        self.generation = 0
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.cuts = 0
        self.syncs: List[Dict[str, int]] = []  # fsync and fsyncdir counts of each mount, as it ended
        os.makedirs(workdir, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)

    def _paths(self) -> Dict[str, str]:
        return {"live": os.path.join(self.workdir, f"live.{self.generation}"),
                "durable": os.path.join(self.workdir, f"durable.{self.generation}"),
                "log": os.path.join(self.workdir, f"lazyfs.{self.generation}.log")}

    def mount(self) -> "PowerCutFS":
        paths = self._paths()
        os.makedirs(paths["live"], exist_ok=True)
        with open(paths["log"], "ab") as log:
            self.proc = subprocess.Popen([DEBIAN_PYTHON, LAYER, paths["live"], paths["durable"], self.mountpoint],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + MOUNT_TIMEOUT_SEC
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._stop_layer()
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}:\n{self.log()}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            with open(self._paths()["log"], errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def unmount(self) -> None:
        """Unmount (lazily if something still holds it) and stop the layer process, by PID."""
        if os.path.ismount(self.mountpoint):
            for _ in range(40):  # a process just killed may still be closing its files on the mount: EBUSY
                if subprocess.run(["umount", self.mountpoint], capture_output=True).returncode == 0:
                    break
                time.sleep(0.05)
            else:
                subprocess.run(["umount", "--lazy", self.mountpoint], capture_output=True)
        self._stop_layer()
        counts = os.path.join(self._paths()["durable"], "syncs.json")
        if os.path.exists(counts):
            with open(counts) as handle:
                self.syncs.append(json.load(handle))

    def _stop_layer(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            subprocess.run(["umount", "--lazy", self.mountpoint], capture_output=True)
        self.proc = None

    def cut(self, remount: bool = True) -> None:
        """The power goes: only what lazyfs holds as durable is left. Whoever wrote must be dead already (a
        process still running could fsync after the cut it is meant to have died at)."""
        self.unmount()
        durable = self._paths()["durable"]
        old_live = self._paths()["live"]
        self.generation += 1
        rebuild(durable, self._paths()["live"])
        shutil.rmtree(old_live, ignore_errors=True)
        shutil.rmtree(durable, ignore_errors=True)
        self.cuts += 1
        if remount:
            self.mount()

    def live_dir(self) -> str:
        """The backing directory of the current mount (what the layer passes through to)."""
        return self._paths()["live"]

    def live_syncs(self) -> Dict[str, int]:
        """fsync and fsyncdir calls the current mount has seen so far."""
        with open(os.path.join(self._paths()["durable"], "syncs.json")) as handle:
            return dict(json.load(handle))

    def durable_tree(self) -> Dict[str, Any]:
        with open(os.path.join(self._paths()["durable"], "tree.json")) as handle:
            return dict(json.load(handle))

    def __enter__(self) -> "PowerCutFS":
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()
