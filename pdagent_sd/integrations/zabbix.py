"""pd-zabbix: queue an event for a Zabbix alert, called as a media type script.

Zabbix runs `pd-zabbix {ALERT.SENDTO} {ALERT.SUBJECT} {ALERT.MESSAGE}`: the routing key, the action
(trigger or resolve) and a body of `name:value` lines. The dedup key is the old agent's `<id>-<hostname>`,
kept byte for byte, so a problem opened by the old agent is still resolved by this one. Sends Events API v2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

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
  name:{{TRIGGER.NAME}}
  id:{{TRIGGER.ID}}
  status:{{TRIGGER.STATUS}}
  hostname:{{HOSTNAME}}
  ip:{{IPADDRESS}}
  value:{{TRIGGER.VALUE}}
  event_id:{{EVENT.ID}}
  severity:{{TRIGGER.SEVERITY}}
  url:{{TRIGGER.URL}}
A line without a colon continues the previous value. Every name goes into custom_details.

dedup key: the body's incident_key if not empty, else <id>-<hostname> (the old agent's).
severity: Disaster critical; High, Average error; Warning warning; Information, Not classified info.
url: becomes client_url, with client "Zabbix". A trigger whose NOTE says "Escalation cancelled" (Zabbix
sends one when a host, trigger or action is disabled) becomes a resolve.

{EXIT_STATUS_HELP}
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pd-zabbix", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("routing_key", metavar="KEY", help="integration (routing) key: {ALERT.SENDTO}")
    p.add_argument("subject", metavar="SUBJECT", help="trigger, acknowledge or resolve: {ALERT.SUBJECT}")
    p.add_argument("body", metavar="BODY", help="name:value lines: {ALERT.MESSAGE}")
    add_agent_options(p)
    return p


def parse_body(body: str) -> Dict[str, str]:
    """name:value lines into a dict. A line is stripped and split at its first colon, the old agent's way,
    so the values (and the dedup key built from them) are the very strings it used; a line without a colon
    continues the previous value on a new line."""
    fields: Dict[str, str] = {}
    name = ""
    for line in body.strip().split("\n"):  # not splitlines(): the old agent split on newlines only
        line = line.strip()
        if not line:
            continue
        head, colon, value = line.partition(":")
        if colon and head.strip():
            name = head.strip()
            fields[name] = value
        else:
            name = name or PREAMBLE
            fields[name] = f"{fields[name]}\n{line}" if name in fields else line
    return fields


def action_for(subject: str, fields: Dict[str, str]) -> Action:
    try:
        action = ACTION_OF_SUBJECT[subject.strip().lower()]
    except KeyError:
        raise UsageError(f"SUBJECT must be trigger, acknowledge or resolve (got {subject!r})") from None
    if action is Action.TRIGGER and ESCALATION_CANCELLED in fields.get("NOTE", "").lower():
        return Action.RESOLVE  # the problem will never be escalated again: close it rather than leave it open
    return action


def dedup_key(fields: Dict[str, str]) -> str:
    given = fields.get("incident_key", "").strip()
    if given:
        return given
    missing = [name for name in ("id", "hostname") if name not in fields]
    if missing:
        raise InvalidEvent(
            f"the message body has no {' or '.join(missing)} line, so no dedup key can be made; "
            "add id:{TRIGGER.ID} and hostname:{HOSTNAME}, or incident_key:..."
        )
    return fit_dedup_key(f"{fields['id']}-{fields['hostname']}")


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
    fields = parse_body(body)
    url = fields.get("url", "").strip()
    return "v2", v2_event(
        routing_key, action_for(subject, fields), dedup_key(fields),
        summary=summary(fields),
        source=fields.get("hostname", "").strip() or fields.get("ip", "").strip(),
        severity=SEVERITY_OF_ZABBIX.get(fields.get("severity", "").strip().lower(), Severity.ERROR),
        custom_details=dict(fields),
        client="Zabbix" if url else None,
        client_url=url or None,
    )


def event_for(args: argparse.Namespace) -> Tuple[str, Dict[str, Any]]:
    """The event for parsed command-line arguments."""
    return build_event(args.routing_key, args.subject, args.body)


def _main(argv: List[str]) -> int:
    args = parser().parse_args(clean_args(argv))
    api, event = event_for(args)
    return send_event(api, event, socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-zabbix", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
