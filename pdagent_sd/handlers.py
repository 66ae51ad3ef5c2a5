"""What each wire operation does, and who may do it. The connection loop calls `dispatch` once per request.

A send is validated on the caller's thread and answered once the store's writer has committed it; every other
op runs on this module's one thread, which keeps its SQLite reader (and page cache) for the daemon's life."""

from __future__ import annotations

import grp
import logging
import os
import socket
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Protocol, Tuple, Union

from pdagent_sd import __version__
from pdagent_sd.commit import Commit
from pdagent_sd.errors import BadRequest, ConfigError, Forbidden, InvalidEvent, PdagentError, StorageError
from pdagent_sd.events import MAX_BODY_BYTES, NO_KEYS, Event, validate
from pdagent_sd.heartbeat_ops import HeartbeatWatch
from pdagent_sd.journal import Kind, report
from pdagent_sd.keys import Caller, KeyBook, RoutingKey
from pdagent_sd.legacy import parse as legacy_parse
from pdagent_sd.metrics import render as render_metrics
from pdagent_sd.protocol import DROP_BATCH, LEGACY_BATCH, STATUS_MAX_KEYS, Message
from pdagent_sd.queuetypes import LegacyEntry, Sender
from pdagent_sd.scheduler import Scheduler
from pdagent_sd.statustypes import NOT_HELD, STATES, DaemonInfo, KeyStatus, QueueStatus, State, sum_totals
from pdagent_sd.store import Store

logger = logging.getLogger(__name__)

ADMIN_GROUP = "pdagent"
ADMIN_OPS = ("show", "retry", "drop", "import_legacy")
LEGACY_STATES = {state.value: state for state in (State.PENDING, State.FAILED)}
MAX_LIST_LIMIT = 10000
# Bodies in one `list` reply at most: the whole reply is built in memory (an admin's list of 10,000 events of
# 512 KB would be 5 GB); past it the reply holds fewer rows and says truncated.
MAX_LIST_BODY_BYTES = 16 * 1024 * 1024


def _as_is(reply: Any) -> Message:
    return reply  # type: ignore[no-any-return]


class Later:
    """An answer still being worked on: the reply is `finish(future.result())`, made on the loop's thread."""

    __slots__ = ("future", "finish")

    def __init__(self, future: "Union[Future[Any], Commit]", finish: Callable[[Any], Message] = _as_is) -> None:
        self.future = future
        self.finish = finish


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    admin: bool
    trusted: bool = False  # admin, or a member of trusted_groups: no per-sender quotas, the reserved room
    groups: FrozenSet[int] = frozenset()  # its groups (SO_PEERGROUPS), for the grants of named keys

    @property
    def sender(self) -> Sender:
        return Sender(self.uid, self.trusted or self.admin)

    @property
    def caller(self) -> Caller:
        return Caller(self.uid, self.groups, self.trusted or self.admin)


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; Python has no name for it yet
MAX_GROUPS_BYTES = 1024  # the most Python's getsockopt() will read: 256 groups


def peer_of(conn: socket.socket, service_uid: int, trusted_gids: FrozenSet[int] = frozenset()) -> Peer:
    """Who is on the other end (SO_PEERCRED): root, the service's own user and group pdagent are admins;
    members of `trusted_gids` (trusted_groups) are trusted senders. Everyone else's groups are read too: a
    named key may be granted to a group."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, service_uid):
        return Peer(pid, uid, gid, True, True)
    admin_gid = group_id(ADMIN_GROUP)
    groups = _peer_groups(conn, gid)
    admin = admin_gid is not None and admin_gid in groups
    return Peer(pid, uid, gid, admin, admin or bool(groups & trusted_gids), groups)


GROUP_CACHE_SEC = 1.0
_groups: Dict[str, Tuple[float, Optional[int]]] = {}


def group_id(name: str) -> Optional[int]:
    """A group's gid, or None if there is none; looked up at most once a second (every connection asks, and
    a user reconnecting in a loop must not make the daemon read /etc/group thousands of times a second)."""
    now = time.monotonic()
    cached = _groups.get(name)
    if cached is not None and now - cached[0] < GROUP_CACHE_SEC:
        return cached[1]
    try:
        gid: Optional[int] = grp.getgrnam(name).gr_gid
    except KeyError:
        gid = None
    _groups[name] = (now, gid)
    return gid


def _peer_groups(conn: socket.socket, gid: int) -> FrozenSet[int]:
    """Group membership from the kernel (SO_PEERGROUPS): /proc is hidden from the hardened service
    (ProtectProc=invisible), and reading it by pid could be fooled by pid reuse."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, MAX_GROUPS_BYTES)
    except OSError:  # ERANGE: a peer in more than 256 groups must use its primary group or sudo
        return frozenset((gid,))
    return frozenset((gid, *struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])))


