"""pd-send's fast option parser must agree with the argparse parser built from the same table."""

from __future__ import annotations

import pytest

from pdagent_sd.cli.send import COMMAND, build_event

pytestmark = pytest.mark.unit

KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("argv", [
    ["-k", KEY, "-t", "trigger", "-d", "disk full"],
    [f"-k{KEY}", "-ttrigger", "-ddisk full", "-f", "a=1", "-f", "b=2=3"],
    ["--service-key", KEY, "--event-type=resolve", "--incident-key", "x/y"],
    ["--routing-key", KEY, "-t", "trigger", "--description=-dash-led", "--severity", "critical", "-q"],
    ["-k", KEY, "--change", "-d", "deploy", "--link", "https://a|b", "--link", "https://c"],
    ["-k", KEY, "-t", "trigger", "-d", "x", "--image", "https://i/x.png|https://h|alt", "--class", "cpu",
     "--api", "v1", "--socket", "/tmp/s"],
])
def test_fast_parser_agrees_with_argparse(argv) -> None:  # type: ignore[no-untyped-def]
    fast = COMMAND._fast_parse(argv)
    assert fast is not None
    assert fast == vars(COMMAND.argparser().parse_args(argv))


@pytest.mark.parametrize("argv", [
    ["-t"],  # a value missing (no -k is pd-send's own usage error: $PDAGENT_ROUTING_KEY may stand in)
    ["-k", KEY, "-t", "explode"],
    ["-k", KEY, "--nope"],
    ["-k"],
    ["-k", KEY, "stray"],
    ["-k", KEY, "-t", "trigger", "-d", "-dash-led"],
    ["--help"],
])
def test_anything_unusual_goes_to_argparse(argv) -> None:  # type: ignore[no-untyped-def]
    assert COMMAND._fast_parse(argv) is None
    with pytest.raises(SystemExit):
        COMMAND.parse(argv)


def test_v2_trigger_body() -> None:
    args = COMMAND.parse(["-k", KEY, "-t", "trigger", "-d", "disk full", "-i", "db1/disk", "-c", "cron",
                          "-u", "https://cron", "-f", "mount=/var", "--component", "postgres", "--group", "db",
                          "--class", "disk", "--timestamp", "2026-11-26T10:00:00Z", "--source", "db1",
                          "--link", "https://runbook|runbook", "--image", "https://graph/png"])
    assert build_event(args) == {
        "routing_key": KEY, "event_action": "trigger", "dedup_key": "db1/disk", "client": "cron",
        "client_url": "https://cron", "links": [{"href": "https://runbook", "text": "runbook"}],
        "images": [{"src": "https://graph/png"}],
        "payload": {"summary": "disk full", "source": "db1", "severity": "error",
                    "timestamp": "2026-11-26T10:00:00Z", "component": "postgres", "group": "db", "class": "disk",
                    "custom_details": {"mount": "/var"}},
    }


@pytest.mark.parametrize("value", [
    {"ok": True, "id": 3, "dedup_key": "é/ü\n\t\"q\"", "nested": [1, 2.5, None, False, {"a": []}], "big": 2 ** 70},
    {"summary": "\u2603 snow \U0001f600", "empty": "", "list": [[], {}]},
])
def test_wire_json_matches_the_json_module(value) -> None:  # type: ignore[no-untyped-def]
    import json

    from pdagent_sd.protocol import dumps, loads

    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert loads(dumps(value)) == value
    assert loads("  " + json.dumps(value, indent=2) + "\n") == value


@pytest.mark.parametrize("text", ["", "{", '{"a":1} trailing', "[1,]", "nan", '{"a":NaN}x', "\"unterminated"])
def test_wire_json_refuses_what_json_refuses(text: str) -> None:
    from pdagent_sd.protocol import loads

    with pytest.raises(ValueError):
        loads(text)
