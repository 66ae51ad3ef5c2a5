"""pd-unit-alert: page when a systemd unit fails, resolve when it recovers.

Started by systemd, not by people:

- pdagent-unit-failed@UNIT.service (from UNIT's `OnFailure=pdagent-unit-failed@%n.service`) runs
  `pd-unit-alert failed UNIT`: a trigger with the unit's state and journal tail, dedup key
  systemd/HOST/UNIT, at most one per unit per rate_limit_sec while its incident is open.
- That unit stays active (RemainAfterExit=) and conflicts with UNIT, so starting UNIT again stops it; its
  ExecStop= starts pdagent-unit-ok@UNIT.service, which runs `pd-unit-alert recovered UNIT`: it watches the new
  start, and resolves once a oneshot job has succeeded or a service has stayed up for stay_up_sec.

- After a reboot those handlers are gone. pdagent-unit-rearm.service runs `pd-unit-alert rearm` once per boot:
  for each incident left open it adds a runtime drop-in to the unit (Wants=pdagent-unit-ok@%n.service), so the
  unit's next start is watched, and starts the watcher at once for a unit that has already run in this boot.

What is open is remembered in $STATE_DIRECTORY (/var/lib/pdagent-unit-alert), one file per unit, so the rate
limit and the resolve survive the agent's restarts and a reboot.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import sys
import time
from typing import Any, Dict, List, Optional

from pdagent_sd import config, exitcodes, journal_tail, unit_events, unit_state, unit_verdicts
from pdagent_sd.cli.common import run
from pdagent_sd.errors import PdagentError

USAGE = """\
usage: pd-unit-alert should-page UNIT | failed UNIT | recovered UNIT | rearm

Started by pdagent-unit-failed@.service, pdagent-unit-ok@.service and pdagent-unit-rearm.service (see
docs/systemd-alerts.md):
  should-page UNIT exit 0 once UNIT has ended failed, 1 if systemd restarts it (Restart=; waits up to 60 s)
  failed UNIT      page: UNIT has failed (its state and journal tail as custom details)
  recovered UNIT   watch UNIT's new start; resolve the page once it has succeeded or stayed up
  rearm            at boot: for every incident still open from before, watch the unit's first start in this
                   boot (a runtime drop-in in /run/systemd/system/UNIT.d/; the watcher is started at once for
                   a unit that has already run), so that a successful start after a reboot resolves too