class Dispatcher(Protocol):
    """What the connection loop hands each request to."""

    def dispatch(self, message: Message, peer: Peer) -> Union[Message, Later]: ...


class Unavailable:
    """Answers every request while the queue cannot be opened (a full or missing disk at start): with why, as
    a storage_error, so pd-send exits 75 (try again) and pd-queue says what is wrong."""

    def __init__(self, error: PdagentError) -> None:
        self.error = error

    def dispatch(self, message: Message, peer: Peer) -> Union[Message, Later]:
        # a new exception each time: raising one instance again and again would grow its traceback
        raise StorageError(self.error.message, hint=self.error.hint)


class Misconfigured:
    """Answers every request while a setting is wrong (the daemon holds the socket meanwhile, see daemon.py):
    with the file, the key and why, as a config_error, so pd-send exits 78 and says what to fix."""

    def __init__(self, error: PdagentError) -> None:
        self.error = error

    def dispatch(self, message: Message, peer: Peer) -> Union[Message, Later]:
        raise ConfigError(self.error.message, hint=self.error.hint)


class Handlers:
    def __init__(self, store: Store, scheduler: Scheduler, *, started: float,
                 default_source: Callable[[], str], keys: KeyBook = NO_KEYS,
                 trusted_gids: FrozenSet[int] = frozenset(),
                 heartbeats: Optional[HeartbeatWatch] = None) -> None:
        self.keys = keys
        self.trusted_gids = trusted_gids  # trusted_groups: for the owners of imported old-agent files
        self.heartbeats = heartbeats
        self.store = store
        self.scheduler = scheduler
        self.started = started
        self.default_source = default_source
        self._ops = ThreadPoolExecutor(max_workers=1, thread_name_prefix="client-ops")
        self._last_delivery_on_record: Optional[List[Optional[float]]] = None  # read from the queue once

    def held_keys(self) -> int:
        """Keys with pending events that are throttled or backing off now: the scheduler's, less those whose
        events were dropped while they waited (an index seek each; only keys held in memory are asked about)."""
        return sum(1 for key in self.scheduler.held_keys() if self.store.reads.has_pending(key))

    def last_delivery(self) -> Optional[float]:
        """When an event was last delivered: this run's latest from the scheduler, else the latest on record
        in queue.db, read once (where nothing was ever delivered, that read goes through every attempt)."""
        if self.scheduler.stats.last_delivery is not None:
            return self.scheduler.stats.last_delivery
        if self._last_delivery_on_record is None:
            self._last_delivery_on_record = [self.store.reads.last_delivery()]
        return self._last_delivery_on_record[0]

    def dispatch(self, message: Message, peer: Peer) -> Union[Message, Later]:
        op = message["op"]
        if op in ADMIN_OPS and not peer.admin:
            raise Forbidden(f"'{op}' needs root, the service's user or membership of group {ADMIN_GROUP}",
                            hint=f"use sudo, or join group {ADMIN_GROUP}")
        if op == "send":
            return self._send(message, peer)
        return Later(self._ops.submit(getattr(self, "op_" + op), message, peer))

    def in_background(self, work: Callable[[], Any]) -> "Future[Any]":
        """Run `work` on the ops thread, where the queue's read queries belong."""
        return self._ops.submit(work)

    def close(self) -> None:
        self._ops.shutdown(wait=True)

    def _send(self, message: Message, peer: Peer) -> Later:
        event = message.get("event")
        source = self.default_source() if isinstance(event, dict) and _needs_source(event) else ""
        event = validate(message.get("api", "v2"), event, default_source=source, owned=True, keys=self.keys,
                         caller=peer.caller)

        def accepted(event_id: int) -> Message:
            self.scheduler.wake(event.routing_key, peer.uid, peer.sender.trusted)
            report(Kind.ACCEPTED, f"accepted event {event_id} ({event.api.value} {event.action.value}) "
                   f"from uid {peer.uid}", event_id=event_id, dedup_key=event.dedup_key,
                   routing_key=event.routing_key, action=event.action.value, api=event.api.value)
            return {"ok": True, "id": event_id, "dedup_key": event.dedup_key}

        return Later(self.store.enqueue_async(event, peer.sender), accepted)

    def _key_filter(self, message: Message, peer: Peer) -> Optional[RoutingKey]:
        """The routing key a request names, `@name` resolved for whoever may use it: pd-queue -k @name works
        like pd-send's."""
        value = _optional_str(message, "routing_key")
        return None if value is None else self.keys.resolve(value, caller=peer.caller)

    def op_status(self, message: Message, peer: Peer) -> Message:
        # redacted tells the client that keys are masked, so it can say how to see them whole
        return {"ok": True, "redacted": not peer.admin,
                **self.status(self._key_filter(message, peer), reveal=peer.admin).to_wire()}

    def status(self, routing_key: Optional[RoutingKey], reveal: bool) -> QueueStatus:
        now = time.time()
        counts, keys_total = self.store.reads.key_counts(STATUS_MAX_KEYS, routing_key)
        keys = []
        for key, entry in sorted(counts.items(), key=lambda item: item[0]):
            # a key's backoff outlives its last pending event (dropped, say): only keys that wait count as held
            held = self.scheduler.key_status(key) if entry.pending else NOT_HELD
            oldest = entry.oldest_pending
            keys.append(KeyStatus.of(key.reveal() if reveal else str(key), entry,
                                     # a wall-clock hint: after a step back the event is new, never negative in age
                                     max(0.0, round(now - oldest, 3)) if oldest else None, held))
        totals = {state: 0 for state in STATES}
        if routing_key is None:
            totals.update(self.store.reads.totals())
        else:
            totals = sum_totals(keys)
        damaged = tuple(os.path.join(self.store.state_dir, name) for name in self.store.corrupt_files())
        warnings = tuple(f"the queue database was found damaged and moved aside to {path}; "
                         f"events in it were not delivered" for path in damaged)
        return QueueStatus(tuple(keys), keys_total, totals, self.last_delivery(), self.held_keys(), warnings, damaged,
                           self.heartbeats.counts() if self.heartbeats is not None else {},
                           DaemonInfo(os.getpid(), __version__, round(now - self.started, 3),
                                      len(self.scheduler.keys)))

    def op_list(self, message: Message, peer: Peer) -> Message:
        state = _state(message.get("state"))
        limit = message.get("limit", 100)
        if not isinstance(limit, int) or not 0 < limit <= MAX_LIST_LIMIT:
            raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}")
        sender_uid = _sender_uid(message)
        if sender_uid is not None and sender_uid != peer.uid and not peer.admin:
            raise Forbidden("listing another user's events is only for root, the agent's user and group pdagent; "
                            "anyone may list their own (--sender with their own uid)")
        rows, truncated = self.store.reads.list_page(state, self._key_filter(message, peer), limit,
                                                 bodies=peer.admin, max_bytes=MAX_LIST_BODY_BYTES,
                                                 sender_uid=sender_uid)
        reply: Message = {"ok": True, "events": [row.shown(reveal=peer.admin).to_wire() for row in rows],
                          "redacted": not peer.admin}
        if truncated:
            reply["truncated"] = True
        return reply

    def op_show(self, message: Message, peer: Peer) -> Message:
        event = self.store.reads.show(_event_id(message))
        return {"ok": True, "event": event.shown(reveal=True).to_wire()}  # show is for admins

    def op_retry(self, message: Message, peer: Peer) -> Message:
        routing_key = self._key_filter(message, peer)
        if (routing_key is None) == (message.get("all") is not True):
            raise BadRequest("retry needs exactly one of routing_key or all")
        count = self.store.retry_failed(routing_key)
        if count:
            report(Kind.RETRIED, f"{count} failed event(s) set up for retry by uid {peer.uid}",
                   routing_key=routing_key)
            if routing_key is not None:
                self.scheduler.wake(routing_key)
            else:
                self.scheduler.flush()
        return {"ok": True, "count": count}

    def op_drop(self, message: Message, peer: Peer) -> Message:
        """Delete events: one id, or the ids `pd-queue drop` showed (each only if it still has the given state,
        key and sender), or a state's events of a key and/or a sender as they are now. A dry run answers
        the ids the last form would delete, which pd-queue shows and then passes back."""
        state = _state(message.get("state"))
        routing_key = self._key_filter(message, peer)
        sender_uid = _sender_uid(message)
        ids: Optional[List[int]] = None
        if "id" in message:
            ids = [_event_id(message)]
        elif "ids" in message:
            ids = _event_ids(message)
        elif state is None or (routing_key is None and sender_uid is None):
            raise BadRequest("drop needs an id, ids, or a state with a routing_key and/or a sender_uid")
        if message.get("dry_run") is True:
            if ids is not None:
                raise BadRequest("a dry run of drop takes a state with a routing_key and/or a sender_uid, no ids")
            found = self.store.reads.matching_ids(routing_key, state, sender_uid)
            return {"ok": True, "count": len(found), "ids": found}
        count = self.store.drop(routing_key=routing_key, state=state, event_ids=ids, sender_uid=sender_uid)
        if count:
            whose = "" if sender_uid is None else f" sent by uid {sender_uid}"
            report(Kind.DROPPED, f"{count} event(s){whose} dropped by uid {peer.uid}", event_id=message.get("id"),
                   routing_key=routing_key)
        return {"ok": True, "count": count}

    def op_import_legacy(self, message: Message, peer: Peer) -> Message:
        """Events of the old agent's outqueue: each file's text is checked as a v1 event (an invalid one is
        reported, never fatal to the others) and queued exactly as it is, the bytes the old agent would have
        POSTed; all valid ones not imported before are queued in the order given, each charged to the file's
        owner as if that user had sent it (root's and the service user's files to the trusted room)."""
        items = message.get("events")
        if not isinstance(items, list) or len(items) > LEGACY_BATCH:
            raise BadRequest(f"events must be a list of at most {LEGACY_BATCH} entries")
        results: List[Dict[str, Any]] = []
        entries: List[LegacyEntry] = []
        for item in items:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                raise BadRequest("every entry needs a name (the old agent's file name)")
            state = LEGACY_STATES.get(item.get("state"))
            queued_at = item.get("queued_at")
            owner = item.get("owner", -1)
            if state is None or not isinstance(queued_at, (int, float)) or isinstance(queued_at, bool):
                raise BadRequest(f"{name}: state must be pending or failed, queued_at a number")
            if not isinstance(owner, int) or isinstance(owner, bool) or owner < -1:
                raise BadRequest(f"{name}: owner must be a uid")
            try:
                event = _legacy_event(item)
            except PdagentError as error:
                results.append({"name": name, "result": "invalid", "error": error.message})
                continue
            note = "" if state is State.PENDING else f"failed in the old agent (err/{name})"
            entries.append(LegacyEntry(name, event, state, float(queued_at), note, self.sender_for(owner)))
            results.append({"name": name, "result": "imported"})
        if message.get("dry_run") is True:
            already = set(self.store.reads.imported_before([entry.name for entry in entries]))
            ids: List[Union[int, str, None]] = [None if entry.name in already else 0 for entry in entries]
        else:
            ids = self.store.import_legacy(entries) if entries else []
        by_name = dict(zip((entry.name for entry in entries), ids))
        for result, entry in zip((r for r in results if r["result"] == "imported"), entries):
            event_id = by_name[entry.name]
            if event_id is None:
                result["result"] = "already_imported"
                continue
            if isinstance(event_id, str):
                result.update(result="refused", error=event_id)
                continue
            if not event_id:
                result["result"] = "would_import"  # a dry run
            else:
                result["id"] = event_id
                # the old agent named its files after the service key: masked here like every logged key
                key = entry.event.routing_key
                shown = entry.name.replace(key.reveal(), str(key)) if key.reveal() else entry.name
                report(Kind.ACCEPTED, f"imported event {event_id} ({entry.state.value}) from the old agent's "
                       f"outqueue file {shown}, for uid {peer.uid}, charged to uid {entry.sender.uid}",
                       event_id=event_id, dedup_key=entry.event.dedup_key, routing_key=entry.event.routing_key,
                       action=entry.event.action.value, api=entry.event.api.value)
                if entry.state is State.PENDING:
                    self.scheduler.wake(entry.event.routing_key, entry.sender.uid, entry.sender.trusted)
        return {"ok": True, "results": results}

    def sender_for(self, uid: int) -> Sender:
        """The sender an old outqueue file's owner would have been on the socket: root and the service's user
        are trusted, and so are members of group pdagent and of trusted_groups; anyone else has the quotas."""
        if uid in (0, os.geteuid()):
            return Sender(uid, True)
        if uid < 0:
            return Sender(uid, False)
        wanted = set(self.trusted_gids)
        admin_gid = group_id(ADMIN_GROUP)
        if admin_gid is not None:
            wanted.add(admin_gid)
        try:
            import pwd  # only here: an import is rare

            entry = pwd.getpwuid(uid)
            groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
        except (KeyError, OSError):
            groups = set()
        return Sender(uid, bool(groups & wanted))

    def op_flush(self, message: Message, peer: Peer) -> Message:
        return {"ok": True, "keys": self.scheduler.flush()}  # flush reads the pending keys

    def op_metrics(self, message: Message, peer: Peer) -> Message:
        return {"ok": True, "text": render_metrics(self.status(None, reveal=False))}

    def op_heartbeat(self, message: Message, peer: Peer) -> Message:
        if self.heartbeats is None:
            raise BadRequest("this agent does not keep heartbeats")
        # The trigger a check-in would send is checked like a pd-send of the same user's: one place decides
        # which keys (and @names) a sender may use.
        return self.heartbeats.handle(message, peer.sender, peer.admin,
                                      lambda body: validate("v2", body, keys=self.keys, caller=peer.caller))


