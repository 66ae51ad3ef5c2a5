"""The state directory: created if missing, then its owner and mode checked before the queue is opened.

Whoever can write the directory can plant a symlink as `pending` or queue.db-wal, or swap queue.db for a file
of their own: the queue would be theirs. systemd's StateDirectory= makes it 0700 pdagent:pdagent; a
`--state-dir` or PDAGENT_STATE_DIR somewhere else (a world-writable /tmp/x, a directory left group-writable)
is refused with what to do about it, as a StorageError: the daemon stays up, answers every request with the
reason (pd-send exits 75) and tries again, so fixing the directory is enough.
"""

from __future__ import annotations

import os
import stat

from pdagent_sd.errors import StorageError


def prepare(path: str) -> None:
    """Create `path` (0700) if missing; raise StorageError unless the daemon's uid owns it and only it can write."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise StorageError(f"cannot create the state directory {path}: {exc.strerror or exc}",
                           hint="check the mount and permissions of its parent") from None
    uid = os.geteuid()
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        raise StorageError(f"the state directory {path} is not a directory")
    if info.st_uid != uid:
        raise StorageError(f"the state directory {path} is owned by uid {info.st_uid}, not by the daemon's "
                           f"uid {uid}", hint=f"chown {uid} {path} (and chmod 0700), or use another directory")
    if mode & 0o022:
        who = " and ".join(name for bit, name in ((0o020, "its group"), (0o002, "every user")) if mode & bit)
        raise StorageError(f"the state directory {path} can be written by {who} (mode {mode:04o})",
                           hint=f"chmod 0700 {path}")
