"""pd-send: queue one trigger, acknowledge, resolve or change event with the local agent.

The seed agent's flags and output, sending Events API v2 by default. The daemon validates the event and
returns the dedup key; this command only builds the body and reports the answer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from pdagent_sd.cli.common import UsageError, parse_pairs, run, send_event

DESCRIPTION = "Queue up a trigger, acknowledge or resolve event to PagerDuty."
EPILOG = """\
SERVICE_KEY is the Integration Key shown on the service's Integrations tab in PagerDuty.
The event is committed to the local agent's durable queue before this command returns; the agent
delivers it, retrying as long as needed. A trigger without -i gets a dedup key from the agent,
printed so that the same incident can be acknowledged or resolved later.

exit status: 0 queued; 2 usage error; 65 event rejected as invalid; 69 agent unreachable;
75 temporary refusal (queue full, storage error), try again.

examples:
  pd-send -k $KEY -t trigger -d "Server is on fire" -i srv01/fire
  pd-send -k $KEY -t resolve -i srv01/fire
  pd-send -k $KEY --change -d "Deployed v1.2.3" --link "https://ci.example/42|build 42"
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pd-send", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-k", "--service-key", "--routing-key", dest="key", required=True, metavar="SERVICE_KEY",
                   help="integration (routing) key of the PagerDuty service")
    p.add_argument("-t", "--event-type", choices=("trigger", "acknowledge", "resolve"),
                   help="event type (required unless --change)")
    p.add_argument("-d", "--description", help="short description: the incident's summary")
    p.add_argument("-i", "--incident-key", help="dedup key; required to acknowledge or resolve")
    p.add_argument("-c", "--client", help="name of the monitoring client")
    p.add_argument("-u", "--client-url", help="URL of the monitoring client")
    p.add_argument("-f", "--field", action="append", default=[], metavar="KEY=VALUE",
                   help="add a custom detail (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--severity", default="error", choices=("critical", "error", "warning", "info"),
                   help="severity of a v2 trigger (default: error)")
    p.add_argument("--source", help="affected host or system (default: this host's FQDN, set by the agent)")
    p.add_argument("--component", help="affected component")
    p.add_argument("--group", help="logical group of components")
    p.add_argument("--class", dest="class_", metavar="CLASS", help="class or type of the event")
    p.add_argument("--timestamp", help="when the problem was detected (ISO 8601)")
    p.add_argument("--link", action="append", default=[], metavar="HREF[|TEXT]", help="attach a link (repeatable)")
    p.add_argument("--image", action="append", default=[], metavar="SRC[|HREF[|ALT]]",
                   help="attach an image; SRC must be https:// (repeatable)")
    api = p.add_mutually_exclusive_group()
    api.add_argument("--api", choices=("v1", "v2"), default="v2", help="Events API version (default: v2)")
    api.add_argument("--change", action="store_true", help="send a change event instead of an alert")
    p.add_argument("--socket", metavar="PATH",
                   help="agent socket (default: $PDAGENT_SOCKET or /run/pdagent/pdagent.sock)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


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


def build_event(args: argparse.Namespace) -> Dict[str, Any]:
    details = parse_pairs(args.field, "-f/--field")
    if args.change:
        return _drop_empty({
            "routing_key": args.key,
            "payload": _drop_empty({"summary": args.description, "source": args.source,
                                    "timestamp": args.timestamp, "custom_details": details}),
            "links": _links(args.link),
        })
    if not args.event_type:
        raise UsageError("-t/--event-type is required (trigger, acknowledge or resolve) unless --change")
    if args.api == "v1":
        return _drop_empty({
            "service_key": args.key, "event_type": args.event_type, "incident_key": args.incident_key,
            "description": args.description, "details": details, "client": args.client,
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
            "summary": args.description, "source": args.source, "severity": args.severity,
            "timestamp": args.timestamp, "component": args.component, "group": args.group,
            "class": args.class_, "custom_details": details,
        })
    return _drop_empty(event)


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    api = "change" if args.change else args.api
    return send_event(api, build_event(args), socket_path=args.socket, quiet=args.quiet)


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-send", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
