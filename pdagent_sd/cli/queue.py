"""pd-queue: see and repair the agent's queue.

The seed agent's `status` and `retry`, plus `list`, `show`, `drop`, `flush` and `metrics`. Everything goes
through the daemon's socket (the daemon is the one owner of the queue, and socket activation starts it), and
the daemon decides who may do what from the socket's peer credentials; this command only asks and prints.
Only the standard library and the small client are imported: `status` must answer fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from pdagent_sd import exitcodes
from pdagent_sd.cli.common import UsageError, run
from pdagent_sd.errors import AgentUnreachable, Forbidden, NotFound, StorageError
from pdagent_sd.legacy import DEFAULT_OUTQUEUE
from pdagent_sd.protocol import DROP_BATCH, Message, request
from pdagent_sd.safetext import safe, safe_json
from pdagent_sd.statustypes import KeyStatus, ListedEvent, QueueStatus, State

PROGRAM = "pd-queue"
DECLINED = 1  # the operator answered no at a confirmation prompt
STATES = tuple(state.value for state in (State.PENDING, State.FAILED, State.DELIVERED, State.SUPERSEDED))
TABLE_STATES = (State.PENDING, State.DELIVERED, State.FAILED)  # the seed's status table's columns
ADMIN_ADVICE = "use sudo, or join group pdagent (sudo usermod -aG pdagent $USER, then log in again)"

DESCRIPTION = "Access the local queue of the PagerDuty agent."
EPILOG = """\
status, flush and metrics are open to every local user (routing keys masked); list with payloads, show,
retry and drop need root, the agent's own user or membership of group pdagent.

exit status: 0 done; 1 declined at a prompt; 2 usage error; 65 no such event; 69 agent unreachable;
70 internal error; 75 temporary failure (storage); 77 permission denied.
"""

# The seed agent's table, column for column: scripts that read its output keep working.
TABLE_HEADER = f"{'Service Key':<35} {'Pending':>9} {'Success':>9} {'In Error':>9}"


# --- talking to the daemon ----------------------------------------------------------------------------------


def _ask(args: argparse.Namespace, message: Message) -> Message:
    """One request; a refusal becomes one line that says what to do about it."""
    try:
        return request(message, args.socket)
    except Forbidden:
        raise _refused(message["op"]) from None


def _refused(op: str) -> Forbidden:
    return Forbidden(f"permission denied: '{op}' is only for root, the agent's user and group pdagent; "
                     f"{ADMIN_ADVICE}")


# --- formatting helpers ---------------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    """A duration as an operator reads it: 42s, 4m12s, 2h03m, 3d04h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _when(timestamp: Optional[float], now: float) -> str:
    """An absolute local time with how long ago (or until) it is."""
    if not timestamp:
        return "never"
    delta = timestamp - now
    relative = f"in {_age(delta)}" if delta > 0 else f"{_age(-delta)} ago"
    return f"{_clock(timestamp)} ({relative})"


def _print_json(data: Any) -> None:
    print(safe_json(data))  # controls and bidi characters as \u escapes: the same data, nothing a terminal runs


def _note(text: str) -> None:
    """Side remarks go to stderr, so stdout stays the data a script reads."""
    print(f"{PROGRAM}: {safe(text)}", file=sys.stderr)


def _columns(rows: List[List[str]], right: Tuple[int, ...] = ()) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


# --- status ----------------------------------------------------------------------------------------------------


def format_status(reply: Message, wanted_key: Optional[str] = None, now: Optional[float] = None) -> List[str]:
    """The seed's table (and a Total row), then one line per key that is waiting, then the last delivery."""
    return _format_status(QueueStatus.from_wire(reply), wanted_key, time.time() if now is None else now)


