"""Admission of client connections: the slots per uid and the line each untrusted uid waits in.

Trusted senders (root, the service's user, group pdagent, trusted_groups) may use all of max_connections; every
other uid at most sender_max_connections, and all of them together no more than max_connections -
reserved_connections. A connection beyond that waits in its uid's own line inside the daemon (accepted, not
read) and is served when one of that uid's slots frees up, or answered `busy` and closed after client_timeout
(pd-send then tries again). Waiting there rather than in the kernel's listen backlog is what keeps a trusted
client from queueing behind thousands of another user's connections: the backlog is first come, first served.
Past PARK_PER_SENDER waiting connections of one uid (or the file descriptors left), more are answered `busy` at
once. The selector loop (connections.py) asks Admission and serves what it lets in.
"""

from __future__ import annotations

import collections
import enum
import resource
import socket
import time
from typing import Deque, Dict, Generic, List, Protocol, TypeVar

from pdagent_sd.errors import Busy
from pdagent_sd.handlers import Peer
from pdagent_sd.protocol import encode, error_reply

PARK_PER_SENDER = 4096  # connections of one untrusted uid waiting for a slot inside the daemon
FDS_KEPT_FREE = 128  # for the queue, the journal, HTTPS connections: never used by waiting connections


class Admitted(enum.Enum):
    SERVED = "served"  # holds a slot (or needs none): serve it now
    PARKED = "parked"  # waits in its uid's line, until its deadline
    REFUSED = "refused"  # answered busy and closed


class Waiting(Protocol):
    """What admission needs of a connection."""

    sock: socket.socket
    peer: Peer
    deadline: float
    counted: bool


C = TypeVar("C", bound=Waiting)


class Admission(Generic[C]):
    """The untrusted uids' slots, counted, and their lines of waiting connections."""

    def __init__(self, *, max_connections: int, timeout: float, reserved: int = 0, per_sender: int = 0) -> None:
        self.max_connections = max_connections
        self.timeout = timeout
        self.untrusted_max = max(1, max_connections - reserved)  # slots for all untrusted uids together
        self.per_sender = per_sender or max_connections
        self.untrusted = 0
        self.by_uid: Dict[int, int] = {}
        self.refused = 0  # connections answered busy: a figure for the tests
        self.parked: Dict[int, Deque[C]] = {}  # per untrusted uid, connections waiting for a slot
        self.parked_total = 0
        self.park_max = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - max_connections - FDS_KEPT_FREE)
        self.promote_wanted = False  # a slot was freed while connections wait

    def admit(self, conn: C) -> Admitted:
        """A connection just accepted: trusted ones are served; an untrusted one takes one of its uid's slots,
        or waits in its uid's line, or is answered busy and closed when that line is full too."""
        if conn.peer.trusted:
            return Admitted.SERVED
        uid = conn.peer.uid
        if self._slot_free(uid) and uid not in self.parked:
            self._count(conn)
            return Admitted.SERVED
        line = self.parked.get(uid)
        if self.parked_total < self.park_max and (line is None or len(line) < PARK_PER_SENDER):
            if line is None:
                line = self.parked[uid] = collections.deque()
            conn.deadline = time.monotonic() + self.timeout
            line.append(conn)
            self.parked_total += 1
            return Admitted.PARKED
        self._refuse(conn)
        return Admitted.REFUSED

    def promote(self) -> List[C]:
        """The waiting connections whose uid has a free slot again, taking the uids in turn: each now holds its
        slot, and the caller serves them."""
        self.promote_wanted = False
        served: List[C] = []
        moved = True
        while moved and self.parked and self.untrusted < self.untrusted_max:
            moved = False
            for uid in list(self.parked):
                if not self._slot_free(uid):
                    continue
                line = self.parked[uid]
                conn = line.popleft()
                self.parked_total -= 1
                if not line:
                    del self.parked[uid]
                self._count(conn)
                served.append(conn)
                moved = True
                if self.untrusted >= self.untrusted_max:
                    break
        return served

    def expire_parked(self, now: float) -> float:
        """Answer busy the waiting connections that waited client_timeout; return the next such deadline."""
        earliest = float("inf")
        for uid in list(self.parked):
            line = self.parked[uid]
            while line and line[0].deadline <= now:
                self.parked_total -= 1
                self._refuse(line.popleft())
            if line:
                earliest = min(earliest, line[0].deadline)
            else:
                del self.parked[uid]
        return earliest

    def release(self, conn: C) -> None:
        """A served connection closes: the slot it held is free."""
        if conn.counted:
            conn.counted = False
            self.untrusted -= 1
            left = self.by_uid[conn.peer.uid] - 1
            if left:
                self.by_uid[conn.peer.uid] = left
            else:
                del self.by_uid[conn.peer.uid]
            self.promote_wanted = bool(self.parked)

    def close(self) -> None:
        for line in self.parked.values():
            for conn in line:
                conn.sock.close()
        self.parked.clear()

    def _slot_free(self, uid: int) -> bool:
        return self.by_uid.get(uid, 0) < self.per_sender and self.untrusted < self.untrusted_max

    def _count(self, conn: C) -> None:
        uid = conn.peer.uid
        self.by_uid[uid] = self.by_uid.get(uid, 0) + 1
        self.untrusted += 1
        conn.counted = True

    def _refuse(self, conn: C) -> None:
        uid = conn.peer.uid
        held = self.by_uid.get(uid, 0)
        if held >= self.per_sender:
            why = f"uid {uid} already holds {held} connections (sender_max_connections = {self.per_sender})"
        else:
            why = (f"{self.untrusted} connections from senders outside the trusted ones are open; the other "
                   f"{self.max_connections - self.untrusted_max} are reserved (reserved_connections)")
        self.refused += 1
        try:
            conn.sock.send(encode(error_reply(Busy(why, hint="try again in a moment"))))
        except OSError:
            pass
        conn.sock.close()
