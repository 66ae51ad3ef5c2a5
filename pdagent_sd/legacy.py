"""Reading the old PagerDuty agent's outqueue (pdagent 1.x), for `pd-queue import-legacy`.

Its layout, as the old packages left it: one file per event, `<DIR>/pdq/` pending, `<DIR>/err/` failed
(`suc/` delivered and `tmp/` half-written are not events to import). A file is named
`<enqueue time in microseconds>_<service key>.txt` (sorting the names is the old queue's order) and holds one
Events API v1 body as compact JSON. pdq/ was writable by every local user (mode 2753), so a file there may be
anything: it is opened without following symlinks, must be a regular file of bounded size, and what is wrong
with it is reported by name, never by content.

Only reads: the old files are left where they are. Standard library only.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

DEFAULT_OUTQUEUE = "/var/lib/pdagent/outqueue"
SUBDIRS = (("pdq", "pending"), ("err", "failed"))
MAX_FILE_BYTES = 512 * 1024  # the Events API's own limit on a body


@dataclass(frozen=True)
class LegacyEvent:
    subdir: str  # pdq or err
    name: str  # the file name, which identifies the event across imports
    state: str  # pending or failed
    queued_at: float  # from the name: when the old agent queued it
    body: Dict[str, Any]

    def to_wire(self) -> Dict[str, Any]:
        return {"name": self.name, "state": self.state, "queued_at": self.queued_at, "event": self.body}


@dataclass(frozen=True)
class Unusable:
    path: str  # relative to the outqueue: pdq/NAME
    reason: str


def parse_name(name: str) -> float:
    """The enqueue time (seconds) a file name carries; ValueError if it is not the old agent's form."""
    if not name.isprintable() or not name.isascii():
        raise ValueError("name has characters the old agent never used in one")
    stem, dot, ext = name.rpartition(".")
    micros, sep, key = stem.partition("_")
    if ext != "txt" or not dot or not sep or not key or not micros.isdigit():
        raise ValueError("name is not <microseconds>_<service key>.txt")
    return int(micros) / 1e6


def read_event(path: str) -> Dict[str, Any]:
    """One event file's JSON object; ValueError or OSError saying what is wrong with it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"{info.st_size} bytes; at most {MAX_FILE_BYTES} are read")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc.__class__.__name__} at line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def scan(outqueue: str) -> Tuple[List[LegacyEvent], List[Unusable]]:
    """Every pending and failed event file, oldest first (by the enqueue time in its name), and the files that
    could not be read or understood. A missing pdq/ or err/ is simply empty."""
    events: List[LegacyEvent] = []
    unusable: List[Unusable] = []
    for subdir, state in SUBDIRS:
        directory = os.path.join(outqueue, subdir)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        except OSError as exc:
            unusable.append(Unusable(subdir + "/", exc.strerror or str(exc)))
            continue
        for name in names:
            shown = f"{subdir}/{name}"
            try:
                queued_at = parse_name(name)
                body = read_event(os.path.join(directory, name))
            except ValueError as exc:
                unusable.append(Unusable(shown, str(exc)))
                continue
            except OSError as exc:
                reason = "a symbolic link" if exc.errno == 40 else (exc.strerror or str(exc))  # 40: ELOOP
                unusable.append(Unusable(shown, f"unreadable: {reason}"))
                continue
            events.append(LegacyEvent(subdir, name, state, queued_at, body))
    events.sort(key=lambda event: (event.queued_at, event.name))
    return events, unusable