def _format_status(status: QueueStatus, wanted_key: Optional[str], now: float) -> List[str]:
    keys = status.keys
    if not keys and wanted_key:
        keys = (KeyStatus(wanted_key),)
    lines = [TABLE_HEADER]
    for key in keys:
        lines.append(f"{safe(key.routing_key):<35} {key.pending:>9} {key.delivered:>9} {key.failed:>9}")
    omitted = status.keys_omitted
    if len(keys) != 1 or omitted:
        totals = status.totals
        lines.append(f"{'Total':<35} " + " ".join(f"{totals[state.value]:>9}" for state in TABLE_STATES))
    if omitted:
        lines.append(f"(and {omitted} more routing key(s), fewer events each; -k KEY shows any one)")
    details = [line for key in keys for line in _key_details(key, now)]
    if details:
        lines.append("")
        lines.extend(details)
    lines.append("")
    last = status.last_delivery
    lines.append(f"Last delivery: {_when(last, now) if last else 'none on record'}")
    beats = status.heartbeats
    if any(beats.values()):
        lines.append("Heartbeats: " + ", ".join(f"{beats.get(state, 0)} {state}"
                                                for state in ("ok", "late", "paged", "paused"))
                     + " (pd-heartbeat --list)")
    return lines


def _key_details(key: KeyStatus, now: float) -> List[str]:
    """Why a key's events are still waiting: how old the oldest is, and any throttle or backoff."""
    parts = []
    if key.oldest_pending_age is not None:
        parts.append(f"oldest pending {_age(key.oldest_pending_age)} old")
    if key.throttled_until:
        parts.append(f"throttled until {_when(key.throttled_until, now)}")
    if key.backoff_until:
        parts.append(f"backing off until {_when(key.backoff_until, now)}")
    if key.superseded:
        parts.append(f"{key.superseded} superseded (coalesced, not sent: list --state superseded)")
    return [f"{safe(key.routing_key)}: {'; '.join(parts)}"] if parts else []


def cmd_status(args: argparse.Namespace) -> int:
    message: Message = {"op": "status"}
    if args.key:
        message["routing_key"] = args.key
    reply = _ask(args, message)
    status = QueueStatus.from_wire(reply)
    if args.json:  # the reply as it came: a newer agent's fields too
        _print_json({name: value for name, value in reply.items() if name != "ok"})
    else:
        print("\n".join(_format_status(status, args.key, time.time())))
    for warning in status.warnings:
        _note(f"warning: {warning}")
    if reply.get("redacted") and not args.json and status.keys:
        _note(f"routing keys are masked; to see them whole, {ADMIN_ADVICE}")
    return exitcodes.OK


# --- retry, flush ------------------------------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    message: Message = {"op": "retry", "all": True} if args.all_keys else {"op": "retry", "routing_key": args.key}
    count = _ask(args, message)["count"]
    print(f"{count} event(s) set up for retry.")
    return exitcodes.OK


def cmd_flush(args: argparse.Namespace) -> int:
    keys = _ask(args, {"op": "flush"})["keys"]
    if keys:
        print(f"Delivery pass started for {keys} routing key(s) with pending events.")
    else:
        print("No pending events.")
    return exitcodes.OK


# --- list, show ----------------------------------------------------------------------------------------------------


def _summary(row: ListedEvent) -> str:
    """The event's one-line description, read from its body (absent when the daemon redacted it)."""
    try:
        body = json.loads(row.body or "{}")
    except ValueError:
        return ""
    payload = body.get("payload") if isinstance(body.get("payload"), dict) else {}
    return str(payload.get("summary") or body.get("description") or "")


def _shorten(text: str, width: int = 60) -> str:
    """One cell of a table: blanks and line breaks folded, then every control or bidi character escaped."""
    text = safe(" ".join(text.split()))
    return text if len(text) <= width else text[:width - 1] + "…"


def format_list(rows: List[Dict[str, Any]], now: Optional[float] = None) -> List[str]:
    now = time.time() if now is None else now
    table = [["ID", "STATE", "ROUTING KEY", "EVENT", "TRIES", "QUEUED", "HTTP", "SENDER", "DEDUP KEY", "DETAIL"]]
    for row in map(ListedEvent.from_wire, rows):
        detail = f"error: {row.last_error}" if row.state == State.FAILED.value and row.last_error \
            else f"superseded by {row.superseded_by}" if row.superseded_by else _summary(row)
        table.append([str(row.id), row.state, safe(row.routing_key), safe(f"{row.api} {row.action}"),
                      str(row.attempts), f"{_age(now - row.created)} ago",
                      str(row.last_status or "-"), _sender(row.sender_uid),
                      _shorten(row.dedup_key, 40), _shorten(detail)])
    return _columns(table, right=(0, 4))


