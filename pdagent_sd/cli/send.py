"""pd-send: queue one trigger, acknowledge, resolve or change event with the local agent.

The seed agent's flags and output, sending Events API v2 by default. The daemon validates the event and
returns the dedup key; this command only builds the body and reports the answer. It runs for every alert,
so it imports only what it needs (no argparse unless asked for help, no requests, no systemd).
"""

from __future__ import annotations

import os
import sys

from pdagent_sd.cli.args import Args, Command, Option, usage_error
from pdagent_sd.cli.common import UsageError, parse_pairs, run, send_event
from pdagent_sd.cmdline import text_args
from pdagent_sd.limits import MAX_SUMMARY, fit

ROUTING_KEY_ENV = "PDAGENT_ROUTING_KEY"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

DESCRIPTION = "Queue up a trigger, acknowledge or resolve event to PagerDuty."
EPILOG = """\
SERVICE_KEY is the Integration Key shown on the service's Integrations tab in PagerDuty, or better
@NAME: a key named in the [Keys] section of /etc/pdagent/agent.conf (or a systemd credential key.NAME),
which the agent puts in its place, so the key never appears on a command line other users can read.
Without -k, $PDAGENT_ROUTING_KEY is used.
The event is committed to the local agent's durable queue before this command returns; the agent
delivers it, retrying as long as needed. A trigger without -i gets a dedup key from the agent,
printed so that the same incident can be acknowledged or resolved later.

A description longer than PagerDuty's 1024 characters is cut to them (ending in "…") and sent whole
as the custom detail "description" (v1: in details), with a warning on stderr.

exit status: 0 queued; 2 usage error; 65 event rejected as invalid; 69 agent unreachable;
75 temporary refusal (queue full, storage error), try again.

examples:
  pd-send -k @ops -t trigger -d "Server is on fire" -i srv01/fire
  pd-send -k @ops -t resolve -i srv01/fire
  pd-send -k @ops --change -d "Deployed v1.2.3" --link "https://ci.example/42|build 42"
  pd-send -k @ops -t trigger -d "backup incomplete" --unit backup.service
"""

COMMAND = Command("pd-send", DESCRIPTION, EPILOG, (
    Option(("-k", "--service-key", "--routing-key"), "key", metavar="SERVICE_KEY",
           help="integration (routing) key of the PagerDuty service, or @NAME for a key named in the agent's "
                "configuration (default: $PDAGENT_ROUTING_KEY)"),
    Option(("-t", "--event-type"), "event_type", choices=("trigger", "acknowledge", "resolve"),
           help="event type (required unless --change)"),
    Option(("-d", "--description"), "description", help="short description: the incident's summary"),
    Option(("-i", "--incident-key"), "incident_key", help="dedup key; required to acknowledge or resolve"),
    Option(("-c", "--client"), "client", help="name of the monitoring client"),
    Option(("-u", "--client-url"), "client_url", help="URL of the monitoring client"),
    Option(("-f", "--field"), "field", kind="append", metavar="KEY=VALUE", help="add a custom detail (repeatable)"),
    Option(("-q", "--quiet"), "quiet", kind="flag", help="print nothing on success"),
    Option(("--severity",), "severity", default="error", choices=("critical", "error", "warning", "info"),
           help="severity of a v2 trigger (default: error)"),
    Option(("--source",), "source", help="affected host or system (default: this host's FQDN, set by the agent)"),
    Option(("--component",), "component", help="affected component"),
    Option(("--group",), "group", help="logical group of components"),
    Option(("--class",), "class_", metavar="CLASS", help="class or type of the event"),
    Option(("--timestamp",), "timestamp", help="when the problem was detected (ISO 8601)"),
    Option(("--link",), "link", kind="append", metavar="HREF[|TEXT]", help="attach a link (repeatable)"),
    Option(("--image",), "image", kind="append", metavar="SRC[|HREF[|ALT]]",
           help="attach an image; SRC must be https:// (repeatable)"),
    Option(("--unit",), "unit", metavar="UNIT",
           help="attach a systemd unit's state and the journal lines of its last run as custom details"),
    Option(("--api",), "api", choices=("v1", "v2"), help="Events API version (default: v2)"),
    Option(("--change",), "change", kind="flag", help="send a change event instead of an alert"),
    Option(("--socket",), "socket", metavar="PATH",
           help="agent socket (default: $PDAGENT_SOCKET or /run/pdagent/pdagent.sock)"),
    Option(("--debug",), "debug", kind="flag", help="show tracebacks of unexpected errors"),
), legacy=("-k", "--service-key", "-t", "--event-type", "-d", "--description", "-i", "--incident-key", "-c",
           "--client", "-u", "--client-url", "-f", "--field", "-q", "--quiet", "-h", "--help"))  # the old pd-send's