Settings: [UnitAlerts] in /etc/pdagent/agent.conf (key, service_severity, timer_severity, rate_limit_sec,
journal_lines, stay_up_sec, recovery_timeout_sec).
"""
DEFAULT_STATE_DIR = "/var/lib/pdagent-unit-alert"
RUNTIME_UNIT_DIR = "/run/systemd/system"
POLL_SEC = 1.0
START_GRACE_SEC = 30.0  # how long the new start may take to show up after the page's unit was stopped
RESTART_WATCH_SEC = 60.0  # should-page: how long to wait for a restart systemd has scheduled (TimeoutStartSec=90s)
RESTART_POLL_SEC = 0.25


def say(message: str) -> None:
    print(f"pd-unit-alert: {message}", file=sys.stderr, flush=True)


def state_dir() -> str:
    # systemd sets STATE_DIRECTORY from StateDirectory= (a colon-separated list if several).
    return (os.environ.get("PDAGENT_UNIT_ALERT_STATE") or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
            or DEFAULT_STATE_DIR)


class OpenIncidents:
    """One JSON file per unit with an open incident; a lock file serialises the failed and recovered paths."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._lock_fd = -1

    def __enter__(self) -> OpenIncidents:
        self._lock_fd = os.open(os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._lock_fd)

    def _path(self, unit: str) -> str:
        return os.path.join(self.directory, unit_state.check_unit_name(unit))

    def get(self, unit: str) -> Optional[Dict[str, Any]]:
        try:
            with open(self._path(unit), encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # damaged: still an open incident, with nothing known about it
        return record if isinstance(record, dict) else {}

    def put(self, unit: str, record: Dict[str, Any]) -> None:
        path = self._path(unit)
        temporary = f"{path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def remove(self, unit: str) -> None:
        try:
            os.unlink(self._path(unit))
        except FileNotFoundError:
            pass


def _send(event: Dict[str, Any]) -> Dict[str, Any]:
    from pdagent_sd.protocol import request

    return request({"op": "send", "api": "v2", "event": event})


def failed(unit: str) -> int:
    settings, warnings = config.load_unit_alerts()
    for warning in warnings:
        say(warning)
    host = socket.gethostname()
    # systemd 251+ passes the watched unit's failed invocation to a handler only it starts.
    monitored = os.environ.get("MONITOR_INVOCATION_ID", "")
    with OpenIncidents(state_dir()) as incidents:
        record = incidents.get(unit)
        if record is not None:
            age = time.time() - float(record.get("triggered_at", 0) or 0)
            if 0 <= age < settings.rate_limit_sec:
                say(f"{unit} failed again {age:.0f}s after its last page; its incident "
                    f"{unit_events.dedup_key(host, unit)} is still open, so no new trigger "
                    f"(rate_limit_sec={settings.rate_limit_sec:g})")
                return exitcodes.OK
        properties = unit_state.read_properties(unit)
        properties.setdefault("Id", unit)
        invocation = properties.get("InvocationID") or monitored
        properties["InvocationID"] = invocation
        lines, why = journal_tail.read_journal(invocation, settings.journal_lines, unit,
                                            unit_state.start_usec(properties), unit_state.main_pid(properties))
        if why:
            say(f"the page goes out without journal lines: {why}")
        event = unit_events.failure_event(properties, host, settings, lines, why)
        reply = _send(event)
        incidents.put(unit, {"dedup_key": reply.get("dedup_key", event["dedup_key"]), "triggered_at": time.time(),
                             "invocation": invocation, "boot_id": unit_state.boot_id()})
    say(f"paged: {event['payload']['summary']} (dedup key {event['dedup_key']}, "
        f"{len(lines)} journal lines, key @{settings.key})")
    return exitcodes.OK


SKIP = 1  # ExecCondition=: 1 to 254 skip the unit, which stays inactive rather than failed


def should_page(unit: str) -> int:
    """pdagent-unit-failed@'s ExecCondition=: 0 (go on and page) once the unit has ended failed, SKIP if systemd
    has restarted it or, after RESTART_WATCH_SEC, is still about to.

    systemd 254+ (Debian 13: 257) starts OnFailure= handlers at every failure of a Restart= unit, before the
    restart. The decision is taken here, in the start job, so that a handler that does not page ends inactive:
    an active one (RemainAfterExit=) would swallow the next OnFailure= start, and with it the page when the
    unit finally ends failed (the start limit hit right after a restart was scheduled stops no handler). While
    it watches, the restart's start stops the handler (Conflicts=), which is the same "no page". Anything that
    goes wrong here pages: a page too many beats a failure nobody hears of."""
    # The restart's start stops this handler (Conflicts=) while it watches: that is the "no page" answer, and a
    # clean exit leaves the handler inactive, where dying of SIGTERM would mark it failed (systemctl --failed).
    signal.signal(signal.SIGTERM, _restarted)
    monitored = os.environ.get("MONITOR_INVOCATION_ID", "")
    deadline = time.monotonic() + RESTART_WATCH_SEC
    try:
        while True:
            properties = unit_state.read_properties(unit)
            verdict = unit_verdicts.failure_verdict(properties, monitored)
            if verdict == "page":
                return exitcodes.OK
            if verdict == "running-again" or time.monotonic() > deadline:
                what = (f"it is running again (invocation {properties.get('InvocationID')})"
                        if verdict == "running-again" else
                        f"systemd is still to restart it after {RESTART_WATCH_SEC:g}s (Restart=)")
                say(f"{unit} failed (NRestarts {properties.get('NRestarts', '?')}) but {what}: no page unless it "
                    "ends failed")
                return SKIP
            time.sleep(RESTART_POLL_SEC)
    except Exception as error:  # noqa: BLE001 - see above: when in doubt, page
        say(f"cannot tell whether systemd restarts {unit} ({error}): paging")
        return exitcodes.OK


def _restarted(signum: int, frame: Any) -> None:
    os._exit(exitcodes.OK)  # stopped, not started: systemd runs no ExecStart= after a stop


def recovered(unit: str) -> int:
    settings, warnings = config.load_unit_alerts()
    for warning in warnings:
        say(warning)
    host = socket.gethostname()
    incidents = OpenIncidents(state_dir())
    with incidents:
        record = incidents.get(unit)
    if record is None:
        say(f"{unit} has no open incident: nothing to resolve")
        return exitcodes.OK
    failed_invocation = str(record.get("invocation", ""))
    # A record without a boot ID was written before boot IDs were kept: taken as an earlier boot's, which asks
    # for more evidence, never less.
    boot = unit_state.boot_id()
    same_boot = bool(boot) and record.get("boot_id") == boot
    started = time.monotonic()
    deadline = started + settings.recovery_timeout_sec
    while True:
        properties = unit_state.read_properties(unit)
        verdict = unit_verdicts.recovery_verdict(properties, failed_invocation, settings.stay_up_sec,
                                             unit_state.monotonic_usec(), same_boot)
        if verdict == "recovered":
            break
        if verdict == "failed":
            say(f"{unit} failed again (invocation {properties.get('InvocationID')}): the incident stays open")
            return exitcodes.OK
        if verdict == "not-started" and time.monotonic() - started > START_GRACE_SEC:
            say(f"{unit} was not started again: the incident stays open")
            return exitcodes.OK
        if time.monotonic() > deadline:
            say(f"{unit} has neither succeeded nor failed within recovery_timeout_sec="
                f"{settings.recovery_timeout_sec:g}: the incident stays open")
            return exitcodes.OK
        time.sleep(POLL_SEC)
    with incidents:
        if incidents.get(unit) != record:
            say(f"{unit}: its incident changed while it was watched; leaving it to the newer page")
            return exitcodes.OK
        event = unit_events.resolve_event(unit, host, settings)
        if record.get("dedup_key"):
            event["dedup_key"] = record["dedup_key"]
        _send(event)
        incidents.remove(unit)
    say(f"resolved {event['dedup_key']}: {unit} is {properties.get('ActiveState')} again "
        f"(invocation {properties.get('InvocationID')})")
    return exitcodes.OK


def open_incident_units(directory: str) -> List[str]:
    """The units with an open incident: the regular files of the state directory whose names are unit names,
    sorted, without the agent's own units. Anything else there (the lock, a temporary file, a symlink, a
    directory, a name systemd would not accept) is left alone and named nowhere."""
    units: List[str] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return units
    for entry in entries:
        try:
            unit_state.check_unit_name(entry.name)
        except PdagentError:
            continue
        if entry.is_file(follow_symlinks=False) and not unit_verdicts.is_own_unit(entry.name):
            units.append(entry.name)
    return sorted(units)


def write_drop_in(runtime_dir: str, unit: str) -> bool:
    """RUNTIME_DIR/UNIT.d/pdagent-rearm.conf, written without following a symlink at either level (an existing
    UNIT.d that is not a directory is an error). True if it was written, False if it was already there."""
    unit_state.check_unit_name(unit)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(runtime_dir, flags)
    try:
        try:
            os.mkdir(f"{unit}.d", 0o755, dir_fd=top)
        except FileExistsError:
            pass
        directory = os.open(f"{unit}.d", flags, dir_fd=top)
    finally:
        os.close(top)
    try:
        name = unit_verdicts.REARM_DROP_IN_NAME
        content = unit_verdicts.REARM_DROP_IN.encode()
        try:
            existing = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except FileNotFoundError:
            pass
        else:
            try:
                if stat.S_ISREG(os.fstat(existing).st_mode) and os.read(existing, len(content) + 1) == content:
                    return False
            finally:
                os.close(existing)
        temporary = f".{name}.tmp"
        try:
            os.unlink(temporary, dir_fd=directory)
        except FileNotFoundError:
            pass
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=directory)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        return True
    finally:
        os.close(directory)