def _sender(uid: Any) -> str:
    """Who queued an event, as `--sender` takes it: a uid; "-" if not recorded or not shown to this user."""
    return str(uid) if isinstance(uid, int) and uid >= 0 else "-"


def sender_uid(text: str) -> int:
    """--sender: a uid, a user name, or -1 (events of no recorded sender, e.g. imported from the old agent)."""
    if text.isascii() and (text[1:] if text.startswith("-") else text).isdigit():
        value = int(text)
        if -1 <= value <= 2**32 - 2:
            return value
        raise argparse.ArgumentTypeError(f"not a uid: {text!r}")
    import pwd  # only when a name is given

    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"no such user: {safe(text)!r}") from None


def cmd_list(args: argparse.Namespace) -> int:
    message: Message = {"op": "list", "limit": args.limit}
    if args.state:
        message["state"] = args.state
    if args.key:
        message["routing_key"] = args.key
    if args.sender is not None:
        message["sender_uid"] = args.sender
    try:
        reply = request(message, args.socket)
    except Forbidden as refused:  # --sender with another user's uid
        raise Forbidden(f"permission denied: {refused.message}; {ADMIN_ADVICE}") from None
    rows = reply["events"]
    if args.json:
        for row in rows:
            if "body" in row:
                row["body"] = json.loads(row["body"])
        _print_json({"events": rows, "redacted": reply.get("redacted", False)})
    elif rows:
        print("\n".join(format_list(rows)))
    else:
        print("No events.")
    if len(rows) == args.limit:
        _note(f"showing the first {args.limit} events, oldest first; --limit shows more")
    elif reply.get("truncated"):
        _note(f"showing the first {len(rows)} events only: their payloads fill the most one answer holds "
              "(16 MiB); --state or --key narrows the list")
    if reply.get("redacted") and not args.json:
        _note(f"routing keys masked and payloads hidden; to see them, {ADMIN_ADVICE}")
    return exitcodes.OK


def format_event(wire: Dict[str, Any], now: Optional[float] = None) -> List[str]:
    now = time.time() if now is None else now
    event = ListedEvent.from_wire(wire)
    # Every value through safe(): a newline in a dedup key must not forge a "Last answer:" line below.
    lines = [
        safe(f"Event {event.id}: {event.api} {event.action}, {event.state}"),
        f"  Routing key:   {safe(event.routing_key)}",
        f"  Dedup key:     {safe(event.dedup_key)}",
        f"  Queued:        {_when(event.created, now)}",
        f"  Updated:       {_when(event.updated, now)}",
        f"  Attempts:      {event.attempts}",
    ]
    lines.append(f"  Sender:        {_sender_line(event.sender_uid)}")
    if event.superseded_by:
        lines.append(f"  Superseded by: event {event.superseded_by} (of the same incident; this one is not sent)")
    # A wall-clock hint, read as the daemon reads it: meaningless once the clock has stepped back before the
    # deferral was recorded (the daemon's backoff runs on the monotonic clock; docs/design-notes.md)
    if event.state == State.PENDING.value and event.next_attempt > now >= event.updated:
        lines.append(f"  Next attempt:  {_when(event.next_attempt, now)}")
    if event.last_status is not None or event.last_error:
        lines.append(f"  Last answer:   {_answer(event.last_status, event.last_error)}")
    log = event.attempts_log or ()
    lines.append("")
    lines.append("Attempts:" if log else "Attempts: none yet")
    for attempt in log:
        lines.append(f"  {_clock(attempt.at)}  {safe(attempt.outcome):<9}  "
                     f"{_answer(attempt.http_status, attempt.error)}")
    lines.append("")
    lines.append("Body:")
    try:
        body = safe_json(json.loads(event.body)) if event.body is not None else ""
    except ValueError:
        body = safe(event.body)
    lines.extend("  " + line for line in body.splitlines())
    return lines


