"""Property-based tests (hypothesis) of the code that judges untrusted input without a process around it:
event validation and the integrations' parsers; and the coalescing rules, judged by PagerDuty's end state.

- events.validate never raises anything but InvalidEvent; what it accepts it accepts again unchanged, within
  the Events API's limits, as strict JSON that encodes as UTF-8.
- pd-zabbix's body parser, pd-sensu's JSON reader and pd-nagios's fields never raise anything but their
  documented errors (UsageError: exit 2, InvalidEvent: exit 65), and what they build passes validation.

300 examples a test in `make test`, 5000 in the full run (RELIABILITY_FULL=1); ROBUSTNESS_EXAMPLES=N sets it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdagent_sd import events
from pdagent_sd.cli.common import UsageError, parse_pairs
from pdagent_sd.coalesce import Waiting, decide, open_after
from pdagent_sd.errors import InvalidEvent
from pdagent_sd.events import Api, validate
from pdagent_sd.integrations import nagios, sensu, zabbix
from pdagent_sd.integrations.common import clean_args

from pdmodel import PagerDuty, fifo

pytestmark = pytest.mark.unit

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")
EXAMPLES = int(os.environ.get("ROBUSTNESS_EXAMPLES", "0") or 0) or (5000 if FULL else 300)
PROFILE = settings(max_examples=EXAMPLES, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                   database=None)  # nothing written into the tree; a failure prints its example

KEY = "0123456789abcdef0123456789ABCDEF"

# --- strategies ---------------------------------------------------------------------------------------------

# Any Unicode, lone surrogates included: JSON's \ud800 escapes put them into parsed strings.
any_char = st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
any_text = st.text(any_char, max_size=30)
# Strings near the limits that matter (dedup key 255, summary 1024) without generating 1000 random characters.
long_text = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\U0001F525", " ", "\ud800"]),
                      st.sampled_from([0, 1, 31, 32, 33, 254, 255, 256, 1023, 1024, 1025, 2048, 2049]))
text = st.one_of(any_text, long_text, st.sampled_from([
    "", " ", "trigger", "acknowledge", "resolve", "critical", "error", "warning", "info", "link", "image",
    "https://example.com/x", "http://example.com/x", KEY, KEY.lower(), KEY[:-1], KEY + "0",
    "2024-05-01T12:00:00Z", "2024-05-01T12:00:00Z\n", "2024-05-01", "٢٠٢٤-٠٥-٠١", "2024-05-01T12:00:00+02:00",
]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
                   st.floats(), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(text, inner, max_size=4)),
                          max_leaves=12)
# Deeper than the validator's limit, not as deep as the wire allows: hypothesis' own printer recurses too.
deep = st.builds(lambda depth, leaf: _nest(depth, leaf), st.integers(1, 160), scalar)


def _nest(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"d": leaf}
    return leaf


def _valid_v2() -> st.SearchStrategy[Dict[str, Any]]:
    payload = st.fixed_dictionaries(
        {"summary": st.just("disk full"), "source": st.just("web01"), "severity": st.just("error")},
        optional={"timestamp": text, "component": text, "group": text, "class": text, "custom_details": json_value})
    link = st.fixed_dictionaries({"href": text}, optional={"text": text})
    image = st.fixed_dictionaries({"src": text}, optional={"href": text, "alt": text})
    return st.fixed_dictionaries(
        {"routing_key": st.just(KEY), "event_action": st.sampled_from(["trigger", "acknowledge", "resolve"]),
         "dedup_key": st.one_of(st.just("srv01/disk"), text), "payload": payload},
        optional={"client": text, "client_url": text, "links": st.lists(link, max_size=2),
                  "images": st.lists(image, max_size=2)})


def _valid_v1() -> st.SearchStrategy[Dict[str, Any]]:
    context = st.fixed_dictionaries({"type": st.sampled_from(["link", "image"])}, optional={"href": text})
    return st.fixed_dictionaries(
        {"service_key": st.just(KEY), "event_type": st.sampled_from(["trigger", "acknowledge", "resolve"]),
         "incident_key": text, "description": text},
        optional={"details": json_value, "client": text, "client_url": text,
                  "contexts": st.lists(context, max_size=2)})


def _valid_change() -> st.SearchStrategy[Dict[str, Any]]:
    payload = st.fixed_dictionaries({"summary": text}, optional={
        "source": text, "timestamp": text, "custom_details": json_value})
    return st.fixed_dictionaries({"routing_key": st.just(KEY), "payload": payload},
                                 optional={"links": st.lists(st.fixed_dictionaries({"href": text}), max_size=2)})


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Dict[str, Any]]) -> Dict[str, Any]:
    """A nearly valid body with a few fields (nested ones too) replaced by anything, or removed."""
    body = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        target = body
        path = _paths(body)
        if not path:
            break
        chosen = draw(st.sampled_from(path))
        for step in chosen[:-1]:
            target = target[step]
        if draw(st.booleans()) and isinstance(target, dict):
            del target[chosen[-1]]
        else:
            target[chosen[-1]] = draw(st.one_of(json_value, deep))
    return body


def _paths(value: Any, prefix: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    found: List[Tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for step, child in items:
        found.append(prefix + (step,))
        if len(prefix) < 3:
            found += _paths(child, prefix + (step,))
    return found


bodies = st.one_of(
    st.tuples(st.just("v2"), mutated(_valid_v2())),
    st.tuples(st.just("v1"), mutated(_valid_v1())),
    st.tuples(st.just("change"), mutated(_valid_change())),
    st.tuples(st.one_of(st.sampled_from(["v2", "v1", "change"]), json_value), json_value),
)


# --- events.validate ----------------------------------------------------------------------------------------


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _texts(value: Any) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for key, item in value.items() for t in [key, *_texts(item)]]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    return []


def _check_limits(event: events.Event) -> None:
    body = event.body
    encoded = event.encoded()
    raw = encoded.encode("utf-8")  # no lone surrogate got through
    assert len(raw) <= events.MAX_BODY_BYTES
    assert _strict_json(encoded) == body  # what is POSTed is strict JSON: no NaN, no Infinity
    key = event.routing_key.reveal()
    assert len(key) == 32 and key.isascii() and key.isalnum()
    assert len(event.dedup_key) <= events.MAX_DEDUP_KEY
    if event.api is Api.V1:
        assert body["service_key"] == key and body["event_type"] == event.action.value
        assert body["incident_key"] == event.dedup_key
    else:
        assert body["routing_key"] == key
    if event.api is Api.V2:
        assert body["event_action"] == event.action.value and body["dedup_key"] == event.dedup_key
        if event.action is events.Action.TRIGGER:
            payload = body["payload"]
            assert 0 < len(payload["summary"]) <= events.MAX_SUMMARY
            assert payload["severity"] in ("critical", "error", "warning", "info")
        for image in body.get("images") or []:
            assert image["src"].startswith("https://")
    if event.api is Api.V1 and event.action is events.Action.TRIGGER:
        assert 0 < len(body["description"]) <= events.MAX_SUMMARY
    payload = body.get("payload")
    judged = event.action in (events.Action.TRIGGER, events.Action.CHANGE)  # PagerDuty ignores the rest
    if judged and isinstance(payload, dict) and payload.get("timestamp") is not None:
        stamp = payload["timestamp"]
        assert stamp.isascii() and events.ISO_8601.fullmatch(stamp) and "\n" not in stamp, stamp


@PROFILE
@given(bodies)
def test_validate_raises_only_invalid_event_and_accepted_events_hold(case: Tuple[Any, Any]) -> None:
    api, body = case
    before = copy.deepcopy(body)
    try:
        event = validate(api, body, default_source="this-host")
    except InvalidEvent as error:
        assert error.message and error.code == "invalid_event"
        return
    finally:
        assert _same(body, before), "validate changed the caller's object"
    _check_limits(event)
    again = validate(event.api.value, copy.deepcopy(event.body), default_source="another-host")
    assert again == event  # accepted events re-validate identically: nothing left to fill in or change


def _same(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN (the input may hold NaN; the caller's object must be unchanged)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@PROFILE
@given(st.sampled_from(["v2", "change"]), text, text)
@example("v2", "trigger", "\ud800\udc00")  # a surrogate pair: JSON's escape for U+10000, so a valid source
@example("v2", "trigger", "\udc00\ud800")  # the same two the wrong way round: unpaired, so invalid
def test_a_trigger_is_accepted_exactly_when_its_texts_are_within_limits(api: str, summary: str,
                                                                         source: str) -> None:
    body: Dict[str, Any] = {"routing_key": KEY, "payload": {"summary": summary, "source": source}}
    if api == "v2":
        body.update(event_action="trigger")
        body["payload"]["severity"] = "info"
    # validate reads a caller's body through JSON, as the daemon reads the wire: a high surrogate followed by a
    # low one is JSON's escape for one character beyond U+FFFF, not an unpaired surrogate. The limits apply to
    # the text as JSON reads it.
    summary, source = json.loads(json.dumps(summary)), json.loads(json.dumps(source))
    # v2 needs a source: an empty one is filled in with this host's name, a blank one is refused.
    within = (summary.strip() != "" and len(summary) <= events.MAX_SUMMARY and len(source) <= events.MAX_SUMMARY
              and (api == "change" or source == "" or source.strip() != "")
              and not any(0xD800 <= ord(c) <= 0xDFFF for c in summary + source))
    try:
        event = validate(api, body, default_source="this-host")
    except InvalidEvent:
        assert not within, body
        return
    assert within, body
    _check_limits(event)


# --- integrations ---------------------------------------------------------------------------------------------


def _accepted_or_invalid(api: str, body: Dict[str, Any]) -> None:
    """An integration's event goes through the daemon's validation, or is refused with a clear InvalidEvent."""
    try:
        event = validate(api, body, default_source="this-host")
    except InvalidEvent:
        return
    _check_limits(event)


zabbix_line = st.one_of(
    st.builds(lambda name, value: f"{name}:{value}",
              st.sampled_from(["name", "id", "status", "hostname", "ip", "value", "event_id", "severity", "url",
                               "NOTE", "incident_key", " ", "", "x" * 300]), text),
    text)
zabbix_body = st.one_of(st.lists(zabbix_line, max_size=12).map("\n".join), any_text)
zabbix_subject = st.one_of(st.sampled_from(["trigger", "acknowledge", "resolve", "PROBLEM", "OK", " Resolved "]),
                           any_text)


@PROFILE
@given(zabbix_body)
def test_zabbix_body_parser_never_fails(body: str) -> None:
    fields = zabbix.parse_body(body)
    assert all(isinstance(k, str) and isinstance(v, str) and k for k, v in fields.items())


def _from_argv(module: Any, argv: List[str]) -> Tuple[str, Dict[str, Any]]:
    """What the command's main does before it sends: argv cleaned as the command cleans it, then parsed.
    An argparse usage error (exit 2) counts as a UsageError."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = module.parser().parse_args(clean_args(argv))
    except SystemExit as exit_:
        assert exit_.code == 2
        raise UsageError("argparse refused the arguments") from None
    return module.event_for(args)


