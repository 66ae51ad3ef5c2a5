"""pdagentd: sockets, connections, sd_notify, idle exit and signals. What each request does is handlers.py's.

Always in the foreground. Socket-activated (LISTEN_FDS) it adopts fd 3 and may exit when idle, since systemd
keeps the socket; started by hand it binds --socket itself and runs until stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import socket
import stat
import sys
import threading
import time
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

from pdagent_sd import __version__, exitcodes, journal, marker, statedir
from pdagent_sd import config as config_module
from pdagent_sd.connections import ConnectionServer
from pdagent_sd.errors import ConfigError, PdagentError, StorageError
from pdagent_sd.handlers import Handlers, Misconfigured, Unavailable, group_id
from pdagent_sd.heartbeat_ops import HeartbeatWatch
from pdagent_sd.heartbeat_store import HeartbeatBook, note_boot
from pdagent_sd.heartbeat_store import waiting as heartbeats_waiting
from pdagent_sd.heartbeat_timer import Arming
from pdagent_sd.journal import Kind, report
from pdagent_sd.protocol import socket_path
from pdagent_sd.queuetypes import Quotas, Superseded
from pdagent_sd.scheduler import Scheduler
from pdagent_sd.statustypes import State
from pdagent_sd.store import Store

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/pdagent"
TICK_SEC = 1.0
RETENTION_EVERY_SEC = 3600.0
STATUS_EVERY_SEC = 2.0
STOP_GRACE_SEC = 5.0
OPEN_RETRY_SEC = 5
HANDOVER_SEC = 0.3


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
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):  # lstat: a symlink planted here is not our socket
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
    # Any local user may send, as with the old agent: the socket is made 0666 by the umask at bind(), not by a
    # chmod(path) afterwards, which would follow a symlink swapped in at the path in between.
    old_umask = os.umask(0o111)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(socket.SOMAXCONN)  # what systemd's Backlog= defaults to: bursts of pd-send wait, not fail
    return sock


def trusted_gids(names: str) -> FrozenSet[int]:
    """The gids of trusted_groups; a group that does not exist (yet) is named in the log and left out."""
    gids = set()
    for name in names.split():
        gid = group_id(name)
        if gid is None:
            logger.warning("trusted_groups: there is no group %s on this system; ignoring it", name)
        else:
            gids.add(gid)
    return frozenset(gids)


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
        self.store = Store(state_dir, quotas=Quotas(
                               max_pending=config.max_pending_events,
                               reserved_pending=min(config.reserved_pending_events, config.max_pending_events),
                               sender_events=config.sender_max_events, sender_bytes=config.sender_max_bytes),
                           on_corrupt=lambda target, reason: report(
                               Kind.CORRUPT_QUEUE, f"queue database damaged ({reason}); moved aside to {target}; "
                               "the agent goes on with an empty queue", error=reason),
                           on_marker_error=lambda path, error: report(
                               Kind.MARKER_FAILED, f"cannot create {path} ({error}): after a stop or a crash of "
                               "pdagentd, pending events wait for the next pd-send or the next boot",
                               error=error),
                           coalesce=config.coalesce, on_superseded=_report_superseded)
        self.scheduler = Scheduler(self.store, config)
        self.started = time.time()
        self.heartbeats = HeartbeatWatch(
            HeartbeatBook(self.store, host=socket.gethostname(), keys=config.keys,
                          per_user=config.heartbeat_max_per_user), Arming(state_dir), on_queued=self.scheduler.wake)
        self._paging = False
        self.handlers = Handlers(self.store, self.scheduler, started=self.started, default_source=_fqdn,
                                 keys=config.keys, trusted_gids=trusted_gids(config.trusted_groups),
                                 heartbeats=self.heartbeats)
        self.notifier = Notifier()
        self.stop_requested = threading.Event()
        self.server: Optional[ConnectionServer] = None  # while the main loop runs
        self.last_activity = time.monotonic()
        self.watchdog_every = int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 2e6
        self.next_watchdog = 0.0
        self.queue_open = False

    # --- the main loop --------------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        server = self.server = ConnectionServer(
            self.listener, self.handlers, max_connections=config.max_connections,
            timeout=config.client_timeout_sec, first_line_timeout=config.first_line_timeout_sec,
            reserved=config.reserved_connections, per_sender=config.sender_max_connections,
            trusted_gids=trusted_gids(config.trusted_groups))
        signal.set_wakeup_fd(server.wake_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_requested.set())
        try:
            if self._open_queue(server):
                self.scheduler.start()
                self._purge_expired()
                report(Kind.STARTED, f"pdagentd {__version__} started: {self.store.pending_count} pending "
                       f"event(s), delivering to {self.config.events_url}")
                self.notifier.notify("READY=1")
                self.handlers.in_background(self.heartbeats.refresh)
                self.handlers.in_background(self._update_status)
                threading.Thread(target=_fqdn, name="fqdn", daemon=True).start()  # resolved before it is needed
                self._serve(server)
            server.stop_accepting()
            server.drain(STOP_GRACE_SEC)
        finally:
            signal.set_wakeup_fd(-1)
            server.close()
            self._shut_down()
        return exitcodes.IOERR if self.store.damage is not None else exitcodes.OK

    def _open_queue(self, server: ConnectionServer) -> bool:
        """Open queue.db; False if asked to stop before it could be.

        When it cannot be opened (a full disk, a missing mount, permissions) the daemon stays up, answers every
        request with why (pd-send exits 75: try again) and tries again every OPEN_RETRY_SEC. Exiting instead
        would have systemd restart it until the unit's start limit failed pdagent.socket too, and then nothing
        would recover once the disk did."""
        failure: Optional[StorageError] = None
        since = time.monotonic()
        while True:
            try:
                statedir.prepare(self.store.state_dir)  # owner and mode, before any file in it is opened
                self.store.open()
            except StorageError as error:
                if failure is None:
                    logger.error("%s (%s); answering every request with this and trying again every %ds",
                                 error.message, error.hint, OPEN_RETRY_SEC)
                    self.notifier.notify("READY=1")  # up and answering, if only with the reason
                elif error.message != failure.message:
                    logger.error("%s (%s)", error.message, error.hint)
                failure = error
                server.handlers = Unavailable(failure)
                self.notifier.status(f"Waiting for the queue: {failure.message}; trying again every "
                                     f"{OPEN_RETRY_SEC}s")
            else:
                if failure is not None:
                    logger.info("queue opened after %.0fs of trying", time.monotonic() - since)
                    server.handlers = self.handlers
                self.queue_open = True
                return True
            next_try = time.monotonic() + OPEN_RETRY_SEC
            while time.monotonic() < next_try:
                if self.stop_requested.is_set():
                    return False
                server.poll(TICK_SEC)
                self._tend_watchdog(time.monotonic())

    def _serve(self, server: ConnectionServer) -> None:
        next_retention = next_status = time.monotonic()
        while not self.stop_requested.is_set():
            server.poll(TICK_SEC)
            now = time.monotonic()
            if self._healthy():
                self._tend_watchdog(now)
            if now >= next_retention:
                next_retention = now + RETENTION_EVERY_SEC
                self._purge_expired()
            if self.heartbeats.due(time.time()) and not self._paging:
                self._paging = True
                self.handlers.in_background(self._page_missed)
            if now >= next_status:
                next_status = now + STATUS_EVERY_SEC
                self.handlers.in_background(self._update_status)
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

    def _page_missed(self) -> None:
        try:
            self.heartbeats.page()
        finally:
            self._paging = False

    def _tend_watchdog(self, now: float) -> None:
        if self.watchdog_every and self.config.watchdog and now >= self.next_watchdog:
            self.notifier.notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog_every

    def _purge_expired(self) -> None:
        """Retention runs in the writer thread between commits; the main loop does not wait for it."""
        self.store.purge_expired(self.config.keep_delivered, self.config.keep_failed)

    def _healthy(self) -> bool:
        return self.store.writer_alive() and self.scheduler.alive()

    def _idle_long_enough(self, now: float) -> bool:
        if not self.activated or self.config.idle_exit_sec <= 0:
            return False
        busy = self.server is not None and self.server.busy()
        if busy or self.store.pending_count > 0 or not self.scheduler.idle() or self._paging \
                or self.heartbeats.due(time.time()):
            self.last_activity = now
            return False
        return now - self.last_activity >= self.config.idle_exit_sec

    def _update_status(self) -> None:
        """The STATUS= line, every STATUS_EVERY_SEC: from counts by state and what the scheduler holds in
        memory, not from the per-key status (a local user's junk keys made that a dict per key ever used,
        hundreds of megabytes every two seconds)."""
        if not self.notifier.enabled:
            return
        try:
            totals = self.store.reads.totals()
            last = self.handlers.last_delivery()
            held = self.handlers.held_keys()
        except Exception:  # noqa: BLE001 - a status line is not worth the daemon
            logger.exception("cannot compute the status line")
            return
        last_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last)) if last else "never"
        text = (f"Pending: {totals.get(State.PENDING.value, 0)}, failed: {totals.get(State.FAILED.value, 0)}, "
                f"keys throttled or backing off: {held}, last delivery: {last_text}")
        beats = self.heartbeats.counts()
        if any(beats.values()):
            text += (f", heartbeats: {sum(beats.values())}"
                     + (f" ({beats['late']} late, {beats['paged']} paged)" if beats["late"] or beats["paged"]
                        else ""))
        if self.store.corrupt_files():
            text += " (WARNING: damaged queue moved aside; see pd-queue status)"
        if self.store.marker_error is not None:
            text += f" (WARNING: cannot create {self.store.marker}: {self.store.marker_error})"
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
        self.handlers.close()
        self.store.close()
        if self.queue_open:
            self.heartbeats.exiting()  # the timer takes over the deadlines (heartbeat_timer.py)
            report(Kind.STOPPED, f"pdagentd stopped: {self.store.pending_count} pending event(s) kept")
        else:
            report(Kind.STOPPED, "pdagentd stopped before the queue could be opened; it was left as it was")

def wait_for_good_config(sock: socket.socket, error: ConfigError, load: Callable[[], config_module.Config],
                         files_signature: Callable[[], Tuple[Tuple[str, float, int], ...]]
                         ) -> Optional[config_module.Config]:
    """Socket-activated with a bad setting: hold the socket instead of exiting, until the files are fixed.

    Exiting (status 78) had systemd restart pdagentd five times in a few seconds, hit the start limit and fail
    pdagent.socket with it: every pd-send then failed with "No such file or directory" until someone restarted
    the socket by hand. Here the daemon stays up and delivers nothing: every request is answered with the file,
    the key and why (pd-send exits 78 and prints it), the journal and `systemctl status pdagent` say it, and
    the files are read again whenever one changes. Once they are good it goes on as if just started, with the
    same socket: nothing to restart. The queue is not opened meanwhile, so it stays exactly as it was."""
    notifier = Notifier()
    defaults = {setting.name: setting.default for setting in config_module.AGENT_SETTINGS}
    server = ConnectionServer(sock, Misconfigured(error), max_connections=defaults["max_connections"],
                              timeout=defaults["client_timeout_sec"],
                              first_line_timeout=defaults["first_line_timeout_sec"],
                              reserved=defaults["reserved_connections"],
                              per_sender=defaults["sender_max_connections"], trusted_gids=frozenset())
    stop = threading.Event()
    signal.set_wakeup_fd(server.wake_fd)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    watchdog_every = int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 2e6
    next_watchdog = 0.0
    files: Tuple[Tuple[str, float, int], ...] = ()
    logger.error("configuration error, not delivering: %s; every request is refused with this until the file "
                 "is fixed (read again as soon as a file changes; `pdagentd --check-config` checks it)",
                 error.message)
    notifier.notify("READY=1")  # up and answering, if only with the reason
    try:
        while not stop.is_set():
            now = time.monotonic()
            if watchdog_every and now >= next_watchdog:
                notifier.notify("WATCHDOG=1")
                next_watchdog = now + watchdog_every
            seen, files = files, files_signature()
            if files != seen:  # a few stat() calls a second; the files are parsed only when one has changed
                try:
                    config = load()
                except ConfigError as again:
                    if again.message != error.message:
                        logger.error("configuration error, not delivering: %s", again.message)
                    error = again
                    server.handlers = Misconfigured(error)
                    notifier.status(f"CONFIGURATION ERROR, not delivering: {error.message} (fix the file: "
                                    "it is read again when it changes)")
                else:
                    logger.info("configuration fixed: starting")
                    # New connections wait in the socket's backlog for the daemon proper; those already taken
                    # are answered (still with the error) rather than reset when this server closes.
                    server.stop_accepting()
                    until = time.monotonic() + HANDOVER_SEC
                    while time.monotonic() < until:
                        server.poll(0.05)
                    server.drain(STOP_GRACE_SEC)
                    return config
            server.poll(TICK_SEC)
        return None
    finally:
        signal.set_wakeup_fd(-1)
        server.close()


def _signature(main_file: str) -> Tuple[Tuple[str, float, int], ...]:
    """Which configuration files there are and when each last changed: read again only when this changes."""
    found = []
    for name in [main_file, *config_module.config_files(main_file)]:
        try:
            info = os.stat(name)
        except OSError:
            continue
        found.append((name, info.st_mtime, info.st_size))
    return tuple(found)


def check_config(path: Optional[str], environ: Dict[str, str]) -> int:
    """`pdagentd --check-config`: read the files as a start would; 0 if they are good, 78 (EX_CONFIG) naming the
    file, the key and why if not. [UnitAlerts] is checked too: pd-unit-alert keeps a default for a bad value
    there, but a check before a reload should still say so."""
    try:
        config = config_module.load(path, environ)
    except ConfigError as error:
        print(f"pdagentd: {error.message}", file=sys.stderr)
        return exitcodes.CONFIG
    main_file = path or environ.get("PDAGENT_CONFIG") or config_module.DEFAULT_CONFIG
    _, warnings = config_module.load_unit_alerts(main_file)
    bad = [warning for warning in warnings if "unknown key" not in warning]
    for warning in warnings:
        print(f"pdagentd: {warning}", file=sys.stderr)
    if bad:
        return exitcodes.CONFIG
    files = config_module.config_files(main_file) or ["no file, defaults"]
    print(f"pdagentd: configuration OK ({', '.join(files)}; {len(config.keys.names())} named key(s))")
    return exitcodes.OK


_FQDN: List[str] = []


def _report_superseded(events: List[Superseded]) -> None:
    """One journal record per event coalesced away: nothing leaves the queue unsaid."""
    for event in events:
        report(Kind.SUPERSEDED, f"event {event.id} ({event.api} {event.action}) superseded by event {event.by} of "
               "the same incident; it will not be sent", event_id=event.id, dedup_key=event.dedup_key,
               routing_key=event.routing_key, action=event.action, api=event.api, superseded_by=event.by)


def _fqdn() -> str:
    """This host's FQDN, looked up once and only when an event needs it (a slow resolver must not delay start)."""
    if not _FQDN:
        _FQDN.append(socket.getfqdn())
    return _FQDN[0]


