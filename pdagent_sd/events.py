"""The Events API rules, written once: v2, v1 and change events, their limits and dedup keys.

The daemon validates every event here before it is queued; the clients build bodies but never judge them.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, Iterable, List, Tuple

from pdagent_sd.errors import InvalidEvent
from pdagent_sd.keys import TRUSTED, Caller, KeyBook, RoutingKey
from pdagent_sd.limits import MAX_SUMMARY
from pdagent_sd.protocol import dumps

MAX_BODY_BYTES = 512 * 1024
MAX_DEDUP_KEY = 255
ROUTING_KEY_LENGTH = 32
# ASCII digits only (\d alone also takes "٢٠٢٤"), matched with fullmatch ($ alone lets a trailing newline in).
ISO_8601 = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?", re.ASCII
)
# Objects and lists nested deeper than this are refused. Real events nest a few levels; without a limit the
# depth that gets through depends on the interpreter's recursion limit (and C stack) at the moment of encoding.
MAX_DEPTH = 100


class Api(str, Enum):
    V2 = "v2"
    V1 = "v1"
    CHANGE = "change"

    @property
    def path(self) -> str:
        return {
            Api.V2: "/v2/enqueue",
            Api.V1: "/generic/2010-04-15/create_event.json",
            Api.CHANGE: "/v2/change/enqueue",
        }[self]


class Action(str, Enum):
    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    CHANGE = "change"  # change events have no action of their own; this names them in the queue and logs


class Severity(str, Enum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Event:
    """A validated event, ready to queue: the exact body to POST and what the queue indexes it by."""

    api: Api
    body: Dict[str, Any]
    routing_key: RoutingKey
    action: Action
    dedup_key: str
    text: str  # the body as it is queued and POSTed, compact JSON: encoded once, by validate()

    def encoded(self) -> str:
        return self.text


Identity = Tuple[str, Action, str]  # routing key, action, dedup key: what the queue indexes an event by


def new_dedup_key() -> str:
    return uuid.uuid4().hex


NO_KEYS = KeyBook()


def validate(api_name: Any, body: Any, *, default_source: str = "", owned: bool = False,
             keys: KeyBook = NO_KEYS, caller: Caller = TRUSTED) -> Event:
    """Check one event against its API's rules; return it normalised, or raise InvalidEvent naming the field.

    A routing key `@name` is replaced in the body by the key `keys` has for that name: what is queued and
    POSTed is the real key; a name `caller` may not use is Forbidden (keys.py).

    The caller's object is left as it was, unless it says the body is `owned` (freshly parsed from the wire),
    which spares a deep copy on the daemon's hot path.
    """
    try:
        api = Api(api_name)
    except ValueError:
        raise InvalidEvent(f"api must be one of v2, v1, change (got {api_name!r})") from None
    if not isinstance(body, dict):
        raise InvalidEvent("event must be a JSON object")
    check_depth(body)
    if not owned:
        body = json.loads(json.dumps(body))
    field = "service_key" if api is Api.V1 else "routing_key"
    if isinstance(body.get(field), str):
        body[field] = keys.resolve(body[field], field, caller).reveal()  # the body is what is posted
    if api is Api.V2:
        routing_key, action, dedup_key = _validate_v2(body, default_source)
    elif api is Api.V1:
        routing_key, action, dedup_key = _validate_v1(body)
    else:
        routing_key, action, dedup_key = _validate_change(body, default_source)
    try:
        text = dumps(body)
    except ValueError:
        raise InvalidEvent("event contains a number JSON cannot carry (NaN or Infinity)") from None
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 escapes can carry into a string
        raise InvalidEvent("event contains text that is not valid Unicode (an unpaired surrogate such as "
                           "\\ud800)") from None
    if size > MAX_BODY_BYTES:
        raise InvalidEvent(f"event is {size} bytes; the Events API accepts at most {MAX_BODY_BYTES}")
    return Event(api, body, RoutingKey(routing_key), action, dedup_key, text)


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse objects and lists nested more than `limit` deep; iterative, so any depth can be checked."""
    if not isinstance(value, (dict, list)):
        return
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InvalidEvent(f"event is nested more than {limit} levels deep")
        children: Iterable[Any] = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def _validate_v2(body: Dict[str, Any], default_source: str) -> Identity:
    routing_key = _routing_key(body, "routing_key")
    action = _action(body, "event_action")
    dedup_key = _optional_text(body, "dedup_key", MAX_DEDUP_KEY)
    if action is Action.TRIGGER:
        payload = _object(body, "payload", required=True)
        _text(payload, "summary", MAX_SUMMARY, prefix="payload.")
        if not payload.get("source") and default_source:
            payload["source"] = default_source
        _text(payload, "source", MAX_SUMMARY, prefix="payload.")
        _choice(payload, "severity", Severity, prefix="payload.")
        _timestamp(payload, "payload.")
        for field in ("component", "group", "class"):
            _optional_text(payload, field, MAX_SUMMARY, prefix="payload.")
        if not dedup_key:
            dedup_key = body["dedup_key"] = new_dedup_key()
    elif not dedup_key:
        raise InvalidEvent(f"dedup_key is required for an {action.value} event")
    _optional_text(body, "client", MAX_SUMMARY)
    _optional_text(body, "client_url", MAX_SUMMARY)
    _links(body)
    _images(body)
    return routing_key, action, dedup_key


