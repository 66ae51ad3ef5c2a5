"""What pd-nagios, pd-zabbix and pd-sensu share: fitting text into the Events API's limits, building a v2
body, and the options every integration takes.

The daemon validates every event; these helpers only make sure that what a monitoring tool sends is shaped
to pass (a long plugin output is truncated, never a reason to lose the alert).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from pdagent_sd.cmdline import legacy_argv, text_args
from pdagent_sd.events import MAX_DEDUP_KEY, Action, Severity
from pdagent_sd.limits import fit

# Room for the details inside the API's 512 KiB body, with plenty left for everything else.
MAX_DETAILS_BYTES = 400 * 1024
LONG_TEXT = 4096  # characters a text inside oversized details keeps
EXIT_STATUS_HELP = (
    "exit status: 0 queued; 2 usage error; 65 event rejected as invalid; 69 agent unreachable;\n"
    "75 temporary refusal (queue full, storage error), try again."
)


def clean_args(argv: List[str]) -> List[str]:
    """Arguments as valid Unicode. Plugin output in a legacy encoding reaches Python as lone surrogates,
    which cannot be sent as UTF-8; each bad byte becomes U+FFFD instead of costing the alert."""
    return text_args(argv)


def parse_args(parser: argparse.ArgumentParser, argv: List[str], legacy: Tuple[str, ...]) -> argparse.Namespace:
    """Parse argv (cleaned to valid Unicode) as the old tool, whose option strings were legacy, read it
    (see legacy_argv), with the options added since as well."""
    takes_value = {flag: action.nargs != 0 for action in parser._actions for flag in action.option_strings}
    return parser.parse_args(legacy_argv(clean_args(argv), takes_value, legacy))


def fit_dedup_key(key: str) -> str:
    """A dedup key we built, kept byte for byte when it fits, else shortened the same way every time.

    Keys longer than the API's limit were rejected under the old agent too, so no open incident can carry
    one: shortening them breaks no migration, and the digest keeps two long keys apart and a trigger and
    its resolve together.
    """
    if len(key) <= MAX_DEDUP_KEY:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()
    return key[: MAX_DEDUP_KEY - len(digest) - 1] + "~" + digest


def fit_details(details: Dict[str, Any], limit: int = MAX_DETAILS_BYTES) -> Dict[str, Any]:
    """Custom details that keep the body within the API's size limit, rather than have the alert rejected.

    Only a Sensu event on stdin can be this large (arguments are capped by the kernel). First every long text
    inside is cut; if that is not enough, the details give way to a note saying how large they were."""
    size = _encoded_size(details)
    if size <= limit:
        return details
    shortened = _shorten_texts(details)
    if _encoded_size(shortened) <= limit:
        return shortened
    return {"details_omitted": f"the details were {size} bytes; at most {limit} fit in an event"}


def _encoded_size(value: Any) -> int:
    """Bytes in the body as the agent encodes and sends it."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _shorten_texts(value: Any) -> Any:
    if isinstance(value, str):
        return fit(value, LONG_TEXT)
    if isinstance(value, dict):
        return {key: _shorten_texts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten_texts(item) for item in value]
    return value


def v2_event(
    routing_key: str,
    action: Action,
    dedup_key: str,
    *,
    summary: str,
    source: Optional[str],
    severity: Severity,
    component: Optional[str] = None,
    timestamp: Optional[str] = None,
    custom_details: Optional[Dict[str, Any]] = None,
    client: Optional[str] = None,
    client_url: Optional[str] = None,
) -> Dict[str, Any]:
    """An Events API v2 body. Only a trigger carries a payload: the API ignores it on acknowledge and
    resolve, and leaving it out keeps those bodies small (as pd-send does)."""
    event: Dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action.value,
        "dedup_key": dedup_key,
        "client": client,
        "client_url": client_url,
    }
    if action is Action.TRIGGER:
        event["payload"] = _drop_empty({
            "summary": fit(summary),
            # An empty source is left out so the agent fills in this host's name.
            "source": fit(source) if source else None,
            "severity": severity.value,
            "timestamp": timestamp,
            "component": fit(component) if component else None,
            "custom_details": fit_details(custom_details) if custom_details else None,
        })
    return _drop_empty(event)


def _drop_empty(mapping: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in mapping.items() if value not in (None, "", {})}


def add_agent_options(parser: argparse.ArgumentParser) -> None:
    """The options every integration shares with pd-send."""
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("--socket", metavar="PATH",
                        help="agent socket (default: $PDAGENT_SOCKET or /run/pdagent/pdagent.sock)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")


ROUTING_KEY_ENV = "PDAGENT_ROUTING_KEY"


def add_routing_key_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """-k KEY, or -k @NAME for a key named in the agent's configuration; $PDAGENT_ROUTING_KEY when not given."""
    default = text_args([os.environ.get(ROUTING_KEY_ENV, "")])[0] or None
    parser.add_argument("-k", *aliases, "--routing-key", dest="routing_key", required=default is None,
                        default=default, metavar="KEY",
                        help="integration (routing) key of the PagerDuty service (32 letters and digits), or "
                             "@NAME for a key named in the agent's configuration, which keeps it off the "
                             f"command line (default: ${ROUTING_KEY_ENV})")
