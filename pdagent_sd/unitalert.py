"""Alerts about systemd units: what a failed unit looks like as a PagerDuty event, and when it has recovered.

Read by pd-unit-alert (started by the templates pdagent-unit-failed@.service and pdagent-unit-ok@.service) and
by `pd-send --unit`. Everything a unit's own processes control (its journal lines, its description) is data
here, never a key, a file name or a command: the routing key is taken by name from agent.conf, the unit name
is checked against systemd's own rules before it names a state file.

The unit's properties come from `systemctl show` (plain text, no D-Bus binding needed); its journal lines from
python-systemd's reader, imported only when they are wanted.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import time
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from pdagent_sd.errors import InvalidEvent, PdagentError
from pdagent_sd.limits import MAX_SUMMARY, fit

if TYPE_CHECKING:
    from pdagent_sd.config import UnitAlertSettings

PROPERTIES = ("Id", "Description", "LoadState", "ActiveState", "SubState", "Result", "Type", "ExecMainCode",
              "ExecMainStatus", "NRestarts", "InvocationID", "InactiveEnterTimestamp", "ActiveEnterTimestamp",
              "ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic", "TriggeredBy", "Job", "ExecMainPID")
# The properties an alert carries in custom_details, under systemd's own names.
DETAIL_PROPERTIES = ("Result", "ExecMainCode", "ExecMainStatus", "NRestarts", "InactiveEnterTimestamp",
                     "InvocationID")
# systemd's rules for a unit name (unit_name_is_valid): at most 255 characters of these, a known suffix.
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,246}\.(service|socket|target|device|mount|automount|swap|timer|"
                       r"path|slice|scope)", re.ASCII)
ID128 = re.compile(r"[0-9a-f]{32}", re.ASCII)  # an invocation or boot ID, as systemd prints it
# The agent's own units never page through the agent: a failing pager must not start itself in a loop. Named one
# by one (the units the package ships, tests/test_unit_alert.py checks the list against units/): a prefix took
# an admin's own pdagent-metrics.service (the name docs/pd-queue.md suggests) for one of them.
OWN_UNITS = frozenset(("pdagent.service", "pdagent.socket", "pdagent-retry.service", "pdagent-retry.timer",
                       "pdagent-boot.service", "pdagent-unit-rearm.service", "pdagent-heartbeat.service",
                       "pdagent-heartbeat.timer", "pdagent-heartbeat-arm.service", "pdagent-heartbeat-arm.path",
                       "pdagent-metrics.service", "pdagent-metrics.timer"))
OWN_TEMPLATES = ("pdagent-unit-failed@", "pdagent-unit-ok@")
MAX_JOURNAL_LINE = 2000  # characters of one journal line in an event; 50 of them stay far below 512 KB
# ExecMainCode is the si_code of the main process's end (CLD_* in <signal.h>).
EXIT_CODES = {"1": "exited", "2": "killed", "3": "dumped", "4": "trapped", "5": "stopped", "6": "continued"}
SYSTEMCTL_TIMEOUT_SEC = 15.0
JOURNAL_ATTEMPTS = 6
JOURNAL_RETRY_SEC = 0.5


class UnitError(PdagentError):
    """The unit cannot be looked at (a bad name, systemctl failed); the message says which and why."""

    code = "invalid_event"


def check_unit_name(unit: str) -> str:
    if not UNIT_NAME.fullmatch(unit) or unit.startswith(".") or ".." in unit:
        raise UnitError(f"not a systemd unit name: {unit!r}")
    return unit


def is_own_unit(unit: str) -> bool:
    return unit in OWN_UNITS or (unit.startswith(OWN_TEMPLATES) and unit.endswith(".service"))


# --- reading a unit -------------------------------------------------------------------------------------------


def read_properties(unit: str) -> Dict[str, str]:
    """`systemctl show -p ...` of one unit as a dict of strings (systemd's own formatting)."""
    check_unit_name(unit)
    return parse_properties(systemctl("show", "--no-pager", "-p", ",".join(PROPERTIES), "--", unit,
                                      what=f"show {unit}"))


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT_SEC, what: str = "") -> str:
    """Run systemctl with `args` and return what it printed; UnitError, naming `what` was run (all of `args` if
    not given) and why, if it could not be run or failed."""
    command = what or " ".join(args)
    try:
        result = subprocess.run(["systemctl", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                errors="replace", timeout=timeout,
                                env={**os.environ, "SYSTEMD_PAGER": "", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnitError(f"cannot run systemctl {command}: {exc}") from None
    if result.returncode != 0:
        raise UnitError(f"systemctl {command} exited {result.returncode}: {result.stderr.strip()[:500]}")
    return result.stdout


def parse_properties(text: str) -> Dict[str, str]:
    properties: Dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            properties[name] = value
    return properties


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
        boot: Any = _boot_id()
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


BOOT_ID_VARIABLE = "PDAGENT_BOOT_ID"


def _boot_id() -> Any:
    """This boot's ID as a UUID (None if unknown). The units pass it as systemd knows it (`%b`) in
    $PDAGENT_BOOT_ID: in a container, ProtectKernelTunables= hides the container manager's boot_id file under
    /proc/sys, and the process would read the host's ID, which outlives the container's reboots and matches
    none of the container's journal entries."""
    import uuid

    given = os.environ.get(BOOT_ID_VARIABLE, "")
    if ID128.fullmatch(given):
        return uuid.UUID(given)
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return uuid.UUID(handle.read().strip())
    except (OSError, ValueError):
        return None


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


# --- building events -------------------------------------------------------------------------------------------


def dedup_key(host: str, unit: str) -> str:
    return f"systemd/{host}/{unit}"


def routing_key(settings: UnitAlertSettings) -> str:
    """The key by name (`@name`): the daemon resolves it from [Keys] in agent.conf, so no command line of a
    unit, and no unit name, ever carries a routing key."""
    return "@" + settings.key


def is_timer_job(properties: Dict[str, str]) -> bool:
    return any(name.endswith(".timer") for name in properties.get("TriggeredBy", "").split())


def how_it_ended(properties: Dict[str, str]) -> str:
    """`exit-code (status 2)`, `signal (SIGKILL)`, `timeout`: systemd's Result, with the main process's end."""
    result = properties.get("Result") or "unknown"
    code = EXIT_CODES.get(properties.get("ExecMainCode", ""), "")
    status = properties.get("ExecMainStatus", "")
    if code == "exited" and status not in ("", "0"):
        return f"{result} (status {status})"
    if code in ("killed", "dumped") and status.isdigit():
        return f"{result} ({_signal_name(int(status))})"
    return result


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def unit_details(properties: Dict[str, str], journal_lines: List[str], journal_error: str) -> Dict[str, Any]:
    """What an event says about a unit: systemd's properties under their own names, the journal tail."""
    unit = properties.get("Id", "")
    details: Dict[str, Any] = {"unit": unit}
    if properties.get("Description"):
        details["Description"] = fit(properties["Description"], MAX_SUMMARY)
    details["ActiveState"] = f"{properties.get('ActiveState', '')} ({properties.get('SubState', '')})"
    for name in DETAIL_PROPERTIES:
        value = properties.get(name, "")
        if name == "ExecMainCode":
            value = EXIT_CODES.get(value, value)
        if value != "":
            details[name] = value
    if properties.get("TriggeredBy"):
        details["TriggeredBy"] = properties["TriggeredBy"]
    if journal_lines:
        details["journal"] = journal_lines
    if journal_error:
        details["journal_missing"] = journal_error
    details["journal_command"] = journal_command(unit, properties.get("InvocationID", ""), main_pid(properties),
                                                 boot_id())
    return details


def failure_event(properties: Dict[str, str], host: str, settings: UnitAlertSettings, journal_lines: List[str],
                  journal_error: str) -> Dict[str, Any]:
    """The Events API v2 trigger for a failed unit. The source is left to the agent, which sets its FQDN."""
    unit = properties.get("Id", "")
    short_host = host.split(".")[0] or host
    timer = is_timer_job(properties)
    summary = fit(f"{unit} failed on {short_host}: {how_it_ended(properties)}")
    return {
        "routing_key": routing_key(settings),
        "event_action": "trigger",
        "dedup_key": dedup_key(host, unit),
        "client": "pdagent-sd unit alerts",
        "payload": {
            "summary": summary,
            "severity": settings.timer_severity if timer else settings.service_severity,
            "component": unit,
            "class": "systemd timer job" if timer else "systemd unit",
            "custom_details": unit_details(properties, journal_lines, journal_error),
        },
    }


def resolve_event(unit: str, host: str, settings: UnitAlertSettings) -> Dict[str, Any]:
    return {"routing_key": routing_key(settings), "event_action": "resolve", "dedup_key": dedup_key(host, unit)}


def describe_unit(unit: str, lines: int = 50) -> Dict[str, Any]:
    """A unit's state and journal tail as custom details (pd-send --unit); the unit's last invocation."""
    properties = read_properties(unit)
    if properties.get("LoadState") == "not-found":
        raise InvalidEvent(f"--unit {unit}: no such unit")
    if not properties.get("InvocationID") and properties.get("ActiveState") == "inactive":
        # systemd unloads a unit that ended without failing once nothing refers to it (a oneshot with no timer,
        # right after a successful run), and then shows it as if it had never run.
        return unit_details(properties, [], UNLOADED)
    journal_lines, journal_error = read_journal(properties.get("InvocationID", ""), lines, unit,
                                                start_usec(properties), main_pid(properties))
    return unit_details(properties, journal_lines, journal_error)


UNLOADED = ("systemd shows no run of this unit: it never ran, or it ended successfully and systemd unloaded it "
            "(a oneshot nothing refers to, right after its run); send from the unit's own ExecStopPost= to "
            "attach its run (docs/systemd-alerts.md, pd-send --unit)")


# --- whether a failure pages -----------------------------------------------------------------------------

# A service whose Restart= applies waits in these states for systemd to start it again. systemd 254 and later
# (Debian 13 has 257) trigger OnFailure= on every failure of a Restart= unit, before that restart; 252 (Debian 12)
# only once the unit has ended failed (Restart= did not apply, or the start limit was hit). With RestartMode=direct
# the unit never passes through a failed state, and OnFailure= fires only when it ends failed, on every version.
RESTART_PENDING = ("auto-restart", "auto-restart-queued")
RUNNING_STATES = ("active", "activating", "reloading", "refreshing")


def failure_verdict(properties: Dict[str, str], failed_invocation: str = "") -> str:
    """Whether a failure that started the OnFailure= handler pages: "page", "restarting" or "running-again".

    restarting: systemd will start the unit again by itself (Restart=; the unit waits in auto-restart). No page:
    if the restart fails in turn, OnFailure= starts the handler again, and once systemd gives up (the start
    limit, or Restart= no longer applies) the unit is failed and that call pages.
    running-again: the unit is already running in a newer invocation than the one that failed (systemd
    restarted it before the handler looked, or someone started it again); MONITOR_INVOCATION_ID, from systemd
    251 on, names the failed one. Nothing to page either: a failure of that new run starts the handler again.
    page: everything else: the unit has failed (or is inactive after a failure) and nothing will restart it.
    """
    state = properties.get("ActiveState", "")
    if state == "failed":
        return "page"
    if properties.get("SubState", "") in RESTART_PENDING:
        return "restarting"
    invocation = properties.get("InvocationID", "")
    if state in RUNNING_STATES and failed_invocation and invocation and invocation != failed_invocation:
        return "running-again"
    return "page"


# --- recovery ------------------------------------------------------------------------------------------------


def recovery_verdict(properties: Dict[str, str], failed_invocation: str, stay_up_sec: float,
                     now_monotonic_usec: int, same_boot: bool = True) -> str:
    """One look at a unit after it was started again: "recovered", "failed", "wait" or "not-started".

    recovered: a later invocation than the failed one finished with success (a oneshot job), or has been
    active for stay_up_sec (a service that stays up). failed: that invocation failed (its own OnFailure= pages
    again). not-started: still the failed invocation, nothing running.

    same_boot: the failure was in this boot. After a reboot (`pd-unit-alert rearm`), a unit that has not run
    since the boot looks just like one that ran, succeeded and was unloaded: no invocation, inactive, success.
    Only an invocation of this boot counts then.
    """
    invocation = properties.get("InvocationID", "")
    state = properties.get("ActiveState", "")
    if not invocation:
        # systemd unloads a unit that ended inactive without failing once nothing refers to it, and then shows
        # it with no invocation and Result=success. A failed unit is never unloaded that way, and in the same
        # boot this is only asked after the unit was started again: it ran, and it succeeded.
        if same_boot and state == "inactive" and properties.get("Result", "success") == "success":
            return "recovered"
        return "not-started"
    if invocation == failed_invocation:
        return "wait" if state in ("activating", "reloading") else "not-started"
    if state == "failed" or (state == "inactive" and properties.get("Result", "success") != "success"):
        return "failed"
    if state == "inactive":
        return "recovered"
    if state == "active":
        if properties.get("Type") == "oneshot":
            return "recovered"
        entered = properties.get("ActiveEnterTimestampMonotonic", "0")
        entered_usec = int(entered) if entered.isdigit() else 0
        if entered_usec and now_monotonic_usec - entered_usec >= stay_up_sec * 1_000_000:
            return "recovered"
    return "wait"


def main_pid(properties: Dict[str, str]) -> int:
    """The PID of the run's main process (ExecMainPID, kept after it exited); 0 if unknown."""
    value = properties.get("ExecMainPID", "")
    return int(value) if value.isdigit() else 0


def start_usec(properties: Dict[str, str]) -> int:
    """When the unit's current (or last) run began, on the monotonic clock; 0 if unknown."""
    value = properties.get("InactiveExitTimestampMonotonic", "")
    return int(value) if value.isdigit() else 0


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock of systemd's *TimestampMonotonic properties."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)


# --- after a reboot --------------------------------------------------------------------------------------------

# A runtime drop-in (/run/systemd/system/UNIT.d/) for each unit with an incident left open by an earlier boot:
# any start of the unit then pulls in its watcher, which is ordered after that start. %n is the unit's own name,
# so the file is the same for every unit and no unit name is ever written into it.
REARM_DROP_IN_NAME = "pdagent-rearm.conf"
REARM_DROP_IN = """\
# pdagent-sd: written at boot by `pd-unit-alert rearm` (pdagent-unit-rearm.service) because this unit had an
# open PagerDuty incident when the host went down. The next start of the unit pulls in the watcher that
# resolves the incident once the start has succeeded or stayed up; once resolved, the watcher's
# ConditionPathExists= skips it. Gone at the next boot (/run).
[Unit]
Wants=pdagent-unit-ok@%n.service
"""
STARTED_STATES = ("active", "activating", "deactivating", "reloading")


def rearm_decision(properties: Dict[str, str]) -> str:
    """What to do at boot about a unit whose incident is still open from an earlier boot, from one
    `systemctl show` taken after the drop-in has been loaded:

    watch: it has run in this boot or is about to (a start job queued with the boot's transaction, before the
    drop-in existed): start the watcher now; it is ordered after the unit's start.
    failed: it has failed in this boot, so its OnFailure= handler has the incident (and pages or not).
    wait: it has not run in this boot: the drop-in starts the watcher with its first start.
    """
    state = properties.get("ActiveState", "")
    if state == "failed":
        return "failed"
    if state in STARTED_STATES or properties.get("Job", "") or properties.get("InvocationID", "") \
            or start_usec(properties) > 0:
        return "watch"
    return "wait"


def boot_id() -> str:
    """This boot's ID (32 hex digits), "" if unknown: tells an incident of this boot from an earlier boot's."""
    boot = _boot_id()
    return boot.hex if boot is not None else ""
