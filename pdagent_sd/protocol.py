"""Wire protocol version 1, written once: JSON objects, one per line, over a Unix stream socket.

Both sides live here: the framing the daemon uses and the small client that pd-send, pd-queue and the
integrations share. Only the standard library is imported: this module is on the hot path of every alert.
"""

from __future__ import annotations

# _socket, not socket: the socket module pulls in enum and selectors, a third of pd-send's start-up time.
import _socket
import os
import time  # already loaded by the interpreter's start-up: free

from pdagent_sd.errors import AgentUnreachable, BadRequest, Busy, PdagentError, from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

Message = dict  # one JSON object; a plain alias, because typing costs start-up time on the hot path

VERSION = 1
MAX_LINE = 1024 * 1024
DEFAULT_SOCKET = "/run/pdagent/pdagent.sock"
CLIENT_TIMEOUT_SEC = 60.0

OPS = ("send", "status", "list", "show", "retry", "drop", "flush", "metrics", "import_legacy", "heartbeat")
# heartbeat: check_in, pause, remove, list (heartbeat_ops.py says what each carries and answers).

# import_legacy (admin): events read from the old agent's outqueue by `pd-queue import-legacy`, in enqueue order.
#   {"op": "import_legacy", "dry_run": false,
#    "events": [{"name": "<file name>", "state": "pending"|"failed", "queued_at": <unix time>, "event": {v1 body}}]}
#   -> {"ok": true, "results": [{"name": ..., "result": "imported"|"would_import"|"already_imported"|"invalid",
#                                "id": N, "error": "..."}]}  (one per event, in the same order; a dry run writes
#                                nothing and answers would_import)
# A request carries at most LEGACY_BATCH events, so that its line stays well under MAX_LINE.
LEGACY_BATCH = 100
# list (open to all; routing and dedup keys masked, bodies and sender_uid left out unless admin):
#   {"op": "list", "state": S?, "routing_key": K?, "sender_uid": UID?, "limit": N}  (a non-admin may name only
#   their own uid in sender_uid: forbidden otherwise)
#   -> {"ok": true, "events": [{"id", "routing_key", "state", "sender_uid", ..., "body"}], "redacted": bool,
#       "truncated": true?}  (oldest first; sender_uid -1: no recorded sender, e.g. imported from the old agent)
# drop (admin): every filter given must match; an event is deleted only if it matches them all.
#   {"op": "drop", "id": N, "state": S?}                          one event (if still in state S)
#   {"op": "drop", "ids": [N, ...], "state": S?, "routing_key": K?, "sender_uid": UID?}
#       the events pd-queue showed at its prompt, each only if it still matches: a page queued (or an event
#       retried) while the prompt waited is not among them. At most DROP_BATCH ids a request.
#   {"op": "drop", "state": S, "routing_key": K?, "sender_uid": UID?}  (at least one of the two)
#       what matches now (pd-queue drop --yes, or off a terminal); with "dry_run": true nothing is deleted
#       and the answer carries the ids it would delete: {"ok": true, "count": n, "ids": [...]}
#   -> {"ok": true, "count": n}  (how many were deleted)
DROP_BATCH = 10000
# status (and metrics, rendered from it) details at most STATUS_MAX_KEYS routing keys in "keys", those with the
# most pending, then failed, events; "keys_total" counts every key, "keys_omitted" those left out.
STATUS_MAX_KEYS = 200


def socket_path(explicit: Optional[str] = None) -> str:
    return explicit or os.environ.get("PDAGENT_SOCKET") or DEFAULT_SOCKET


class _ScanContext:
    """What the C JSON scanner reads from json.JSONDecoder; standard JSON, nothing custom."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict = {}


def _unserializable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} cannot be sent as JSON")


# The json package imports re (and with it enum): a third of pd-send's start-up. Its C accelerator, _json,
# needs neither, so the hot path uses it directly and json is imported only to explain a parse error.
_scan: Any = None
_encode: Any = None
try:
    import _json

    _scan = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _encode = _json.make_encoder(None, _unserializable, _json.encode_basestring, None, ":", ",",
                                 False, False, False)
except (ImportError, AttributeError, TypeError):  # an interpreter without CPython's accelerator
    pass


def dumps(value: object) -> str:
    """Compact JSON, UTF-8 kept as is, NaN refused: what json.dumps(separators=(",", ":")) gives."""
    if _encode is None:
        import json

        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "".join(_encode(value, 0))


def loads(text: str) -> object:
    """Parse one JSON document; on bad input, raise json's own ValueError with its position."""
    if _scan is not None:
        start = len(text) - len(text.lstrip())
        try:
            value, end = _scan(text, start)
        except (StopIteration, ValueError):
            pass
        else:
            if not text[end:].strip():
                return value
    import json

    return json.loads(text)


