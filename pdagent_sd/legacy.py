"""Reading the old PagerDuty agent's outqueue (pdagent 1.x), for `pd-queue import-legacy`.

Its layout, as the old packages left it: one file per event, `<DIR>/pdq/` pending, `<DIR>/err/` failed
(`suc/` delivered and `tmp/` half-written are not events to import). A file is named
`<enqueue time in microseconds>_<service key>.txt` (sorting the names is the old queue's order) and holds one
Events API v1 body as compact JSON. pdq/ was writable by every local user (mode 2753), so a file there may be
anything: it is opened without following symlinks, must be a regular file of bounded size, and what is wrong
with it is reported by name, never by content: whatever goes wrong with one file (bad encoding, nesting, memory)
is that file's error, and the scan goes on. Nesting is bounded before the text is parsed.

Each event keeps the exact text of its file (the old agent POSTed the file's bytes unchanged) and the file's
owner (st_uid: who queued it, since pdq/ let every user add a file).

Reading never changes the old files; `retire` then moves imported pdq/ files to imported/, out of the reach of an
old daemon that may still run, where a rollback finds them. Standard library only.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Tuple

from pdagent_sd.statustypes import State

DEFAULT_OUTQUEUE = "/var/lib/pdagent/outqueue"
SUBDIRS = (("pdq", State.PENDING.value), ("err", State.FAILED.value))
IMPORTED = "imported"  # where imported pdq/ files go: the old daemon reads only pdq/
MAX_FILE_BYTES = 512 * 1024  # the Events API's own limit on a body
MAX_NESTING = 100  # as events.MAX_DEPTH: deeper objects and lists are refused before json parses them


@dataclass(frozen=True)
class LegacyEvent:
    subdir: str  # pdq or err
    name: str  # the file name, which identifies the event across imports
    state: str  # pending or failed
    queued_at: float  # from the name: when the old agent queued it
    body: Dict[str, Any]
    text: str = ""  # the file's content, exactly: what the old agent would have POSTed
    owner: int = -1  # the file's st_uid

    def to_wire(self) -> Dict[str, Any]:
        return {"name": self.name, "state": self.state, "queued_at": self.queued_at, "text": self.text,
                "owner": self.owner}


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


def nesting(text: str, limit: int = MAX_NESTING) -> int:
    """How deep objects and lists nest in a JSON text, counted without parsing it (brackets inside strings do not
    count); ValueError as soon as it passes `limit`. Linear, iterative: any text can be measured."""
    depth = deepest = 0
    for token in _BRACKETS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                raise ValueError(f"nested more than {limit} levels deep")
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)  # a whole string, or one bracket


def parse(text: str) -> Dict[str, Any]:
    """An event file's text as a JSON object, its nesting bounded first; ValueError saying what is wrong."""
    nesting(text)
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON ({exc.__class__.__name__} at line {getattr(exc, 'lineno', '?')})") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def read_event(path: str) -> Tuple[str, Dict[str, Any], int]:
    """One event file's text, JSON object and owner; ValueError or OSError saying what is wrong with it."""
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
    return text, parse(text), info.st_uid


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
                text, body, owner = read_event(os.path.join(directory, name))
            except ValueError as exc:
                unusable.append(Unusable(shown, str(exc)))
                continue
            except OSError as exc:
                reason = "a symbolic link" if exc.errno == 40 else (exc.strerror or str(exc))  # 40: ELOOP
                unusable.append(Unusable(shown, f"unreadable: {reason}"))
                continue
            except Exception as exc:  # noqa: BLE001 - RecursionError, MemoryError, ...: this file's, not the scan's
                unusable.append(Unusable(shown, f"cannot be read ({exc.__class__.__name__})"))
                continue
            events.append(LegacyEvent(subdir, name, state, queued_at, body, text, owner))
    events.sort(key=lambda event: (event.queued_at, event.name))
    return events, unusable


def retire(outqueue: str, names: Iterable[str]) -> Tuple[int, List[Unusable]]:
    """Move these pdq/ files (imported now or before) to imported/, beside pdq/ and with its owner, where the old
    daemon never looks: how many moved, and the files that could not be (named, with the reason)."""
    pending = os.path.join(outqueue, "pdq")
    target = os.path.join(outqueue, IMPORTED)
    problems: List[Unusable] = []
    moved = 0
    try:
        os.mkdir(target, 0o750)
        info = os.stat(outqueue)
        os.chown(target, info.st_uid, info.st_gid)
    except FileExistsError:
        pass
    except OSError as exc:
        return 0, [Unusable(IMPORTED + "/", exc.strerror or str(exc))]
    for name in names:
        try:
            os.rename(os.path.join(pending, name), os.path.join(target, name))
            moved += 1
        except FileNotFoundError:
            continue  # moved meanwhile (or by an earlier import)
        except OSError as exc:
            problems.append(Unusable(f"pdq/{name}", f"not moved to {IMPORTED}/: {exc.strerror or exc}"))
    return moved, problems