def _sender_line(uid: Any) -> str:
    if not isinstance(uid, int) or uid < 0:
        return "not recorded (imported, or queued by the agent itself)"
    import pwd

    try:
        return f"uid {uid} ({safe(pwd.getpwuid(uid).pw_name)})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _answer(status: Optional[int], error: Optional[str]) -> str:
    """What the Events API said: HTTP status and PagerDuty's own error text (or ours, for a network error)."""
    head = f"HTTP {safe(status)}" if status else "no HTTP answer"
    return f"{head}: {safe(error)}" if error else head


def cmd_show(args: argparse.Namespace) -> int:
    event = _ask(args, {"op": "show", "id": args.id})["event"]
    if args.json:
        event["body"] = json.loads(event["body"])
        _print_json(event)
    else:
        print("\n".join(format_event(event)))
    return exitcodes.OK


# --- drop -------------------------------------------------------------------------------------------------------------


def _confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _interactive() -> bool:
    return sys.stdin.isatty()


def cmd_drop(args: argparse.Namespace) -> int:
    many = args.key is not None or args.sender is not None
    if (args.id is None) == (not many):
        raise UsageError("drop needs exactly one of: an event ID, or --state with -k KEY and/or --sender UID")
    if args.id is not None:
        if args.state:
            raise UsageError("--state goes with -k KEY or --sender UID, not with an event ID")
        message: Message = {"op": "drop", "id": args.id}
        if not _interactive() or args.yes:
            return _dropped(_ask(args, message)["count"])
        # refuses a non-admin before any question
        event = ListedEvent.from_wire(_ask(args, {"op": "show", "id": args.id})["event"])
        if not _confirm(_drop_one_question(event)):
            print("Nothing dropped.")
            return DECLINED
        # the state it was shown in: an event delivered or retried while the prompt waited is not dropped
        return _dropped(_ask(args, {**message, "state": event.state})["count"], 1)
    if not args.state:
        raise UsageError("drop -k KEY or --sender UID needs --state (pending, failed, delivered or superseded)")
    message = {"op": "drop", "state": args.state}
    if args.key is not None:
        message["routing_key"] = args.key
    if args.sender is not None:
        message["sender_uid"] = args.sender
    if not _interactive() or args.yes:
        return _dropped(_ask(args, message)["count"])  # no prompt: what matches now, in one transaction
    ids = _ask(args, {**message, "dry_run": True})["ids"]  # refuses a non-admin before any question
    if not ids:
        return _dropped(0)
    if not _confirm(_drop_many_question(args, len(ids))):
        print("Nothing dropped.")
        return DECLINED
    # Exactly the events counted at the prompt, each only if still in the state shown: what was queued,
    # retried or delivered while the prompt waited stays.
    count = 0
    for start in range(0, len(ids), DROP_BATCH):
        count += _ask(args, {**message, "ids": ids[start:start + DROP_BATCH]})["count"]
    return _dropped(count, len(ids))


def _dropped(count: int, shown: int = 0) -> int:
    print(f"{count} event(s) dropped.")
    if count < shown:
        _note(f"{shown - count} of the {shown} event(s) asked about had been delivered, retried, dropped or "
              "purged meanwhile and were left alone")
    return exitcodes.OK


def _drop_one_question(event: ListedEvent) -> str:
    summary = _summary(event)
    described = f" \"{_shorten(summary)}\"" if summary else ""
    return safe(f"Drop event {event.id} ({event.api} {event.action}, {event.state})") + described + "?"


def _drop_many_question(args: argparse.Namespace, count: int) -> str:
    which = []
    if args.key is not None:
        which.append(f"of routing key {safe(args.key)}")
    if args.sender is not None:
        which.append(f"sent by uid {args.sender}")
    return f"Drop {count} {args.state} event(s) {' '.join(which)}? This cannot be undone."


# --- metrics ---------------------------------------------------------------------------------------------------------


