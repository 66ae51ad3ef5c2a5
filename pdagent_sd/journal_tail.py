"""A failed run's journal lines: read with python-systemd's reader (imported only when they are wanted), tied to
the run by fields a journal client cannot set, and the journalctl command that shows the same lines. Every
journal read and `journalctl` the agent runs is here."""

from __future__ import annotations

import enum
import os
import subprocess
import time
from typing import Any, Dict, List, Tuple

from pdagent_sd.limits import fit
from pdagent_sd.unit_state import ID128, boot_uuid

MAX_JOURNAL_LINE = 2000  # characters of one journal line in an event; 50 of them stay far below 512 KB
JOURNAL_ATTEMPTS = 6
JOURNAL_RETRY_SEC = 0.5


def read_journal(invocation_id: str, lines: int, unit: str = "", since_usec: int = 0,
                 main_pid: int = 0) -> Tuple[List[str], str]:
    """The last `lines` journal lines of one invocation (the unit's own output and systemd's messages about
    it), oldest first, and why none could be read ("" when some could).

    Only fields a journal client cannot set are trusted (see _claim): any local user may send an entry with
    INVOCATION_ID, UNIT or SYSLOG_IDENTIFIER set to anything, and `systemctl show` tells everyone a unit's
    invocation ID.

    since_usec: the monotonic time the invocation started (InactiveExitTimestampMonotonic). A process that
    exits at once can be gone before journald looks up which run wrote its last lines (systemd issue 2913);
    they then carry no invocation ID, and are taken if they came from the run's main process (main_pid,
    ExecMainPID; `_PID` is the kernel's word) and are not older than that."""
    if lines <= 0:
        return [], ""
    if not ID128.fullmatch(invocation_id or ""):
        return [], "the unit has no invocation ID (it never ran), so it has no journal lines to show"
    sync_journal()
    try:
        from systemd import journal
    except ImportError as exc:
        return [], f"the journal cannot be read here: python3-systemd is missing ({exc})"
    try:
        for attempt in range(JOURNAL_ATTEMPTS):
            entries = _tail(journal, invocation_id, lines, unit, since_usec, main_pid)
            # The unit's own output comes through its stdout stream, which journald may write out a little
            # after systemd's messages about the unit: wait briefly for at least one line of it.
            if any(_from_the_unit(entry) for entry in entries) or attempt + 1 == JOURNAL_ATTEMPTS:
                break
            time.sleep(JOURNAL_RETRY_SEC)
            sync_journal()
    except (OSError, ValueError) as exc:
        return [], f"the journal cannot be read: {exc}"
    if not entries:
        return [], (f"no journal entries of invocation {invocation_id} could be read (the journal may be "
                    f"unreadable to uid {os.getuid()}: root and members of group systemd-journal or adm can "
                    "read it; or the entries have been rotated away)")
    return [format_entry(entry) for entry in reversed(entries)], ""


def _pid(entry: Dict[str, Any]) -> int:
    """The sender's PID as journald recorded it (from the kernel's credentials); 0 if absent."""
    try:
        return int(entry.get("_PID") or 0)
    except (TypeError, ValueError):
        return 0


def _from_the_unit(entry: Dict[str, Any]) -> bool:
    """Written by the unit's processes, not by systemd about the unit."""
    return _pid(entry) != 1


class Claim(enum.Enum):
    """What a journal entry is to the failed run (see _claim)."""
    OURS = "ours"
    IF_RECENT = "if recent"
    NOT_OURS = "not ours"


def _claim(entry: Dict[str, Any], invocation_id: str, unit: str, main_pid: int) -> Claim:
    """Whether a journal entry belongs to the failed run, judged by trusted fields only. Fields starting with
    an underscore are journald's own (a client's are dropped), _PID is the kernel's; INVOCATION_ID and UNIT
    are trusted only on PID 1's entries.

    OURS: the run's processes (_SYSTEMD_INVOCATION_ID) or PID 1's messages about the run (INVOCATION_ID).
    IF_RECENT: no invocation ID, but PID 1's message about the unit (UNIT), or the run's main process's line
    (_PID, with _SYSTEMD_UNIT absent or the unit's): the run's if not older than its start and of this boot.
    NOT_OURS: everything else, including another run of the unit."""
    from_pid1 = _pid(entry) == 1
    if entry.get("_SYSTEMD_INVOCATION_ID") == invocation_id:
        return Claim.OURS
    if from_pid1 and entry.get("INVOCATION_ID") == invocation_id:
        return Claim.OURS
    if "_SYSTEMD_INVOCATION_ID" in entry or (from_pid1 and "INVOCATION_ID" in entry):
        return Claim.NOT_OURS  # another run of the unit, or another unit
    if unit and from_pid1 and entry.get("UNIT") == unit:
        return Claim.IF_RECENT
    if main_pid > 1 and _pid(entry) == main_pid and entry.get("_SYSTEMD_UNIT", unit) == unit:
        return Claim.IF_RECENT
    return Claim.NOT_OURS


