"""pd-zabbix: queue an event for a Zabbix alert, called as a media type script.

Zabbix runs `pd-zabbix {ALERT.SENDTO} {ALERT.SUBJECT} {ALERT.MESSAGE}`: the routing key, the action
(trigger or resolve) and a body of `name:value` lines. The dedup key is the old agent's `<id>-<hostname>`,
kept byte for byte, so a problem opened by the old agent is still resolved by this one. Sends Events API v2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

from pdagent_sd.cli.args import parser_class
from pdagent_sd.cli.common import UsageError, run, send_event
from pdagent_sd.errors import InvalidEvent
from pdagent_sd.events import Action, Severity
from pdagent_sd.integrations.common import (
    EXIT_STATUS_HELP,
    add_agent_options,
    clean_args,
    fit_dedup_key,
    v2_event,
)

ACTION_OF_SUBJECT = {
    "trigger": Action.TRIGGER,
    "acknowledge": Action.ACKNOWLEDGE,
    "resolve": Action.RESOLVE,
    # {TRIGGER.STATUS} used as the subject, as some setups do
    "problem": Action.TRIGGER,
    "ok": Action.RESOLVE,
    "resolved": Action.RESOLVE,
}

# Zabbix's six levels onto PagerDuty's four: only Disaster is critical (it pages loudest), High and Average
# are errors, Warning is a warning, and the two informational levels are info.
SEVERITY_OF_ZABBIX = {
    "not classified": Severity.INFO,
    "information": Severity.INFO,
    "warning": Severity.WARNING,
    "average": Severity.ERROR,
    "high": Severity.ERROR,
    "disaster": Severity.CRITICAL,
}

ESCALATION_CANCELLED = "escalation cancelled"
PREAMBLE = "message"  # where lines before the first name:value line go

DESCRIPTION = "Queue an event for a Zabbix alert to PagerDuty."
EPILOG = f"""\
Set up as a Zabbix media type of type Script with the parameters {{ALERT.SENDTO}}, {{ALERT.SUBJECT}}
and {{ALERT.MESSAGE}}; see integrations/zabbix/README and docs/integrations.md.

SUBJECT is trigger, acknowledge or resolve (PROBLEM and OK/RESOLVED are accepted too).
BODY is name:value lines, for example:
  id:{{TRIGGER.ID}}
  hostname:{{HOSTNAME}}
  status:{{TRIGGER.STATUS}}
  severity:{{TRIGGER.SEVERITY}}
  ip:{{IPADDRESS}}
  value:{{TRIGGER.VALUE}}
  event_id:{{EVENT.ID}}
  url:{{TRIGGER.URL}}
  name:{{TRIGGER.NAME}}
A line without a colon continues the previous value. Every name goes into custom_details. When BODY begins
with id, hostname or incident_key, only those leading lines set them (text inside a later value cannot);
so keep free text such as the name last. When BODY begins with other text (the old guide put name first),
the last line of each name wins, but an incident_key line only after the last id and hostname lines counts.
Arguments after BODY are ignored, with a warning.

dedup key: the body's incident_key if not empty, else <id>-<hostname> (the old agent's).
severity: Disaster critical; High, Average error; Warning warning; Information, Not classified info.
url: becomes client_url, with client "Zabbix". A trigger whose NOTE says "Escalation cancelled" (Zabbix
sends one when a host, trigger or action is disabled) becomes a resolve.

