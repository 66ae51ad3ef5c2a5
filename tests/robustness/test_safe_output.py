"""Safe output: nothing a local user or a monitored system wrote reaches a person's terminal as something the
terminal acts on (escape sequences, C1 controls, DEL, bidi and other format characters, line breaks).

- a hypothesis property over arbitrary text: safe(), safe_json() and pd-queue's list, show and status
  formatting print no character of the unsafe categories, and safe_json() still means the same data;
- a newline in a dedup key cannot forge a line of `show`;
- as a throwaway local user, hostile summaries and dedup keys are queued; root's pd-queue list, show, status,
  their --json and the drop prompt, and the daemon's stderr log, hold none of it raw.
"""

from __future__ import annotations

import json
import os
import subprocess
import unicodedata
from typing import Any, Dict, List

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pdagent_sd.cli.queue import format_event, format_list, format_status
from pdagent_sd.safetext import UNSAFE_CATEGORIES, safe, safe_json

from agentproc import KEY_A, Agent
from asuser import OtherUser
from standin import StandIn

ATTACKS = [
    "\x1b]0;pwned\x07",  # window title
    "\x1b[2J\x1b[H",  # clear the screen
    "\r\x1b[2K",  # erase the line (hides a real failed page)
    "\x1b]52;c;cm0gLXJmIH4K\x07",  # OSC 52: write the clipboard
    "\x9b31m",  # C1 CSI
    "\u202egnp.exe",  # right-to-left override
    "\u2066\u2069\u200e\u200f\u061c\u2028\u2029\x7f\x00",
]
FORGED = "x\n  Last answer:   HTTP 202"


def unsafe_chars(text: str) -> List[str]:
    return [char for char in text if unicodedata.category(char) in UNSAFE_CATEGORIES]


def assert_lines_safe(lines: List[str]) -> None:
    for line in lines:
        assert not unsafe_chars(line), (line, unsafe_chars(line))


def row(text: str, dedup: str) -> Dict[str, Any]:
    return {"id": 7, "state": "failed", "routing_key": text[:40], "api": "v2", "action": "trigger", "attempts": 1,
            "created": 0.0, "updated": 0.0, "last_status": 400, "last_error": text, "dedup_key": dedup,
            "next_attempt": 0.0, "attempts_log": [{"at": 0.0, "outcome": "failed", "http_status": 400,
                                                   "error": text}],
            "body": json.dumps({"payload": {"summary": text}, "dedup_key": dedup})}


@pytest.mark.unit
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(), st.text())
@example("".join(ATTACKS), FORGED)
def test_nothing_printed_is_a_sequence_a_terminal_acts_on(text: str, dedup: str) -> None:
    assert not unsafe_chars(safe(text))
    encoded = safe_json({"text": text, text: [dedup]})
    assert_lines_safe(encoded.split("\n"))  # the newlines are the indentation's own
    assert encoded.count("\n") == 5
    assert json.loads(encoded) == {"text": text, text: [dedup]}  # the same data, only escaped
    event = row(text, dedup)
    assert_lines_safe(format_list([event], now=0.0))
    shown = format_event(event, now=0.0)
    assert_lines_safe(shown)
    assert len(shown) == len(format_event(row("t", "d"), now=0.0))  # no text adds or removes a line
    assert_lines_safe(format_status({"keys": [{"routing_key": text, "pending": 1, "delivered": 0, "failed": 0,
                                               "oldest_pending_age": 1, "throttled_until": None,
                                               "backoff_until": 5.0}],
                                     "totals": {"pending": 1, "delivered": 0, "failed": 0}}, now=0.0))


@pytest.mark.unit
def test_a_newline_in_a_dedup_key_cannot_forge_a_line_of_show() -> None:
    event = row("disk", FORGED)
    event.update(last_status=None, last_error=None, attempts_log=[], state="pending")
    lines = format_event(event, now=0.0)
    assert not any(line.startswith("  Last answer:") for line in lines), lines
    assert "  Dedup key:     x\\n  Last answer:   HTTP 202" in lines


