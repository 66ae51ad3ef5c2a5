"""A throwaway local user, and a Python it may run, for the tests of what other users can do to the agent.

The test's own interpreter may live where other users cannot go (pyenv under /root), so the user gets a
virtualenv made from Debian's /usr/bin/python3 (--system-site-packages) and a world-readable copy of the
package, both in a world-readable temporary directory. The user is created with useradd and removed with
userdel when the context ends, pass or fail; needs root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SYSTEM_PYTHON = "/usr/bin/python3"

# Sends each request line on one connection and prints the raw reply lines as a JSON list of strings.
RAW_CLIENT = r"""
import json, socket, sys
path, lines = sys.argv[1], json.load(sys.stdin)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(30)
sock.connect(path)
replies, buffer = [], b""
for line in lines:
    sock.sendall(line.encode() + b"\n")
    while b"\n" not in buffer:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        buffer += chunk
    reply, _, buffer = buffer.partition(b"\n")
    replies.append(reply.decode())
print(json.dumps(replies))
"""


def available() -> Optional[str]:
    """Why the tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "creating a user and running a client as it needs root"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is needed to run a client as another user"
    for tool in ("useradd", "userdel"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    return None


class OtherUser:
    """`with OtherUser() as user:` a fresh user; `user.workdir` is a world-readable directory for the agent."""

    def __init__(self) -> None:
        self.name = "pdsec" + secrets.token_hex(4)
        self.uid = self.gid = -1
        self.base = ""
        self.python = ""
        self.source = ""
        self.workdir = ""

    def __enter__(self) -> "OtherUser":
        try:
            self._set_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _set_up(self) -> None:
        self.base = tempfile.mkdtemp(prefix="pdagent-otheruser.")
        os.chmod(self.base, 0o755)
        self.source = os.path.join(self.base, "src")
        shutil.copytree(os.path.join(ROOT, "pdagent_sd"), os.path.join(self.source, "pdagent_sd"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(os.path.join(HERE, "fuzzlib.py"), self.source)
        shutil.copy(os.path.join(HERE, "fuzz_client.py"), self.source)
        shutil.copy(os.path.join(HERE, "attack_client.py"), self.source)
        venv = os.path.join(self.base, "venv")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", venv],
                       check=True, capture_output=True, timeout=120)
        self.python = os.path.join(venv, "bin", "python")
        for directory, _subdirs, files in os.walk(self.base):
            os.chmod(directory, 0o755)
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        self.workdir = os.path.join(self.base, "agent")
        os.mkdir(self.workdir)
        os.chmod(self.workdir, 0o755)
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--user-group", self.name],
                       check=True, capture_output=True, timeout=60)
        import pwd

        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def __exit__(self, *exc_info: Any) -> None:
        if self.uid >= 0:
            subprocess.run(["userdel", self.name], check=False, capture_output=True, timeout=60)
            self.uid = -1
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)

    def run(self, args: Sequence[str], *, input: Optional[str] = None, extra_groups: Sequence[int] = (),
            env: Optional[Dict[str, str]] = None, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
        """Run the user's Python with `args`, as the user, with the package copy on PYTHONPATH."""
        environ = {"PATH": "/usr/bin:/bin", "HOME": self.base, "LANG": "C.UTF-8", "PYTHONPATH": self.source,
                   "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
        return subprocess.run([self.python, *args], env=environ, cwd=self.base, user=self.uid, group=self.gid,
                              extra_groups=list(extra_groups), input=input, capture_output=True, text=True,
                              timeout=timeout)

    def requests(self, socket_path: str, messages: List[Any]) -> List[str]:
        """Send each message (a dict, or a raw line as str) as the user; return the raw reply lines."""
        lines = [m if isinstance(m, str) else json.dumps(m) for m in messages]
        result = self.run(["-c", RAW_CLIENT, socket_path], input=json.dumps(lines))
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))
