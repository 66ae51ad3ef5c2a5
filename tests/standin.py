#!/usr/bin/env python3
"""A real HTTP stand-in for the PagerDuty Events API: for integration tests, benchmarks, demos, system tests.

In a test::

    with StandIn() as api:
        ...point the agent at api.url...
        assert api.wait_for(1)
        api.add_fault(status=429, count=2, retry_after=1)
        api.refuse_connections(); ...; api.accept_connections()

As a process (system tests, ``make demo``)::

    python3 tests/standin.py [--host 127.0.0.1] [--port N] [--certfile F --keyfile F] [--record FILE]
    [--rate-limit N]

prints ``listening on URL`` and serves control endpoints for other processes: ``GET /_stand_in/events``,
``GET /_stand_in/stats``, ``GET /_stand_in/incidents`` (per dedup key, the actions received and when),
``DELETE /_stand_in/events``, ``POST /_stand_in/faults`` (a JSON rule with the arguments of
:meth:`StandIn.add_fault`), ``DELETE /_stand_in/faults`` and ``POST /_stand_in/outage`` (``{"seconds": N}``:
refuse connections for N seconds).

Pure standard library. The HTTP side is a lean HTTP/1.1 keep-alive loop on raw sockets (one thread per
connection) rather than http.server, so that it is never the bottleneck of a delivery benchmark: each response
leaves in one send, with TCP_NODELAY, and always with Content-Length.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import http
import json
import re
import selectors
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple, Union

V2_PATH = "/v2/enqueue"
V1_PATH = "/generic/2010-04-15/create_event.json"
CHANGE_PATH = "/v2/change/enqueue"
API_PATHS = {V2_PATH: "v2", V1_PATH: "v1", CHANGE_PATH: "change"}
PATH_OF_API = {api: path for path, api in API_PATHS.items()}
CONTROL_PREFIX = "/_stand_in/"

MAX_EVENT_BYTES = 512 * 1024  # PagerDuty's documented limit: larger bodies are invalid events
MAX_READ_BYTES = 4 * 1024 * 1024  # past this we stop buffering at all: 413 and close
MAX_HEAD_BYTES = 64 * 1024
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
ISO_8601 = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$")

JsonBody = Union[str, bytes, Dict[str, Any], List[Any]]


# --- validation: what PagerDuty itself rejects with 400 "invalid event" -----------------------------------


def _text(errors: List[str], obj: Dict[str, Any], field: str, prefix: str = "", *, required: bool = False,
          length: Optional[int] = None, max_len: Optional[int] = None, choices: Tuple[str, ...] = ()
          ) -> Optional[str]:
    """Check one string field, appending PagerDuty-style messages; returns the value when it is a string."""
    name = prefix + field
    value = obj.get(field)
    if value is None or value == "":
        if required:
            errors.append(f"'{name}' is missing or blank")
        return None
    if not isinstance(value, str):
        errors.append(f"'{name}' must be a string")
        return None
    if length is not None and len(value) != length:
        errors.append(f"Length of '{name}' is incorrect (should be {length} characters)")
    if max_len is not None and len(value) > max_len:
        errors.append(f"'{name}' is too long (should be at most {max_len} characters)")
    if choices and value not in choices:
        errors.append(f"'{name}' is invalid (must be one of the following: {', '.join(choices)})")
    return value


def _timestamp(errors: List[str], obj: Dict[str, Any], name: str) -> None:
    value = obj.get("timestamp")
    if value is not None and not (isinstance(value, str) and ISO_8601.match(value)):
        errors.append(f"'{name}' is not a valid ISO 8601 timestamp")


def _object_list(errors: List[str], body: Dict[str, Any], field: str, required: str, optional: Tuple[str, ...]
                 ) -> None:
    """links [{href, text}] and images [{src, href, alt}]: a list of objects with string fields."""
    items = body.get(field)
    if items is None:
        return
    if not isinstance(items, list):
        errors.append(f"'{field}' must be a list")
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(f"'{field}[{i}]' must be an object")
            continue
        _text(errors, item, required, f"{field}[{i}].", required=True)
        for name in optional:
            _text(errors, item, name, f"{field}[{i}].")


def validate_v2(body: Dict[str, Any]) -> List[str]:
    errors: List[str] = []
    _text(errors, body, "routing_key", required=True, length=32)
    action = _text(errors, body, "event_action", required=True, choices=ACTIONS)
    _text(errors, body, "dedup_key", required=action in ("acknowledge", "resolve"), max_len=255)
    _text(errors, body, "client")
    _text(errors, body, "client_url")
    if action == "trigger":  # PagerDuty ignores the payload of acknowledge and resolve
        payload = body.get("payload")
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            _text(errors, payload, "summary", "payload.", required=True, max_len=1024)
            _text(errors, payload, "source", "payload.", required=True)
            _text(errors, payload, "severity", "payload.", required=True, choices=SEVERITIES)
            for name in ("component", "group", "class"):
                _text(errors, payload, name, "payload.")
            _timestamp(errors, payload, "payload.timestamp")
    _object_list(errors, body, "links", "href", ("text",))
    _object_list(errors, body, "images", "src", ("href", "alt"))
    return errors


def validate_v1(body: Dict[str, Any]) -> List[str]:
    errors: List[str] = []
    _text(errors, body, "service_key", required=True, length=32)
    action = _text(errors, body, "event_type", required=True, choices=ACTIONS)
    _text(errors, body, "incident_key", required=action in ("acknowledge", "resolve"), max_len=255)
    _text(errors, body, "description", required=action == "trigger", max_len=1024)
    _text(errors, body, "client")
    _text(errors, body, "client_url")
    contexts = body.get("contexts")
    if contexts is not None and not (isinstance(contexts, list)
                                     and all(isinstance(c, dict) for c in contexts)):
        errors.append("'contexts' must be a list of objects")
    return errors


def validate_change(body: Dict[str, Any]) -> List[str]:
    errors: List[str] = []
    _text(errors, body, "routing_key", required=True, length=32)
    payload = body.get("payload")
    if not isinstance(payload, dict):
        errors.append("'payload' is missing or not an object")
    else:
        _text(errors, payload, "summary", "payload.", required=True, max_len=1024)
        _text(errors, payload, "source", "payload.")
        _timestamp(errors, payload, "payload.timestamp")
    _object_list(errors, body, "links", "href", ("text",))
    return errors


VALIDATORS: Dict[str, Callable[[Dict[str, Any]], List[str]]] = {
    "v2": validate_v2, "v1": validate_v1, "change": validate_change}


def routing_key_of(api: str, body: Any) -> Optional[str]:
    """The integration key a request is for (v1 calls it service_key); None when there is none to read."""
    key = body.get("service_key" if api == "v1" else "routing_key") if isinstance(body, dict) else None
    return key if isinstance(key, str) else None


# --- records and fault rules ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EventRecord:
    """One accepted event."""

    api: str  # "v2", "v1" or "change"
    path: str
    body: Dict[str, Any]
    routing_key: Optional[str]
    key: Optional[str]  # the dedup_key (v2) or incident_key (v1) the stand-in answered with; None for change
    time: float  # time.monotonic() on arrival
    wall_time: float
    headers: Dict[str, str]
    raw: bytes = b""  # the request body exactly as it came

    @property
    def action(self) -> Optional[str]:
        return self.body.get("event_action") or self.body.get("event_type")

    def to_json(self) -> Dict[str, Any]:
        return {"api": self.api, "path": self.path, "routing_key": self.routing_key, "key": self.key,
                "time": self.time, "wall_time": self.wall_time, "body": self.body}


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """Every request to an API path, accepted or not: status 0 means the connection was dropped."""

    api: Optional[str]
    path: str
    routing_key: Optional[str]
    status: int
    time: float
    fault: bool


@dataclasses.dataclass
class Fault:
    """A programmed failure; the first rule matching a request applies. count=None: until cleared."""

    status: Optional[int] = 500  # None: no status of its own (a delay-only rule); the request then proceeds
    count: Optional[int] = None  # remaining matches
    routing_key: Optional[str] = None  # None matches every key
    api: Optional[str] = None  # "v2", "v1", "change" or None for all
    retry_after: Optional[Union[int, float, str]] = None
    body: Optional[JsonBody] = None
    delay: float = 0.0  # seconds before answering (or disconnecting)
    disconnect: bool = False  # close the connection without any response
    location: Optional[str] = None  # a Location header (a redirect, with a 3xx status)
    hits: int = 0

    FIELDS = ("status", "count", "routing_key", "api", "retry_after", "body", "delay", "disconnect", "location")

    def matches(self, api: str, routing_key: Optional[str]) -> bool:
        return ((self.count is None or self.count > 0) and self.api in (None, api)
                and self.routing_key in (None, routing_key))

    def to_json(self) -> Dict[str, Any]:
        body = self.body.decode("utf-8", "replace") if isinstance(self.body, bytes) else self.body
        return {**{name: getattr(self, name) for name in self.FIELDS}, "body": body, "hits": self.hits}


def default_fault_body(status: int) -> JsonBody:
    if status == 400:
        return {"status": "invalid event", "message": "Event object is invalid", "errors": ["injected fault"]}
    if status in (403, 429):  # PagerDuty's throttle answers: 429 on v2, 403 on v1
        return {"status": "throttle event",
                "message": "Requests for this service are arriving too quickly.  Please retry later."}
    return {"status": "error", "message": _reason(status)}


# --- a lean HTTP/1.1 server loop --------------------------------------------------------------------------


class Request(NamedTuple):
    method: str
    path: str
    version: str
    headers: Dict[str, str]  # names in lower case
    body: bytes


class Response(NamedTuple):
    status: int
    body: bytes
    headers: Tuple[Tuple[str, str], ...] = ()
    after: Optional[Callable[[], None]] = None  # runs once the response has been sent


class HttpError(Exception):
    """A request we cannot even parse: answer with status, then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Disconnect(Exception):
    """Close the connection without answering (an injected fault)."""


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def json_response(status: int, obj: JsonBody, headers: Tuple[Tuple[str, str], ...] = ()) -> Response:
    if isinstance(obj, bytes):
        return Response(status, obj, headers)
    return Response(status, obj.encode() if isinstance(obj, str) else json.dumps(obj).encode(), headers)