def _legacy_event(item: Dict[str, Any]) -> Event:
    """An old outqueue file's event, validated as v1 and queued with the file's text unchanged (nothing added: a
    trigger without incident_key gets one only in the queue's index, never in the body). Entries from older
    clients carry the parsed body ("event") instead."""
    text = item.get("text")
    if text is None:
        return validate("v1", item.get("event"), owned=True)
    if not isinstance(text, str):
        raise BadRequest("text must be the old event file's content")
    try:
        body = legacy_parse(text)
    except ValueError as exc:
        raise InvalidEvent(str(exc)) from None
    event = validate("v1", body, owned=True)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise InvalidEvent("the file holds text that is not valid Unicode") from None
    if size > MAX_BODY_BYTES:
        raise InvalidEvent(f"event is {size} bytes; the Events API accepts at most {MAX_BODY_BYTES}")
    return replace(event, text=text)


def _needs_source(event: Dict[str, Any]) -> bool:
    payload = event.get("payload")
    return isinstance(payload, dict) and not payload.get("source")


def _state(value: Any) -> Optional[State]:
    if value is None:
        return None
    try:
        return State(value)
    except ValueError:
        raise BadRequest("state must be pending, failed or delivered") from None


def _optional_str(message: Message, field: str) -> Optional[str]:
    value = message.get(field)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    return value


MAX_EVENT_ID = 2**63 - 1  # SQLite's INTEGER; a larger Python int cannot even be bound to a query


MAX_UID = 2**32 - 2  # (uid_t)-1 is no uid


def _sender_uid(message: Message) -> Optional[int]:
    """The sender_uid a request filters by: a uid, or -1 for events of no recorded sender (imported, the
    daemon's own, queued before senders were recorded)."""
    value = message.get("sender_uid")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= MAX_UID:
        raise BadRequest(f"sender_uid must be a uid from 0 to {MAX_UID}, or -1")
    return value


def _event_ids(message: Message) -> List[int]:
    values = message.get("ids")
    if not isinstance(values, list) or not 0 < len(values) <= DROP_BATCH:
        raise BadRequest(f"ids must be a list of 1 to {DROP_BATCH} event ids")
    return [_event_id({"id": value}) for value in values]


def _event_id(message: Message) -> int:
    value = message.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_EVENT_ID:
        raise BadRequest(f"id must be a whole number from 1 to {MAX_EVENT_ID}")
    return value
