"""pd-heartbeat: check in with the local agent, which pages when a check-in does not come in time.

Run by every job that checks in, so it imports as little as pd-send does (no argparse unless asked for help,
no requests, no systemd). A check-in prints nothing on success: cron mails whatever a job prints.
"""

from __future__ import annotations

import os
import sys

from pdagent_sd import exitcodes, timespan
from pdagent_sd.cli.args import Command, Option, usage_error
from pdagent_sd.cli.common import run
from pdagent_sd.cmdline import text_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, Dict, List, Optional, Tuple

ROUTING_KEY_ENV = "PDAGENT_ROUTING_KEY"

USAGE = """\
pd-heartbeat NAME --every SPAN [--grace SPAN] [-k KEY|@name] [-d TEXT] [--severity LEVEL]
       pd-heartbeat NAME --pause SPAN
       pd-heartbeat NAME --remove
       pd-heartbeat --list [--json]"""
DESCRIPTION = """\
Check in: NAME is alive now and checks in again within SPAN. If the next check-in does not come by then plus
the grace, the agent triggers an incident (dedup key heartbeat/<host>/<user>/NAME); the check-in after that
resolves it. A heartbeat belongs to the user who runs this: another user's NAME is another heartbeat."""
EPILOG = """\
SPAN is systemd's time-span syntax: 30s, 5min, 1h 30min, 1d (systemd.time(7)). --grace defaults to a tenth
of --every, and at least 30s. KEY is an integration key or @name, a key named in the agent's configuration;
without -k, $PDAGENT_ROUTING_KEY is used.
--pause SPAN: no page until SPAN from now (maintenance); the job then has its grace to check in.
--remove: forget the heartbeat, resolving its incident if one is open.

exit status: 0 checked in (committed to the agent's queue, as durable as an event); 2 usage error;
65 rejected as invalid (a bad key, no such heartbeat); 69 agent unreachable; 75 temporary refusal (queue
full, storage error, too many heartbeats for this user), try again.

examples (docs/heartbeats.md has the wiring for a systemd timer job, cron, Nagios and Zabbix):
  pd-heartbeat nightly-backup --every 1d --grace 2h -k @ops -d "restic backup of /srv"
  pd-heartbeat nightly-backup --pause 4h
  pd-heartbeat --list
"""

class _Command(Command):
    """pd-send's option table and parser; the usage names NAME, which the table (options only) cannot."""

    def argparser(self) -> argparse.ArgumentParser:
        parser = super().argparser()
        parser.usage = USAGE
        return parser


COMMAND = _Command("pd-heartbeat", DESCRIPTION, EPILOG, (
    Option(("--every",), "every", metavar="SPAN", help="the longest time until the next check-in"),
    Option(("--grace",), "grace", metavar="SPAN",
           help="how much later than --every a check-in may come before it pages (default: a tenth of --every, "
                "at least 30s)"),
    Option(("-k", "--routing-key", "--service-key"), "key", metavar="KEY",
           help="integration (routing) key, or @NAME of a key named in the agent's configuration "
                "(default: $PDAGENT_ROUTING_KEY)"),
    Option(("-d", "--description"), "description", metavar="TEXT", help="said in the page's details"),
    Option(("--severity",), "severity", choices=("critical", "error", "warning", "info"),
           help="severity of the page (default: error)"),
    Option(("--pause",), "pause", metavar="SPAN", help="no page until SPAN from now"),
    Option(("--remove",), "remove", kind="flag", help="forget this heartbeat (resolving an open incident)"),
    Option(("--list",), "list", kind="flag", help="list heartbeats: yours (everyone's for root or group pdagent)"),
    Option(("--json",), "json", kind="flag", help="with --list: JSON, one object per heartbeat"),
    Option(("-q", "--quiet"), "quiet", kind="flag", help="print nothing on success (pause, remove)"),
    Option(("--socket",), "socket", metavar="PATH",
           help="agent socket (default: $PDAGENT_SOCKET or /run/pdagent/pdagent.sock)"),
    Option(("--debug",), "debug", kind="flag", help="show tracebacks of unexpected errors"),
))


