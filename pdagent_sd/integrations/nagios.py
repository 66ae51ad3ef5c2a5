"""pd-nagios: queue an event for a Nagios (or Icinga) host or service notification.

A drop-in for the old agent's script: the same flags, and the same dedup keys, so that a problem opened by the
old agent is still resolved once a host runs this one. Sends Events API v2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple, Union

from pdagent_sd.cli.args import parser_class
from pdagent_sd.cli.common import UsageError, parse_pairs, run, send_event
from pdagent_sd.events import Action, Severity
from pdagent_sd.integrations.common import (
    EXIT_STATUS_HELP,
    add_agent_options,
    add_routing_key_option,
    clean_args,
    fit_dedup_key,
    parse_args,
    v2_event,
)

HOST, SERVICE = "host", "service"

REQUIRED_FIELDS = {
    HOST: ("HOSTNAME", "HOSTSTATE"),
    SERVICE: ("HOSTNAME", "SERVICEDESC", "SERVICESTATE"),
}
STATE_FIELD = {HOST: "HOSTSTATE", SERVICE: "SERVICESTATE"}
OUTPUT_FIELD = {HOST: "HOSTOUTPUT", SERVICE: "SERVICEOUTPUT"}
# The macros --env reads from Nagios's environment macros (NAGIOS_<NAME>, enable_environment_macros=1): the
# fields the shipped commands used to pass as -f NAME="$NAME$", where an output ending in a backslash broke
# the shell's quoting and the notification was lost.
ENV_PREFIX = "NAGIOS_"
ENV_FIELDS = {
    HOST: ("HOSTNAME", "HOSTSTATE", "HOSTOUTPUT", "HOSTDISPLAYNAME", "HOSTADDRESS", "HOSTPROBLEMID",
           "NOTIFICATIONAUTHOR", "NOTIFICATIONCOMMENT"),
    SERVICE: ("HOSTNAME", "SERVICEDESC", "SERVICESTATE", "SERVICEOUTPUT", "HOSTDISPLAYNAME", "SERVICEDISPLAYNAME",
              "HOSTADDRESS", "SERVICEPROBLEMID", "NOTIFICATIONAUTHOR", "NOTIFICATIONCOMMENT"),
}

SEVERITY_OF_STATE = {
    "CRITICAL": Severity.CRITICAL,
    "DOWN": Severity.CRITICAL,
    "WARNING": Severity.WARNING,
    "UNKNOWN": Severity.ERROR,
    "UNREACHABLE": Severity.ERROR,
    "OK": Severity.INFO,
    "UP": Severity.INFO,
}
HEALTHY_STATES = ("OK", "UP")

# What each $NOTIFICATIONTYPE$ does. BY_STATE: the object's current state decides — resolve when it is
# OK/UP, trigger otherwise — because Nagios suppresses problem notifications during flapping and downtime
# and does not repeat them afterwards, so the end of either is the only moment left to open the incident.
BY_STATE = "by-state"
ACTION_OF_TYPE: Dict[str, Union[Action, str]] = {
    "PROBLEM": Action.TRIGGER,
    "RECOVERY": Action.RESOLVE,
    "ACKNOWLEDGEMENT": Action.ACKNOWLEDGE,
    "FLAPPINGSTART": Action.TRIGGER,
    "FLAPPINGSTOP": BY_STATE,
    "FLAPPINGEND": BY_STATE,  # Icinga 2's name for FLAPPINGSTOP
    "FLAPPINGDISABLED": BY_STATE,
    "DOWNTIMESTART": Action.ACKNOWLEDGE,  # planned work: someone already knows
    "DOWNTIMEEND": BY_STATE,
    "DOWNTIMECANCELLED": BY_STATE,
    "CUSTOM": Action.TRIGGER,  # an operator chose to notify: page
}

DESCRIPTION = "Queue an event for a Nagios or Icinga host or service notification to PagerDuty."
EPILOG = f"""\
Called from a Nagios notification command with --env, reading the macros from Nagios's environment macros
(enable_environment_macros=1), or with the macros as -f fields; see integrations/nagios/pagerduty.cfg and
docs/integrations.md. -k @NAME names a key in the agent's configuration.