def rearm(runtime_dir: str = RUNTIME_UNIT_DIR) -> int:
    """Once per boot: watch the next start of every unit whose incident an earlier boot left open."""
    units = open_incident_units(state_dir())
    if not units:
        return exitcodes.OK
    written = False
    for unit in units:
        try:
            written = write_drop_in(runtime_dir, unit) or written
        except OSError as error:
            # A symlink or a file where UNIT.d should be: not followed, not replaced, and said.
            say(f"{unit}: cannot write {runtime_dir}/{unit}.d/{unit_verdicts.REARM_DROP_IN_NAME}: {error}")
    if written:
        # One reload for all. A start job queued before it (the boot's own transaction) does not get the new
        # Wants=, which is why the units are looked at again below.
        unit_state.systemctl("daemon-reload", timeout=unit_state.SYSTEMCTL_TIMEOUT_SEC * 4)
    watch: List[str] = []
    for unit in units:
        try:
            properties = unit_state.read_properties(unit)
        except PdagentError as error:
            say(f"{unit}: {error.message}; its next start is still watched")
            continue
        decision = unit_verdicts.rearm_decision(properties)
        if decision == "watch":
            watch.append(unit)
        elif decision == "failed":
            say(f"{unit} has failed in this boot: its incident is left to pdagent-unit-failed@{unit}.service")
    if watch:
        unit_state.systemctl("start", "--no-block", "--", *[f"pdagent-unit-ok@{unit}.service" for unit in watch])
    say(f"{len(units)} open incident(s): watching {len(watch)} unit(s) that ran or are starting in this boot "
        f"({' '.join(watch) or 'none'}); the others at their next start")
    return exitcodes.OK


def _main(argv: List[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return exitcodes.OK
    if argv == ["rearm"]:
        return rearm()
    if len(argv) != 2 or argv[0] not in ("failed", "recovered", "should-page"):
        sys.stderr.write(USAGE)
        return exitcodes.USAGE
    action, unit = argv
    try:
        unit_state.check_unit_name(unit)
    except PdagentError as error:
        say(error.message)
        return exitcodes.USAGE
    if unit_verdicts.is_own_unit(unit):
        # The agent's own units carry drop-ins that reset OnFailure=; this is the second line of defence, so that
        # a failure of the pager can never page through the pager in a loop.
        say(f"{unit} is one of the agent's own units: not paging about it through the agent itself")
        return exitcodes.OK
    if action == "should-page":
        return should_page(unit)
    return failed(unit) if action == "failed" else recovered(unit)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-unit-alert", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