def split_name(argv: List[str]) -> Tuple[Optional[str], List[str], List[str]]:
    """(NAME, the options, other positionals): NAME is the first argument that is neither an option nor an
    option's value."""
    positionals: List[str] = []
    options: List[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            positionals.extend(argv[index:])
            break
        if arg[:1] != "-" or arg == "-":
            positionals.append(arg)
            continue
        options.append(arg)
        if "=" not in arg and COMMAND.takes_value.get(arg if arg.startswith("--") else arg[:2]) \
                and (arg.startswith("--") or len(arg) == 2) and index < len(argv):
            options.append(argv[index])
            index += 1
    return (positionals[0] if positionals else None), options, positionals[1:]


def _span(value: str, option: str) -> float:
    try:
        return timespan.parse(value)
    except timespan.SpanError as error:
        raise _Usage(f"{option}: {error}") from None


class _Usage(Exception):
    pass


def _request(message: Dict[str, Any], socket_path: Optional[str]) -> Dict[str, Any]:
    from pdagent_sd.protocol import request

    return request(message, socket_path)


def _when(value: Optional[float]) -> str:
    import time

    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))


def _list(args: Any) -> int:
    reply = _request({"op": "heartbeat", "action": "list"}, args.socket)
    beats = reply.get("heartbeats") or []
    if args.json:
        import json

        print(json.dumps(beats, indent=2, ensure_ascii=False))
        return exitcodes.OK
    from pdagent_sd.safetext import safe

    if not beats:
        print("No heartbeats.")
        return exitcodes.OK
    rows = [("NAME", "OWNER", "EVERY", "GRACE", "LAST CHECK-IN", "NEXT DEADLINE", "STATE")]
    for beat in beats:
        state = beat["state"]
        if state == "paused":
            state += " until " + _when(beat.get("paused_until"))
        rows.append((safe(beat["name"]), safe(beat["owner"]), timespan.show(beat["every"]),
                     timespan.show(beat["grace"]), _when(beat["last_check_in"]), _when(beat["next_deadline"]),
                     state))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return exitcodes.OK


def _main(argv: List[str]) -> int:
    name, options, extra = split_name(argv)
    args = COMMAND.parse(options)
    if extra:
        return usage_error(COMMAND, f"one NAME only (got also {' '.join(extra)})")
    try:
        if args.list:
            if name is not None or args.every or args.pause or args.remove:
                raise _Usage("--list takes no NAME and no other action")
            return _list(args)
        if name is None:
            raise _Usage("NAME is required (or --list)")
        actions = [flag for flag, given in (("--every", args.every), ("--pause", args.pause),
                                             ("--remove", args.remove)) if given]
        if len(actions) != 1:
            raise _Usage("give exactly one of --every (check in), --pause or --remove")
        if args.json:
            raise _Usage("--json goes with --list")
        if args.remove:
            reply = _request({"op": "heartbeat", "action": "remove", "name": name}, args.socket)
            if not args.quiet:
                print(f"Heartbeat {name} removed" + (" and its incident resolved." if reply.get("resolved")
                                                     else "."))
            return exitcodes.OK
        if args.pause:
            reply = _request({"op": "heartbeat", "action": "pause", "name": name,
                              "for": _span(args.pause, "--pause")}, args.socket)
            if not args.quiet:
                print(f"Heartbeat {name} paused until {_when(reply['heartbeat'].get('paused_until'))}.")
            return exitcodes.OK
        message: Dict[str, Any] = {"op": "heartbeat", "action": "check_in", "name": name,
                                   "every": _span(args.every, "--every")}
        if args.grace is not None:
            message["grace"] = _span(args.grace, "--grace")
    except _Usage as problem:
        return usage_error(COMMAND, str(problem))
    key = args.key if args.key is not None else text_args([os.environ.get(ROUTING_KEY_ENV, "")])[0]
    if not key:
        return usage_error(COMMAND, f"-k/--routing-key is required (or {ROUTING_KEY_ENV} in the environment)")
    message["routing_key"] = key
    if args.description:
        message["description"] = args.description
    if args.severity:
        message["severity"] = args.severity
    _request(message, args.socket)
    return exitcodes.OK


def main(argv: Optional[List[str]] = None) -> int:
    return run("pd-heartbeat", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
