"""pdagentd: sockets, connections, sd_notify, idle exit and signals. What each request does is handlers.py's.

Always in the foreground. Socket-activated (LISTEN_FDS) it adopts fd 3 and may exit when idle, since systemd
keeps the socket; started by hand it binds --socket itself and runs until stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from typing import List, Optional, Tuple

from pdagent_sd import __version__, exitcodes, journal
from pdagent_sd import config as config_module
from pdagent_sd.errors import BadRequest, ConfigError, PdagentError
from pdagent_sd.handlers import Handlers, peer_of
from pdagent_sd.journal import Kind, report
from pdagent_sd.protocol import MAX_LINE, decode_request, encode, error_reply, socket_path
from pdagent_sd.scheduler import Scheduler
from pdagent_sd.store import Store

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/pdagent"
TICK_SEC = 1.0
RETENTION_EVERY_SEC = 3600.0
STATUS_EVERY_SEC = 2.0
STOP_GRACE_SEC = 5.0


class Notifier:
    """sd_notify through sdnotify; silently nothing outside systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            from sdnotify import SystemdNotifier

            self._notifier = SystemdNotifier()
        self._last_status = ""

    def notify(self, text: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(text)

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.notify("STATUS=" + text)


def listen_socket(path: str) -> Tuple[socket.socket, bool]:
    """The socket systemd passed us (LISTEN_FDS), or one we bind at `path`; and whether it was passed."""
    fds = _listen_fds()
    if fds:
        sock = socket.socket(fileno=fds[0])
        return sock, True
    return bind_socket(path), False


def _listen_fds() -> List[int]:
    try:
        from systemd.daemon import listen_fds
    except ImportError:  # no python-systemd: the protocol is simple enough to read by hand
        if os.environ.get("LISTEN_PID") != str(os.getpid()):
            return []
        count = int(os.environ.pop("LISTEN_FDS", "0") or 0)
        os.environ.pop("LISTEN_PID", None)
        return list(range(3, 3 + count))
    return list(listen_fds())


def bind_socket(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # a stale socket left by a daemon that died
        else:
            raise ConfigError(f"another pdagentd is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)  # any local user may send, as with the old agent
    sock.listen(socket.SOMAXCONN)  # what systemd's Backlog= defaults to: bursts of pd-send wait, not fail
    return sock


def state_directory(explicit: Optional[str]) -> str:
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return explicit or os.environ.get("PDAGENT_STATE_DIR") or from_systemd or DEFAULT_STATE_DIR


class Daemon:
    def __init__(self, config: config_module.Config, sock: socket.socket, activated: bool, state_dir: str,
                 bound_path: Optional[str] = None) -> None:
        self.config = config
        self.listener = sock
        self.activated = activated
        self.bound_path = bound_path
        self.store = Store(state_dir, max_pending=config.max_pending_events,
                           on_corrupt=lambda target, reason: report(
                               Kind.CORRUPT_QUEUE, f"queue database damaged ({reason}); moved aside to {target}; "
                               "the agent goes on with an empty queue", error=reason))
        self.scheduler = Scheduler(self.store, config)
        self.started = time.time()
        self.handlers = Handlers(self.store, self.scheduler, started=self.started, default_source=_fqdn)
        self.notifier = Notifier()
        self.stop_requested = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.last_activity = time.monotonic()
        self._wake_fd = -1  # the main loop's wake-up pipe while it runs

    # --- the main loop --------------------------------------------------------------------------------

    def run(self) -> int:
        self.store.open()
        self.scheduler.start()
        self._purge_expired()
        report(Kind.STARTED, f"pdagentd {__version__} started: {self.store.pending_count} pending event(s), "
               f"delivering to {self.config.events_url}")
        self.notifier.notify("READY=1")
        self._update_status()
        try:
            self._serve()
        finally:
            self._shut_down()
        return exitcodes.IOERR if self.store.damage is not None else exitcodes.OK

    def _serve(self) -> None:
        wake_read, wake_write = os.pipe()
        self._wake_fd = wake_write
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_requested.set())
        self.listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(wake_read, selectors.EVENT_READ)
        listening = False
        watchdog_every = int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 2e6
        next_watchdog = next_retention = next_status = time.monotonic()
        try:
            while not self.stop_requested.is_set():
                wanted = self.connections < self.config.max_connections
                if wanted != listening:
                    if wanted:
                        selector.register(self.listener, selectors.EVENT_READ)
                    else:
                        selector.unregister(self.listener)
                    listening = wanted
                for key, _ in selector.select(TICK_SEC):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        os.read(wake_read, 512)
                now = time.monotonic()
                if watchdog_every and self.config.watchdog and now >= next_watchdog and self._healthy():
                    self.notifier.notify("WATCHDOG=1")
                    next_watchdog = now + watchdog_every
                if now >= next_retention:
                    next_retention = now + RETENTION_EVERY_SEC
                    self._purge_expired()
                if now >= next_status:
                    next_status = now + STATUS_EVERY_SEC
                    self._update_status()
                if self.store.damage is not None:
                    # Every read and write would fail from now on; at the next start (systemd restarts us on
                    # failure) quick_check moves the file aside and the agent goes on with a new queue.
                    report(Kind.CORRUPT_QUEUE, f"queue database found damaged while running ({self.store.damage}); "
                           "exiting so that the next start moves it aside", error=self.store.damage)
                    break
                if self._idle_long_enough(now):
                    logger.info("idle for %ss with an empty queue: exiting (systemd keeps the socket)",
                                self.config.idle_exit_sec)
                    break
        finally:
            signal.set_wakeup_fd(-1)
            selector.close()
            os.close(wake_read)
            with self.lock:  # no connection thread may write to the fd number once it is closed
                self._wake_fd = -1
                os.close(wake_write)

    def _purge_expired(self) -> None:
        """Retention runs in the writer thread between commits; the main loop does not wait for it."""
        self.store.purge_expired(self.config.keep_delivered, self.config.keep_failed)

    def _healthy(self) -> bool:
        return self.store.writer_alive() and self.scheduler.alive()

    def _idle_long_enough(self, now: float) -> bool:
        if not self.activated or self.config.idle_exit_sec <= 0:
            return False
        with self.lock:
            busy = self.connections > 0
        if busy or self.store.pending_count > 0 or not self.scheduler.idle():
            self.last_activity = now
            return False
        return now - self.last_activity >= self.config.idle_exit_sec

    def _update_status(self) -> None:
        try:
            status = self.handlers.status(None, reveal=False)
        except Exception:  # noqa: BLE001 - a status line is not worth the daemon
            logger.exception("cannot compute the status line")
            return
        totals = status["totals"]
        last = status["last_delivery"]
        last_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "never"
        text = (f"Pending: {totals['pending']}, failed: {totals['failed']}, "
                f"throttled keys: {status['throttled_keys']}, last delivery: {last_text}")
        if status["warnings"]:
            text += " (WARNING: damaged queue moved aside; see pd-queue status)"
        self.notifier.status(text)

    def _shut_down(self) -> None:
        self.notifier.notify("STOPPING=1")
        self.listener.close()
        if self.bound_path and not self.activated:
            try:
                os.unlink(self.bound_path)
            except OSError:
                pass
        self.scheduler.stop(STOP_GRACE_SEC)
        self.store.close()
        report(Kind.STOPPED, f"pdagentd stopped: {self.store.pending_count} pending event(s) kept")

    # --- connections ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        with self.lock:
            self.connections += 1
            self.last_activity = time.monotonic()
        threading.Thread(target=self._serve_connection, args=(conn,), name="client", daemon=True).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(self.config.client_timeout_sec)
            peer = peer_of(conn, os.geteuid())
            reader = LineReader(conn, self.config.client_timeout_sec)
            while not self.stop_requested.is_set():
                line = reader.readline()
                if not line:
                    return
                if len(line) > MAX_LINE:
                    conn.sendall(encode(error_reply(BadRequest(
                        f"request line longer than {MAX_LINE} bytes; closing the connection"))))
                    return
                if not line.strip():
                    continue
                conn.sendall(encode(self._reply(line, peer)))
        except (OSError, ValueError):
            pass  # the client went away or timed out: nothing to answer
        finally:
            conn.close()
            with self.lock:
                self.connections -= 1
                self.last_activity = time.monotonic()
                if self.connections == self.config.max_connections - 1:
                    self._wake_main_loop()  # it stopped listening at the limit: waiting clients go on now

    def _wake_main_loop(self) -> None:
        """Called with self.lock held."""
        if self._wake_fd < 0:
            return
        try:
            os.write(self._wake_fd, b"\0")
        except OSError:  # the pipe is full: the main loop wakes up anyway
            pass

    def _reply(self, line: bytes, peer) -> dict:  # type: ignore[no-untyped-def,type-arg]
        try:
            return self.handlers.handle(decode_request(line), peer)
        except PdagentError as error:
            return error_reply(error)
        except Exception:  # noqa: BLE001 - a bug answers this request, it must not end the daemon
            logger.exception("internal error while handling a request")
            return {"ok": False, "code": "internal_error", "error": "internal error in pdagentd; see its journal"}


class LineReader:
    """Request lines from one client. Each line must arrive whole within `timeout` of the moment the daemon
    starts waiting for it: a per-recv timeout alone would let a client that sends a byte now and then hold
    its connection (and one of max_connections) for ever."""

    def __init__(self, conn: socket.socket, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.buffer = bytearray()

    def readline(self) -> bytes:
        """The next line with its newline; at most MAX_LINE + 1 bytes of a longer one (the caller refuses it);
        what is left at the end of the stream, or b"" when nothing is. Raises socket.timeout."""
        deadline = time.monotonic() + self.timeout
        scanned = 0
        while True:
            end = self.buffer.find(b"\n", scanned)
            if end >= 0 or len(self.buffer) > MAX_LINE:
                size = end + 1 if end >= 0 else MAX_LINE + 1
                line = bytes(self.buffer[:size])
                del self.buffer[:size]
                return line
            scanned = len(self.buffer)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("no complete request line in time")
            self.conn.settimeout(remaining)
            chunk = self.conn.recv(65536)
            if not chunk:
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            self.buffer += chunk


_FQDN: List[str] = []


def _fqdn() -> str:
    """This host's FQDN, looked up once and only when an event needs it (a slow resolver must not delay start)."""
    if not _FQDN:
        _FQDN.append(socket.getfqdn())
    return _FQDN[0]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdagentd",
        description="The pdagent-sd daemon: accepts events on a Unix socket, commits them to a durable queue "
                    "and delivers them to the PagerDuty Events API. Runs in the foreground; under systemd it "
                    "is socket-activated by pdagent.socket.")
    p.add_argument("--socket", metavar="PATH",
                   help="socket to bind when not socket-activated (default: $PDAGENT_SOCKET or "
                        "/run/pdagent/pdagent.sock)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="queue directory (default: $PDAGENT_STATE_DIR, $STATE_DIRECTORY or /var/lib/pdagent)")
    p.add_argument("--events-url", metavar="URL", help="Events API base URL (overrides events_url)")
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $PDAGENT_CONFIG or /etc/pdagent/agent.conf, then FILE.d/*.conf)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"pdagentd {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    journal.setup(debug=args.debug)
    os.umask(0o077)  # queue.db and its WAL are readable by the service alone
    try:
        environ = dict(os.environ)
        if args.events_url:
            environ["PDAGENT_EVENTS_URL"] = args.events_url
        config = config_module.load(args.config, environ)
        path = socket_path(args.socket)
        sock, activated = listen_socket(path)
        return Daemon(config, sock, activated, state_directory(args.state_dir), bound_path=path).run()
    except PdagentError as error:
        if args.debug:
            raise
        hint = f" ({error.hint})" if error.hint else ""
        logger.error("cannot start: %s%s", error.message, hint)
        return exitcodes.CONFIG if isinstance(error, ConfigError) else 1
    except OSError as error:
        if args.debug:
            raise
        logger.error("cannot start: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