def _as_argv(text: str) -> str:
    """A string as it can reach a program's argv: no NUL, undecodable bytes as surrogate escapes."""
    return text.replace("\0", "").encode("utf-8", "surrogatepass").decode("utf-8", "surrogateescape")


@PROFILE
@given(st.one_of(st.just(KEY), any_text), zabbix_subject, zabbix_body)
def test_zabbix_events_are_built_or_refused_with_documented_errors(key: str, subject: str, body: str) -> None:
    try:
        api, event = _from_argv(zabbix, [_as_argv(key), _as_argv(subject), _as_argv(body)])
    except (UsageError, InvalidEvent) as error:
        assert error.message
        return
    _accepted_or_invalid(api, event)


sensu_check = st.fixed_dictionaries({}, optional={
    "name": json_value, "status": st.one_of(st.integers(-3, 300), json_value), "output": json_value,
    "executed": st.one_of(st.integers(), st.floats(), st.integers(2**40, 2**70), json_value),
    "metadata": st.one_of(st.fixed_dictionaries({"name": json_value}), json_value)})
sensu_event = st.fixed_dictionaries({"check": st.one_of(sensu_check, json_value)}, optional={
    "client": st.one_of(st.fixed_dictionaries({"name": json_value}), json_value),
    "entity": st.one_of(st.fixed_dictionaries({"metadata": st.fixed_dictionaries({"name": json_value})}),
                        json_value),
    "action": json_value, "id": json_value, "occurrences": json_value})