def _tail(journal: Any, invocation_id: str, lines: int, unit: str, since_usec: int,
          main_pid: int = 0) -> List[Dict[str, Any]]:
    """The last entries of one invocation, newest first: the unit's processes (_SYSTEMD_INVOCATION_ID),
    PID 1's messages about it (_PID=1 with INVOCATION_ID, or UNIT), and its main process's lines journald
    could not attribute to an invocation (see read_journal). Each entry the reader finds is judged again by
    _claim."""
    reader = journal.Reader()
    try:
        reader.add_match(_SYSTEMD_INVOCATION_ID=invocation_id)
        reader.add_disjunction()
        reader.add_match(_PID="1", INVOCATION_ID=invocation_id)
        if unit and since_usec:
            reader.add_disjunction()
            reader.add_match(_PID="1", UNIT=unit)
        if main_pid > 1 and since_usec:
            reader.add_disjunction()
            reader.add_match(_PID=str(main_pid))
        reader.seek_tail()
        entries: List[Dict[str, Any]] = []
        boot: Any = boot_uuid()
        while len(entries) < lines:
            entry = reader.get_previous()
            if not entry:
                break
            claim = _claim(entry, invocation_id, unit, main_pid if since_usec else 0)
            if claim == Claim.OURS:
                entries.append(entry)
                continue
            if claim == Claim.NOT_OURS:
                continue
            monotonic = entry.get("__MONOTONIC_TIMESTAMP")
            usec = _usec(monotonic[0]) if isinstance(monotonic, tuple) and monotonic else 0
            if entry.get("_BOOT_ID") != boot or usec < since_usec:
                break  # older than this run: nothing further back belongs to it
            entries.append(entry)
        return entries
    finally:
        reader.close()


def _usec(value: Any) -> int:
    if hasattr(value, "total_seconds"):
        return int(value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds)
    return 0


def sync_journal() -> None:
    """Have journald write out what it has received: a unit's last lines, sent through its stdout stream just
    before it failed, may otherwise not be in the journal files yet when the handler reads them. Only root may
    ask; for anyone else (pd-send --unit by a user) this is skipped."""
    if os.geteuid() != 0:
        return
    try:
        subprocess.run(["journalctl", "--sync"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        pass


def format_entry(entry: Dict[str, Any]) -> str:
    """One journal entry as a short line: time, name[pid]: message (cut to MAX_JOURNAL_LINE). Name and PID are
    journald's (_COMM, _PID); the name is left out when journald could not read it (the process had exited)."""
    stamp: Any = entry.get("__REALTIME_TIMESTAMP")
    when = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f%z") if hasattr(stamp, "strftime") else ""
    ident = str(entry.get("_COMM") or "")  # not SYSLOG_IDENTIFIER, which the sender chooses
    pid = _pid(entry)
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    origin = f"{ident}[{pid}]" if pid else ident
    return fit(" ".join(part for part in (when, f"{origin}:" if origin else "", str(message)) if part),
               MAX_JOURNAL_LINE)


def journal_command(unit: str, invocation_id: str, main_pid: int = 0, boot: str = "") -> str:
    """The journalctl command that shows the run's lines by the same trusted fields as read_journal, the main
    process's lines journald could not tie to the run (main_pid, in this boot) included."""
    if not ID128.fullmatch(invocation_id or ""):
        return f"journalctl -u {unit}"
    command = f"journalctl _SYSTEMD_INVOCATION_ID={invocation_id} + _PID=1 INVOCATION_ID={invocation_id}"
    if main_pid > 1 and ID128.fullmatch(boot):
        command += f" + _PID={main_pid} _BOOT_ID={boot}"
    return command
