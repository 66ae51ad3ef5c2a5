"""pd-sensu: queue an event for a Sensu check result, run as a Sensu pipe handler.

Reads one event as JSON on standard input: a Sensu 1.x event (client, check, action) or a Sensu Go event
(entity, check with metadata). The dedup key is the old agent's `<client>/<check>` (entity/check for Sensu Go),
so a problem opened by the old agent is still resolved by this one. Sends Events API v2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from pdagent_sd.cli.args import parser_class
from pdagent_sd.cli.common import UsageError, run, send_event
from pdagent_sd.errors import InvalidEvent
from pdagent_sd.events import MAX_DEPTH, Action, Severity, check_depth
from pdagent_sd.integrations.common import (
    EXIT_STATUS_HELP,
    add_agent_options,
    add_routing_key_option,
    fit_dedup_key,
    parse_args,
    v2_event,
)

# Check status is a plugin exit code, as in Nagios.
SEVERITY_OF_STATUS = {0: Severity.INFO, 1: Severity.WARNING, 2: Severity.CRITICAL}
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
ACTION_OF_SENSU_ACTION = {"create": Action.TRIGGER, "resolve": Action.RESOLVE, "flapping": Action.TRIGGER}

DESCRIPTION = "Queue an event for a Sensu check result (read as JSON on standard input) to PagerDuty."
EPILOG = f"""\
Run as a Sensu pipe handler; see integrations/sensu/ and docs/integrations.md.

Sensu 1.x: action create or flapping -> trigger, resolve -> resolve; dedup key <client.name>/<check.name>.
Sensu Go:  check.status 0 -> resolve, anything else -> trigger;
           dedup key <entity.metadata.name>/<check.metadata.name>.
severity from check.status: 0 info, 1 warning, 2 critical, other error.
The whole event goes into custom_details.

{EXIT_STATUS_HELP}

example:
  sensu-handler-output | pd-sensu -k $KEY
"""


# The old pd-sensu's option strings: a prefix unique among them means that option still.
LEGACY_OPTIONS = ("-k", "--integration-key", "-i", "--incident-key", "-h", "--help")


def parser() -> argparse.ArgumentParser:
    p = parser_class()(
        prog="pd-sensu", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_routing_key_option(p, "--integration-key", "--service-key")
    p.add_argument("-i", "--incident-key", "--dedup-key", dest="incident_key", metavar="KEY",
                   help="dedup key to use instead of <client>/<check>")
    add_agent_options(p)
    return p


def parse_event(text: str) -> Dict[str, Any]:
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise InvalidEvent(f"standard input is not a Sensu event: not JSON ({exc})") from None
    except RecursionError:
        raise InvalidEvent("standard input is not a Sensu event: JSON nested too deeply") from None
    if not isinstance(event, dict) or not isinstance(event.get("check"), dict):
        raise InvalidEvent("standard input is not a Sensu event: no \"check\" object")
    check_depth(event, MAX_DEPTH - 2)  # it becomes payload.custom_details, two levels down
    if "\\u" in text:
        _replace_lone_surrogates(event)
    return event


def _replace_lone_surrogates(root: Any) -> None:
    """JSON's \\ud800-style escapes can put unpaired surrogates into strings, which cannot be sent as UTF-8;
    each becomes U+FFFD, as undecodable bytes on standard input do, rather than cost the alert."""
    stack = [root]
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        if isinstance(node, dict):
            node.clear()
        for key, value in items:
            if isinstance(value, str):
                value = LONE_SURROGATE.sub("\ufffd", value)
            elif isinstance(value, (dict, list)):
                stack.append(value)
            node[LONE_SURROGATE.sub("\ufffd", key) if isinstance(key, str) else key] = value


def _object(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def is_sensu_go(event: Dict[str, Any]) -> bool:
    return "entity" in event


def names(event: Dict[str, Any]) -> Tuple[str, str]:
    """(client or entity name, check name), empty where the event lacks one."""
    check = event["check"]
    if is_sensu_go(event):
        return (_text(_object(_object(event["entity"]).get("metadata")).get("name")),
                _text(_object(check.get("metadata")).get("name")))
    return _text(_object(event.get("client")).get("name")), _text(check.get("name"))


def dedup_key(event: Dict[str, Any]) -> str:
    client, check = names(event)
    if client and check:
        return fit_dedup_key(f"{client}/{check}")
    if _text(event.get("id")):
        return fit_dedup_key(event["id"])  # the old agent's fallback
    raise InvalidEvent("the Sensu event names no client (entity) and check, and has no id; use -i KEY")


def action_for(event: Dict[str, Any]) -> Action:
    status = event["check"].get("status")
    if is_sensu_go(event) or "action" not in event:
        # Sensu Go events carry no action: the check's status tells a recovery from a problem.
        return Action.RESOLVE if status == 0 else Action.TRIGGER
    return ACTION_OF_SENSU_ACTION.get(_text(event["action"]), Action.TRIGGER)


def timestamp(event: Dict[str, Any]) -> Optional[str]:
    executed = event["check"].get("executed")
    if not isinstance(executed, (int, float)) or isinstance(executed, bool) or not executed > 0:
        return None
    try:
        return datetime.fromtimestamp(executed, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # past year 9999 or time_t: not a time, just leave it out
        return None


def build_event(routing_key: str, event: Dict[str, Any], *,
                incident_key: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """The v2 event for one Sensu event (already parsed from JSON): (api, body)."""
    key = incident_key or dedup_key(event)
    client, check = names(event)
    output = _text(event["check"].get("output")).strip()
    status = event["check"].get("status")
    return "v2", v2_event(
        routing_key, action_for(event), key,
        summary=f"{key} : {output}" if output else key,  # the old agent's summary
        source=client,
        severity=SEVERITY_OF_STATUS.get(status, Severity.ERROR) if isinstance(status, int) else Severity.ERROR,
        component=check,
        timestamp=timestamp(event),
        custom_details=event,
    )


def event_for(args: argparse.Namespace, stdin: bytes) -> Tuple[str, Dict[str, Any]]:
    """The event for parsed command-line arguments and the bytes a Sensu handler gets on standard input."""
    event = parse_event(stdin.decode("utf-8", errors="replace"))
    return build_event(args.routing_key, event, incident_key=args.incident_key)


def _main(argv: List[str]) -> int:
    args = parse_args(parser(), argv, LEGACY_OPTIONS)
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("pd-sensu reads a Sensu event as JSON on standard input (run it as a pipe handler)")
    # Read as bytes and decoded leniently: check output in a legacy encoding must not cost the alert.
    api, body = event_for(args, sys.stdin.buffer.read())
    return send_event(api, body, socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-sensu", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
