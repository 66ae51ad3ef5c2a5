"""What every command shares: turning errors into one clear line and an exit code, and sending an event.

Exceptions become output here and nowhere else on the client side; tracebacks only with --debug.
"""

from __future__ import annotations

import os
import sys

from pdagent_sd import exitcodes
from pdagent_sd.cmdline import text_args
from pdagent_sd.errors import PdagentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional


def fail(program: str, error: PdagentError) -> int:
    from pdagent_sd.safetext import safe  # a message may quote what a user or a monitored system wrote

    print(f"{program}: {safe(redact(error.message, limit=2000))}", file=sys.stderr)
    if error.hint:
        print(f"{program}: hint: {safe(redact(error.hint, limit=2000))}", file=sys.stderr)
    return exitcodes.for_error_code(error.code)


def run(program: str, body: Callable[[List[str]], int], argv: Optional[List[str]] = None) -> int:
    """Run a command's body; expected failures become one line and a named exit code, never a traceback."""
    args = text_args(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("PDAGENT_DEBUG"))
    try:
        return body([arg for arg in args if arg != "--debug"])
    except PdagentError as error:
        if debug:
            raise
        return fail(program, error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return exitcodes.OK
    except Exception as error:  # noqa: BLE001 - the last line of defence: a bug, said plainly
        if debug:
            raise
        print(f"{program}: internal error: {type(error).__name__}: {redact(str(error))} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return exitcodes.SOFTWARE


def redact(text: str, limit: int = 300) -> str:
    """Text for an error message: every word shaped like a routing key masked, and no longer than limit."""
    import re

    from pdagent_sd.events import ROUTING_KEY_LENGTH
    from pdagent_sd.keys import mask

    text = re.sub(rf"[A-Za-z0-9]{{{ROUTING_KEY_LENGTH},}}", lambda match: mask(match.group()), text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def send_event(api: str, event: Dict[str, Any], *, socket_path: Optional[str] = None, quiet: bool = False) -> int:
    """Hand one event to the agent; print the key the caller needs to acknowledge or resolve it later."""
    from pdagent_sd.protocol import request

    reply = request({"op": "send", "api": api, "event": event}, socket_path)
    if not quiet:
        from pdagent_sd.safetext import safe

        dedup_key = safe(reply.get("dedup_key") or "")
        print(f"Event processed. Incident Key: {dedup_key}" if dedup_key else "Event processed.")
    return exitcodes.OK


def parse_pairs(pairs: List[str], option: str) -> Dict[str, str]:
    """KEY=VALUE arguments to a dict; a pair without '=' is a usage error naming the option."""
    fields: Dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} expects KEY=VALUE (got {pair!r})")
        fields[key] = value
    return fields


class UsageError(PdagentError):
    """Wrong command-line use; exits 2 like argparse does."""

    code = "bad_request"
