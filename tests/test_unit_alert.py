"""Unit alerts as pure code: the event built from a recorded unit state (a golden test), when a unit counts as
recovered, the settings, and what pd-unit-alert refuses before it looks at anything.

The recorded state is what `systemctl show -p ...` printed for a failed oneshot on Debian 12 (systemd 252) and
what python-systemd's journal reader returned for its invocation; the system tier runs the same path live.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from pdagent_sd import config, journal_tail, unit_events, unit_state, unit_verdicts
from pdagent_sd.config import UnitAlertSettings as Settings
from pdagent_sd.events import validate

from agentproc import ROOT, base_env

pytestmark = pytest.mark.unit

RECORDED_SHOW = """\
Type=oneshot
Result=exit-code
ExecMainCode=1
ExecMainStatus=2
NRestarts=0
Id=backup.service
Description=Nightly backup of /srv to the NAS
LoadState=loaded
ActiveState=failed
SubState=failed
InactiveEnterTimestamp=Mon 2026-11-30 03:00:07 UTC
ActiveEnterTimestamp=
ActiveEnterTimestampMonotonic=0
InvocationID=5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b
TriggeredBy=backup.timer
"""
UTC = datetime.timezone.utc
RECORDED_JOURNAL = [  # newest first, as the reader walks back from the tail
    {"__REALTIME_TIMESTAMP": datetime.datetime(2026, 11, 30, 3, 0, 7, 120000, tzinfo=UTC),
     "SYSLOG_IDENTIFIER": "systemd", "_COMM": "systemd", "_PID": 1, "INVOCATION_ID": "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b",
     "MESSAGE": "backup.service: Failed with result 'exit-code'."},
    {"__REALTIME_TIMESTAMP": datetime.datetime(2026, 11, 30, 3, 0, 7, 100000, tzinfo=UTC),
     "SYSLOG_IDENTIFIER": "backup.sh", "_COMM": "backup.sh", "_PID": 4242,
     "_SYSTEMD_INVOCATION_ID": "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b",
     "MESSAGE": b"rsync: connection to nas01 refused \xff"},
    {"__REALTIME_TIMESTAMP": datetime.datetime(2026, 11, 30, 3, 0, 0, 5000, tzinfo=UTC),
     "SYSLOG_IDENTIFIER": "backup.sh", "_COMM": "backup.sh", "_PID": 4242,
     "_SYSTEMD_INVOCATION_ID": "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b",
     "MESSAGE": "starting backup of /srv"},
]
GOLDEN = {
    "routing_key": "@systemd",
    "event_action": "trigger",
    "dedup_key": "systemd/db1.example.org/backup.service",
    "client": "pdagent-sd unit alerts",
    "payload": {
        "summary": "backup.service failed on db1: exit-code (status 2)",
        "severity": "error",
        "component": "backup.service",
        "class": "systemd timer job",
        "custom_details": {
            "unit": "backup.service",
            "Description": "Nightly backup of /srv to the NAS",
            "ActiveState": "failed (failed)",
            "Result": "exit-code",
            "ExecMainCode": "exited",
            "ExecMainStatus": "2",
            "NRestarts": "0",
            "InactiveEnterTimestamp": "Mon 2026-11-30 03:00:07 UTC",
            "InvocationID": "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b",
            "TriggeredBy": "backup.timer",
            "journal": [
                "2026-11-30T03:00:00.005000+0000 backup.sh[4242]: starting backup of /srv",
                "2026-11-30T03:00:07.100000+0000 backup.sh[4242]: rsync: connection to nas01 refused \ufffd",
                "2026-11-30T03:00:07.120000+0000 systemd[1]: backup.service: Failed with result 'exit-code'.",
            ],
            "journal_command": "journalctl _SYSTEMD_INVOCATION_ID=5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b"
                               " + _PID=1 INVOCATION_ID=5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b",
        },
    },
}


def recorded_event() -> dict:
    properties = unit_state.parse_properties(RECORDED_SHOW)
    lines = [journal_tail.format_entry(entry) for entry in reversed(RECORDED_JOURNAL)]
    return unit_events.failure_event(properties, "db1.example.org", Settings(), lines, "")


def test_golden_event_from_a_recorded_unit_state() -> None:
    assert recorded_event() == GOLDEN


def test_the_golden_event_is_valid_once_the_agent_has_resolved_the_key_name() -> None:
    body = recorded_event()
    body["routing_key"] = "c0ffee0123456789abcdef0123456789"  # what the daemon puts in place of @systemd
    event = validate("v2", body, default_source="db1.example.org")
    assert event.dedup_key == "systemd/db1.example.org/backup.service"
    assert event.body["payload"]["source"] == "db1.example.org"


INVOCATION = "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b"
FORGED = {  # what a local user can send: any field without a leading underscore; journald adds the rest
    "INVOCATION_ID": INVOCATION, "UNIT": "backup.service", "SYSLOG_IDENTIFIER": "systemd", "SYSLOG_PID": "1",
    "_PID": 4711, "_COMM": "python3", "_UID": 65534, "_SYSTEMD_UNIT": "session-3.scope",
    "MESSAGE": "backup.service: planned maintenance, no action needed",
}


@pytest.mark.parametrize("entry, claim", [
    (RECORDED_JOURNAL[0], journal_tail.Claim.OURS),  # PID 1 about the run
    (RECORDED_JOURNAL[1], journal_tail.Claim.OURS),  # the run's own process
    ({**FORGED}, journal_tail.Claim.NOT_OURS),
    # a stream whose writer exited before journald read its cgroup: the unit name is the writer's own header
    ({**FORGED, "_SYSTEMD_UNIT": "backup.service"}, journal_tail.Claim.NOT_OURS),
    ({**FORGED, "_SYSTEMD_UNIT": "backup.service", "INVOCATION_ID": "0" * 32}, journal_tail.Claim.NOT_OURS),
    ({**FORGED, "_PID": 1, "INVOCATION_ID": "0" * 32}, journal_tail.Claim.NOT_OURS),  # PID 1, another run
    ({"_PID": 1, "UNIT": "backup.service", "MESSAGE": "Starting"}, journal_tail.Claim.IF_RECENT),
    ({"_PID": 4242, "MESSAGE": "last words"}, journal_tail.Claim.IF_RECENT),  # the main PID, no unit (issue 2913)
    ({"_PID": 4242, "_SYSTEMD_UNIT": "backup.service", "MESSAGE": "w"}, journal_tail.Claim.IF_RECENT),
    ({"_PID": 4242, "_SYSTEMD_UNIT": "other.service", "MESSAGE": "w"}, journal_tail.Claim.NOT_OURS),
    ({"_PID": 4242, "_SYSTEMD_INVOCATION_ID": "0" * 32, "MESSAGE": "w"}, journal_tail.Claim.NOT_OURS),
])
def test_only_trusted_fields_tie_a_journal_entry_to_the_failed_run(entry: dict, claim: journal_tail.Claim) -> None:
    assert journal_tail._claim(entry, INVOCATION, "backup.service", 4242) == claim


def test_the_identifier_shown_is_the_process_name_not_the_one_the_sender_chose() -> None:
    line = journal_tail.format_entry(FORGED)
    assert "python3[4711]: backup.service: planned" in line and "systemd" not in line.split(":")[0]


def test_a_service_is_critical_a_signal_is_named_and_severities_are_configurable() -> None:
    properties = unit_state.parse_properties(RECORDED_SHOW.replace("TriggeredBy=backup.timer", "TriggeredBy=")
                                            .replace("ExecMainCode=1", "ExecMainCode=2")
                                            .replace("ExecMainStatus=2", "ExecMainStatus=9")
                                            .replace("Result=exit-code", "Result=signal"))
    event = unit_events.failure_event(properties, "db1", Settings(), [], "")
    assert event["payload"]["severity"] == "critical"
    assert event["payload"]["summary"] == "backup.service failed on db1: signal (SIGKILL)"
    assert event["payload"]["class"] == "systemd unit"
    event = unit_events.failure_event(properties, "db1", Settings(service_severity="warning", key="ops"), [], "")
    assert event["payload"]["severity"] == "warning" and event["routing_key"] == "@ops"


def test_missing_journal_lines_are_explained_and_everything_stays_within_the_limits() -> None:
    properties = unit_state.parse_properties(RECORDED_SHOW)
    event = unit_events.failure_event(properties, "db1", Settings(), [], "the journal cannot be read: EACCES")
    details = event["payload"]["custom_details"]
    assert "journal" not in details and details["journal_missing"] == "the journal cannot be read: EACCES"
    huge = {"MESSAGE": "x" * 100000, "SYSLOG_IDENTIFIER": "spam", "_PID": 7}
    line = journal_tail.format_entry(huge)
    assert len(line) == journal_tail.MAX_JOURNAL_LINE and line.endswith("…")
    properties["Description"] = "d" * 5000
    body = unit_events.failure_event(properties, "db1", Settings(), [line] * 50, "")
    body["routing_key"] = "c0ffee0123456789abcdef0123456789"
    validate("v2", body, default_source="db1")  # under 512 KB, every text field within its limit


def test_recovery_verdicts() -> None:
    failed = "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b"
    new = "0123456789abcdef0123456789abcdef"
    second = 1_000_000

    def verdict(now: int = 100 * second, **properties: str) -> str:
        return unit_verdicts.recovery_verdict(properties, failed, 10.0, now)

    assert verdict(InvocationID=failed, ActiveState="failed") == "not-started"
    assert verdict(InvocationID=failed, ActiveState="activating") == "wait"
    assert verdict(InvocationID=new, ActiveState="activating") == "wait"
    assert verdict(InvocationID=new, ActiveState="inactive", Result="success") == "recovered"
    assert verdict(InvocationID=new, ActiveState="failed", Result="exit-code") == "failed"
    assert verdict(InvocationID=new, ActiveState="active", Type="oneshot") == "recovered"
    up_since = str(95 * second)
    assert verdict(InvocationID=new, ActiveState="active", Type="simple", ActiveEnterTimestampMonotonic=up_since) \
        == "wait"
    assert verdict(110 * second, InvocationID=new, ActiveState="active", Type="simple",
                   ActiveEnterTimestampMonotonic=up_since) == "recovered"
    # A oneshot that succeeded and was unloaded shows no invocation at all.
    assert verdict(InvocationID="", ActiveState="inactive", Result="success") == "recovered"
    assert verdict(InvocationID="", ActiveState="failed", Result="exit-code") == "not-started"


@pytest.mark.parametrize("name", ["", "../../etc/passwd", "a/b.service", "foo", "foo.service\n", ".service",
                                  "x" * 300 + ".service", "foo..service", "-k KEY.service"])
def test_hostile_unit_names_are_refused(name: str) -> None:
    with pytest.raises(unit_state.UnitError):
        unit_state.check_unit_name(name)


@pytest.mark.parametrize("name", ["backup.service", "systemd-fsck@dev-disk-by\\x2duuid-1.service",
                                  "getty@tty1.service", "foo.timer"])
def test_real_unit_names_are_accepted(name: str) -> None:
    assert unit_state.check_unit_name(name) == name


def test_the_agents_own_units_are_recognised() -> None:
    own = ("pdagent.service", "pdagent-retry.service", "pdagent-unit-failed@backup.service.service",
           "pdagent-unit-ok@x.service.service")
    assert all(unit_verdicts.is_own_unit(unit) for unit in own)
    assert not any(unit_verdicts.is_own_unit(unit) for unit in ("backup.service", "pdagentfoo.service",
                                                                 "pdagent-backup.service", "pdagent-backup.timer"))


def test_the_own_units_list_is_every_unit_the_package_ships() -> None:
    shipped = {path.name for path in Path(ROOT, "units").iterdir()
               if path.suffix in (".service", ".socket", ".timer", ".path")}
    shipped.add("pdagent-heartbeat.timer")  # transient: made by pdagent-heartbeat-arm.service (heartbeat_timer.py)
    listed = set(unit_verdicts.OWN_UNITS) | {f"{prefix}.service" for prefix in unit_verdicts.OWN_TEMPLATES}
    assert listed == shipped


RESTARTED = {"ActiveState": "activating", "SubState": "auto-restart", "Result": "exit-code", "NRestarts": "0",
             "InvocationID": "a" * 32}


@pytest.mark.parametrize("properties, monitored, verdict", [
    # systemd 257: OnFailure= before the restart Restart= will make; 256+ may show it as queued already
    (RESTARTED, "a" * 32, "restarting"),
    ({**RESTARTED, "SubState": "auto-restart-queued"}, "a" * 32, "restarting"),
    # restarted before the handler looked (RestartSec=100ms): a newer invocation runs
    ({"ActiveState": "active", "SubState": "running", "InvocationID": "b" * 32}, "a" * 32, "running-again"),
    ({"ActiveState": "activating", "SubState": "start", "InvocationID": "b" * 32}, "a" * 32, "running-again"),
    # ended failed: Restart=no, the start limit hit (NRestarts 4), RestartMode=direct giving up, a oneshot
    ({"ActiveState": "failed", "SubState": "failed", "NRestarts": "4", "InvocationID": "a" * 32}, "a" * 32, "page"),
    ({"ActiveState": "failed", "SubState": "failed", "InvocationID": "a" * 32}, "", "page"),
    # the same invocation still shown as running, or no invocation known: page rather than lose a failure
    ({"ActiveState": "active", "SubState": "running", "InvocationID": "a" * 32}, "a" * 32, "page"),
    ({"ActiveState": "active", "SubState": "running", "InvocationID": "b" * 32}, "", "page"),
    ({"ActiveState": "inactive", "SubState": "dead", "Result": "exit-code", "InvocationID": ""}, "a" * 32, "page"),
])
def test_failure_verdicts(properties: dict, monitored: str, verdict: str) -> None:
    assert unit_verdicts.failure_verdict(properties, monitored) == verdict


def test_settings_from_agent_conf_bad_values_keep_their_defaults(tmp_path: Path) -> None:
    main = tmp_path / "agent.conf"
    main.write_text("[Agent]\nidle_exit_sec = 5\n[UnitAlerts]\nkey = @ops\nservice_severity = ERROR\n")
    (tmp_path / "agent.conf.d").mkdir()
    (tmp_path / "agent.conf.d" / "50-x.conf").write_text(
        "[UnitAlerts]\nrate_limit_sec = 10min\ntimer_severity = loud\njournal_lines = -1\nbogus = 1\n")
    settings, warnings = config.load_unit_alerts(str(main))
    assert settings == Settings(key="ops", service_severity="error", rate_limit_sec=600.0)
    assert len(warnings) == 3 and any("timer_severity" in w for w in warnings) and any("bogus" in w for w in warnings)
    main.write_text("[UnitAlerts]\nkey = ops key with spaces\n")
    settings, warnings = config.load_unit_alerts(str(main))
    assert settings.key == "systemd" and "key" in warnings[0]


def run_alert(*args: str) -> subprocess.CompletedProcess:
    env = base_env(PDAGENT_SOCKET="/nonexistent/pdagent.sock", PDAGENT_UNIT_ALERT_STATE="/nonexistent/state")
    return subprocess.run([sys.executable, "-m", "pdagent_sd.cli.unit_alert", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_pd_unit_alert_refuses_the_agents_own_units_without_touching_anything() -> None:
    result = run_alert("failed", "pdagent.service")
    assert result.returncode == 0, result.stderr
    assert "one of the agent's own units" in result.stderr
    result = run_alert("failed", "pdagent-unit-failed@backup.service.service")
    assert result.returncode == 0 and "own units" in result.stderr


def test_pd_unit_alert_usage_and_bad_names() -> None:
    assert run_alert().returncode == 2
    assert run_alert("page", "backup.service").returncode == 2
    result = run_alert("failed", "../x.service")
    assert result.returncode == 2 and "not a systemd unit name" in result.stderr and "Traceback" not in result.stderr
    result = run_alert("--help")
    assert result.returncode == 0 and "recovered UNIT" in result.stdout and "should-page UNIT" in result.stdout
    assert run_alert("should-page", "../x.service").returncode == 2


def test_should_page_pages_when_it_cannot_tell(tmp_path: Path) -> None:
    """ExecCondition= skips the handler on any exit from 1 to 254: an error must not become a silent skip."""
    env = {**base_env(), "PATH": str(tmp_path)}  # no systemctl to ask
    result = subprocess.run([sys.executable, "-m", "pdagent_sd.cli.unit_alert", "should-page", "backup.service"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result
    assert "paging" in result.stderr and "Traceback" not in result.stderr


def test_recovery_verdicts_across_a_reboot() -> None:
    """After a reboot a unit that has not run yet looks like one that ran, succeeded and was unloaded: only an
    invocation of this boot counts."""
    failed = "5f0c7c2b1a3e4d5f8a9b0c1d2e3f4a5b"  # the earlier boot's
    new = "0123456789abcdef0123456789abcdef"
    second = 1_000_000

    def verdict(now: int = 100 * second, **properties: str) -> str:
        return unit_verdicts.recovery_verdict(properties, failed, 10.0, now, same_boot=False)

    never_ran = unit_state.parse_properties(REARM_SHOW["never run"])
    assert unit_verdicts.recovery_verdict(never_ran, failed, 10.0, 100 * second, same_boot=False) == "not-started"
    assert unit_verdicts.recovery_verdict(never_ran, failed, 10.0, 100 * second, same_boot=True) == "recovered"
    assert verdict(InvocationID="", ActiveState="inactive", Result="success") == "not-started"
    assert verdict(InvocationID=new, ActiveState="inactive", Result="success") == "recovered"
    assert verdict(InvocationID=new, ActiveState="failed", Result="exit-code") == "failed"
    assert verdict(InvocationID=new, ActiveState="activating") == "wait"
    assert verdict(110 * second, InvocationID=new, ActiveState="active", Type="simple",
                   ActiveEnterTimestampMonotonic=str(95 * second)) == "recovered"


# `systemctl show -p ActiveState,Job,InvocationID,InactiveExitTimestampMonotonic` in a booted container
# (systemd 252), right after the rearm's daemon-reload.
REARM_SHOW = {
    "never run": "ActiveState=inactive\nResult=success\nInactiveExitTimestampMonotonic=0\nJob=\nInvocationID=\n",
    "start job queued by the boot": "ActiveState=inactive\nInactiveExitTimestampMonotonic=0\nJob=121\n"
                                    "InvocationID=\n",
    "starting": "ActiveState=activating\nInactiveExitTimestampMonotonic=693645457\nJob=73\n"
                "InvocationID=a0c5368047434dc8ac73e459fc9233c4\n",
    "running": "ActiveState=active\nInactiveExitTimestampMonotonic=693645457\nJob=\n"
               "InvocationID=a0c5368047434dc8ac73e459fc9233c4\n",
    "ran and succeeded": "ActiveState=inactive\nResult=success\nInactiveExitTimestampMonotonic=693645457\nJob=\n"
                         "InvocationID=a0c5368047434dc8ac73e459fc9233c4\n",
    "failed in this boot": "ActiveState=failed\nResult=exit-code\nInactiveExitTimestampMonotonic=693645457\n"
                           "Job=\nInvocationID=a0c5368047434dc8ac73e459fc9233c4\n",
}
REARM_GOLDEN = {"never run": "wait", "start job queued by the boot": "watch", "starting": "watch", "running": "watch",
                "ran and succeeded": "watch", "failed in this boot": "failed"}


@pytest.mark.parametrize("case", sorted(REARM_SHOW))
def test_rearm_decisions(case: str) -> None:
    assert unit_verdicts.rearm_decision(unit_state.parse_properties(REARM_SHOW[case])) == REARM_GOLDEN[case]


def test_rearm_lists_only_plain_files_named_like_units_and_not_the_agents_own(tmp_path: Path) -> None:
    from pdagent_sd.cli.unit_alert import open_incident_units

    for name in (".lock", "backup.service", "backup.service.tmp", "pdagent.service", "getty@tty1.service",
                 "not a unit", "foo..service"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "dir.service").mkdir()
    (tmp_path / "link.service").symlink_to("/etc/passwd")
    assert open_incident_units(str(tmp_path)) == ["backup.service", "getty@tty1.service"]
    assert open_incident_units(str(tmp_path / "missing")) == []


def test_rearm_drop_in_is_written_once_and_never_through_a_symlink(tmp_path: Path) -> None:
    from pdagent_sd.cli.unit_alert import write_drop_in

    assert write_drop_in(str(tmp_path), "backup.service") is True
    drop_in = tmp_path / "backup.service.d" / unit_verdicts.REARM_DROP_IN_NAME
    assert "Wants=pdagent-unit-ok@%n.service" in drop_in.read_text().splitlines()
    assert write_drop_in(str(tmp_path), "backup.service") is False, "unchanged: no second reload"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "evil.service.d").symlink_to(elsewhere)
    with pytest.raises(OSError):
        write_drop_in(str(tmp_path), "evil.service")
    assert list(elsewhere.iterdir()) == []
    (tmp_path / "file.service.d").write_text("")
    with pytest.raises(OSError):
        write_drop_in(str(tmp_path), "file.service")
    with pytest.raises(unit_state.UnitError):
        write_drop_in(str(tmp_path), "../x.service")


def test_pd_unit_alert_rearm_without_incidents_touches_nothing() -> None:
    result = run_alert("rearm")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "rearm" in run_alert("--help").stdout
    assert run_alert("rearm", "backup.service").returncode == 2


def test_main_pid_is_read_from_exec_main_pid_and_is_0_when_unknown() -> None:
    assert unit_state.main_pid({"ExecMainPID": "4242"}) == 4242
    assert unit_state.main_pid({"ExecMainPID": "0"}) == 0
    assert unit_state.main_pid({"ExecMainPID": "-1"}) == 0 and unit_state.main_pid({}) == 0
    assert "ExecMainPID" in unit_state.PROPERTIES


def test_the_boot_id_given_by_the_unit_wins_over_procs(monkeypatch: pytest.MonkeyPatch) -> None:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        procs = handle.read().strip().replace("-", "")
    monkeypatch.delenv(unit_state.BOOT_ID_VARIABLE, raising=False)
    assert unit_state.boot_id() == procs
    monkeypatch.setenv(unit_state.BOOT_ID_VARIABLE, "0123456789abcdef0123456789abcdef")  # what %b gives
    assert unit_state.boot_id() == "0123456789abcdef0123456789abcdef"
    monkeypatch.setenv(unit_state.BOOT_ID_VARIABLE, "%b not expanded")
    assert unit_state.boot_id() == procs


def test_check_config_stops_at_a_bad_unit_alert_value(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """[UnitAlerts] rows are config's table, but pd-unit-alert keeps a default for a bad value: only
    `pdagentd --check-config` refuses it (78), naming the file and the key."""
    from pdagent_sd import daemon, exitcodes

    main = tmp_path / "agent.conf"
    main.write_text("[UnitAlerts]\njournal_lines = many\nbogus = 1\n")
    assert daemon.check_config(str(main), {}) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert f"{main} [UnitAlerts]: bad value 'many' for journal_lines" in err and "unknown key bogus" in err
    main.write_text("[UnitAlerts]\njournal_lines = 7\nbogus = 1\n")
    assert daemon.check_config(str(main), {}) == exitcodes.OK
    assert config.load_unit_alerts(str(main))[0] == Settings(journal_lines=7)