def encode(message: Message) -> bytes:
    return dumps(message).encode() + b"\n"


def decode_request(line: bytes) -> Message:
    """Parse one request line; anything that is not a JSON object with a known op is a BadRequest."""
    if len(line) > MAX_LINE:
        raise BadRequest(f"request line longer than {MAX_LINE} bytes")
    try:
        message = loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadRequest("request must be a JSON object")
    if b"\\ud" in line or b"\\uD" in line:
        _refuse_unpaired_surrogates(message)
    op = message.get("op")
    if op not in OPS:
        raise BadRequest(f"unknown op {op!r}; expected one of: {', '.join(OPS)}")
    return message


def _refuse_unpaired_surrogates(message: Message) -> None:
    """A \\ud800-style escape without its pair parses into a string that is not valid Unicode: it cannot be
    stored, logged or answered as UTF-8, so the request is refused here, before any op sees it."""
    stack: list = [message]
    while stack:
        node = stack.pop()
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            for text in (key, value):
                if isinstance(text, str) and not _is_unicode(text):
                    raise BadRequest("request is not valid Unicode: it has an unpaired surrogate escape "
                                     "(\\ud800-\\udfff)")
            if isinstance(value, (dict, list)):
                stack.append(value)


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def error_reply(error: PdagentError) -> Message:
    reply: Message = {"ok": False, "code": error.code, "error": error.message}
    if error.hint:
        reply["hint"] = error.hint
    return reply


def _unreachable(path: str, reason: str, denied: bool = False) -> AgentUnreachable:
    if denied:  # the socket is there: its mode and group (a SocketGroup= drop-in) leave this user out
        hint = (f"this user may not use the agent's socket: see `ls -l {path}`; if the admin limited it to a "
                "group (SocketGroup=, docs/security.md), ask to join that group")
    else:
        hint = "is the agent running? Check: systemctl status pdagent.socket pdagent.service"
    return AgentUnreachable(f"cannot reach the PagerDuty agent at {path}: {reason}", hint=hint)


class Client:
    """One connection to the daemon; requests go in order and each gets its reply."""

    def __init__(self, path: Optional[str] = None, timeout: float = CLIENT_TIMEOUT_SEC) -> None:
        self.path = socket_path(path)
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self._connect(timeout)
        except OSError as exc:
            self.sock.close()
            raise _unreachable(self.path, exc.strerror or str(exc),
                               denied=isinstance(exc, PermissionError)) from None
        self._buffer = bytearray()
        self._scanned = 0  # _buffer[:_scanned] holds no newline: each byte is looked at once

    def _connect(self, timeout: float) -> None:
        """Connect, waiting while the daemon's listen backlog is full. A Unix socket with a timeout is
        non-blocking underneath, and its connect() then fails at once with EAGAIN instead of waiting like
        a blocking one: an alert storm of pd-send would lose alerts to a busy but healthy daemon."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                self.sock.connect(self.path)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, message: Message) -> Message:
        """Send one request; return the reply, or raise the error the daemon reported."""
        try:
            try:
                self.sock.sendall(encode(message))
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the daemon, which may have said why (busy) before: read it
            line = self._read_line()
        except _socket.timeout:
            raise _unreachable(self.path, "no reply in time") from None
        except OSError as exc:
            raise _unreachable(self.path, exc.strerror or str(exc)) from None
        try:
            reply = loads(line.decode("utf-8"))
        except ValueError:
            raise _unreachable(self.path, "the reply was not protocol version 1") from None
        if not isinstance(reply, dict):
            raise _unreachable(self.path, "the reply was not a JSON object")
        if not reply.get("ok"):
            raise from_wire(reply.get("code", "error"), reply.get("error", "unknown error"), reply.get("hint"))
        return reply

    def _read_line(self) -> bytes:
        """One reply line, in time linear in its length (a reply can be megabytes: `pd-queue list`)."""
        while True:
            end = self._buffer.find(b"\n", self._scanned)
            if end >= 0:
                break
            self._scanned = len(self._buffer)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError(0, "the agent closed the connection without replying")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        self._scanned = 0
        return line


def request(message: Message, path: Optional[str] = None, timeout: float = CLIENT_TIMEOUT_SEC) -> Message:
    """One request on a fresh connection. A daemon with no connection slot free for this user answers busy
    before reading anything, so asking again cannot do anything twice: it is asked again until `timeout`."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            with Client(path, max(0.1, deadline - time.monotonic())) as client:
                return client.request(message)
        except Busy:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
