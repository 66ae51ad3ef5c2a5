"""Whether a unit's failure pages, whether a restarted unit has recovered, what to do at boot about an incident
left open by an earlier boot, and which units are the agent's own (never paged about)."""

from __future__ import annotations

from typing import Dict

from pdagent_sd.unit_state import start_usec

# The agent's own units never page through the agent: a failing pager must not start itself in a loop. Named one
# by one (the units the package ships, tests/test_unit_alert.py checks the list against units/): a prefix took
# an admin's own pdagent-metrics.service (the name docs/pd-queue.md suggests) for one of them.
OWN_UNITS = frozenset(("pdagent.service", "pdagent.socket", "pdagent-retry.service", "pdagent-retry.timer",
                       "pdagent-boot.service", "pdagent-unit-rearm.service", "pdagent-heartbeat.service",
                       "pdagent-heartbeat.timer", "pdagent-heartbeat-arm.service", "pdagent-heartbeat-arm.path",
                       "pdagent-metrics.service", "pdagent-metrics.timer"))
OWN_TEMPLATES = ("pdagent-unit-failed@", "pdagent-unit-ok@")


def is_own_unit(unit: str) -> bool:
    return unit in OWN_UNITS or (unit.startswith(OWN_TEMPLATES) and unit.endswith(".service"))


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