def _sensu_stdin(value: Any, style: int) -> bytes:
    text = json.dumps(value, ensure_ascii=bool(style % 2), allow_nan=True)
    return text.encode("utf-8", "surrogatepass") if style < 2 else text[: len(text) // 2].encode("utf-8", "replace")


sensu_stdin = st.one_of(
    st.builds(_sensu_stdin, sensu_event, st.integers(0, 3)),
    st.builds(lambda value: json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass"), json_value),
    st.binary(max_size=200),
)


@PROFILE
@given(sensu_stdin, st.one_of(st.none(), text))
def test_sensu_reader_builds_events_or_refuses_with_documented_errors(stdin: bytes, incident_key: Any) -> None:
    args = argparse.Namespace(routing_key=KEY, incident_key=incident_key)
    try:
        api, event = sensu.event_for(args, stdin)
    except (UsageError, InvalidEvent) as error:
        assert error.message
        return
    _accepted_or_invalid(api, event)


nagios_fields = st.dictionaries(
    st.one_of(st.sampled_from(["HOSTNAME", "HOSTSTATE", "SERVICEDESC", "SERVICESTATE", "HOSTOUTPUT",
                               "SERVICEOUTPUT"]), text),
    text, max_size=8)
nagios_type = st.one_of(st.sampled_from(list(nagios.ACTION_OF_TYPE)), any_text)


@PROFILE
@given(nagios_type, st.one_of(st.sampled_from(["host", "service"]), any_text), nagios_fields,
       st.one_of(st.none(), text))
def test_nagios_events_are_built_or_refused_with_documented_errors(notification_type: str, object_type: str,
                                                                   fields: Dict[str, str],
                                                                   incident_key: Any) -> None:
    argv = ["-k", KEY, "-t", notification_type, "-n", object_type]
    argv += [arg for name, value in fields.items() for arg in ("-f", f"{name}={value}")]
    if incident_key is not None:
        argv += ["-i", incident_key]
    try:
        api, event = _from_argv(nagios, [_as_argv(arg) for arg in argv])
    except (UsageError, InvalidEvent) as error:
        assert error.message
        return
    _accepted_or_invalid(api, event)


@PROFILE
@given(st.lists(text, max_size=6))
def test_field_pairs_parse_or_give_a_usage_error(pairs: List[str]) -> None:
    try:
        fields = parse_pairs(pairs, "-f/--field")
    except UsageError as error:
        assert "-f/--field" in error.message
        return
    assert all(isinstance(k, str) and k for k in fields)


# --- what the properties found, pinned ---------------------------------------------------------------------


def _trigger(**payload: Any) -> Dict[str, Any]:
    return {"routing_key": KEY, "event_action": "trigger",
            "payload": {"summary": "s", "source": "h", "severity": "info", **payload}}


@pytest.mark.parametrize("stamp", ["2024-05-01T12:00:00Z\n", "٢٠٢٤-٠٥-٠١", "2024-05-01T12:00:00Z junk"])
def test_timestamps_are_ascii_and_whole(stamp: str) -> None:
    with pytest.raises(InvalidEvent, match="timestamp"):
        validate("v2", _trigger(timestamp=stamp))


@pytest.mark.parametrize("depth, accepted", [(events.MAX_DEPTH - 2, True), (events.MAX_DEPTH - 1, False),
                                             (5000, False)])
def test_nesting_has_one_limit_on_every_interpreter(depth: int, accepted: bool) -> None:
    body = _trigger(custom_details=_nest(depth, 1))  # body, payload, custom_details: two levels above it
    if accepted:
        validate("v2", body)
    else:
        with pytest.raises(InvalidEvent, match="nested more than"):
            validate("v2", body)


def test_an_unpaired_surrogate_is_an_invalid_event_not_a_crash() -> None:
    with pytest.raises(InvalidEvent, match="not valid Unicode"):
        validate("v2", json.loads('{"routing_key": "%s", "event_action": "trigger", "payload": '
                                  '{"summary": "\\ud800", "source": "h", "severity": "info"}}' % KEY))


def test_sensu_unpaired_surrogates_become_replacement_characters() -> None:
    stdin = b'{"client": {"name": "web\\udc80"}, "check": {"name": "disk", "status": 2, "output": "\\ud800!"}}'
    api, body = sensu.event_for(argparse.Namespace(routing_key=KEY, incident_key=None), stdin)
    assert body["dedup_key"] == "web\ufffd/disk"
    assert body["payload"]["summary"] == "web\ufffd/disk : \ufffd!"
    validate(api, body)


@pytest.mark.parametrize("executed", [1e20, 2**70, float("inf"), 253402300800])  # the last: year 10000
def test_sensu_times_out_of_range_are_left_out(executed: float) -> None:
    event = {"client": {"name": "web"}, "check": {"name": "disk", "status": 2, "executed": executed}}
    assert sensu.timestamp(event) is None


def test_sensu_deep_json_is_an_invalid_event() -> None:
    for depth in (200, 100000):
        stdin = ('{"check": {"name": "x", "output": ' + "[" * depth + "]" * depth + "}}").encode()
        with pytest.raises(InvalidEvent):
            sensu.event_for(argparse.Namespace(routing_key=KEY, incident_key=None), stdin)


# --- coalescing, judged by what PagerDuty ends in (tests/pdmodel.py) ---------------------------------------

COALESCE_STEP = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["a", "b", "c"]), st.sampled_from(["trigger"] * 3 + [
        "acknowledge", "resolve"])),
    st.tuples(st.just("send"), st.sampled_from(["a", "b", "c"]), st.just("")),
)


