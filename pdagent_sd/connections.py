"""Client connections, every one served by the daemon's main thread from one selector.

A thread per client made each acknowledged send cross four threads, and the daemon spent more CPU handing the
GIL around than doing the work. Here a request line is read, parsed and validated on this thread; a send goes
to the store's writer and its reply comes back through a wake-up pipe once the commit is on disk, so one fsync
answers every client whose event it carried. Other ops run on the handlers' own thread and come back the same
way.

Per connection: one request at a time, replies in order; each line must arrive whole within client_timeout of
the moment the daemon starts waiting for it (a client sending a byte now and then cannot hold its slot); a
line longer than MAX_LINE is refused and the connection closed; after the client's end of stream, what it sent
is still answered, then the connection closes.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import selectors
import socket
import time
from typing import Deque, Dict, Optional, Tuple, Union

from pdagent_sd.errors import BadRequest, PdagentError
from pdagent_sd.handlers import Dispatcher, Later, Peer, peer_of
from pdagent_sd.protocol import MAX_LINE, Message, decode_request, encode, error_reply

logger = logging.getLogger(__name__)

RECV_BYTES = 65536
INTERNAL_ERROR: Message = {"ok": False, "code": "internal_error",
                           "error": "internal error in pdagentd; see its journal"}


class Connection:
    __slots__ = ("sock", "peer", "inbox", "scanned", "outbox", "deadline", "busy", "ended", "closing", "events")

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
                 timeout: float) -> None:
        self.listener = listener
        self.handlers = handlers
        self.max_connections = max_connections
        self.timeout = timeout
        self.selector = selectors.DefaultSelector()
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
                self._read(key.data)
        self._finish_done()

    def wake(self) -> None:
        """From any thread: make the loop look at finished work now."""
        if not self._wake_pending:
            self._wake_pending = True
            try:
                os.write(self.wake_fd, b"\0")
            except BlockingIOError:  # full pipe: the loop is about to wake anyway
                pass

    def busy(self) -> bool:
        return bool(self.connections)

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
        while len(self.connections) < self.max_connections:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client waits in the backlog for a later try
                logger.warning("cannot accept a client connection: %s", exc)
                return
            try:
                peer = peer_of(sock, os.geteuid())
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock, peer)
            self.connections[sock.fileno()] = conn
            self._set_deadline(conn, time.monotonic())
            self._watch(conn)
        self._update_listening()

    # --- reading and answering --------------------------------------------------------------------------------

    def _read(self, conn: Connection) -> None:
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
        self._advance(conn)

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
        answer: Union[Message, Later]
        try:
            answer = self.handlers.dispatch(decode_request(line), conn.peer)
        except PdagentError as error:
            answer = error_reply(error)
        except Exception:  # noqa: BLE001 - a bug answers this request, it must not end the daemon
            logger.exception("internal error while handling a request")
            answer = INTERNAL_ERROR
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
                reply = self._outcome(later)
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

    @staticmethod
    def _outcome(later: Later) -> Message:
        try:
            return later.finish(later.future.result())
        except PdagentError as error:
            return error_reply(error)
        except Exception:  # noqa: BLE001
            logger.exception("internal error while handling a request")
            return INTERNAL_ERROR

    def _reply(self, conn: Connection, reply: Message) -> None:
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
            self._set_deadline(conn, time.monotonic())

    def _set_deadline(self, conn: Connection, now: float) -> None:
        conn.deadline = now + self.timeout
        # a deadline set now is the latest there is, so the earliest one stands unless there was none
        if self.next_expiry == float("inf"):
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
        self.next_expiry = earliest

    def _close(self, conn: Connection) -> None:
        fileno = conn.sock.fileno()
        if fileno < 0:
            return
        if conn.events:
            self.selector.unregister(conn.sock)
            conn.events = 0
        del self.connections[fileno]
        conn.sock.close()

