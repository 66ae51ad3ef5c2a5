"""Every error the agent can report, each with a stable wire code.

This module imports nothing from the package, so any module (and the tiny clients) may use it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: this module is on the hot path
if TYPE_CHECKING:
    from typing import Optional


class PdagentError(Exception):
    """Base error: a human message, an optional hint, and a stable code for the wire protocol."""

    code = "error"

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidEvent(PdagentError):
    """The event breaks a rule of the Events API (the message names the field)."""

    code = "invalid_event"


class BadRequest(PdagentError):
    """The request is not protocol version 1 (not JSON, unknown op, line too long...)."""

    code = "bad_request"


class Forbidden(PdagentError):
    """The peer is not allowed to run an admin operation."""

    code = "forbidden"


class QueueFull(PdagentError):
    """The queue holds max_pending_events already; the event was not accepted."""

    code = "queue_full"


class Busy(PdagentError):
    """Every connection slot this sender may use is taken; nothing was read: try again."""

    code = "busy"


class StorageError(PdagentError):
    """The queue could not be written (disk full, I/O error); the event was not accepted."""

    code = "storage_error"


class NotFound(PdagentError):
    """No event with that id."""

    code = "not_found"


class AgentUnreachable(PdagentError):
    """The client could not talk to the daemon at all."""

    code = "unreachable"


class ConfigError(PdagentError):
    """A configuration file or value is wrong; the daemon refuses to start."""

    code = "config_error"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (InvalidEvent, BadRequest, Forbidden, QueueFull, Busy, StorageError, NotFound, AgentUnreachable,
                ConfigError)
}


def from_wire(code: str, message: str, hint: Optional[str] = None) -> PdagentError:
    """Rebuild the error a daemon reported, hint included, so clients handle it like any local error."""
    return ERRORS_BY_CODE.get(code, PdagentError)(message, hint)
