"""Waiting in tests, said as what is waited for: one polling loop for the whole suite.

- `wait_until(predicate, timeout, what)`: poll until predicate() is truthy and return its value; after `timeout`
  seconds fail with a line naming `what`.
- `poll(predicate, timeout)`: the same loop, returning None on timeout instead of failing (for callers that
  assert with their own message, as `Agent.wait_until` does).
- `quiet_for(standin, seconds)`: "no further event arrived in N s" stated as intent: returns as soon as the
  window has passed, fails at once (naming the event) if the stand-in accepts one meanwhile.

A fixed `time.sleep` stays only where the test is about time itself (an outage lasting N seconds, a watchdog
period, idle time) and says so next to it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition a test waited for did not come; an AssertionError, so pytest reports it as a failure."""


def poll(predicate: Callable[[], T], timeout: float, interval: float = 0.02) -> Optional[T]:
    """predicate()'s first truthy value within `timeout` seconds (it is tried at least once), else None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """predicate()'s first truthy value; WaitTimeout naming `what` if none came within `timeout` seconds."""
    value = poll(predicate, timeout, interval)
    if value is None or not value:
        raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
    return value


def quiet_for(standin: Any, seconds: float, routing_key: Optional[str] = None) -> None:
    """Assert that the stand-in accepts no further event (for routing_key, if given) for `seconds`: the room a
    late duplicate would need to show up. Fails as soon as one arrives."""
    before = len(standin.received(routing_key))
    if standin.wait_for(before + 1, timeout=seconds, routing_key=routing_key):
        extra = standin.received(routing_key)[before:]
        raise AssertionError(f"expected no further event for {seconds:g}s, but {len(extra)} arrived: "
                             f"{[event.body for event in extra][:3]}")