def cmd_metrics(args: argparse.Namespace) -> int:
    if args.from_queue:
        return _metrics_from_queue(args)
    try:
        text = _ask(args, {"op": "metrics"})["text"]
    except AgentUnreachable:
        if args.output:  # say so in the file too: an alert on pdagent_up == 0 needs no staleness rule
            from pdagent_sd.metrics import render_unreachable

            write_atomically(args.output, render_unreachable())
        raise
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return exitcodes.OK


def _metrics_from_queue(args: argparse.Namespace) -> int:
    import sqlite3

    from pdagent_sd.metrics import render
    from pdagent_sd.queuefile import read_status

    try:
        text = render(read_status(args.from_queue))
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot read the queue in {safe(args.from_queue)}: {safe(str(exc))}") from None
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return exitcodes.OK


def write_atomically(path: str, text: str) -> None:
    """Write beside the target, then rename: a collector never reads half a file."""
    import tempfile  # only here: not worth its import time on every status

    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".pdagent-metrics.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), 0o644)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


# --- the command line --------------------------------------------------------------------------------------------


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def key_option(where: argparse._ActionsContainer, help_text: str) -> None:
    """-k/--service-key/--routing-key, as the old pd-queue spelled it: a key or a name (@ops)."""
    where.add_argument("-k", "--service-key", "--routing-key", dest="key", metavar="SERVICE_KEY", help=help_text)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given after the subcommand it overrides, absent it leaves the top-level value alone.
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="agent socket (default: $PDAGENT_SOCKET or /run/pdagent/pdagent.sock)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of unexpected errors")

    p = argparse.ArgumentParser(prog=PROGRAM, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", metavar="PATH", help="agent socket (default: $PDAGENT_SOCKET or "
                                                   "/run/pdagent/pdagent.sock)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", metavar="{status,retry,list,show,drop,flush,metrics,import-legacy}")
    sub.required = True

    def command(name: str, help_text: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=description, epilog=epilog)

    s = command("status", "print out status of local event queue.",
                "Print out status of local event queue: per service key, the events pending, delivered "
                "(Success) and failed (In Error), then why pending events wait (age, throttle, backoff). "
                "Open to every local user; routing keys are masked unless you are root or in group pdagent.")
    key_option(s, "print status of events in given Service API Key")
    s.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    s.set_defaults(func=cmd_status)

    r = command("retry", "set up 'dead' PagerDuty events for retry.",
                "Set up 'dead' (failed) PagerDuty events for retry. Retried events keep their place in "
                "their key's order. Needs root or group pdagent.")
    which = r.add_mutually_exclusive_group(required=True)
    key_option(which, "retry events in given Service API Key (not to be used with -a)")
    which.add_argument("-a", "--all-keys", action="store_true",
                       help="retry events in all Service API Keys (not to be used with -k)")
    r.set_defaults(func=cmd_retry)

    ls = command("list", "list queued events, oldest first.",
                 "List queued events, oldest first. Open to every local user, but routing keys are masked "
                 "and payloads hidden unless you are root or in group pdagent.")
    ls.add_argument("--state", choices=STATES, help="only events in this state (default: all)")
    key_option(ls, "only events for this routing key")
    ls.add_argument("--sender", type=sender_uid, metavar="UID",
                    help="only events queued by this uid or user name (-1: no recorded sender, e.g. imported); "
                         "another user's only for root and group pdagent")
    ls.add_argument("--limit", type=_positive, default=100, metavar="N",
                    help="at most N events (default: 100, at most 10000)")
    ls.add_argument("--json", action="store_true", help="print the events as JSON")
    ls.set_defaults(func=cmd_list)

    sh = command("show", "show one event and every attempt to deliver it.",
                 "Show one event whole: its body, state, and every delivery attempt with its time, HTTP "
                 "status and PagerDuty's error text. Needs root or group pdagent.")
    sh.add_argument("id", type=int, metavar="ID", help="event id (from pd-queue list or the journal)")
    sh.add_argument("--json", action="store_true", help="print the event as JSON")
    sh.set_defaults(func=cmd_show)

    d = command("drop", "delete an event, or a key's or a sender's events in one state.",
                "Delete one event by id, or every event in one state of a routing key and/or of one sender "
                "(pd-queue drop -k KEY --state failed; pd-queue drop -k KEY --sender 1001 --state pending "
                "removes uid 1001's events and nobody else's). On a terminal it asks first, and then drops "
                "exactly the events it counted, each only if still in that state: an event queued or "
                "retried while it asked is left alone. Needs root or group pdagent.",
                "Dropped events are gone for good; `pd-queue retry` is the way to send failed events again. "
                "`pd-queue list --sender UID` shows what one sender queued; SENDER in `pd-queue list`.")
    d.add_argument("id", type=int, nargs="?", metavar="ID", help="event id")
    key_option(d, "drop this routing key's events (with --state)")
    d.add_argument("--sender", type=sender_uid, metavar="UID",
                   help="drop only events queued by this uid or user name (with --state; -1: no recorded "
                        "sender, e.g. imported)")
    d.add_argument("--state", choices=STATES, help="which of the key's or the sender's events to drop")
    d.add_argument("-y", "--yes", action="store_true",
                   help="do not ask; drop what matches when the agent receives the request")
    d.set_defaults(func=cmd_drop)

    f = command("flush", "deliver what is due now.",
                "Start a delivery pass now for every routing key with pending events (backoffs and throttles "
                "still hold). Open to every local user; pdagent-retry.timer runs it.")
    f.set_defaults(func=cmd_flush)

    m = command("metrics", "print OpenMetrics text for node_exporter.",
                "Print the queue's figures as OpenMetrics text (routing keys masked), for node_exporter's "
                "textfile collector. Open to every local user.",
                "example: pd-queue metrics -o /var/lib/prometheus/node-exporter/pdagent.prom")
    m.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE atomically (temporary file and rename) instead of stdout; if the "
                        "agent cannot be reached, FILE says pdagent_up 0")
    m.add_argument("--from-queue", metavar="DIR",
                   help="read the queue in state directory DIR (read-only, as its owner) instead of asking the "
                        "agent, so that an idle agent is not started: pdagent-metrics.service does this while "
                        "pdagentd is not running")
    m.set_defaults(func=cmd_metrics)

    il = command("import-legacy", "queue the events the old PagerDuty agent left behind.",
                 "Import the events still queued by PagerDuty's old agent (pdagent 1.x): pending ones (pdq/) "
                 "as pending, in the order the old agent queued them, failed ones (err/) as failed. v1 events "
                 "stay v1, with their incident keys. An event imported before is never imported again. Files "
                 "that cannot be read or understood are counted and named, and the others imported. Each event is "
                 "sent as the file's bytes and charged to the file owner's quota. Imported pdq/ files are moved "
                 "to imported/, out of the old daemon's reach. Needs root or group pdagent (and permission to "
                 "read DIR).")
    il.add_argument("dir", nargs="?", default=DEFAULT_OUTQUEUE, metavar="DIR",
                    help=f"the old agent's outqueue (default: {DEFAULT_OUTQUEUE})")
    il.add_argument("-n", "--dry-run", action="store_true",
                    help="say what would be imported (and whose files they are), change nothing")
    il.set_defaults(func=cmd_import_legacy)
    return p


