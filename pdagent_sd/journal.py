"""Structured records of every event state change: journald under systemd, readable stderr lines otherwise.

Each kind of record has a stable MESSAGE_ID (explained by units/pdagent.catalog for `journalctl -x`) and
carries PDAGENT_* fields. Routing keys arrive as keys.RoutingKey, whose str() is masked, so no record can hold
a whole one.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
import threading
from enum import Enum
from typing import Any, Optional

from pdagent_sd.safetext import safe

logger = logging.getLogger("pdagent_sd.journal")

FIELD_PREFIX = "PDAGENT_"


class Kind(str, Enum):
    """One kind per state change; the value is its MESSAGE_ID."""

    ACCEPTED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c501"
    DELIVERED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c502"
    DEFERRED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c503"
    FAILED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c504"
    RETRIED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c505"
    DROPPED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c506"
    THROTTLED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c507"
    STARTED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c508"
    STOPPED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c509"
    CORRUPT_QUEUE = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c50a"
    MARKER_FAILED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5d1"
    SUPERSEDED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c515"
    HEARTBEAT_MISSED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b1"
    HEARTBEAT_RECOVERED = "7f1c2c1e5a0b4d0c9f3e2a61b8d4c5b2"


LEVELS = {Kind.FAILED: logging.ERROR, Kind.CORRUPT_QUEUE: logging.CRITICAL, Kind.DEFERRED: logging.WARNING,
          Kind.DROPPED: logging.WARNING, Kind.MARKER_FAILED: logging.ERROR,
          Kind.HEARTBEAT_MISSED: logging.WARNING}


def report(kind: Kind, message: str, **fields: Any) -> None:
    """Record one state change. Field names are lowercase (event_id, routing_key, ...); None is left out."""
    level = LEVELS.get(kind, logging.INFO)
    if not logger.isEnabledFor(level):
        return
    # Made here rather than by logger.log(): its search of the stack for the caller would always find this
    # function, and it cost a tenth of accepting an event.
    record = logging.LogRecord(logger.name, level, __file__, 0, message, None, None, "report")
    record.MESSAGE_ID = kind.value
    for name, value in fields.items():
        if value is None or value == "":
            continue
        setattr(record, FIELD_PREFIX + name.upper(), str(value))
    logger.handle(record)


class JournalHandler(logging.Handler):
    """Sends MESSAGE, PRIORITY, MESSAGE_ID and the PDAGENT_* fields, and nothing else of the record."""

    PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def __init__(self) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {key: value for key, value in record.__dict__.items()
                      if key.startswith(FIELD_PREFIX) or key == "MESSAGE_ID"}
            if record.exc_info:
                fields["EXCEPTION_TEXT"] = logging.Formatter().formatException(record.exc_info)
            self._send(record.getMessage(), PRIORITY=str(self.PRIORITIES.get(record.levelno, 6)),
                       SYSLOG_IDENTIFIER="pdagentd", CODE_FILE=record.pathname, CODE_LINE=record.lineno,
                       CODE_FUNC=record.funcName, **fields)
        except Exception:  # noqa: BLE001 - logging must never take the daemon down
            self.handleError(record)


class StderrFormatter(logging.Formatter):
    """'pdagentd: delivered event 12 [PDAGENT_EVENT_ID=12 ...]': readable, and greppable by field."""

    def format(self, record: logging.LogRecord) -> str:
        # A dedup key, a summary or an API's error text can carry escape sequences and newlines: a log line is
        # one line, and nothing in it reaches the terminal of whoever reads the log unescaped.
        message = safe(record.getMessage())
        line = f"pdagentd: {record.levelname.lower()}: {message}"
        fields = " ".join(f"{key}={safe(value)}" for key, value in record.__dict__.items()
                          if key.startswith(FIELD_PREFIX)
                          and not (key == FIELD_PREFIX + "ERROR" and safe(value) in message))
        if fields:
            line += f" [{fields}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class InProcessQueueHandler(logging.handlers.QueueHandler):
    """Hands the record itself to the listener thread. The stock prepare() formats and copies every record so
    that it could cross a process boundary; that was a third of the cost of accepting an event, for a record
    that never leaves this process and is not changed after it is made."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class RecordWriter:
    """The one thread that writes records out. The first record of a burst wakes it; it lets the rest of the
    burst gather for a moment and writes them together. One wake-up per burst instead of one per record: each
    wake-up hands the GIL to this thread and back, and under a storm of sends that was a sixth of the daemon's
    time."""

    GATHER_SEC = 0.002

    def __init__(self, records: "queue.SimpleQueue[Optional[logging.LogRecord]]", handler: logging.Handler) -> None:
        self.records = records
        self.handler = handler
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        # The pause is an Event's wait rather than time.sleep: the same on every clock, and it also works under
        # libfaketime (Debian 12's fails the clock_nanosleep of Python >= 3.11's sleep with EINVAL when the
        # monotonic clock is left alone), which tests/test_clock_real.py runs the daemon under.
        self.pause = threading.Event()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Write out every record queued so far, then end the thread."""
        self.records.put(None)
        self.thread.join()

    def _run(self) -> None:
        while True:
            record = self.records.get()
            self.pause.wait(self.GATHER_SEC)
            while record is not None:
                self.handler.handle(record)
                try:
                    record = self.records.get_nowait()
                except queue.Empty:
                    break
            else:
                return


def setup(debug: bool = False, use_journal: Optional[bool] = None) -> str:
    """Install the one handler of the process; return which back end is in use."""
    if use_journal is None:
        use_journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler: logging.Handler
    backend = "stderr"
    if use_journal:
        try:
            handler = JournalHandler()
            backend = "journald"
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    if backend == "stderr":
        handler.setFormatter(StderrFormatter())
    # Threads hand records to a queue and one listener thread writes them: delivery workers and (then) client
    # threads spent a fifth of their time waiting for the handler's lock around each write (measured, py-spy).
    records: "queue.SimpleQueue[Optional[logging.LogRecord]]" = queue.SimpleQueue()
    writer = RecordWriter(records, handler)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False  # no back end shows them
    writer.start()
    atexit.register(writer.stop)  # the queue is written out before the process exits
    root = logging.getLogger()
    root.handlers[:] = [InProcessQueueHandler(records)]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return backend
