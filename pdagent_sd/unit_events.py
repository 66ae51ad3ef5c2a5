"""Alerts about systemd units as PagerDuty events: what a failed unit looks like, its resolve, and a unit's state
and journal tail as custom details (pd-send --unit).

Read by pd-unit-alert (started by the templates pdagent-unit-failed@.service and pdagent-unit-ok@.service) and
by `pd-send --unit`. Everything a unit's own processes control (its journal lines, its description) is data
here, never a key, a file name or a command: the routing key is taken by name from agent.conf, the unit name
is checked against systemd's own rules (unit_state.py) before it names a state file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List

from pdagent_sd.errors import InvalidEvent
from pdagent_sd.journal_tail import journal_command, read_journal
from pdagent_sd.limits import MAX_SUMMARY, fit
from pdagent_sd.unit_state import boot_id, main_pid, read_properties, start_usec

if TYPE_CHECKING:
    from pdagent_sd.config import UnitAlertSettings

# The properties an alert carries in custom_details, under systemd's own names.
DETAIL_PROPERTIES = ("Result", "ExecMainCode", "ExecMainStatus", "NRestarts", "InactiveEnterTimestamp",
                     "InvocationID")
# ExecMainCode is the si_code of the main process's end (CLD_* in <signal.h>).
EXIT_CODES = {"1": "exited", "2": "killed", "3": "dumped", "4": "trapped", "5": "stopped", "6": "continued"}


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
