"""systemd's time-span syntax (systemd.time(7)): `30s`, `5min`, `1h 30min`, `1d`, `2weeks`, a bare number of
seconds. Parsed on the client (pd-heartbeat) and printed back by the daemon, so it imports nothing at all."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Tuple

# systemd.time(7)'s units, in seconds; a month and a year are systemd's averages (30.44 d, 365.25 d).
UNITS = {
    "usec": 1e-6, "us": 1e-6, "μs": 1e-6,
    "msec": 1e-3, "ms": 1e-3,
    "seconds": 1.0, "second": 1.0, "sec": 1.0, "s": 1.0,
    "minutes": 60.0, "minute": 60.0, "min": 60.0, "m": 60.0,
    "hours": 3600.0, "hour": 3600.0, "hr": 3600.0, "h": 3600.0,
    "days": 86400.0, "day": 86400.0, "d": 86400.0,
    "weeks": 604800.0, "week": 604800.0, "w": 604800.0,
    "months": 2629800.0, "month": 2629800.0, "M": 2629800.0,
    "years": 31557600.0, "year": 31557600.0, "y": 31557600.0,
}
MAX_TEXT = 100
# How show() prints a span: the largest units first, systemd's own short names.
FORMAT_UNITS: "List[Tuple[str, float]]" = [("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)]


class SpanError(ValueError):
    """The text is not a time span; the message says why, for a usage error."""


def parse(text: str) -> float:
    """Seconds in a time span such as `1h 30min`; SpanError if it is not one (or is empty)."""
    if len(text) > MAX_TEXT:
        raise SpanError(f"a time span is at most {MAX_TEXT} characters")
    rest = text.strip()
    if not rest:
        raise SpanError("the time span is empty")
    total = 0.0
    while rest:
        end = 0
        while end < len(rest) and (rest[end].isdigit() and rest[end].isascii() or rest[end] == "."):
            end += 1
        number, rest = rest[:end], rest[end:].lstrip()
        if not number or number.count(".") > 1 or number == ".":
            raise SpanError(f"{text!r} is not a time span (like 30s, 5min, 1h 30min, 1d)")
        end = 0
        while end < len(rest) and rest[end].isalpha():
            end += 1
        unit, rest = rest[:end], rest[end:].lstrip()
        if unit and unit not in UNITS:
            raise SpanError(f"{text!r}: unknown time unit {unit!r} (s, min, h, d, w, M, y, ...)")
        total += float(number) * (UNITS[unit] if unit else 1.0)
    return total


def show(seconds: float) -> str:
    """A span as systemd prints one: `1d`, `1h 30min`, `40s`; whole seconds (a fraction is rounded)."""
    left = int(round(seconds))
    if left <= 0:
        return "0"
    parts = []
    for name, size in FORMAT_UNITS:
        count, left = divmod(left, int(size))
        if count:
            parts.append(f"{count}{name}")
    return " ".join(parts)
