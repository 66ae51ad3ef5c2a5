"""Frames for fuzzing pdagentd's socket: random and malformed request lines, each with what the daemon must
answer. Seeded, so a failing frame can be made again from its seed and index.

A frame is bytes ending in a newline. It knows how many replies it must get (the daemon skips blank lines)
and which answers are right: `ERROR` frames must be refused (ok false) with one of their codes, `ANY` frames
(a mutated but possibly valid request) may also succeed. Every refusal must carry a documented code; an
`internal_error` reply is a bug in the daemon, whatever the frame.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

DOCUMENTED_CODES = frozenset({"invalid_event", "bad_request", "forbidden", "queue_full", "storage_error",
                              "not_found"})
MAX_LINE = 1024 * 1024

KEY = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0"  # the only key valid frames use, so the test can find their events


@dataclass(frozen=True)
class Frame:
    category: str
    data: bytes
    replies: int  # how many reply lines it must get
    codes: FrozenSet[str]  # refusals allowed for it
    may_succeed: bool  # whether ok: true is a right answer too

    def describe(self) -> str:
        shown = self.data[:300]
        more = f" ... ({len(self.data)} bytes)" if len(self.data) > 300 else ""
        return f"[{self.category}] {shown!r}{more}"


def _line(value: Any, ascii: bool = False) -> bytes:
    """One compact JSON line; UTF-8 as is, unless it holds an unpaired surrogate, which goes as a \\ud800 escape."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii).encode() + b"\n"
    except UnicodeEncodeError:
        return _line(value, ascii=True)


def _replies(data: bytes) -> int:
    """Lines the daemon answers: every newline-terminated line that is not blank (bytes.strip(), as it does)."""
    return sum(1 for line in data.split(b"\n")[:-1] if line.strip())


# --- valid requests of every op: the templates that get mutated ---------------------------------------------


def v2_trigger(summary: str = "fuzz") -> Dict[str, Any]:
    return {"routing_key": KEY, "event_action": "trigger", "dedup_key": "fuzz/1", "client": "fuzz",
            "client_url": "https://fuzz.example/", "links": [{"href": "https://fuzz.example/l", "text": "l"}],
            "images": [{"src": "https://fuzz.example/i.png", "href": "https://fuzz.example/", "alt": "i"}],
            "payload": {"summary": summary, "source": "fuzz-host", "severity": "info",
                        "timestamp": "2024-05-01T12:00:00Z", "component": "c", "group": "g", "class": "k",
                        "custom_details": {"a": [1, 2, {"b": "c"}]}}}


def v1_trigger() -> Dict[str, Any]:
    return {"service_key": KEY, "event_type": "trigger", "incident_key": "fuzz/v1", "description": "fuzz",
            "details": {"a": 1}, "client": "fuzz", "client_url": "https://fuzz.example/",
            "contexts": [{"type": "link", "href": "https://fuzz.example/"}]}


def change_event() -> Dict[str, Any]:
    return {"routing_key": KEY, "payload": {"summary": "deployed", "source": "ci", "timestamp": "2024-05-01",
                                            "custom_details": {"v": "1.2.3"}},
            "links": [{"href": "https://ci.example/1", "text": "build"}]}


TEMPLATES: List[Dict[str, Any]] = [
    {"op": "send", "api": "v2", "event": v2_trigger()},
    {"op": "send", "api": "v2", "event": {"routing_key": KEY, "event_action": "resolve", "dedup_key": "fuzz/1"}},
    {"op": "send", "api": "v1", "event": v1_trigger()},
    {"op": "send", "api": "change", "event": change_event()},
    {"op": "status", "routing_key": KEY},
    {"op": "list", "state": "pending", "routing_key": KEY, "limit": 5},
    {"op": "show", "id": 1},
    {"op": "retry", "routing_key": KEY},
    {"op": "retry", "all": True},
    {"op": "drop", "id": 999999999},
    {"op": "drop", "routing_key": "0" * 32, "state": "failed"},
    {"op": "flush"},
    {"op": "metrics"},
]

# Values of every JSON type, and the edges of each: one of them is the wrong type for any field.
WRONG_VALUES: List[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1.5, -0.0, 1e308,
    "", " ", "x", "a" * 32, "é" * 40, "\x00", "\ud800", "trigger", "pending", "v2",
    [], [1], ["a"], [None], {}, {"a": 1}, [[[]]], {"op": "send"}, "x" * 1025, "y" * 256,
]