required fields: -n host: HOSTNAME, HOSTSTATE; -n service: HOSTNAME, SERVICEDESC, SERVICESTATE
(HOSTOUTPUT / SERVICEOUTPUT go into the summary; every field goes into custom_details).

notification types (-t):
  PROBLEM, CUSTOM, FLAPPINGSTART                   trigger
  RECOVERY                                         resolve
  ACKNOWLEDGEMENT, DOWNTIMESTART                   acknowledge
  FLAPPINGSTOP/END/DISABLED, DOWNTIMEEND/CANCELLED resolve if the state is OK/UP, else trigger

dedup key (the old agent's, byte for byte; -i overrides):
  event_source=service;host_name=<HOSTNAME>;service_desc=<SERVICEDESC>
  event_source=host;host_name=<HOSTNAME>

{EXIT_STATUS_HELP}

example:
  pd-nagios -k $KEY -n service -t PROBLEM -f HOSTNAME=web01 -f SERVICEDESC=Disk \\
      -f SERVICESTATE=CRITICAL -f "SERVICEOUTPUT=DISK CRITICAL - 2% free"
"""


# The old pd-nagios's option strings: a prefix unique among them (--s, --n) means that option still.
LEGACY_OPTIONS = ("-k", "--service-key", "-t", "--event-type", "-i", "--incident-key", "-f", "--field",
                  "-n", "--notification-type", "-h", "--help")


def parser() -> argparse.ArgumentParser:
    p = parser_class()(
        prog="pd-nagios", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_routing_key_option(p, "--service-key")
    p.add_argument("-t", "--event-type", dest="notification_type", required=True, metavar="TYPE",
                   help="Nagios $NOTIFICATIONTYPE$: PROBLEM, RECOVERY, ACKNOWLEDGEMENT, ... (see below)")
    p.add_argument("-n", "--notification-type", dest="object_type", required=True, choices=(HOST, SERVICE),
                   help="whether the notification is about a host or a service")
    p.add_argument("-i", "--incident-key", "--dedup-key", dest="incident_key", metavar="KEY",
                   help="dedup key to use instead of the one built from the host and service names")
    p.add_argument("-f", "--field", action="append", default=[], metavar="NAME=VALUE",
                   help="a Nagios macro, e.g. HOSTNAME=$HOSTNAME$ (repeatable)")
    p.add_argument("--env", action="store_true",
                   help="read the macros from Nagios's environment macros (NAGIOS_HOSTNAME, NAGIOS_SERVICEOUTPUT, "
                        "..., nagios.cfg: enable_environment_macros=1), so no plugin output is on the command "
                        "line; -f fields win over them")
    # The old agent's Icinga 2 file passed these two; accepting them keeps such configs working.
    p.add_argument("-c", "--client", help="name of the monitoring system, shown in PagerDuty")
    p.add_argument("-u", "--client-url", help="URL of the monitoring system, linked from PagerDuty")
    add_agent_options(p)
    return p


def dedup_key(object_type: str, fields: Dict[str, str]) -> str:
    """The old agent's incident key for this host or service."""
    if object_type == SERVICE:
        key = f"event_source=service;host_name={fields['HOSTNAME']};service_desc={fields['SERVICEDESC']}"
    else:
        key = f"event_source=host;host_name={fields['HOSTNAME']}"
    return fit_dedup_key(key)


def summary(notification_type: str, object_type: str, fields: Dict[str, str]) -> str:
    state = fields[STATE_FIELD[object_type]]
    if object_type == SERVICE:
        text = f"{fields['SERVICEDESC']} on {fields['HOSTNAME']} is {state}"
    else:
        text = f"{fields['HOSTNAME']} is {state}"
    output = fields.get(OUTPUT_FIELD[object_type], "").strip()
    if output:
        text = f"{text}: {output}"
    if notification_type != "PROBLEM":
        text = f"[{notification_type}] {text}"
    return text


def action_for(notification_type: str, state: str) -> Action:
    try:
        action = ACTION_OF_TYPE[notification_type]
    except KeyError:
        raise UsageError(
            f"unknown notification type {notification_type!r}; expected one of: {', '.join(ACTION_OF_TYPE)}"
        ) from None
    if action == BY_STATE:
        return Action.RESOLVE if state in HEALTHY_STATES else Action.TRIGGER
    return Action(action)


def severity_for(notification_type: str, state: str) -> Severity:
    severity = SEVERITY_OF_STATE.get(state, Severity.ERROR)
    if notification_type == "FLAPPINGSTART" and severity is Severity.INFO:
        return Severity.WARNING  # flapping is itself a problem, even when the last check said OK
    return severity


def check_required(object_type: str, fields: Dict[str, str]) -> None:
    missing = [name for name in REQUIRED_FIELDS[object_type] if not fields.get(name, "").strip()]
    if missing:
        raise UsageError(
            f"missing field{'s' if len(missing) > 1 else ''} for -n {object_type}: "
            + ", ".join(f"-f {name}=..." for name in missing)
            + f" (required: {', '.join(REQUIRED_FIELDS[object_type])})"
        )


def build_event(
    routing_key: str,
    notification_type: str,
    object_type: str,
    fields: Dict[str, str],
    *,
    incident_key: Optional[str] = None,
    client: Optional[str] = None,
    client_url: Optional[str] = None,
) -> Tuple[str, Dict[str, Any]]:
    """The v2 event for one Nagios notification: (api, body)."""
    if object_type not in REQUIRED_FIELDS:
        raise UsageError(f"-n must be host or service (got {object_type!r})")
    notification_type = notification_type.strip().upper()
    check_required(object_type, fields)
    state = fields[STATE_FIELD[object_type]].strip().upper()
    action = action_for(notification_type, state)
    details: Dict[str, Any] = dict(fields, pd_nagios_object=object_type)  # the old agent's extra detail
    return "v2", v2_event(
        routing_key, action, incident_key or dedup_key(object_type, fields),
        summary=summary(notification_type, object_type, fields),
        source=fields["HOSTNAME"],
        severity=severity_for(notification_type, state),
        component=fields.get("SERVICEDESC") if object_type == SERVICE else None,
        custom_details=details,
        client=client,
        client_url=client_url,
    )


def env_fields(object_type: str, environ: Dict[str, str]) -> Dict[str, str]:
    """The macros of ENV_FIELDS found in the environment; none at all means environment macros are off."""
    fields = {name: environ[ENV_PREFIX + name] for name in ENV_FIELDS.get(object_type, ())
              if ENV_PREFIX + name in environ}
    if not fields:
        raise UsageError(f"--env: no {ENV_PREFIX}* macros in the environment; set enable_environment_macros=1 "
                         "in nagios.cfg (or pass the macros as -f NAME=VALUE)")
    return fields


def event_for(args: argparse.Namespace, environ: Optional[Dict[str, str]] = None) -> Tuple[str, Dict[str, Any]]:
    """The event for parsed command-line arguments (and, with --env, Nagios's environment macros)."""
    fields: Dict[str, str] = {}
    if args.env:
        env = dict(os.environ) if environ is None else environ
        fields.update((name, clean_args([value])[0]) for name, value in env_fields(args.object_type, env).items())
    fields.update(parse_pairs(args.field, "-f/--field"))
    return build_event(
        args.routing_key, args.notification_type, args.object_type, fields,
        incident_key=args.incident_key, client=args.client, client_url=args.client_url,
    )


def _main(argv: List[str]) -> int:
    args = parse_args(parser(), argv, LEGACY_OPTIONS)
    api, body = event_for(args)
    return send_event(api, body, socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-nagios", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
