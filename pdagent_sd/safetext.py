"""Text that is safe to show a person: what a local user or a monitored system wrote, escaped so that no
terminal acts on it.

Summaries, dedup keys, error texts and host names come from people who may be hostile. Printed raw, an escape
sequence in one sets a window title, clears the screen, erases the line that shows a real failure or writes
the clipboard (OSC 52); a newline forges a line of `pd-queue show`; U+202E turns the rest of a line around.
Every place a person reads — pd-queue's tables, `show`, its prompts and notes, the commands' one-line messages,
the daemon's stderr log lines — passes the text through `safe()`; `--json` through `safe_json()`.

What is escaped: every character of the Unicode categories Cc (C0 and C1 controls and DEL), Cf (format
characters: the bidi marks, embeddings, overrides and isolates U+200E/F, U+202A-U+202E, U+2066-U+2069,
U+061C, the zero-width characters), Cs (lone surrogates), Zl and Zp (U+2028, U+2029). Backslashes are left as
they are (a Windows path stays readable), so `safe()` is for reading, not a reversible encoding: `--json`
is the exact form.

Only the standard library; re and unicodedata are imported only when a text is not plain printable ASCII,
so pd-send's hot path does not pay for them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}
NOT_PLAIN = "[^\x20-\x7e]"  # candidates; the category of each decides
NOT_ASCII_OR_DEL = "[\x7f-\U0010ffff]"  # in JSON text: json itself escapes C0


def is_unsafe(char: str) -> bool:
    import unicodedata

    return unicodedata.category(char) in UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    short = SHORT.get(char)
    if short:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_match(match: Any) -> str:
    char = match.group(0)
    return _escape(char) if is_unsafe(char) else char


def safe(text: Any) -> str:
    """`text` (made a str) with every unsafe character written as a visible escape: \\e, \\n, \\x9b, \\u202e."""
    text = text if isinstance(text, str) else str(text)
    # isprintable() is False for every character of UNSAFE_CATEGORIES (and a few safe ones, which the slow way
    # keeps): a masked key's "…" must not cost the daemon's log writer a regular expression per record.
    if text.isprintable():
        return text
    import re  # only here: pd-send prints through safe(), and re is a third of its start-up

    return re.sub(NOT_PLAIN, _escape_match, text)


def _json_escape(match: Any) -> str:
    char = match.group(0)
    if not is_unsafe(char):
        return char
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def safe_json(data: Any, indent: Optional[int] = 2) -> str:
    """JSON as json.dumps(ensure_ascii=False) writes it, readable text kept, with every unsafe character
    written as a JSON \\u escape. They can occur only inside strings, where the escape means the same."""
    import json

    text = json.dumps(data, indent=indent, ensure_ascii=False)
    if text.isascii() and "\x7f" not in text:
        return text
    import re

    return re.sub(NOT_ASCII_OR_DEL, _json_escape, text)
