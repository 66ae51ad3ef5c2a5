"""The status and row values' wire codec: the fields, in the order, that the daemon has always sent."""

from __future__ import annotations

import pytest

from pdagent_sd.keys import RoutingKey
from pdagent_sd.queuetypes import EventRow
from pdagent_sd.statustypes import (
    STATES,
    Attempt,
    DaemonInfo,
    Held,
    KeyCounts,
    KeyStatus,
    ListedEvent,
    QueueStatus,
    State,
)

KEY = "R0123456789abcdef0123456789abcdX"


@pytest.mark.unit
def test_a_status_goes_to_the_wire_and_back_unchanged() -> None:
    key = KeyStatus.of("R012…bcdX", KeyCounts(pending=2, failed=1, superseded=4, oldest_pending=5.0), 3.0,
                       Held(None, 99.0))
    status = QueueStatus((key,), 3, {"pending": 2, "delivered": 0, "failed": 1, "superseded": 4}, 1.0, 1,
                         ("damaged",), ("/x",), {"ok": 1}, DaemonInfo(7, "1.0", 2.5, 1))
    wire = status.to_wire()
    assert list(wire) == ["keys", "keys_total", "keys_omitted", "totals", "last_delivery", "throttled_keys",
                          "warnings", "damaged_files", "heartbeats", "daemon"]
    assert list(wire["keys"][0]) == ["routing_key", *STATES, "oldest_pending_age", "throttled_until",
                                     "backoff_until"]
    assert wire["keys_omitted"] == 2 and wire["keys"][0]["superseded"] == 4 and key.held
    assert QueueStatus.from_wire(wire) == status


@pytest.mark.unit
def test_an_older_agents_status_reads_with_empty_values() -> None:
    status = QueueStatus.from_wire({"keys": [{"routing_key": "k", "pending": 1, "delivered": 0, "failed": 0}],
                                    "totals": {"pending": 1}})
    assert status.keys == (KeyStatus("k", pending=1),) and status.keys_omitted == 0 and status.daemon is None
    assert not status.keys[0].held and status.warnings == () and status.heartbeats == {}


@pytest.mark.unit
def test_a_row_shows_keys_and_sender_only_when_revealed() -> None:
    row = EventRow(1, RoutingKey(KEY), "v2", "trigger", "dedup-key-long", State.PENDING.value, 1.0, 1.0, 0, 0.0,
                   None, None, None, 1000, "{}", (Attempt(2.0, "deferred", 500, "boom"),))
    hidden, shown = row.shown(reveal=False).to_wire(), row.shown(reveal=True).to_wire()
    assert hidden["routing_key"] == "R012…bcdX" and hidden["dedup_key"] == "dedu…long" and "sender_uid" not in hidden
    assert shown["routing_key"] == KEY and shown["dedup_key"] == "dedup-key-long" and shown["sender_uid"] == 1000
    assert list(shown) == ["id", "routing_key", "api", "action", "dedup_key", "state", "created", "updated",
                           "attempts", "next_attempt", "last_status", "last_error", "superseded_by", "sender_uid",
                           "body", "attempts_log"]
    assert shown["attempts_log"] == [{"at": 2.0, "outcome": "deferred", "http_status": 500, "error": "boom"}]
    assert KEY not in repr(row)
    assert ListedEvent.from_wire(shown).to_wire() == shown and ListedEvent.from_wire(hidden).to_wire() == hidden
