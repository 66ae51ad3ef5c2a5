"""The earliest heartbeat deadline, handed to systemd so that nothing of ours runs while it waits.

pdagentd runs unprivileged and hardened: it can neither write unit files nor ask PID 1 for a transient unit.
So it writes one number, the earliest deadline as a Unix time, to `heartbeat-due` in its state directory
(`none` when no heartbeat can page, which stops the timer). pdagent-heartbeat-arm.path watches that file and starts
pdagent-heartbeat-arm.service (root, a few lines of sh), which turns the number into a transient
pdagent-heartbeat.timer (`systemd-run --on-calendar=@N --unit=pdagent-heartbeat`) that starts the shipped
pdagent-heartbeat.service at the deadline: `pd-queue flush` connects to the socket, which starts pdagentd,
which pages the miss from its own loop.

The file is written when the daemon exits (idle, stop) and whenever the earliest deadline moves earlier
while it runs (a new, shorter heartbeat), so a crash never leaves a timer later than a deadline. A timer
that fires early (the deadline moved later) only starts the daemon, which writes the file again as it goes.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

from pdagent_sd import marker

logger = logging.getLogger(__name__)

DUE_FILE = "heartbeat-due"
NOTHING = "none"  # what the file says when no heartbeat can page: the arm service stops the timer


class Arming:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, DUE_FILE)
        self.armed: Optional[int] = self._read()

    def _read(self) -> Optional[int]:
        try:
            with open(self.path, encoding="ascii") as handle:
                text = handle.read(32).strip()
        except (OSError, ValueError):
            return None
        return int(text) if text.isdigit() else None

    def arm(self, deadline: Optional[float]) -> None:
        """Make the file say `deadline` (whole seconds, rounded up); no write when it already does. With no
        deadline, a file that said one says `none` (the timer armed for it is stopped); none is created."""
        wanted = None if deadline is None else max(0, math.ceil(deadline))
        if wanted == self.armed:
            return
        if wanted is None and not os.path.lexists(self.path):
            self.armed = None
            return
        try:
            temporary = self.path + ".new"
            marker.remove(temporary)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, f"{NOTHING if wanted is None else wanted}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, self.path)  # one change for the path unit to see, never a half-written file
            marker.fsync_directory(os.path.dirname(self.path) or ".")
        except OSError as exc:
            logger.error("cannot write %s (%s): a heartbeat's miss may page only at the next start of pdagentd",
                         self.path, exc.strerror or exc)
            return
        self.armed = wanted

    def needs_earlier(self, deadline: Optional[float]) -> bool:
        """Whether the armed time is later than `deadline` (or nothing is armed for it)."""
        return deadline is not None and (self.armed is None or self.armed > math.ceil(deadline))