{EXIT_STATUS_HELP}
"""


def parser() -> argparse.ArgumentParser:
    p = parser_class()(
        prog="pd-zabbix", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("routing_key", metavar="KEY", help="integration (routing) key: {ALERT.SENDTO}")
    p.add_argument("subject", metavar="SUBJECT", help="trigger, acknowledge or resolve: {ALERT.SUBJECT}")
    p.add_argument("body", metavar="BODY", help="name:value lines: {ALERT.MESSAGE}")
    add_agent_options(p)
    return p


# Fields that decide what the event does rather than say something: who it is about (the dedup key) and
# whether it closes the incident. Text inside another field's value (a trigger name with an item's value in
# it) must not set them; see read_body.
STRUCTURAL = ("id", "hostname", "incident_key")
NOTE = "NOTE"


class Body:
    """A message body read: every field for custom_details, the structural fields that count, whether Zabbix
    marked the escalation cancelled, and warnings worth a line on stderr."""

    def __init__(self, fields: Dict[str, str], structural: Dict[str, str], escalation_cancelled: bool,
                 warnings: List[str]) -> None:
        self.fields = fields
        self.structural = structural
        self.escalation_cancelled = escalation_cancelled
        self.warnings = warnings


def _entries(body: str) -> List[List[str]]:
    """name:value lines as [name, value, key_value] in order. A line is stripped and split at its first colon,
    the old agent's way, so values (and the dedup key built from them) are the very strings it used. A line
    without a colon continues the previous value: on a new line in value, shown in custom_details; run on in
    key_value, which id, hostname and incident_key are read from, as the old agent joined them for its key."""
    entries: List[List[str]] = []
    for line in body.strip().split("\n"):  # not splitlines(): the old agent split on newlines only
        line = line.strip()
        if not line:
            continue
        head, colon, value = line.partition(":")
        if colon and head.strip():
            entries.append([head.strip(), value, value])
        elif entries:
            entries[-1][1] = f"{entries[-1][1]}\n{line}"
            entries[-1][2] += line
        else:
            entries.append([PREAMBLE, line, line])
    return entries


def read_body(body: str) -> Body:
    """Read a message body, so that no text inside a value can set the dedup key or resolve the incident.

    - The escalation-cancelled marker counts only as the body's first line, where Zabbix puts it (it prepends
      "NOTE: Escalation cancelled: <reason>" to the action's message).
    - When the body begins with structural fields (id, hostname, incident_key: the shipped template, free
      text last), only those leading lines set them, the first of each name winning; a line naming one of them
      further down is text of the value before it (which is how it got there) and is warned about.
    - A body that begins with free text (the old agent's guide put name:{TRIGGER.NAME} first) is read the old
      way, the last line of each name winning: its template lines for id and hostname come after the name and
      so still win. An incident_key line counts there only after the last id and hostname lines (a template
      that adds one puts it at the end); one further up is text of the value before it, and is warned about.
      An id or hostname line in a value that comes after the template's own can still set the key: put them
      first.
    """
    entries = _entries(body)
    escalation_cancelled = bool(entries) and entries[0][0] == NOTE and ESCALATION_CANCELLED in entries[0][1].lower()
    leading = 1 if escalation_cancelled or entries and entries[0][0] == NOTE else 0
    header = leading
    while header < len(entries) and entries[header][0] in STRUCTURAL:
        header += 1
    fields: Dict[str, str] = {}
    structural: Dict[str, str] = {}
    warnings: List[str] = []
    if header > leading:  # structural fields first: only they count
        for name, value, key_value in entries[:header]:
            fields.setdefault(name, value)
            if name in STRUCTURAL:
                structural.setdefault(name, key_value)
        previous = entries[header - 1][0]
        for name, value, _ in entries[header:]:
            if name in STRUCTURAL or name == NOTE:
                warnings.append(f"'{name}:' after the leading fields is read as text of '{previous}:', not as a "
                                "field (text inside a value cannot set it; see docs/integrations.md)")
                fields[previous] = f"{fields[previous]}\n{name}:{value}"
                continue
            fields[name] = value
            previous = name
    else:  # the old layout: free text first, the last line of each name wins
        # ...except that an incident_key line counts only after the message's own id and hostname lines (the
        # last of each, which come after the free text in the old guide's template): that template has no
        # incident_key line, so one further up can only have come from inside a value such as the name.
        own = max((index for index, entry in enumerate(entries) if entry[0] in ("id", "hostname")), default=-1)
        previous = ""
        for index, (name, value, key_value) in enumerate(entries):
            if name == "incident_key" and index < own:
                warnings.append(f"'incident_key:' before the message's own id and hostname lines is read as text "
                                f"of '{previous}:', not as a field (text inside a value cannot set it; see "
                                "docs/integrations.md)")
                if previous:
                    fields[previous] = f"{fields[previous]}\n{name}:{value}"
                continue
            fields[name] = value
            previous = name
            if name in STRUCTURAL:
                structural[name] = key_value
    return Body(fields, structural, escalation_cancelled, warnings)


def parse_body(body: str) -> Dict[str, str]:
    """Every field of a message body, as it goes into custom_details."""
    return read_body(body).fields


def action_for(subject: str, body: Body) -> Action:
    try:
        action = ACTION_OF_SUBJECT[subject.strip().lower()]
    except KeyError:
        raise UsageError(f"SUBJECT must be trigger, acknowledge or resolve (got {subject!r})") from None
    if action is Action.TRIGGER and body.escalation_cancelled:
        return Action.RESOLVE  # the problem will never be escalated again: close it rather than leave it open
    return action


def dedup_key(body: Body) -> str:
    given = body.structural.get("incident_key", "")
    if given:
        return given  # as the user's template made it, a space after the colon included (as the old agent did)
    missing = [name for name in ("id", "hostname") if name not in body.structural]
    if missing:
        raise InvalidEvent(
            f"the message body has no {' or '.join(missing)} line, so no dedup key can be made; "
            "add id:{TRIGGER.ID} and hostname:{HOSTNAME}, or incident_key:..."
        )
    return fit_dedup_key(f"{body.structural['id']}-{body.structural['hostname']}")


def summary(fields: Dict[str, str]) -> str:
    """The old agent's `<name> : <status> for <hostname>`, with whatever parts the body has."""
    text = fields.get("name", "").strip() or "Zabbix alert"
    status = fields.get("status", "").strip()
    hostname = fields.get("hostname", "").strip()
    if status:
        text = f"{text} : {status}"
    if hostname:
        text = f"{text} for {hostname}"
    return text


def build_event(routing_key: str, subject: str, body: str) -> Tuple[str, Dict[str, Any]]:
    """The v2 event for one Zabbix alert: (api, body)."""
    return event_from(routing_key, subject, read_body(body))


def event_from(routing_key: str, subject: str, body: Body) -> Tuple[str, Dict[str, Any]]:
    fields = body.fields
    url = fields.get("url", "").strip()
    return "v2", v2_event(
        routing_key, action_for(subject, body), dedup_key(body),
        summary=summary(fields),
        source=body.structural.get("hostname", "").strip() or fields.get("ip", "").strip(),
        severity=SEVERITY_OF_ZABBIX.get(fields.get("severity", "").strip().lower(), Severity.ERROR),
        custom_details=dict(fields),
        client="Zabbix" if url else None,
        client_url=url or None,
    )


def event_for(args: argparse.Namespace) -> Tuple[str, Dict[str, Any]]:
    """The event for parsed command-line arguments."""
    return build_event(args.routing_key, args.subject, args.body)


def read_argv(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """(KEY, SUBJECT, BODY and this command's options, the arguments left over).

    The old pd-zabbix took its first three arguments as they were and ignored any others (a media type with
    a fourth parameter kept working), so the three are taken by position, a dash-led body too, and the rest
    is left over rather than an error. -q/--quiet, --socket PATH and -h/--help are this command's own."""
    positional: List[str] = []
    extra: List[str] = []
    quiet, socket = False, None
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg in ("-h", "--help"):
            parser().parse_args(["--help"])
        elif arg in ("-q", "--quiet"):
            quiet = True
        elif arg == "--socket" and index < len(argv):
            socket = argv[index]
            index += 1
        elif arg.startswith("--socket="):
            socket = arg.partition("=")[2]
        elif len(positional) < 3:
            positional.append(arg)
        else:
            extra.append(arg)
    if len(positional) < 3:
        missing = ("KEY", "SUBJECT", "BODY")[len(positional):]
        parser().error("the following arguments are required: " + ", ".join(missing))
    routing_key, subject, body = positional
    return argparse.Namespace(routing_key=routing_key, subject=subject, body=body, quiet=quiet, socket=socket), extra


def _main(argv: List[str]) -> int:
    args, extra = read_argv(clean_args(argv))
    if extra:
        sys.stderr.write(f"pd-zabbix: warning: {len(extra)} argument{'s' if len(extra) > 1 else ''} after KEY "
                         "SUBJECT BODY ignored (as the old pd-zabbix did)\n")
    body = read_body(args.body)
    for warning in body.warnings:
        sys.stderr.write(f"pd-zabbix: warning: {warning}\n")
    api, event = event_from(args.routing_key, args.subject, body)
    return send_event(api, event, socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-zabbix", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