def _links(values: List[str]) -> List[Dict[str, str]]:
    links = []
    for value in values:
        href, _, text = value.partition("|")
        links.append({"href": href, "text": text} if text else {"href": href})
    return links


def _images(values: List[str]) -> List[Dict[str, str]]:
    images = []
    for value in values:
        parts = value.split("|", 2)
        image = {"src": parts[0]}
        image.update({name: part for name, part in zip(("href", "alt"), parts[1:]) if part})
        images.append(image)
    return images


def _drop_empty(mapping: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in mapping.items() if value not in (None, "", [], {})}


def description_too_long(args: Args) -> bool:
    return bool(args.description) and len(args.description) > MAX_SUMMARY


def build_event(args: Args) -> Dict[str, Any]:
    details = parse_pairs(args.field, "-f/--field")
    summary = args.description
    if description_too_long(args):
        # The daemon refuses a longer summary: cut it rather than lose the page, and send the whole text among
        # the details (a -f description=... of the caller's own wins).
        details.setdefault("description", summary)
        summary = fit(summary)
    if args.change:
        return _drop_empty({
            "routing_key": args.key,
            "payload": _drop_empty({"summary": summary, "source": args.source,
                                    "timestamp": args.timestamp, "custom_details": details}),
            "links": _links(args.link),
        })
    if args.api == "v1":
        return _drop_empty({
            "service_key": args.key, "event_type": args.event_type, "incident_key": args.incident_key,
            "description": summary, "details": details, "client": args.client,
            "client_url": args.client_url,
            "contexts": [dict(link, type="link") for link in _links(args.link)]
            + [dict(image, type="image") for image in _images(args.image)],
        })
    event = {
        "routing_key": args.key, "event_action": args.event_type, "dedup_key": args.incident_key,
        "client": args.client, "client_url": args.client_url,
        "links": _links(args.link), "images": _images(args.image),
    }
    if args.event_type == "trigger":
        event["payload"] = _drop_empty({
            "summary": summary, "source": args.source, "severity": args.severity,
            "timestamp": args.timestamp, "component": args.component, "group": args.group,
            "class": args.class_, "custom_details": details,
        })
    return _drop_empty(event)


def usage_problem(args: Args) -> Optional[str]:
    """What is wrong with parsed options as a whole (a usage error, exit status 2, as the old pd-send had it)."""
    if args.key is None:
        return f"-k/--routing-key is required (or {ROUTING_KEY_ENV} in the environment)"
    if args.change:
        return "--change and --api cannot be used together" if args.api else None
    if not args.event_type:
        return "-t/--event-type is required (trigger, acknowledge or resolve) unless --change"
    if args.event_type == "trigger" and not (args.description or "").strip():
        return "a trigger needs -d/--description (the incident's summary)"
    if args.event_type != "trigger" and not args.incident_key:
        return f"-t {args.event_type} needs -i/--incident-key (the dedup key of the incident)"
    return None


def attach_unit(api: str, event: Dict[str, Any], unit: str) -> None:
    """The unit's state and journal tail as the detail "systemd_unit". Imported here, only for --unit: the
    journal reader must not weigh on every other alert."""
    from pdagent_sd.unit_events import describe_unit

    described = describe_unit(unit)
    if api == "v1":
        event.setdefault("details", {})["systemd_unit"] = described
    else:
        event.setdefault("payload", {}).setdefault("custom_details", {})["systemd_unit"] = described


def _main(argv: List[str]) -> int:
    args = COMMAND.parse(argv)
    if args.key is None:  # not given (an empty -k "" is the daemon's to refuse, as the old one queued it)
        vars(args)["key"] = text_args([os.environ.get(ROUTING_KEY_ENV, "")])[0] or None  # a name (@ops) or a key
    problem = usage_problem(args)
    if problem:
        return usage_error(COMMAND, problem)
    try:
        event = build_event(args)
    except UsageError as error:
        return usage_error(COMMAND, error.message)
    api = "change" if args.change else (args.api or "v2")
    if args.unit:
        if api != "change" and args.event_type != "trigger":
            return usage_error(COMMAND, "--unit adds details, which only a trigger or a change event carries")
        attach_unit(api, event, args.unit)
    if description_too_long(args) and (api != "v2" or args.event_type == "trigger"):
        where = ("details" if api == "v1" else "custom_details") + ".description"
        own = "description" in parse_pairs(args.field, "-f/--field")  # already checked by build_event
        sys.stderr.write(f"pd-send: warning: the description is {len(args.description)} characters and "
                         f"PagerDuty shows at most {MAX_SUMMARY}: the summary is cut to them"
                         + (f" ({where} is your -f description)\n" if own
                            else f", and the whole text is sent as {where}\n"))
    return send_event(api, event, socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-send", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
