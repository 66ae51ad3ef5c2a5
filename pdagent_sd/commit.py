"""Commit: the outcome of one write to the queue, a lean future settled by the store's writer thread."""

from __future__ import annotations

import _thread
import logging
from typing import Any, Callable, List, Optional

logger = logging.getLogger(__name__)


class Commit:
    """The outcome of one queued write, set once its transaction has committed or failed.

    The part of concurrent.futures.Future the daemon uses (done, result, exception, add_done_callback), made of
    two plain locks: a Future builds a Condition, an RLock and two lists, and one is made for every send and
    every delivery result; that was a sixth of the time the daemon spends accepting an event."""

    __slots__ = ("_guard", "_waiter", "_finished", "_result", "_error", "_callbacks")

    def __init__(self) -> None:
        self._guard = _thread.allocate_lock()  # around _finished and _callbacks
        self._waiter = _thread.allocate_lock()  # held until the outcome is set
        self._waiter.acquire()
        self._finished = False
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._callbacks: List[Callable[["Commit"], None]] = []

    def done(self) -> bool:
        return self._finished

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if not self._finished:
            if not self._waiter.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError("the queue's writer did not answer in time")
            self._waiter.release()  # for the next waiter
        return self._error

    def result(self, timeout: Optional[float] = None) -> Any:
        error = self.exception(timeout)
        if error is not None:
            raise error
        return self._result

    def add_done_callback(self, callback: Callable[["Commit"], None]) -> None:
        """Call `callback(self)` once the outcome is set: now if it already is, else in the writer's thread."""
        with self._guard:
            if not self._finished:
                self._callbacks.append(callback)
                return
        callback(self)

    def set_result(self, result: Any) -> None:
        self._settle(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, result: Any, error: Optional[BaseException]) -> None:
        with self._guard:
            self._result, self._error, self._finished = result, error, True
            callbacks, self._callbacks = self._callbacks, []
        self._waiter.release()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - as Future does: one failing callback must not stop the writer
                logger.exception("a callback of a queue write failed")
