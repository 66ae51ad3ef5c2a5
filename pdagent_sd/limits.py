"""The Events API's limit on a summary, and how text is cut to it: one definition for the daemon's validation,
pd-send and the integrations. It imports nothing, so pd-send can use it on every alert's path."""

from __future__ import annotations

MAX_SUMMARY = 1024  # characters of a v2 summary or a v1 description
ELLIPSIS = "…"


def fit(text: str, limit: int = MAX_SUMMARY) -> str:
    """Text cut to at most `limit` characters, marked with an ellipsis when something was cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(ELLIPSIS)] + ELLIPSIS