def field_paths(value: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """Every field of a request, nested ones included (list items too)."""
    paths: List[Tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for step, child in items:
        paths.append(prefix + (step,))
        paths += field_paths(child, prefix + (step,))
    return paths


def with_field(request: Dict[str, Any], path: Tuple[Any, ...], value: Any, delete: bool = False) -> Dict[str, Any]:
    changed = copy.deepcopy(request)
    target: Any = changed
    for step in path[:-1]:
        target = target[step]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


def wrong_type_cases() -> List[Dict[str, Any]]:
    """Each template with each field set to each wrong value, or removed: the systematic part of the fuzz."""
    cases = []
    for template in TEMPLATES:
        for path in field_paths(template):
            for value in WRONG_VALUES:
                cases.append(with_field(template, path, value))
            cases.append(with_field(template, path, None, delete=True))
    return cases


# --- the generator ---------------------------------------------------------------------------------------------

TOKENS = [b"{", b"}", b"[", b"]", b":", b",", b'"op"', b'"send"', b'"status"', b'"event"', b'"api"', b'"v2"',
          b"1", b"-0", b"1e999", b"-1e999", b"NaN", b"Infinity", b"true", b"null", b'"\\ud800"', b'"\\u0000"',
          b'"', b"\\", b" ", b"\t", b"\r", b"\x00", b"\xff", b"\xc3", b"0x10", b"01", b"'a'", b"\xe2\x80\xa8"]
INVALID_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
                b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82", b"\x80", b"\xc3\x28"]
HUGE_NUMBERS = [b"1e999", b"-1e999", b"1" * 5000, b"-" + b"9" * 4301, b"1" * 4300, b"NaN", b"Infinity",
                b"-Infinity", b"1.7976931348623157e309", b"4.9e-325", b"0." + b"0" * 5000 + b"1",
                b"123456789012345678901234567890", b"-0", b"1E+400"]

BAD = frozenset({"bad_request"})
EVENT_OR_BAD = frozenset({"bad_request", "invalid_event"})
ANY_CODE = DOCUMENTED_CODES


class FrameMaker:
    """Frames of every category, drawn from one seeded random generator. Every third frame is the next of
    the wrong-type cases, dealt in order, so that 3 x len(wrong_type_cases()) frames (about 9,200) cover
    every field of every op with every wrong value; the others are drawn from the random categories."""

    CATEGORIES = [("random_bytes", 14), ("token_soup", 14), ("truncated", 12), ("deep", 5), ("huge_number", 6),
                  ("invalid_utf8", 9), ("surrogate_escape", 5), ("valid", 4), ("blank_and_multi", 5),
                  ("long_line", 2), ("control", 2)]

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.wrong_types = itertools.cycle(wrong_type_cases())
        names, weights = zip(*self.CATEGORIES)
        self.names: List[str] = list(names)
        self.weights: List[int] = list(weights)

    def frames(self, count: int) -> Iterator[Frame]:
        for index in range(count):
            name = "wrong_type" if index % 3 == 0 else self.random.choices(self.names, self.weights)[0]
            yield getattr(self, "_" + name)()

    def _frame(self, category: str, data: bytes, codes: FrozenSet[str], may_succeed: bool = False) -> Frame:
        return Frame(category, data, _replies(data), codes, may_succeed)

    def _template(self) -> Dict[str, Any]:
        return copy.deepcopy(self.random.choice(TEMPLATES))

    def _random_bytes(self) -> Frame:
        size = self.random.choice([1, 2, 8, 64, 512, 4096])
        data = self.random.randbytes(self.random.randint(1, size))
        data = data.replace(b"\n", b"").strip() or b"?"
        return self._frame("random_bytes", data + b"\n", BAD)

    def _token_soup(self) -> Frame:
        data = b"".join(self.random.choice(TOKENS) for _ in range(self.random.randint(1, 40)))
        data = data.strip() or b"{"
        return self._frame("token_soup", data + b"\n", ANY_CODE, may_succeed=True)  # may spell {"op":"status"}

    def _truncated(self) -> Frame:
        line = _line(self._template())[:-1]
        cut = self.random.randint(1, len(line) - 1)
        return self._frame("truncated", line[:cut].rstrip(b" \t\r\x0b\x0c") + b"\n", BAD)

    def _wrong_type(self) -> Frame:
        request = next(self.wrong_types)
        return self._frame("wrong_type", _line(request), ANY_CODE, may_succeed=True)

    def _deep(self) -> Frame:
        depth = self.random.choice([50, 97, 98, 99, 120, 500, 900, 980, 990, 1000, 1100, 5000, 50000, 200000])
        opener, closer = self.random.choice([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")])
        depth = min(depth, (MAX_LINE - 1024) // (len(opener) + len(closer)))  # longer lines: another test
        nested = opener * depth + b"0" + closer * depth
        where = self.random.choice(["custom_details", "source", "bare"])
        if where == "bare":  # not even an object
            return self._frame("deep", nested + b"\n", BAD)
        request = _line({"op": "send", "api": "v2", "event": v2_trigger()})
        if where == "source":
            return self._frame("deep", request.replace(b'"fuzz-host"', nested, 1), EVENT_OR_BAD)
        data = request.replace(b'"custom_details":{"a":[1,2,{"b":"c"}]}', b'"custom_details":' + nested, 1)
        # body, payload: two levels above custom_details; the daemon takes 100 levels in all
        levels = 2 + depth * opener.count(b"[") + depth * opener.count(b"{")
        return self._frame("deep", data, EVENT_OR_BAD, may_succeed=levels <= 100)

    def _huge_number(self) -> Frame:
        number = self.random.choice(HUGE_NUMBERS)
        placeholder = 424242424242
        request = self._template()
        paths = field_paths(request)
        request = with_field(request, self.random.choice(paths), placeholder)
        data = _line(request).replace(str(placeholder).encode(), number, 1)
        return self._frame("huge_number", data, ANY_CODE, may_succeed=True)

    def _invalid_utf8(self) -> Frame:
        line = _line(self._template())[:-1]
        bad = self.random.choice(INVALID_UTF8)
        quote = [i for i in range(len(line)) if line[i:i + 1] == b'"']
        at = self.random.choice(quote) + 1 if quote else 0  # inside a string, where it looks most plausible
        return self._frame("invalid_utf8", line[:at] + bad + line[at:] + b"\n", BAD)

    def _surrogate_escape(self) -> Frame:
        request = self._template()
        strings = [path for path in field_paths(request) if isinstance(_get(request, path), str)]
        path = self.random.choice(strings)
        escape = self.random.choice(["\ud800", "\udfff", "x\udc80y", "\ud83d"])
        return self._frame("surrogate_escape", _line(with_field(request, path, escape), ascii=True), EVENT_OR_BAD)

    def _valid(self) -> Frame:
        request = self.random.choice([
            {"op": "status"}, {"op": "list", "limit": 3}, {"op": "metrics"}, {"op": "flush"},
            {"op": "send", "api": "v2", "event": v2_trigger(f"fuzz valid {self.random.random()}")}])
        return self._frame("valid", _line(request), frozenset(), may_succeed=True)

    def _blank_and_multi(self) -> Frame:
        parts = []
        for _ in range(self.random.randint(1, 4)):
            parts.append(self.random.choice([b"", b" ", b"\t", b"\r", b"\x0b\x0c", b'{"op":"status"}', b"nope",
                                             b'{"op":"status"}\r', b" \t{}\t "]))
        data = b"\n".join(parts) + b"\n"
        return self._frame("blank_and_multi", data, BAD, may_succeed=True)

    def _long_line(self) -> Frame:
        """Long lines up to just under the limit: answered, not cut off."""
        size = self.random.choice([64 * 1024, 512 * 1024, MAX_LINE - 4096])
        request = {"op": "send", "api": "v2", "event": v2_trigger()}
        request["event"]["payload"]["custom_details"] = {"blob": "z" * size}
        data = _line(request)
        return self._frame("long_line", data, EVENT_OR_BAD, may_succeed=size < 500 * 1024)  # > 512 KiB: invalid

    def _control(self) -> Frame:
        request = self._template()
        strings = [path for path in field_paths(request) if isinstance(_get(request, path), str)]
        control = "".join(chr(self.random.randint(0, 31)) for _ in range(4))
        data = _line(with_field(request, self.random.choice(strings), control))
        if self.random.random() < 0.5:  # a raw control character inside a string is not JSON
            data = data.replace(b"\\u0000", b"\x00").replace(b"\\t", b"\t")
        return self._frame("control", data, ANY_CODE, may_succeed=True)


def _get(value: Any, path: Tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def check_reply(frame: Frame, raw: bytes) -> Optional[str]:
    """None if `raw` (one reply line) is a right answer to `frame`, else what is wrong with it."""
    try:
        reply = json.loads(raw)
    except ValueError:
        return f"reply is not JSON: {raw[:200]!r}"
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return f"reply is not an object with ok true/false: {raw[:200]!r}"
    if reply["ok"]:
        return None if frame.may_succeed else f"succeeded where it must be refused: {raw[:200]!r}"
    code = reply.get("code")
    if code == "internal_error":
        return f"internal_error (a bug in the daemon): {raw[:200]!r}"
    if code not in DOCUMENTED_CODES:
        return f"undocumented code {code!r}: {raw[:200]!r}"
    if not isinstance(reply.get("error"), str) or not reply["error"]:
        return f"refusal without an error text: {raw[:200]!r}"
    if code not in frame.codes:
        return f"code {code!r}, expected one of {sorted(frame.codes)}"
    return None