def encode_response(response: Response, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {response.status} {_reason(response.status)}", "Server: pdagent-sd-stand-in",
             "Content-Type: application/json", f"Content-Length: {len(response.body)}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _fill(sock: socket.socket, buf: bytearray, size: int) -> None:
    while len(buf) < size:
        chunk = sock.recv(max(65536, size - len(buf)))
        if not chunk:
            raise Disconnect()
        buf += chunk


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        end = buf.find(b"\r\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[:end + 2]
            return line
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpError(400, "line too long")
        _fill(sock, buf, len(buf) + 1)


def _read_chunked(sock: socket.socket, buf: bytearray) -> bytes:
    body = bytearray()
    while True:
        try:
            size = int(_read_line(sock, buf).split(b";")[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            while _read_line(sock, buf):  # trailers, up to the empty line
                pass
            return bytes(body)
        if len(body) + size > MAX_READ_BYTES:
            raise HttpError(413, "body too large")
        _fill(sock, buf, size + 2)
        body += buf[:size]
        del buf[:size + 2]


def read_request(sock: socket.socket, buf: bytearray) -> Optional[Request]:
    """Read one request from sock (bytes past it stay in buf); None if the client closed between requests."""
    while True:
        while buf[:2] == b"\r\n":  # RFC 9112: ignore empty lines before a request line
            del buf[:2]
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD_BYTES:
            raise HttpError(431, "request head too large")
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                raise Disconnect()
            return None
        buf += chunk
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, version = parts
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    if target.startswith(("http://", "https://")):  # absolute form, as sent to proxies
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    path = target.split("?", 1)[0]
    if headers.get("expect", "").lower() == "100-continue" and not buf:
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits a second for this before a large body
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Request(method, path, version, headers, _read_chunked(sock, buf))
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length > MAX_READ_BYTES:
        raise HttpError(413, "body too large")
    _fill(sock, buf, length)
    body = bytes(buf[:length])
    del buf[:length]
    return Request(method, path, version, headers, body)


def wants_keep_alive(request: Request) -> bool:
    connection = request.headers.get("connection", "").lower()
    if request.version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: we only want the owner thread's blocked recv() to wake
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# --- the stand-in -----------------------------------------------------------------------------------------


# Every StandIn made in this process, for tests/conftest.py's check that no agent log shows a key it received
# whole; that fixture empties the list before each test.
CREATED: List["StandIn"] = []


class StandIn:
    """A PagerDuty Events API on 127.0.0.1 that records accepted events and fails on request."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, certfile: Optional[str] = None,
                 keyfile: Optional[str] = None, record: Optional[str] = None, delay: float = 0.0,
                 log: Optional[Callable[[str], None]] = None, rate_limit_per_minute: int = 0) -> None:
        self.host = host
        # PagerDuty's per-integration-key limit: past this many accepted events in the last 60 s a key gets 429
        # (0: no limit). May be changed while running.
        self.rate_limit_per_minute = rate_limit_per_minute
        self._accepted_at: Dict[Optional[str], Deque[float]] = {}
        self.port = port
        self.delay = delay  # seconds added to every API request; may be changed while running
        self._log = log
        self._tls: Optional[ssl.SSLContext] = None
        if certfile:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(certfile, keyfile)
        self._record_path = record
        self._record_file: Optional[Any] = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every request record
        self._listen_lock = threading.RLock()  # serialises starting, refusing, accepting and stopping
        self._stopping = threading.Event()
        self._events: List[EventRecord] = []
        self._requests: List[RequestRecord] = []
        self._keys_seen: Set[str] = set()  # every routing key any request carried; reset() keeps them
        self._faults: List[Fault] = []
        self._connections: Dict[threading.Thread, socket.socket] = {}  # open ones, to shut down
        self._threads: List[threading.Thread] = []  # every connection thread that may still run, to join
        self._helpers: List[threading.Thread] = []  # outage timers started through the control endpoint
        self._connections_accepted = 0
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._wake: Optional[socket.socket] = None
        self._started = False
        CREATED.append(self)

    # -- lifecycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def endpoint(self, api: str = "v2") -> str:
        return self.url + PATH_OF_API[api]

    def start(self) -> StandIn:
        with self._listen_lock:
            if self._started:
                return self
            if self._stopping.is_set():
                raise RuntimeError("a stopped StandIn cannot start again; make a new one")
            if self._record_path:
                self._record_file = open(self._record_path, "a", encoding="utf-8")
            self._started = True
            try:
                self.accept_connections()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection and join every thread; safe to call twice."""
        self._stopping.set()  # wakes delayed handlers and outage timers at once
        with self._lock:
            helpers = list(self._helpers)
        for thread in helpers:
            thread.join()
        with self._listen_lock:
            self._close_listener()
            with self._lock:
                threads = list(self._threads)
                for sock in self._connections.values():
                    _shutdown(sock)
            for thread in threads:
                thread.join()
            if self._record_file:
                self._record_file.close()
                self._record_file = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def refuse_connections(self, drop_open: bool = True) -> None:
        """Close the listening socket, so that connecting gets ECONNREFUSED: a real outage.

        drop_open also closes the established keep-alive connections; otherwise a pooled client connection
        would keep working and no test would see the outage. Once this returns, every new connect is refused;
        a connect racing the close may instead have its SYN dropped and retried by the kernel 1 s later."""
        with self._listen_lock:
            self._close_listener()
            if drop_open:
                with self._lock:
                    for sock in self._connections.values():
                        _shutdown(sock)

    def accept_connections(self) -> None:
        """Listen again on the same port (the first call binds, picking a port when port is 0)."""
        with self._listen_lock:
            if self._listener is not None or self._stopping.is_set():
                return
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                # SO_REUSEADDR: re-bind at once although closed connections sit in TIME_WAIT on this port
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.host, self.port))
                listener.listen(128)
                listener.setblocking(False)
            except OSError:
                listener.close()
                raise
            self.port = listener.getsockname()[1]
            wake_r, self._wake = socket.socketpair()
            self._listener = listener
            self._acceptor = threading.Thread(target=self._accept_loop, args=(listener, wake_r),
                                              name=f"stand-in-accept-{self.port}", daemon=True)
            self._acceptor.start()

    def _close_listener(self) -> None:
        if self._listener is None:
            return
        assert self._wake is not None and self._acceptor is not None
        self._wake.close()  # EOF on the other end wakes the accept loop, which then returns
        self._acceptor.join()
        self._listener.close()  # only now: never close a socket another thread is selecting on
        self._listener = self._wake = self._acceptor = None

    def _accept_loop(self, listener: socket.socket, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, "accept")
        selector.register(wake, selectors.EVENT_READ, "wake")
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return
                    try:
                        conn, _ = listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    except OSError:  # EMFILE and the like: let the backlog wait instead of spinning
                        time.sleep(0.05)
                        continue
                    self._start_connection(conn)
        finally:
            selector.close()
            wake.close()

    def _start_connection(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # an answer is one small write: no Nagle
        thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True,
                                  name=f"stand-in-conn-{self.port}")
        with self._lock:
            # a thread leaves _connections just before it ends, so stop() joins from this list instead
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            self._connections[thread] = conn
            self._connections_accepted += 1
        try:
            thread.start()
        except RuntimeError:  # out of threads: drop this connection, as an overloaded server would
            with self._lock:
                self._threads.remove(thread)
                del self._connections[thread]
            conn.close()

    def _serve_connection(self, sock: socket.socket) -> None:
        me = threading.current_thread()
        try:
            if self._tls:
                with self._lock:  # swap under the lock so stop() always shuts down the socket in use
                    sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    self._connections[me] = sock
                sock.do_handshake()
            self._http_loop(sock)
        except (OSError, ValueError, Disconnect):  # ssl.SSLError is an OSError; ValueError: socket closed
            pass
        finally:
            with self._lock:
                del self._connections[me]
            sock.close()

    def _http_loop(self, sock: socket.socket) -> None:
        buf = bytearray()
        while not self._stopping.is_set():
            try:
                request = read_request(sock, buf)
            except HttpError as error:
                sock.sendall(encode_response(json_response(error.status, {"error": str(error)}), False))
                return
            if request is None:
                return
            response = self._respond(request)
            keep_alive = wants_keep_alive(request)
            sock.sendall(encode_response(response, keep_alive))  # one buffer, one send
            if response.after:
                response.after()
            if not keep_alive:
                return

    # -- answering

    def _respond(self, request: Request) -> Response:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        api = API_PATHS.get(request.path)
        if api is None or request.method != "POST":
            status = 404 if api is None else 405
            self._note_request(RequestRecord(api, request.path, None, status, time.monotonic(), False))
            return json_response(status, {"status": "error", "message": _reason(status)},
                                 (("Allow", "POST"),) if status == 405 else ())
        try:
            body: Any = json.loads(request.body)
        except ValueError:  # also covers bytes that are not UTF-8
            body = None
            parse_error = "Could not parse the request body as JSON"
        else:
            parse_error = "" if isinstance(body, dict) else "The event must be a JSON object"
        routing_key = routing_key_of(api, body)
        fault = self._take_fault(api, routing_key)
        delay = self.delay + (fault.delay if fault else 0.0)
        if delay > 0:
            self._stopping.wait(delay)  # not time.sleep: stop() must not wait for a slow answer
        if fault and (fault.disconnect or fault.status is not None):
            status = 0 if fault.disconnect else int(fault.status or 0)
            self._note_request(RequestRecord(api, request.path, routing_key, status, time.monotonic(), True))
            if fault.disconnect:
                raise Disconnect()
            headers = (("Retry-After", str(fault.retry_after)),) if fault.retry_after is not None else ()
            if fault.location is not None:
                headers += (("Location", fault.location),)
            body_out = fault.body if fault.body is not None else default_fault_body(status)
            return json_response(status, body_out, headers)
        if self._over_rate_limit(routing_key):
            self._note_request(RequestRecord(api, request.path, routing_key, 429, time.monotonic(), False))
            return json_response(429, default_fault_body(429))
        errors = [parse_error] if parse_error else VALIDATORS[api](body)
        if len(request.body) > MAX_EVENT_BYTES:
            errors.append(f"The event is larger than {MAX_EVENT_BYTES // 1024} KB")
        if errors:
            self._note_request(RequestRecord(api, request.path, routing_key, 400, time.monotonic(), False))
            return json_response(400, {"status": "invalid event", "message": "Event object is invalid",
                                       "errors": errors})
        return self._accept(api, request, body, routing_key)

    def _accept(self, api: str, request: Request, body: Dict[str, Any], routing_key: Optional[str]
                ) -> Response:
        if api == "change":
            key = None
            status, answer = 202, {"status": "success", "message": "Change event processed"}
        elif api == "v1":
            key = body.get("incident_key") or uuid.uuid4().hex
            status, answer = 200, {"status": "success", "message": "Event processed", "incident_key": key}
        else:
            key = body.get("dedup_key") or uuid.uuid4().hex  # PagerDuty makes one for a trigger without
            status, answer = 202, {"status": "success", "message": "Event processed", "dedup_key": key}
        now = time.monotonic()
        event = EventRecord(api, request.path, body, routing_key, key, now, time.time(), request.headers,
                            bytes(request.body))
        self._note_request(RequestRecord(api, request.path, routing_key, status, now, False), event)
        return json_response(status, answer)

    def _over_rate_limit(self, routing_key: Optional[str]) -> bool:
        """PagerDuty's rate limit: True (answer 429) when the key had its fill of accepted events in the last
        minute; otherwise the event counts against it."""
        if self.rate_limit_per_minute <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            window = self._accepted_at.setdefault(routing_key, collections.deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= self.rate_limit_per_minute:
                return True
            window.append(now)
            return False

    def incidents(self, routing_key: Optional[str] = None) -> Dict[str, List[Tuple[str, float]]]:
        """Per dedup key (v2 dedup_key, v1 incident_key): every action accepted, in order, with its arrival time
        (time.monotonic()). Change events have no dedup key and are left out."""
        history: Dict[str, List[Tuple[str, float]]] = {}
        for event in self.received(routing_key):
            if event.key is not None and event.api != "change":
                history.setdefault(event.key, []).append((str(event.action), event.time))
        return history

    def resolved_at(self, routing_key: Optional[str] = None) -> Dict[str, Optional[float]]:
        """Per dedup key: when PagerDuty's incident was last resolved, or None while it is open."""
        from storm import resolved_at

        return resolved_at(self.incidents(routing_key))

    def _take_fault(self, api: str, routing_key: Optional[str]) -> Optional[Fault]:
        with self._lock:
            for fault in self._faults:
                if fault.matches(api, routing_key):
                    fault.hits += 1
                    if fault.count is not None:
                        fault.count -= 1
                    return fault
        return None

    def _note_request(self, request: RequestRecord, event: Optional[EventRecord] = None) -> None:
        with self._changed:
            # Stamped again under the lock: a time taken before it could be overtaken by another connection's
            # record, and the lists must be in arrival order with times that never go backwards.
            now = time.monotonic()
            request = dataclasses.replace(request, time=now)
            if event is not None:
                event = dataclasses.replace(event, time=now, wall_time=time.time())
            self._requests.append(request)
            if request.routing_key:
                self._keys_seen.add(request.routing_key)
            if event is not None:
                self._events.append(event)
                if self._record_file:
                    self._record_file.write(json.dumps(event.to_json()) + "\n")
                    self._record_file.flush()  # another process may be tailing the file
            self._changed.notify_all()
        if self._log:
            key = request.routing_key
            shown = f"{key[:4]}…{key[-4:]}" if key and len(key) > 8 else key
            fault = " (fault)" if request.fault else ""
            self._log(f"{request.status} {request.path} routing_key={shown}{fault}")

    # -- control endpoints, for tests that run the stand-in as another process

    def _control(self, request: Request) -> Response:
        route = (request.method, request.path[len(CONTROL_PREFIX):].rstrip("/"))
        try:
            arguments = json.loads(request.body) if request.body else {}
            if route == ("GET", "events"):
                return json_response(200, [event.to_json() for event in self.events])
            if route == ("DELETE", "events"):
                self.reset(faults=False)
                return json_response(200, {"ok": True})
            if route == ("GET", "incidents"):
                return json_response(200, self.incidents())
            if route == ("GET", "stats"):
                return json_response(200, self.stats())
            if route == ("POST", "faults"):
                unknown = set(arguments) - set(Fault.FIELDS)
                if unknown:
                    raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
                return json_response(201, self.add_fault(**arguments).to_json())
            if route == ("DELETE", "faults"):
                self.clear_faults()
                return json_response(200, {"ok": True})
            if route == ("POST", "outage"):
                seconds = float(arguments["seconds"])
                return Response(200, b'{"ok": true}', (), lambda: self._start_outage(seconds))
        except (ValueError, TypeError, KeyError) as error:
            return json_response(400, {"error": f"{type(error).__name__}: {error}"})
        return json_response(404, {"error": "no such control endpoint"})

    def _start_outage(self, seconds: float) -> None:
        def outage() -> None:
            self.refuse_connections()
            if not self._stopping.wait(seconds):
                self.accept_connections()

        thread = threading.Thread(target=outage, name="stand-in-outage", daemon=True)
        with self._lock:
            if self._stopping.is_set():
                return
            self._helpers.append(thread)
        thread.start()

    # -- what tests read and steer

    @property
    def events(self) -> List[EventRecord]:
        """Accepted events in arrival order (a copy)."""
        with self._lock:
            return list(self._events)

    def received(self, routing_key: Optional[str] = None, api: Optional[str] = None) -> List[EventRecord]:
        return [e for e in self.events if routing_key in (None, e.routing_key) and api in (None, e.api)]

    def bodies(self, routing_key: Optional[str] = None) -> List[Dict[str, Any]]:
        return [e.body for e in self.received(routing_key)]

    @property
    def requests(self) -> List[RequestRecord]:
        """Every request to an API path, faulted and invalid ones too (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def keys_seen(self) -> Set[str]:
        """Every routing key a request carried, accepted or faulted, kept across reset() (a copy)."""
        with self._lock:
            return set(self._keys_seen)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def request_count_for(self, routing_key: str) -> int:
        with self._lock:
            return sum(1 for r in self._requests if r.routing_key == routing_key)

    @property
    def connection_count(self) -> int:
        """TCP connections accepted so far: tells whether a client really keeps its connection alive."""
        with self._lock:
            return self._connections_accepted

    def wait_for(self, count: int, timeout: float = 5.0, routing_key: Optional[str] = None) -> bool:
        """Block until at least count events (for routing_key, if given) were accepted; False on timeout."""
        return self._wait(lambda: sum(1 for e in self._events if routing_key in (None, e.routing_key))
                          >= count, timeout)

    def wait_for_requests(self, count: int, timeout: float = 5.0, routing_key: Optional[str] = None) -> bool:
        """Block until at least count requests, faulted ones included, arrived; False on timeout."""
        return self._wait(lambda: sum(1 for r in self._requests if routing_key in (None, r.routing_key))
                          >= count, timeout)

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(done, timeout)

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            by_key: Dict[str, int] = {}
            for r in self._requests:
                by_key[str(r.routing_key)] = by_key.get(str(r.routing_key), 0) + 1
            return {"requests": len(self._requests), "events": len(self._events),
                    "connections": self._connections_accepted, "requests_by_key": by_key,
                    "faults": [f.to_json() for f in self._faults]}

    def reset(self, faults: bool = True) -> None:
        """Forget recorded events and requests (and fault rules)."""
        with self._lock:
            self._events.clear()
            self._requests.clear()
            if faults:
                self._faults.clear()

    def add_fault(self, status: Optional[int] = 500, count: Optional[int] = None,
                  routing_key: Optional[str] = None, retry_after: Optional[Union[int, float, str]] = None,
                  body: Optional[JsonBody] = None, *, api: Optional[str] = None, delay: float = 0.0,
                  disconnect: bool = False, location: Optional[str] = None) -> Fault:
        """Fail matching requests: count=None until cleared. The returned rule's hits counts its matches."""
        if api is not None and api not in PATH_OF_API:
            raise ValueError(f"api must be one of {', '.join(PATH_OF_API)}")
        fault = Fault(status, count, routing_key, api, retry_after, body, float(delay), bool(disconnect), location)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> List[Fault]:
        with self._lock:
            return [f for f in self._faults if f.count is None or f.count > 0]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="A stand-in for the PagerDuty Events API (tests, demos).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--certfile", help="serve https with this certificate (PEM)")
    parser.add_argument("--keyfile", help="the certificate's private key (PEM)")
    parser.add_argument("--record", metavar="FILE", help="append each accepted event to FILE as a JSON line")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before every answer")
    parser.add_argument("--rate-limit", type=int, default=0, metavar="N",
                        help="answer 429 past N accepted events per minute per routing key, as PagerDuty does")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per request on stderr")
    args = parser.parse_args(argv)
    if bool(args.certfile) != bool(args.keyfile):
        parser.error("--certfile and --keyfile go together")
    # Block the signals before any thread exists (threads inherit the mask), then take them in sigwait():
    # the stop is immediate and happens in the main thread, never inside a handler thread.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    with StandIn(args.host, args.port, certfile=args.certfile, keyfile=args.keyfile, record=args.record,
                 delay=args.delay, log=log, rate_limit_per_minute=args.rate_limit) as api:
        print(f"listening on {api.url}", flush=True)
        signal.sigwait(signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