@pytest.mark.unit
def test_readable_text_is_left_as_it_is() -> None:
    text = "Disk on web01 is CRITICAL: C:\\data\\ 2 % frei — 東京 🙂 \"quoted\" 'too'"
    assert safe(text) == text
    assert safe_json({"a": text}) == json.dumps({"a": text}, indent=2, ensure_ascii=False)
    assert safe("\x1b[31mred\x1b[0m\n") == "\\e[31mred\\e[0m\\n"
    assert safe("\u202e\x9b\x7f") == "\\u202e\\x9b\\x7f"


# --- the real daemon, a hostile local user, root reading ---------------------------------------------------------


def _on_terminal(agent: Agent, answer: str, *args: str) -> "subprocess.CompletedProcess[str]":
    master, slave = os.openpty()
    try:
        os.write(master, answer.encode())
        return subprocess.run([agent.python, "-m", "pdagent_sd.cli.queue", *args], env=agent.env, stdin=slave,
                              capture_output=True, text=True, timeout=30)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.integration
def test_hostile_text_from_another_user_reaches_roots_terminal_escaped(other_user: OtherUser,
                                                                       standin: StandIn) -> None:
    standin.add_fault(status=400, routing_key=KEY_A)  # failed: PagerDuty's error text is shown too
    agent = Agent(other_user.workdir, standin.url).start()
    try:
        hostile = "".join(ATTACKS)
        events = [{"routing_key": KEY_A, "event_action": "trigger", "dedup_key": FORGED + hostile[:100],
                   "payload": {"summary": f"disk {hostile}", "source": hostile, "severity": "error"}}]
        replies = other_user.requests(agent.socket, [{"op": "send", "api": "v2", "event": e} for e in events])
        assert all(json.loads(reply)["ok"] for reply in replies), replies
        argv_text = hostile.replace("\x00", "")  # an argument cannot hold NUL
        sent = other_user.run(["-m", "pdagent_sd.cli.send", "-k", KEY_A, "-t", "trigger", "-d", argv_text,
                               "-i", argv_text[:200]], env={"PDAGENT_SOCKET": agent.socket})
        assert sent.returncode == 0, sent.stderr
        assert not unsafe_chars(sent.stdout.rstrip("\n")), sent.stdout  # the sender's own echo of the key
        assert agent.wait_until(lambda: agent.status()["totals"]["failed"] == 2, timeout=15), agent.log()
        event_id = str(agent.request({"op": "list"})["events"][0]["id"])

        outputs = {}
        for argv in (["list"], ["list", "--json"], ["show", event_id], ["show", event_id, "--json"],
                     ["status"], ["status", "--json"]):
            result = agent.client("pdagent_sd.cli.queue", *argv)
            assert result.returncode == 0, (argv, result.stderr)
            outputs[" ".join(argv)] = result.stdout + result.stderr
        prompt = _on_terminal(agent, "n\n", "drop", event_id)
        assert "Drop event" in prompt.stdout and "Nothing dropped." in prompt.stdout
        outputs["drop prompt"] = prompt.stdout + prompt.stderr
        agent.stop()
        outputs["daemon log"] = agent.log()
        for name, text in outputs.items():
            for line in text.split("\n"):
                assert not unsafe_chars(line), (name, line)
        assert "\\e]0;pwned" in outputs["list"] + outputs[f"show {event_id}"]  # shown, escaped, not lost
        show = outputs[f"show {event_id}"].split("\n")
        assert sum(line.startswith("  Last answer:") for line in show) == 1  # PagerDuty's, not a forged one
        assert "HTTP 202" not in "\n".join(line for line in show if line.startswith("  Last answer:"))
        listed = json.loads(outputs["list --json"])["events"]
        assert any(e["dedup_key"].startswith(FORGED) for e in listed)  # --json: the exact text, JSON-escaped
    finally:
        agent.stop()
