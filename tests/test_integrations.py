"""pd-nagios, pd-zabbix and pd-sensu: inputs as the monitoring tools really send them -> exact event bodies.

The unit tests are golden tests of the pure builders (whole bodies compared). The integration tests at the
end run each command as a process against the real pdagentd and the Events API stand-in, proving that the
bodies pass the agent's rules and reach the API unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest

from pdagent_sd.cli.common import UsageError
from pdagent_sd.errors import InvalidEvent
from pdagent_sd.integrations import nagios, sensu, zabbix
from pdagent_sd.integrations.common import clean_args, fit, fit_dedup_key

KEY = "0123456789abcdef0123456789abcdef"
unit = pytest.mark.unit
integration = pytest.mark.integration


def run_nagios(*argv: str) -> Tuple[str, Dict[str, Any]]:
    return nagios.event_for(nagios.parser().parse_args(list(argv)))


def run_zabbix(*argv: str) -> Tuple[str, Dict[str, Any]]:
    return zabbix.event_for(zabbix.parser().parse_args(list(argv)))


def run_sensu(stdin: bytes, *argv: str) -> Tuple[str, Dict[str, Any]]:
    return sensu.event_for(sensu.parser().parse_args(["-k", KEY, *argv]), stdin)


# --- pd-nagios ------------------------------------------------------------------------------------------------

# The argument vectors Nagios builds from integrations/nagios/pagerduty.cfg (macros expanded, quotes removed).
NAGIOS_SERVICE_PROBLEM = [
    "-n", "service", "-k", KEY, "-t", "PROBLEM",
    "-f", "HOSTNAME=web01", "-f", "SERVICEDESC=Disk Space", "-f", "SERVICESTATE=CRITICAL",
    "-f", "SERVICEOUTPUT=DISK CRITICAL - free space: / 812 MB (2% inode=91%):",
    "-f", "HOSTDISPLAYNAME=web01.example.com", "-f", "SERVICEDISPLAYNAME=Disk Space",
    "-f", "HOSTADDRESS=10.0.0.5", "-f", "SERVICEPROBLEMID=4711",
    "-f", "NOTIFICATIONAUTHOR=", "-f", "NOTIFICATIONCOMMENT=",
]
NAGIOS_SERVICE_DETAILS = {
    "HOSTNAME": "web01", "SERVICEDESC": "Disk Space", "SERVICESTATE": "CRITICAL",
    "SERVICEOUTPUT": "DISK CRITICAL - free space: / 812 MB (2% inode=91%):",
    "HOSTDISPLAYNAME": "web01.example.com", "SERVICEDISPLAYNAME": "Disk Space",
    "HOSTADDRESS": "10.0.0.5", "SERVICEPROBLEMID": "4711",
    "NOTIFICATIONAUTHOR": "", "NOTIFICATIONCOMMENT": "",
    "pd_nagios_object": "service",
}
SERVICE_KEY = "event_source=service;host_name=web01;service_desc=Disk Space"
HOST_KEY = "event_source=host;host_name=web01"


def nagios_service(notification_type: str, state: str, output: str = "") -> List[str]:
    return ["-n", "service", "-k", KEY, "-t", notification_type, "-f", "HOSTNAME=web01",
            "-f", "SERVICEDESC=Disk Space", "-f", f"SERVICESTATE={state}", "-f", f"SERVICEOUTPUT={output}"]


def nagios_host(notification_type: str, state: str, output: str = "") -> List[str]:
    return ["-n", "host", "-k", KEY, "-t", notification_type, "-f", "HOSTNAME=web01",
            "-f", f"HOSTSTATE={state}", "-f", f"HOSTOUTPUT={output}"]


@unit
def test_nagios_service_problem_is_a_critical_trigger_with_the_old_key() -> None:
    assert run_nagios(*NAGIOS_SERVICE_PROBLEM) == ("v2", {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "event_source=service;host_name=web01;service_desc=Disk Space",
        "payload": {
            "summary": "Disk Space on web01 is CRITICAL: DISK CRITICAL - free space: / 812 MB (2% inode=91%):",
            "source": "web01",
            "severity": "critical",
            "component": "Disk Space",
            "custom_details": NAGIOS_SERVICE_DETAILS,
        },
    })


@unit
def test_nagios_service_recovery_resolves_the_same_key() -> None:
    argv = [arg.replace("PROBLEM", "RECOVERY").replace("=CRITICAL", "=OK") for arg in NAGIOS_SERVICE_PROBLEM]
    assert run_nagios(*argv) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": SERVICE_KEY,
    })


@unit
def test_nagios_host_down_is_a_critical_trigger_with_the_old_host_key() -> None:
    argv = ["-n", "host", "-k", KEY, "-t", "PROBLEM", "-f", "HOSTNAME=web01", "-f", "HOSTSTATE=DOWN",
            "-f", "HOSTOUTPUT=CRITICAL - Host Unreachable (10.0.0.5)", "-f", "HOSTDISPLAYNAME=web01",
            "-f", "HOSTADDRESS=10.0.0.5", "-f", "HOSTPROBLEMID=99",
            "-f", "NOTIFICATIONAUTHOR=", "-f", "NOTIFICATIONCOMMENT="]
    assert run_nagios(*argv) == ("v2", {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "event_source=host;host_name=web01",
        "payload": {
            "summary": "web01 is DOWN: CRITICAL - Host Unreachable (10.0.0.5)",
            "source": "web01",
            "severity": "critical",
            "custom_details": {
                "HOSTNAME": "web01", "HOSTSTATE": "DOWN", "HOSTOUTPUT": "CRITICAL - Host Unreachable (10.0.0.5)",
                "HOSTDISPLAYNAME": "web01", "HOSTADDRESS": "10.0.0.5", "HOSTPROBLEMID": "99",
                "NOTIFICATIONAUTHOR": "", "NOTIFICATIONCOMMENT": "", "pd_nagios_object": "host",
            },
        },
    })


@unit
def test_nagios_acknowledgement_acknowledges_the_same_key() -> None:
    assert run_nagios(*nagios_host("ACKNOWLEDGEMENT", "DOWN")) == ("v2", {
        "routing_key": KEY, "event_action": "acknowledge", "dedup_key": HOST_KEY,
    })


@unit
@pytest.mark.parametrize("state, severity", [
    ("CRITICAL", "critical"), ("WARNING", "warning"), ("UNKNOWN", "error"), ("OK", "info"),
    ("Critical", "critical"),  # any case
])
def test_nagios_service_severity_follows_the_state(state: str, severity: str) -> None:
    _, body = run_nagios(*nagios_service("PROBLEM", state))
    assert body["payload"]["severity"] == severity


@unit
@pytest.mark.parametrize("state, severity", [("DOWN", "critical"), ("UNREACHABLE", "error"), ("UP", "info")])
def test_nagios_host_severity_follows_the_state(state: str, severity: str) -> None:
    _, body = run_nagios(*nagios_host("PROBLEM", state))
    assert body["payload"]["severity"] == severity


@unit
@pytest.mark.parametrize("notification_type, state, action, severity", [
    ("FLAPPINGSTART", "CRITICAL", "trigger", "critical"),
    ("FLAPPINGSTART", "OK", "trigger", "warning"),  # flapping is a problem even if the last check was OK
    ("FLAPPINGSTOP", "OK", "resolve", None),
    ("FLAPPINGSTOP", "WARNING", "trigger", "warning"),
    ("FLAPPINGEND", "OK", "resolve", None),  # Icinga 2's name
    ("FLAPPINGDISABLED", "CRITICAL", "trigger", "critical"),
    ("DOWNTIMESTART", "CRITICAL", "acknowledge", None),
    ("DOWNTIMEEND", "OK", "resolve", None),
    ("DOWNTIMEEND", "CRITICAL", "trigger", "critical"),
    ("DOWNTIMECANCELLED", "OK", "resolve", None),
    ("DOWNTIMECANCELLED", "UNKNOWN", "trigger", "error"),
    ("CUSTOM", "OK", "trigger", "info"),
    ("problem", "CRITICAL", "trigger", "critical"),  # any case
])
def test_nagios_other_notification_types_have_a_documented_mapping(
        notification_type: str, state: str, action: str, severity: str) -> None:
    _, body = run_nagios(*nagios_service(notification_type, state, "output"))
    if action == "trigger":
        label = notification_type.upper()
        prefix = "" if label == "PROBLEM" else f"[{label}] "
        assert body == {
            "routing_key": KEY, "event_action": "trigger", "dedup_key": SERVICE_KEY,
            "payload": {
                "summary": f"{prefix}Disk Space on web01 is {state}: output",
                "source": "web01", "severity": severity, "component": "Disk Space",
                "custom_details": {"HOSTNAME": "web01", "SERVICEDESC": "Disk Space", "SERVICESTATE": state,
                                   "SERVICEOUTPUT": "output", "pd_nagios_object": "service"},
            },
        }
    else:
        assert body == {"routing_key": KEY, "event_action": action, "dedup_key": SERVICE_KEY}


@unit
def test_nagios_host_downtime_end_while_up_resolves_the_host_key() -> None:
    assert run_nagios(*nagios_host("DOWNTIMEEND", "UP")) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": HOST_KEY,
    })


@unit
def test_nagios_incident_key_client_and_url_as_the_old_icinga2_file_passed_them() -> None:
    argv = nagios_service("PROBLEM", "WARNING") + ["-i", "my-own-key", "-c", "icinga.example.com",
                                                   "-u", "https://icinga.example.com/icingaweb2"]
    _, body = run_nagios(*argv)
    assert body["dedup_key"] == "my-own-key"
    assert body["client"] == "icinga.example.com"
    assert body["client_url"] == "https://icinga.example.com/icingaweb2"


@unit
def test_nagios_summary_without_output_has_no_dangling_colon() -> None:
    _, body = run_nagios(*nagios_host("PROBLEM", "DOWN"))
    assert body["payload"]["summary"] == "web01 is DOWN"


@unit
def test_nagios_long_output_is_truncated_to_the_summary_limit_not_rejected() -> None:
    _, body = run_nagios(*nagios_service("PROBLEM", "CRITICAL", "x" * 5000))
    summary = body["payload"]["summary"]
    assert len(summary) == 1024
    assert summary.startswith("Disk Space on web01 is CRITICAL: xxx")
    assert summary.endswith("x…")
    assert body["payload"]["custom_details"]["SERVICEOUTPUT"] == "x" * 5000  # the details keep it whole


@unit
def test_nagios_key_too_long_for_the_api_is_shortened_the_same_way_each_time() -> None:
    argv = nagios_service("PROBLEM", "CRITICAL")
    argv[argv.index("SERVICEDESC=Disk Space")] = "SERVICEDESC=" + "d" * 300
    _, trigger = run_nagios(*argv)
    argv[argv.index("PROBLEM")] = "RECOVERY"
    _, resolve = run_nagios(*argv)
    key = trigger["dedup_key"]
    assert len(key) == 255
    assert key.startswith("event_source=service;host_name=web01;service_desc=ddd")
    assert resolve["dedup_key"] == key


@unit
@pytest.mark.parametrize("argv, message", [
    (["-n", "service", "-k", KEY, "-t", "PROBLEM", "-f", "HOSTNAME=web01", "-f", "SERVICESTATE=OK"],
     "missing field for -n service: -f SERVICEDESC=... (required: HOSTNAME, SERVICEDESC, SERVICESTATE)"),
    (["-n", "host", "-k", KEY, "-t", "PROBLEM", "-f", "HOSTNAME=", "-f", "HOSTSTATE=DOWN"],
     "missing field for -n host: -f HOSTNAME=... (required: HOSTNAME, HOSTSTATE)"),
    (["-n", "host", "-k", KEY, "-t", "PROBLEM"],
     "missing fields for -n host: -f HOSTNAME=..., -f HOSTSTATE=... (required: HOSTNAME, HOSTSTATE)"),
    (["-n", "host", "-k", KEY, "-t", "WHATEVER", "-f", "HOSTNAME=a", "-f", "HOSTSTATE=UP"],
     "unknown notification type 'WHATEVER'; expected one of: PROBLEM, RECOVERY, ACKNOWLEDGEMENT, "
     "FLAPPINGSTART, FLAPPINGSTOP, FLAPPINGEND, FLAPPINGDISABLED, DOWNTIMESTART, DOWNTIMEEND, "
     "DOWNTIMECANCELLED, CUSTOM"),
    (["-n", "host", "-k", KEY, "-t", "PROBLEM", "-f", "HOSTNAME"], "-f/--field expects KEY=VALUE (got 'HOSTNAME')"),
])
def test_nagios_usage_errors_name_what_is_wrong_and_exit_2(
        argv: List[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError) as error:
        run_nagios(*argv)
    assert error.value.message == message
    assert nagios.main(argv) == 2
    assert capsys.readouterr().err == f"pd-nagios: {message}\n"


@unit
def test_nagios_unreachable_agent_exits_69_with_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no.sock")
    assert nagios.main(nagios_service("PROBLEM", "CRITICAL") + ["--socket", missing]) == 69
    err = capsys.readouterr().err
    assert err.startswith(f"pd-nagios: cannot reach the PagerDuty agent at {missing}")
    assert "Traceback" not in err


@unit
def test_nagios_help_explains_the_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        nagios.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "event_source=service;host_name=<HOSTNAME>;service_desc=<SERVICEDESC>" in out
    assert "DOWNTIMESTART" in out and "65 event rejected as invalid" in out


@unit
def test_arguments_in_a_legacy_encoding_become_replacement_characters() -> None:
    # What Python makes of the Latin-1 byte 0xE9 in argv under a UTF-8 locale.
    assert clean_args(["SERVICEOUTPUT=caf\udce9", "ok ✓"]) == ["SERVICEOUTPUT=caf\ufffd", "ok ✓"]


@unit
def test_fit_and_fit_dedup_key_keep_what_fits_byte_for_byte() -> None:
    assert fit("a" * 1024) == "a" * 1024
    assert fit("a" * 1025) == "a" * 1023 + "…"
    assert fit_dedup_key("k" * 255) == "k" * 255
    assert fit_dedup_key("k" * 256) != fit_dedup_key("k" * 257)


# --- pd-zabbix ------------------------------------------------------------------------------------------------

# The message body from the old agent's Zabbix guide and tests, as Zabbix passes {ALERT.MESSAGE}.
ZABBIX_PROBLEM = """name:Zabbix server has just been restarted
id:13502
status:PROBLEM
hostname:Zabbix server
ip:127.0.0.1
value:1
event_id:70
severity:High"""
ZABBIX_DETAILS = {
    "name": "Zabbix server has just been restarted", "id": "13502", "status": "PROBLEM",
    "hostname": "Zabbix server", "ip": "127.0.0.1", "value": "1", "event_id": "70", "severity": "High",
}


@unit
def test_zabbix_trigger_from_the_old_guide_body() -> None:
    assert run_zabbix(KEY, "trigger", ZABBIX_PROBLEM) == ("v2", {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "13502-Zabbix server",
        "payload": {
            "summary": "Zabbix server has just been restarted : PROBLEM for Zabbix server",
            "source": "Zabbix server",
            "severity": "error",
            "custom_details": ZABBIX_DETAILS,
        },
    })


@unit
def test_zabbix_resolve_uses_the_same_key() -> None:
    body = ZABBIX_PROBLEM.replace("status:PROBLEM", "status:OK").replace("event_id:70", "event_id:126")
    assert run_zabbix(KEY, "resolve", body) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": "13502-Zabbix server",
    })


@unit
def test_zabbix_body_with_crlf_line_ends_as_the_frontend_stores_them() -> None:
    _, body = run_zabbix(KEY, "trigger\r\n", ZABBIX_PROBLEM.replace("\n", "\r\n") + "\r\n")
    assert body["dedup_key"] == "13502-Zabbix server"
    assert body["payload"]["custom_details"] == ZABBIX_DETAILS


@unit
def test_zabbix_values_are_kept_as_the_old_agent_split_them() -> None:
    # The old agent stripped each line and split at the first colon: spaces after it stay in the value,
    # and so in the dedup key, which must stay byte for byte the same for open incidents to resolve.
    _, body = run_zabbix(KEY, "trigger", "id: 7\nhostname:db:01\nname:Load: high")
    assert body["dedup_key"] == " 7-db:01"
    assert body["payload"]["custom_details"] == {"id": " 7", "hostname": "db:01", "name": "Load: high"}
    assert body["payload"]["summary"] == "Load: high for db:01"


@unit
def test_zabbix_lines_without_a_colon_continue_the_previous_value() -> None:
    message = "name:Disk full\nid:1\nhostname:h\ndescription:The disk\n  is nearly\n\nfull\nseverity:Disaster"
    _, body = run_zabbix(KEY, "trigger", message)
    assert body["payload"]["custom_details"] == {
        "name": "Disk full", "id": "1", "hostname": "h", "description": "The disk\nis nearly\nfull",
        "severity": "Disaster",
    }
    assert body["payload"]["severity"] == "critical"


@unit
def test_zabbix_text_before_the_first_field_is_kept_as_message() -> None:
    _, body = run_zabbix(KEY, "trigger", "Problem started\nid:1\nhostname:h")
    assert body["payload"]["custom_details"] == {"message": "Problem started", "id": "1", "hostname": "h"}
    assert body["payload"]["summary"] == "Zabbix alert for h"


@unit
def test_zabbix_incident_key_in_the_body_overrides_the_default_key() -> None:
    _, body = run_zabbix(KEY, "trigger", ZABBIX_PROBLEM + "\nincident_key:event-70")
    assert body["dedup_key"] == "event-70"
    _, body = run_zabbix(KEY, "trigger", ZABBIX_PROBLEM + "\nincident_key:")  # empty: the default
    assert body["dedup_key"] == "13502-Zabbix server"


@unit
def test_zabbix_url_becomes_client_url_with_client_zabbix() -> None:
    _, body = run_zabbix(KEY, "trigger", ZABBIX_PROBLEM + "\nurl:https://zabbix.example.com/tr_events.php?triggerid=13502")
    assert body["client"] == "Zabbix"
    assert body["client_url"] == "https://zabbix.example.com/tr_events.php?triggerid=13502"
    _, body = run_zabbix(KEY, "trigger", ZABBIX_PROBLEM + "\nurl:")
    assert "client" not in body and "client_url" not in body


@unit
def test_zabbix_escalation_cancelled_trigger_becomes_a_resolve() -> None:
    # Zabbix puts this NOTE first in the message when the host, trigger or action was disabled.
    message = "NOTE: Escalation cancelled: Host \"Zabbix server\" disabled.\n" + ZABBIX_PROBLEM
    assert run_zabbix(KEY, "trigger", message) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": "13502-Zabbix server",
    })


@unit
@pytest.mark.parametrize("subject, action", [
    ("trigger", "trigger"), ("resolve", "resolve"), ("acknowledge", "acknowledge"),
    ("PROBLEM", "trigger"), ("OK", "resolve"), ("Resolved", "resolve"), (" Trigger ", "trigger"),
])
def test_zabbix_subjects(subject: str, action: str) -> None:
    assert run_zabbix(KEY, subject, ZABBIX_PROBLEM)[1]["event_action"] == action


@unit
@pytest.mark.parametrize("zabbix_severity, severity", [
    ("Not classified", "info"), ("Information", "info"), ("Warning", "warning"), ("Average", "error"),
    ("High", "error"), ("Disaster", "critical"), ("DISASTER", "critical"), ("", "error"),
    ("{TRIGGER.SEVERITY}", "error"),
])
def test_zabbix_severity_mapping(zabbix_severity: str, severity: str) -> None:
    message = ZABBIX_PROBLEM.replace("severity:High", f"severity:{zabbix_severity}")
    assert run_zabbix(KEY, "trigger", message)[1]["payload"]["severity"] == severity


@unit
def test_zabbix_body_without_id_is_invalid_and_exits_65(capsys: pytest.CaptureFixture[str]) -> None:
    message = "name:Disk full\nhostname:h"
    with pytest.raises(InvalidEvent, match="no id line"):
        run_zabbix(KEY, "trigger", message)
    assert zabbix.main([KEY, "trigger", message]) == 65
    assert capsys.readouterr().err.startswith("pd-zabbix: the message body has no id line")


@unit
def test_zabbix_unknown_subject_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert zabbix.main([KEY, "{TRIGGER.STATUS}", ZABBIX_PROBLEM]) == 2
    assert capsys.readouterr().err == (
        "pd-zabbix: SUBJECT must be trigger, acknowledge or resolve (got '{TRIGGER.STATUS}')\n")


# --- pd-sensu -------------------------------------------------------------------------------------------------

# A Sensu 1.x event as a pipe handler gets it (the old agent's test event, with real values).
SENSU1_EVENT: Dict[str, Any] = {
    "client": {"name": "web01", "address": "127.0.0.1", "environment": "development",
               "subscriptions": ["production", "client:web01"], "socket": {"bind": "127.0.0.1", "port": 3030},
               "version": "0.26.5", "timestamp": 1485537856},
    "check": {"command": "/etc/sensu/plugins/check-disk.rb", "subscribers": ["production"], "interval": 20,
              "standalone": True, "handlers": ["pagerduty"], "name": "check_disk", "issued": 1485537846,
              "executed": 1485537856, "duration": "0.25E-1",
              "output": "CheckDisk CRITICAL: / 98% bytes usage (29 GiB/30 GiB)\n", "status": 2,
              "type": "standard", "history": ["0", "2"], "total_state_change": 1},
    "occurrences": 1, "occurrences_watermark": 1, "action": "create", "timestamp": 1485537856,
    "id": "c6ad4f14-5dce-45a0-a4ee-9b0c0631087b", "last_state_change": 1485537856, "last_ok": 1485537846,
    "silenced": False, "silenced_by": [],
}

# A Sensu Go event as a pipe handler gets it (trimmed of the entity's system inventory).
SENSU_GO_EVENT: Dict[str, Any] = {
    "timestamp": 1552582569,
    "entity": {"entity_class": "agent", "subscriptions": ["linux", "entity:db02"], "last_seen": 1552582569,
               "deregister": False, "user": "agent", "redact": ["password", "secret"],
               "metadata": {"name": "db02", "namespace": "default"}, "sensu_agent_version": "6.10.0"},
    "check": {"command": "check-cpu-usage -w 75 -c 90", "handlers": ["pagerduty"], "interval": 60,
              "subscriptions": ["linux"], "timeout": 0, "ttl": 0, "round_robin": False, "executed": 1552582569,
              "history": [{"status": 0, "executed": 1552582509}, {"status": 1, "executed": 1552582569}],
              "issued": 1552582569, "output": "check-cpu-usage WARNING: 81.02% CPU usage\n", "state": "failing",
              "status": 1, "total_state_change": 6, "last_ok": 1552582509, "occurrences": 1,
              "occurrences_watermark": 1, "output_metric_format": "",
              "metadata": {"name": "check-cpu", "namespace": "default"}},
    "metadata": {"namespace": "default"},
    "id": "3a5948f3-6ffd-4ea2-a41e-334f4a72ca2f",
    "sequence": 7,
}


def encoded(event: Dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


@unit
def test_sensu1_create_is_a_trigger_keyed_client_slash_check() -> None:
    assert run_sensu(encoded(SENSU1_EVENT)) == ("v2", {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "web01/check_disk",
        "payload": {
            "summary": "web01/check_disk : CheckDisk CRITICAL: / 98% bytes usage (29 GiB/30 GiB)",
            "source": "web01",
            "severity": "critical",
            "component": "check_disk",
            "timestamp": "2017-01-27T17:24:16Z",
            "custom_details": SENSU1_EVENT,
        },
    })


@unit
def test_sensu1_resolve() -> None:
    event = dict(SENSU1_EVENT, action="resolve", check=dict(SENSU1_EVENT["check"], status=0, output="OK\n"))
    assert run_sensu(encoded(event)) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": "web01/check_disk",
    })


@unit
def test_sensu1_flapping_triggers() -> None:
    event = dict(SENSU1_EVENT, action="flapping", check=dict(SENSU1_EVENT["check"], status=1))
    _, body = run_sensu(encoded(event))
    assert (body["event_action"], body["payload"]["severity"]) == ("trigger", "warning")


@unit
def test_sensu_go_failing_check_is_a_trigger_keyed_entity_slash_check() -> None:
    assert run_sensu(encoded(SENSU_GO_EVENT)) == ("v2", {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "db02/check-cpu",
        "payload": {
            "summary": "db02/check-cpu : check-cpu-usage WARNING: 81.02% CPU usage",
            "source": "db02",
            "severity": "warning",
            "component": "check-cpu",
            "timestamp": "2019-03-14T16:56:09Z",
            "custom_details": SENSU_GO_EVENT,
        },
    })


@unit
def test_sensu_go_passing_check_resolves() -> None:
    event = dict(SENSU_GO_EVENT, check=dict(SENSU_GO_EVENT["check"], status=0, state="passing"))
    assert run_sensu(encoded(event)) == ("v2", {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": "db02/check-cpu",
    })


@unit
@pytest.mark.parametrize("status, severity", [(0, "info"), (1, "warning"), (2, "critical"), (3, "error"),
                                              (127, "error"), ("2", "error")])
def test_sensu_severity_from_check_status(status: Any, severity: str) -> None:
    event = dict(SENSU1_EVENT, check=dict(SENSU1_EVENT["check"], status=status))
    assert run_sensu(encoded(event))[1]["payload"]["severity"] == severity


@unit
def test_sensu_incident_key_option_overrides_the_key_and_the_summary_uses_it() -> None:
    _, body = run_sensu(encoded(SENSU1_EVENT), "-i", "disk-web01")
    assert body["dedup_key"] == "disk-web01"
    assert body["payload"]["summary"].startswith("disk-web01 : CheckDisk CRITICAL")


@unit
def test_sensu_event_without_client_falls_back_to_its_id_as_the_old_agent_did() -> None:
    event = {key: value for key, value in SENSU1_EVENT.items() if key != "client"}
    _, body = run_sensu(encoded(event))
    assert body["dedup_key"] == "c6ad4f14-5dce-45a0-a4ee-9b0c0631087b"
    assert "source" not in body["payload"]  # the agent fills in this host's name


@unit
def test_sensu_output_in_a_legacy_encoding_is_not_lost() -> None:
    raw = encoded(SENSU1_EVENT).replace(b"CheckDisk", b"Caf\xe9Disk")
    _, body = run_sensu(raw)
    assert body["payload"]["summary"].startswith("web01/check_disk : Caf\ufffdDisk CRITICAL")


@unit
def test_sensu_event_too_big_for_the_api_keeps_its_details_with_long_texts_cut() -> None:
    event = dict(SENSU1_EVENT, check=dict(SENSU1_EVENT["check"], output="é" * 300_000))
    _, body = run_sensu(encoded(event))
    details = body["payload"]["custom_details"]
    assert details == dict(event, check=dict(event["check"], output="é" * 4095 + "…"))
    assert body["payload"]["summary"] == "web01/check_disk : " + "é" * 1004 + "…"


@unit
def test_sensu_event_too_big_even_with_texts_cut_gives_way_to_a_note() -> None:
    event = dict(SENSU1_EVENT, history=[str(n) for n in range(100_000)])
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    _, body = run_sensu(encoded(event))
    assert body["payload"]["custom_details"] == {
        "details_omitted": f"the details were {size} bytes; at most 409600 fit in an event"}


@unit
@pytest.mark.parametrize("stdin, message", [
    (b"", "standard input is not a Sensu event: not JSON"),
    (b"{\"client\": ", "standard input is not a Sensu event: not JSON"),
    (b"[1, 2]", "standard input is not a Sensu event: no \"check\" object"),
    (b"{\"client\": {\"name\": \"a\"}}", "standard input is not a Sensu event: no \"check\" object"),
    (b"{\"check\": {\"output\": \"x\"}}", "the Sensu event names no client (entity) and check, and has no id"),
])
def test_sensu_input_that_is_no_sensu_event_is_invalid(stdin: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent) as error:
        run_sensu(stdin)
    assert error.value.message.startswith(message)


# --- through the real agent -----------------------------------------------------------------------------------


@pytest.mark.interpreters
@integration
def test_each_integration_reaches_the_events_api_unchanged(agent: Any, standin: Any) -> None:
    nagios_run = agent.client("pdagent_sd.integrations.nagios", *NAGIOS_SERVICE_PROBLEM)
    zabbix_run = agent.client("pdagent_sd.integrations.zabbix", KEY, "trigger", ZABBIX_PROBLEM)
    sensu_run = agent.client("pdagent_sd.integrations.sensu", "-k", KEY, stdin=json.dumps(SENSU_GO_EVENT))
    for run, key in ((nagios_run, SERVICE_KEY), (zabbix_run, "13502-Zabbix server"), (sensu_run, "db02/check-cpu")):
        assert (run.returncode, run.stdout, run.stderr) == (0, f"Event processed. Incident Key: {key}\n", "")
    assert standin.wait_for(3, timeout=15)
    received = sorted(standin.bodies(KEY), key=lambda body: body["dedup_key"])
    assert received == sorted([run_nagios(*NAGIOS_SERVICE_PROBLEM)[1], run_zabbix(KEY, "trigger", ZABBIX_PROBLEM)[1],
                               run_sensu(encoded(SENSU_GO_EVENT))[1]], key=lambda body: body["dedup_key"])


@pytest.mark.interpreters
@integration
def test_quiet_integrations_print_nothing_and_resolves_follow_triggers(agent: Any, standin: Any) -> None:
    for action in ("PROBLEM", "RECOVERY"):
        state = "CRITICAL" if action == "PROBLEM" else "OK"
        run = agent.client("pdagent_sd.integrations.nagios", "-q", *nagios_service(action, state, "disk"))
        assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert standin.wait_for(2, timeout=15)
    assert [(body["event_action"], body["dedup_key"]) for body in standin.bodies(KEY)] == [
        ("trigger", SERVICE_KEY), ("resolve", SERVICE_KEY)]


@pytest.mark.interpreters
@integration
def test_agent_rejection_exits_65_with_the_agents_reason(agent: Any) -> None:
    run = agent.client("pdagent_sd.integrations.zabbix", "too-short-key", "trigger", ZABBIX_PROBLEM)
    assert run.returncode == 65
    assert run.stdout == ""
    assert run.stderr.startswith("pd-zabbix: routing_key must be 32 letters and digits")


@pytest.mark.interpreters
@integration
def test_sensu_from_a_terminal_less_pipe_with_bad_json_exits_65(agent: Any) -> None:
    run = agent.client("pdagent_sd.integrations.sensu", "-k", KEY, stdin="not json")
    assert run.returncode == 65
    assert run.stderr.startswith("pd-sensu: standard input is not a Sensu event: not JSON")


@pytest.mark.interpreters
@integration
def test_an_oversized_sensu_event_still_reaches_the_api(agent: Any, standin: Any) -> None:
    event = dict(SENSU_GO_EVENT, check=dict(SENSU_GO_EVENT["check"], output="x" * 600_000))
    run = agent.client("pdagent_sd.integrations.sensu", "-k", KEY, stdin=json.dumps(event))
    assert (run.returncode, run.stderr) == (0, "")
    assert standin.wait_for(1, timeout=15)
    assert standin.bodies(KEY)[0]["payload"]["custom_details"]["check"]["output"] == "x" * 4095 + "…"


# --- pd-nagios --env: the macros from Nagios's environment macros (enable_environment_macros=1) ----------------


@unit
def test_nagios_env_reads_the_macros_so_any_plugin_output_survives() -> None:
    output = "free 'C:' \"2%\" C:\\data\\"  # on a shell command line in quotes it broke the quoting
    environ = {"NAGIOS_HOSTNAME": "web01", "NAGIOS_SERVICEDESC": "Disk Space", "NAGIOS_SERVICESTATE": "CRITICAL",
               "NAGIOS_SERVICEOUTPUT": output, "NAGIOS_HOSTADDRESS": "10.0.0.5", "NAGIOS_CONTACTPAGER": "@nagios",
               "NAGIOS_HOSTSTATE": "UP"}
    args = nagios.parser().parse_args(["-n", "service", "-k", "@nagios", "-t", "PROBLEM", "--env",
                                       "-f", "HOSTADDRESS=10.9.9.9"])
    api, body = nagios.event_for(args, environ)
    assert body["routing_key"] == "@nagios" and body["dedup_key"] == SERVICE_KEY
    assert body["payload"]["summary"] == f"Disk Space on web01 is CRITICAL: {output}"
    assert body["payload"]["custom_details"] == {
        "HOSTNAME": "web01", "SERVICEDESC": "Disk Space", "SERVICESTATE": "CRITICAL", "SERVICEOUTPUT": output,
        "HOSTADDRESS": "10.9.9.9", "pd_nagios_object": "service"}  # -f wins; host-only macros are left out


@unit
def test_nagios_env_without_environment_macros_says_how_to_turn_them_on() -> None:
    args = nagios.parser().parse_args(["-n", "host", "-k", "@nagios", "-t", "PROBLEM", "--env"])
    with pytest.raises(UsageError, match="enable_environment_macros=1"):
        nagios.event_for(args, {"PATH": "/bin"})
