"""Client connections, every one served by the daemon's main thread from one selector.

A thread per client made each acknowledged send cross four threads, and the daemon spent more CPU handing the
GIL around than doing the work. Here a request line is read, parsed and validated on this thread; a send goes
to the store's writer and its reply comes back through a wake-up pipe once the commit is on disk, so one fsync
answers every client whose event it carried. Other ops run on the handlers' own thread and come back the same
way.

Per connection: one request at a time, replies in order; the first line must arrive whole within
first_line_timeout of the connection being accepted, and each later one within client_timeout of the last
reply (a client sending a byte now and then cannot hold its slot); a line longer than MAX_LINE is refused and
the connection closed; after the client's end of stream, what it sent is still answered, then the connection
closes. A send whose client has closed its connection completely before the line is read (it gave up waiting)
is not committed: nobody would learn that it was, and a caller that retries would send it twice.

Slots per uid and the line an untrusted uid's connections wait in are admission.py's; a user reconnecting
faster than the daemon can turn it away fills the listen backlog again.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import select
import selectors
import socket
import time
from typing import Any, Deque, Dict, FrozenSet, List, Optional, Tuple

from pdagent_sd.admission import Admission, Admitted
from pdagent_sd.errors import BadRequest
from pdagent_sd.handlers import Dispatcher, Later, Peer, peer_of
from pdagent_sd.protocol import MAX_LINE, Message, encode, error_reply
from pdagent_sd.request_pipeline import RequestPipeline

logger = logging.getLogger(__name__)

RECV_BYTES = 65536
ACCEPTS_PER_POLL = 64  # a user reconnecting in a loop must not keep the loop from its other work
HANGUP = 4  # beside selectors.EVENT_READ and EVENT_WRITE: the client closed its connection (POLLHUP, POLLERR)


class HangupSelector(selectors.EpollSelector):
    """The stock EpollSelector, except that a hang-up is reported as HANGUP. The stock one folds it into
    EVENT_WRITE and then masks that off a connection watched for reading, so a loop could not tell a client that
    is there from one that has gone without asking the kernel again (see ConnectionServer._gave_up)."""

    def select(self, timeout: Optional[float] = None) -> List[Tuple[Any, int]]:
        stock: Any = self  # its epoll object and map of keys, which typeshed does not declare
        wait = -1.0 if timeout is None else 0.0 if timeout <= 0 else math.ceil(timeout * 1e3) * 1e-3
        try:
            raw = stock._selector.poll(wait, max(len(stock._fd_to_key), 1))
        except InterruptedError:
            return []
        ready = []
        for fd, event in raw:
            key = stock._key_from_fd(fd)
            if key:
                events = ((selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0)
                          | (selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)) & key.events
                ready.append((key, events | (HANGUP if event & (select.EPOLLHUP | select.EPOLLERR) else 0)))
        return ready


def _selector() -> selectors.BaseSelector:
    """HangupSelector where there is epoll and the stock selector's insides are what it was written against; else
    the default one, and every send asks the kernel whether its client is still there."""
    if hasattr(selectors, "EpollSelector"):
        selector = HangupSelector()
        if all(hasattr(selector, name) for name in ("_selector", "_fd_to_key", "_key_from_fd")):
            return selector
        selector.close()
    return selectors.DefaultSelector()


class Connection:
    __slots__ = ("sock", "peer", "inbox", "scanned", "outbox", "deadline", "busy", "ended", "closing", "events",
                 "counted", "heard")

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.inbox = bytearray()
        self.scanned = 0  # inbox[:scanned] holds no newline
        self.outbox = bytearray()
        self.deadline = 0.0  # when the line or the reply being waited for is too late
        self.busy = False  # a request is being handled: nothing more is read until its reply is out
        self.ended = False  # the client shut down its end: answer what it sent, then close
        self.closing = False  # close once the outbox is written
        self.events = 0  # what the selector watches for
        self.counted = False  # holds one of its (untrusted) uid's slots
        self.heard = False  # while the lines of a read are handled: the client had not hung up just before it

    def next_line(self) -> Optional[bytes]:
        """A complete line from the inbox, or MAX_LINE + 1 bytes of one too long (the caller refuses it), or
        what is left once the client has ended; None while more is needed."""
        end = self.inbox.find(b"\n", self.scanned)
        if end < 0 and len(self.inbox) <= MAX_LINE and not (self.ended and self.inbox):
            self.scanned = len(self.inbox)
            return None
        size = end + 1 if end >= 0 else min(len(self.inbox), MAX_LINE + 1)
        line = bytes(self.inbox[:size])
        del self.inbox[:size]
        self.scanned = 0
        return line


class ConnectionServer:
    def __init__(self, listener: socket.socket, handlers: Dispatcher, *, max_connections: int,
                 timeout: float, first_line_timeout: Optional[float] = None, reserved: int = 0,
                 per_sender: int = 0, trusted_gids: FrozenSet[int] = frozenset()) -> None:
        self.listener = listener
        self.pipeline = RequestPipeline(handlers)
        self.max_connections = max_connections
        self.timeout = timeout
        self.first_line_timeout = timeout if first_line_timeout is None else first_line_timeout
        self.trusted_gids = trusted_gids
        self.admission: Admission[Connection] = Admission(max_connections=max_connections, timeout=timeout,
                                                          reserved=reserved, per_sender=per_sender)
        self._hangup = select.poll()
        self.selector = _selector()
        self.tells_hangup = isinstance(self.selector, HangupSelector)
        self.connections: Dict[int, Connection] = {}
        self.accepting = True
        self.listening = False
        self.next_expiry = float("inf")  # no deadline is earlier than this
        self._done: Deque[Tuple[Connection, Later]] = collections.deque()
        self._wake_pending = False
        self.wake_read, self.wake_fd = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_fd, False)
        self.selector.register(self.wake_read, selectors.EVENT_READ)
        listener.setblocking(False)

    @property
    def handlers(self) -> Dispatcher:
        """What answers the requests: the daemon swaps it while the queue cannot be opened or the settings are
        bad, and the request pipeline must answer with the one in place now."""
        return self.pipeline.handlers

    @handlers.setter
    def handlers(self, handlers: Dispatcher) -> None:
        self.pipeline.handlers = handlers

    # --- the loop ---------------------------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Wait up to `timeout` for work and do it; the caller's loop calls this again and again."""
        self._update_listening()
        now = time.monotonic()
        if self.next_expiry <= now:
            self._expire(now)
        wait = max(0.0, min(timeout, self.next_expiry - now))
        for key, mask in self.selector.select(wait):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj == self.wake_read:
                self._drain_wake_pipe()
            elif mask & selectors.EVENT_WRITE:
                conn = key.data
                self._flush(conn)
                if conn.sock.fileno() >= 0 and not conn.outbox:
                    self._advance(conn)
            else:
                # No HANGUP: this client had not hung up when the selector looked, a moment before the read.
                self._read(key.data, heard=self.tells_hangup and not mask & HANGUP)
        self._finish_done()
        if self.admission.promote_wanted:
            self._promote(time.monotonic())

    def wake(self) -> None:
        """From any thread: make the loop look at finished work now."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self.wake_fd, b"\0")
            except BlockingIOError:  # full pipe: the loop is about to wake anyway
                pass

    def busy(self) -> bool:
        return bool(self.connections or self.admission.parked_total)

    def stop_accepting(self) -> None:
        self.accepting = False
        self._update_listening()

    def drain(self, grace: float) -> None:
        """After stop: answer requests already being handled (a committed send deserves its reply)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.busy or c.outbox for c in self.connections.values()):
            self.poll(min(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        self.admission.close()
        self.selector.close()
        os.close(self.wake_read)
        os.close(self.wake_fd)

    # --- accepting ------------------------------------------------------------------------------------------

    def _update_listening(self) -> None:
        wanted = self.accepting and len(self.connections) < self.max_connections
        if wanted != self.listening:
            if wanted:
                self.selector.register(self.listener, selectors.EVENT_READ)
            else:
                self.selector.unregister(self.listener)
            self.listening = wanted

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_POLL):
            if len(self.connections) >= self.max_connections:
                break
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # EMFILE and the like: the client waits in the backlog for a later try
                logger.warning("cannot accept a client connection: %s", exc)
                break
            try:
                peer = peer_of(sock, os.geteuid(), self.trusted_gids)
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock, peer)
            admitted = self.admission.admit(conn)
            if admitted is Admitted.PARKED and conn.deadline < self.next_expiry:
                self.next_expiry = conn.deadline
            if admitted is not Admitted.SERVED:
                continue
            self.connections[sock.fileno()] = conn
            self._set_deadline(conn, time.monotonic(), self.first_line_timeout)
            self._watch(conn)
        self._update_listening()

    def _promote(self, now: float) -> None:
        """Serve the waiting connections admission lets in now that slots are free."""
        for conn in self.admission.promote():
            self.connections[conn.sock.fileno()] = conn
            self._set_deadline(conn, now, self.first_line_timeout)
            self._watch(conn)
        self._update_listening()

    def _gave_up(self, conn: Connection) -> bool:
        """The client closed its connection completely (not only its sending side): nobody reads the reply."""
        fileno = conn.sock.fileno()
        self._hangup.register(fileno, 0)  # POLLHUP is reported whatever the mask
        try:
            return any(mask & select.POLLHUP for _, mask in self._hangup.poll(0))
        finally:
            self._hangup.unregister(fileno)

    # --- reading and answering --------------------------------------------------------------------------------

    def _read(self, conn: Connection, heard: bool = False) -> None:
        try:
            chunk = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if chunk:
            conn.inbox += chunk
        else:
            conn.ended = True
            heard = False  # an end of stream: let each send ask whether it was a hang-up
        conn.heard = heard
        try:
            self._advance(conn)
        finally:
            conn.heard = False

    def _advance(self, conn: Connection) -> None:
        """Answer the lines the inbox holds, one at a time, until one needs waiting for. A loop, not a
        recursion: a client may send thousands of lines that are answered on the spot."""
        while not (conn.busy or conn.outbox or conn.closing):
            line = conn.next_line()
            if line is None:
                if conn.ended:
                    self._close(conn)
                    return
                break
            if len(line) > MAX_LINE:
                conn.closing = True
                self._reply(conn, error_reply(BadRequest(
                    f"request line longer than {MAX_LINE} bytes; closing the connection")))
            elif line.strip():
                self._handle(conn, line)
            if conn.sock.fileno() < 0:  # closed by a failed write
                return
        if conn.closing and not conn.outbox:
            self._close(conn)
            return
        self._watch(conn)

    def _handle(self, conn: Connection, line: bytes) -> None:
        # The selector's word, when the line was read just after it, spares a poll() per send: a system call
        # that hands the GIL to the writer and waits to get it back (a tenth of the enqueue rate).
        answer = self.pipeline.answer(line, conn.peer, lambda: not conn.heard and self._gave_up(conn))
        if answer is None:
            self._close(conn)
            return
        if isinstance(answer, Later):
            conn.busy = True
            later = answer
            later.future.add_done_callback(lambda _: self._finished(conn, later))
        else:
            self._reply(conn, answer)

    def _finished(self, conn: Connection, later: Later) -> None:
        """Called in the thread that finished the work (the writer, the handlers' thread)."""
        self._done.append((conn, later))
        self.wake()

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _finish_done(self) -> None:
        while True:
            while self._done:
                conn, later = self._done.popleft()
                reply = self.pipeline.outcome(later)
                conn.busy = False
                if conn.sock.fileno() >= 0:
                    self._reply(conn, reply)
                    if conn.sock.fileno() >= 0:
                        self._advance(conn)
            # Cleared only once the deque is empty: the writer finishes a whole batch of sends together, and
            # a wake-up (a write to the pipe, a return from the selector) for each of them cost more than the
            # rest of accepting an event. Work finished before this line was appended without waking the loop;
            # the check below picks it up.
            self._wake_pending = False
            if not self._done:
                return

    def _reply(self, conn: Connection, reply: Message) -> None:
        self.pipeline.replying(conn.peer, reply)
        conn.outbox += encode(reply)
        self._flush(conn, first=True)

    def _flush(self, conn: Connection, first: bool = False) -> None:
        """Write what the socket takes. The deadline starts over only when the reply starts waiting for a
        client that does not read (`first`), or when it is all out and the next line is waited for: a
        client reading a byte now and then cannot hold its slot either."""
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:  # the client went away without its reply
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                logger.debug("cannot answer a client: %s", exc)
            self._close(conn)
            return
        del conn.outbox[:sent]
        if first or not conn.outbox:
            self._set_deadline(conn, time.monotonic(), self.timeout)

    def _set_deadline(self, conn: Connection, now: float, timeout: float) -> None:
        conn.deadline = now + timeout
        if conn.deadline < self.next_expiry:
            self.next_expiry = conn.deadline

    def _watch(self, conn: Connection) -> None:
        """Watch for what the connection waits for: room to write its reply, or more of its lines. Reading
        goes on while a request is handled (the usual client sends nothing meanwhile, and this spares two
        epoll_ctl calls a request), up to one line ahead."""
        if conn.sock.fileno() < 0:
            return
        if conn.outbox:
            wanted = selectors.EVENT_WRITE
        elif conn.ended or len(conn.inbox) > MAX_LINE:
            wanted = 0
        else:
            wanted = selectors.EVENT_READ
        if wanted == conn.events:
            return
        if conn.events and wanted:
            self.selector.modify(conn.sock, wanted, conn)
        elif wanted:
            self.selector.register(conn.sock, wanted, conn)
        else:
            self.selector.unregister(conn.sock)
        conn.events = wanted

    def _expire(self, now: float) -> None:
        earliest = float("inf")
        for conn in list(self.connections.values()):
            if conn.busy and not conn.outbox:
                continue  # the daemon's own work has no client deadline
            if conn.deadline <= now:
                self._close(conn)
            else:
                earliest = min(earliest, conn.deadline)
        self.next_expiry = min(earliest, self.admission.expire_parked(now))

    def _close(self, conn: Connection) -> None:
        fileno = conn.sock.fileno()
        if fileno < 0:
            return
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        del self.connections[fileno]
        self.admission.release(conn)
        conn.sock.close()