@PROFILE
@given(steps=st.lists(COALESCE_STEP, max_size=40))
def test_coalescing_rules_leave_pagerduty_as_fifo_does(steps: List[Tuple[str, str, str]]) -> None:
    """The pure rules of coalesce.decide: events arrive, incidents' oldest waiting events are sent in any order
    between incidents (in order within one), superseded events are never sent; once all is sent, PagerDuty's end
    state per incident (alert state, alerts opened, latest summary) is the same as sending every event in the
    order it arrived."""
    pagerduty = PagerDuty()
    arrived: List[Tuple[str, str, str]] = []
    waiting: Dict[str, List[Tuple[int, str, str]]] = {}  # per incident: (id, action, summary), oldest first
    sent: Dict[str, List[str]] = {}  # per incident: the actions delivered, in order

    def send(incident: str) -> None:
        if waiting.get(incident):
            _, action, summary = waiting[incident].pop(0)
            pagerduty.apply(action, incident, summary)
            sent.setdefault(incident, []).append(action)

    for number, (kind, incident, action) in enumerate(steps):
        if kind == "send":
            send(incident)
            continue
        summary = f"{incident}{number}" if action == "trigger" else ""
        arrived.append((action, incident, summary))
        queue = waiting.setdefault(incident, [])
        decision = decide([Waiting(event_id, event_action) for event_id, event_action, _ in queue],
                          open_after(sent.get(incident, [])), action)
        queue[:] = [event for event in queue if event[0] not in decision.superseded]
        queue.append((number, action, summary))
    for incident in sorted(waiting):
        while waiting[incident]:
            send(incident)
    assert pagerduty.end_state() == fifo(arrived).end_state()
