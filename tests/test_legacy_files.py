"""Unit: reading the old agent's outqueue files (pdagent_sd/legacy.py), on real files in tmp_path."""

from __future__ import annotations

import os

import pytest

from pdagent_sd.legacy import MAX_FILE_BYTES, parse_name, scan

from agentproc import KEY_A
from legacyagent import event_text, file_name, make_outqueue, put

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name, seconds", [(file_name(1400000000123456, KEY_A), 1400000000.123456),
                                           ("999999999000000_k.txt", 999999999.0),
                                           ("0_key_with_underscores.txt", 0.0)])
def test_names_of_the_old_form_give_their_enqueue_time(name: str, seconds: float) -> None:
    assert parse_name(name) == pytest.approx(seconds)


@pytest.mark.parametrize("name", ["1400000000000000.txt", "_KEY.txt", "14e5_KEY.txt", "1400000000000000_KEY.json",
                                  "1400000000000000_KEY", "-1_KEY.txt", "１４_KEY.txt", "14_KE\nY.txt",
                                  "14_K\udcffEY.txt", ".txt", ""])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        parse_name(name)


def test_scan_orders_by_time_not_by_text_and_bounds_what_it_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue = make_outqueue(str(tmp_path))
    put(queue, "pdq", file_name(1400000000000000, KEY_A), event_text("resolve", KEY_A, "k"))
    put(queue, "err", file_name(999999999000000, KEY_A), event_text("trigger", KEY_A, "k", "first"))
    put(queue, "pdq", file_name(1400000000000001, KEY_A), "x" * (MAX_FILE_BYTES + 1))
    put(queue, "pdq", file_name(1400000000000002, KEY_A), "[1, 2]")
    os.rmdir(os.path.join(queue, "suc"))  # a missing subdirectory is not an error
    events, unusable = scan(queue)
    assert [(e.subdir, e.state, e.body["event_type"]) for e in events] == [("err", "failed", "trigger"),
                                                                          ("pdq", "pending", "resolve")]
    assert [(u.path.split("_")[0], u.reason.split(";")[0]) for u in unusable] == [
        ("pdq/1400000000000001", f"{MAX_FILE_BYTES + 1} bytes"), ("pdq/1400000000000002", "not a JSON object")]
