"""One request line's way through the daemon, apart from the connection it came on: decoded, a send whose
client gave up before it was read left out, dispatched to the handlers (an answer now, or Later: work on the
writer or the handlers' thread), an error or a bug turned into its reply; a reply refusing room for an event
leaves a journal record, at most one per uid per REFUSAL_LOG_SEC. The selector loop (connections.py) reads the
lines and writes the replies.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Optional, Tuple, Union

from pdagent_sd.errors import PdagentError
from pdagent_sd.handlers import Dispatcher, Later, Peer
from pdagent_sd.protocol import Message, decode_request, error_reply

logger = logging.getLogger(__name__)

REFUSAL_LOG_SEC = 60.0  # a uid refused for room again and again: one journal record per minute
REFUSALS_TRACKED = 10000  # uids remembered for that; past it the memory starts over

INTERNAL_ERROR: Message = {"ok": False, "code": "internal_error",
                           "error": "internal error in pdagentd; see its journal"}


class RequestPipeline:
    """From a request line to its reply (or the Later that will make it)."""

    def __init__(self, handlers: Dispatcher) -> None:
        self.handlers = handlers
        self._refusals: Dict[int, Tuple[float, int]] = {}  # uid -> (last record, refused since)

    def answer(self, line: bytes, peer: Peer, gave_up: Callable[[], bool]) -> Optional[Union[Message, Later]]:
        """The reply to one line, or Later, or None for a send whose client closed its connection completely
        before the line was read (`gave_up`): it is not queued, and the connection is closed."""
        try:
            message = decode_request(line)
            if message["op"] == "send" and gave_up():
                logger.warning("not queueing an event from uid %d: its client closed the connection before "
                               "the request was read (it gave up waiting, so it was never told)", peer.uid)
                return None
            return self.handlers.dispatch(message, peer)
        except PdagentError as error:
            return error_reply(error)
        except Exception:  # noqa: BLE001 - a bug answers this request, it must not end the daemon
            logger.exception("internal error while handling a request")
            return INTERNAL_ERROR

    @staticmethod
    def outcome(later: Later) -> Message:
        """The reply once a Later's work is done."""
        try:
            return later.finish(later.future.result())
        except PdagentError as error:
            return error_reply(error)
        except Exception:  # noqa: BLE001
            logger.exception("internal error while handling a request")
            return INTERNAL_ERROR

    def replying(self, peer: Peer, reply: Message) -> None:
        """A reply is about to go out: a refusal for room is noted."""
        if reply.get("code") == "queue_full":
            self._note_refusal(peer.uid, str(reply.get("error", "")))

    def _note_refusal(self, uid: int, why: str) -> None:
        """A send refused for room (a quota, the queue bound) leaves a journal record: the first one of a uid
        at once, then at most one per REFUSAL_LOG_SEC with how many were refused since, so that a flood of
        refusals cannot flood the journal."""
        now = time.monotonic()
        last, count = self._refusals.get(uid, (float("-inf"), 0))
        count += 1
        if now - last < REFUSAL_LOG_SEC:
            self._refusals[uid] = (last, count)
            return
        if len(self._refusals) >= REFUSALS_TRACKED:
            self._refusals.clear()
        self._refusals[uid] = (now, 0)
        logger.warning("refused %d event(s) from uid %d for room%s: %s", count, uid,
                       f" in the last {now - last:.0f}s" if count > 1 else "", why)