# --- import-legacy -------------------------------------------------------------------------------------------------


def _shown(text: str) -> str:
    """A file name or reason from a directory any local user could write to: printable, one line, and the
    service key an old event file is named after masked, as everywhere else."""
    from pdagent_sd.keys import mask  # only for this command, not for a fast `status`

    text = safe(text)
    subdir, slash, name = text.rpartition("/")
    micros, sep, rest = name.partition("_")
    if slash and sep and micros.isdigit() and rest.endswith(".txt"):
        return f"{subdir}/{micros}_{mask(rest[:-4])}.txt"
    return text


def _owner_name(uid: int) -> str:
    import pwd  # only here

    try:
        return f"{safe(pwd.getpwuid(uid).pw_name)} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _batches(events: List[Any]) -> List[List[Any]]:
    """At most LEGACY_BATCH events per request, and a request line well under the protocol's MAX_LINE."""
    from pdagent_sd.protocol import LEGACY_BATCH, MAX_LINE

    batches: List[List[Any]] = []
    size = 0
    for event in events:
        cost = len(json.dumps(event.text)) + 256
        if not batches or len(batches[-1]) >= LEGACY_BATCH or size + cost > MAX_LINE // 2:
            batches.append([])
            size = 0
        batches[-1].append(event)
        size += cost
    return batches