def _validate_v1(body: Dict[str, Any]) -> Identity:
    routing_key = _routing_key(body, "service_key")
    action = _action(body, "event_type")
    dedup_key = _optional_text(body, "incident_key", MAX_DEDUP_KEY)
    if action is Action.TRIGGER:
        _text(body, "description", MAX_SUMMARY)
        if not dedup_key:
            dedup_key = body["incident_key"] = new_dedup_key()
    elif not dedup_key:
        raise InvalidEvent(f"incident_key is required for an {action.value} event")
    else:
        _optional_text(body, "description", MAX_SUMMARY)
    _optional_text(body, "client", MAX_SUMMARY)
    _optional_text(body, "client_url", MAX_SUMMARY)
    contexts = body.get("contexts")
    if contexts is not None:
        for index, context in enumerate(_list_of_objects(body, "contexts")):
            if context.get("type") not in ("link", "image"):
                raise InvalidEvent(f"contexts[{index}].type must be link or image")
    return routing_key, action, dedup_key


def _validate_change(body: Dict[str, Any], default_source: str) -> Identity:
    routing_key = _routing_key(body, "routing_key")
    payload = _object(body, "payload", required=True)
    _text(payload, "summary", MAX_SUMMARY, prefix="payload.")
    if not payload.get("source") and default_source:
        payload["source"] = default_source
    _optional_text(payload, "source", MAX_SUMMARY, prefix="payload.")
    _timestamp(payload, "payload.")
    _links(body)
    return routing_key, Action.CHANGE, ""


def _routing_key(body: Dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{field} is required (the integration key of the PagerDuty service)")
    if len(value) != ROUTING_KEY_LENGTH or not value.isalnum() or not value.isascii():
        raise InvalidEvent(
            f"{field} must be {ROUTING_KEY_LENGTH} letters and digits (got {len(value)} characters)"
        )
    return value


def _action(body: Dict[str, Any], field: str) -> Action:
    value = body.get(field)
    if value not in ("trigger", "acknowledge", "resolve"):
        raise InvalidEvent(f"{field} must be trigger, acknowledge or resolve (got {value!r})")
    return Action(value)


def _choice(body: Dict[str, Any], field: str, choices: Any, prefix: str = "") -> None:
    value = body.get(field)
    allowed = _values(choices)
    if value not in allowed:
        raise InvalidEvent(f"{prefix}{field} must be one of {', '.join(allowed)} (got {value!r})")


@functools.lru_cache(maxsize=None)
def _values(choices: Any) -> Tuple[str, ...]:
    return tuple(choice.value for choice in choices)


def _text(body: Dict[str, Any], field: str, limit: int, prefix: str = "") -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidEvent(f"{prefix}{field} is required and must be non-empty text")
    if len(value) > limit:
        raise InvalidEvent(f"{prefix}{field} is {len(value)} characters; at most {limit} are allowed")
    return value


def _optional_text(body: Dict[str, Any], field: str, limit: int, prefix: str = "") -> str:
    value = body.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(f"{prefix}{field} must be text")
    if len(value) > limit:
        raise InvalidEvent(f"{prefix}{field} is {len(value)} characters; at most {limit} are allowed")
    return value


def _object(body: Dict[str, Any], field: str, required: bool = False) -> Dict[str, Any]:
    value = body.get(field)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(f"{field} is required and must be an object")
    return value


def _timestamp(payload: Dict[str, Any], prefix: str) -> None:
    value = payload.get("timestamp")
    if value is not None and (not isinstance(value, str) or not ISO_8601.fullmatch(value)):
        raise InvalidEvent(f"{prefix}timestamp must be an ISO 8601 date and time (got {value!r})")


def _list_of_objects(body: Dict[str, Any], field: str) -> List[Dict[str, Any]]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidEvent(f"{field} must be a list of objects")
    return value


def _links(body: Dict[str, Any]) -> None:
    for index, link in enumerate(_list_of_objects(body, "links")):
        _text(link, "href", 2048, prefix=f"links[{index}].")
        _optional_text(link, "text", MAX_SUMMARY, prefix=f"links[{index}].")


def _images(body: Dict[str, Any]) -> None:
    for index, image in enumerate(_list_of_objects(body, "images")):
        src = _text(image, "src", 2048, prefix=f"images[{index}].")
        if not src.startswith("https://"):
            raise InvalidEvent(f"images[{index}].src must be an https:// URL")
        _optional_text(image, "href", 2048, prefix=f"images[{index}].")
        _optional_text(image, "alt", MAX_SUMMARY, prefix=f"images[{index}].")