def check_pending(state_dir: str) -> int:
    """At boot, before anything else: 0 (go on and start a delivery pass) if queue.db holds pending events,
    with the marker made good so that pdagent-retry.timer keeps coming back; 1 if the queue is empty."""
    try:
        note_boot(state_dir)  # heartbeats' deadlines that passed before it get their grace after it
        pending = marker.check_pending(state_dir)
        if not pending and heartbeats_waiting(state_dir):
            logger.info("queue in %s: heartbeats to watch, starting pdagentd", state_dir)
            return exitcodes.OK
    except OSError as error:
        report(Kind.MARKER_FAILED, f"cannot create the pending marker in {state_dir} ({error.strerror or error}); "
               "starting a delivery pass anyway", error=error.strerror or str(error))
        return exitcodes.OK
    logger.info("queue in %s: %s", state_dir, "pending events, starting a delivery pass" if pending
                else "no pending event")
    return exitcodes.OK if pending else exitcodes.NOTHING_PENDING


FD_LIMIT = 65536


def _raise_fd_limit() -> None:
    """Room for connections waiting for a slot (connections.py): the soft limit up to FD_LIMIT, within the
    hard limit (systemd's default soft limit is 1024, its hard one 524288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open files limit to %d: %s", wanted, exc)


def settings_help() -> str:
    """The settings, for --help (and so for the man page): every [Agent] key with its default, one a line."""
    lines = ["settings: [Agent] in /etc/pdagent/agent.conf, then agent.conf.d/*.conf in name order; PDAGENT_<KEY>",
             "in the environment overrides both. Routing keys by name in [Keys]; unit alerts in [UnitAlerts].",
             "Every key explained: /usr/share/doc/pdagent-sd/docs/configuration.md and the commented",
             "/etc/pdagent/agent.conf. A bad value: `pdagentd --check-config` names the file and the key.", ""]
    for setting in config_module.AGENT_SETTINGS:
        default = setting.default
        if isinstance(default, bool):
            shown = "yes" if default else "no"
        elif isinstance(default, float) and default.is_integer():
            shown = str(int(default))
        else:
            shown = str(default) if default != "" else '""'
        lines.append(f"  {setting.name} = {shown}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdagentd",
        description="The pdagent-sd daemon: accepts events on a Unix socket, commits them to a durable queue "
                    "and delivers them to the PagerDuty Events API. Runs in the foreground; under systemd it "
                    "is socket-activated by pdagent.socket.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=settings_help())
    p.add_argument("--socket", metavar="PATH",
                   help="socket to bind when not socket-activated (default: $PDAGENT_SOCKET or "
                        "/run/pdagent/pdagent.sock)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="queue directory (default: $PDAGENT_STATE_DIR, $STATE_DIRECTORY or /var/lib/pdagent)")
    p.add_argument("--events-url", metavar="URL", help="Events API base URL (overrides events_url)")
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $PDAGENT_CONFIG or /etc/pdagent/agent.conf, then FILE.d/*.conf)")
    p.add_argument("--check-pending", action="store_true",
                   help="only look at the queue: if it holds pending events, make sure the state directory's "
                        "`pending` marker exists and exit 0, else exit 1 (pdagent-boot.service's ExecCondition=)")
    p.add_argument("--check-config", action="store_true",
                   help="only read the configuration files as a start would: exit 0 if they are good, 78 naming "
                        "the file, the key and why if not (for configuration management, before a reload)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"pdagentd {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    journal.setup(debug=args.debug)
    os.umask(0o077)  # queue.db and its WAL are readable by the service alone
    _raise_fd_limit()
    if args.check_pending:
        return check_pending(state_directory(args.state_dir))
    environ = dict(os.environ)
    if args.events_url:
        environ["PDAGENT_EVENTS_URL"] = args.events_url
    if args.check_config:
        return check_config(args.config, environ)
    try:
        error: Optional[ConfigError] = None
        try:
            config: Optional[config_module.Config] = config_module.load(args.config, environ)
        except ConfigError as bad:
            error, config = bad, None
        path = socket_path(args.socket)
        if error is not None and not (os.environ.get("LISTEN_FDS") and os.environ.get("LISTEN_PID")):
            raise error  # started by hand: say it and exit 78
        sock, activated = listen_socket(path)
        if error is not None:
            main_file = args.config or environ.get("PDAGENT_CONFIG") or config_module.DEFAULT_CONFIG
            config = wait_for_good_config(sock, error, lambda: config_module.load(args.config, environ),
                                          lambda: _signature(main_file))
            if config is None:
                return exitcodes.OK  # stopped while waiting
        assert config is not None
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