def cmd_import_legacy(args: argparse.Namespace) -> int:
    from pdagent_sd.legacy import retire, scan
    from pdagent_sd.protocol import Client

    if not os.path.isdir(args.dir):
        raise NotFound(f"{args.dir} is not a directory: there is no old agent's outqueue to import",
                       hint="give the old agent's outqueue directory (it holds pdq/ and err/)")
    events, unusable = scan(args.dir)
    counts: Dict[str, Any] = {"imported": {State.PENDING.value: 0, State.FAILED.value: 0}, "already_imported": 0,
                              "invalid": [], "refused": []}
    subdir_of = {event.name: event.subdir for event in events}
    state_of = {event.name: event.state for event in events}
    owners: Dict[int, int] = {}
    taken: List[str] = []  # pdq/ files the queue holds now: moved out of the old daemon's reach
    with Client(args.socket) as client:
        for batch in _batches(events):
            message: Message = {"op": "import_legacy", "dry_run": args.dry_run,
                                "events": [event.to_wire() for event in batch]}
            try:
                reply = client.request(message)
            except Forbidden:
                raise _refused("import-legacy") from None
            owner_of = {event.name: event.owner for event in batch}
            for result in reply["results"]:
                name = result["name"]
                if result["result"] in ("imported", "would_import"):
                    counts["imported"][state_of[name]] += 1
                    owners[owner_of[name]] = owners.get(owner_of[name], 0) + 1
                elif result["result"] == "already_imported":
                    counts["already_imported"] += 1
                elif result["result"] == "refused":
                    counts["refused"].append((f"{subdir_of[name]}/{name}", owner_of[name], result.get("error", "")))
                    continue
                else:
                    counts["invalid"].append((f"{subdir_of[name]}/{name}", result.get("error", "invalid")))
                    continue
                if subdir_of[name] == "pdq" and result["result"] != "would_import":
                    taken.append(name)
    moved, not_moved = (0, []) if args.dry_run else retire(args.dir, taken)
    verb = "would import" if args.dry_run else "imported"
    imported = counts["imported"]
    pending, failed = imported[State.PENDING.value], imported[State.FAILED.value]
    print(f"{args.dir}: {len(events) + len(unusable)} file(s) in pdq/ and err/")
    print(f"{verb}: {pending + failed} ({pending} pending from pdq/, {failed} failed from err/)")
    if owners:
        print("  by owner (the quota each is charged to): " + ", ".join(
            f"{_owner_name(uid)} {count}" for uid, count in sorted(owners.items())))
    print(f"already imported before: {counts['already_imported']}")
    print(f"refused (the owner could not have queued it now): {len(counts['refused'])}")
    for path, uid, reason in counts["refused"]:
        print(f"  {_shown(path)} of {_owner_name(uid)}: {safe(reason)}")
    print(f"invalid events: {len(counts['invalid'])}")
    for path, reason in counts["invalid"]:
        print(f"  {_shown(path)}: {reason}")
    print(f"unreadable or malformed files: {len(unusable)}")
    for problem in unusable:
        print(f"  {_shown(problem.path)}: {problem.reason}")
    if failed and not args.dry_run:
        print("Failed events stay failed: `pd-queue retry -a` sends them again.")
    if args.dry_run:
        print("Nothing was changed.")
    else:
        print(f"Moved from pdq/ to imported/ (out of the old daemon's reach, kept for a rollback): {moved}")
        for problem in not_moved:
            print(f"  {_shown(problem.path)}: {problem.reason}")
        print("Files of err/ and files not imported are left where they are.")
    return exitcodes.OK


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


def main(argv: Optional[List[str]] = None) -> int:
    return run(PROGRAM, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
