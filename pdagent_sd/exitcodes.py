"""Exit codes shared by every command (sysexits.h values, which monitoring tools know)."""

OK = 0
NOTHING_PENDING = 1  # pdagentd --check-pending: the queue is empty (ExecCondition= then skips the unit)
USAGE = 2
DATAERR = 65  # the event was rejected as invalid
UNAVAILABLE = 69  # the agent cannot be reached
SOFTWARE = 70  # a bug: reported with a traceback only under --debug
IOERR = 74  # pdagentd: the queue file was found damaged while running; the next start moves it aside
TEMPFAIL = 75  # temporary refusal: queue full, storage error, no connection slot free
NOPERM = 77  # the operation needs root or group pdagent
CONFIG = 78  # a configuration file is wrong


def for_error_code(code: str) -> int:
    """The exit code for an error reported with a wire protocol code."""
    return {
        "invalid_event": DATAERR,
        "bad_request": USAGE,
        "not_found": DATAERR,
        "forbidden": NOPERM,
        "queue_full": TEMPFAIL,
        "storage_error": TEMPFAIL,
        "busy": TEMPFAIL,
        "unreachable": UNAVAILABLE,
        "config_error": CONFIG,
    }.get(code, SOFTWARE)
