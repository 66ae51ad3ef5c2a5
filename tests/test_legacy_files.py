"""Unit: reading the old agent's outqueue files (pdagent_sd/legacy.py), on real files in tmp_path."""

from __future__ import annotations

import os

import pytest

from pdagent_sd.legacy import MAX_FILE_BYTES, nesting, parse, parse_name, retire, scan

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


@pytest.mark.parametrize("text, depth", [('{"a": 1}', 1), ('{"a": [1, {"b": {}}]}', 4), ('"[[[{{{"', 0),
                                         ('{"a": "\\"[[[", "b": ["]]]\\\\"]}', 2), ("[" * 100 + "]" * 100, 100)])
def test_nesting_is_counted_without_parsing_and_strings_do_not_count(text: str, depth: int) -> None:
    assert nesting(text) == depth


def test_nesting_past_the_bound_is_refused_before_json_parses_it() -> None:
    with pytest.raises(ValueError, match="nested more than 100 levels"):
        nesting("[" * 101 + "]" * 101)
    with pytest.raises(ValueError, match="nested more than 100 levels"):
        parse('{"details": ' + "[" * 200000 + "}")  # json.loads itself would raise RecursionError


def test_a_deep_or_badly_encoded_file_is_that_files_error_and_the_scan_goes_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue = make_outqueue(str(tmp_path))
    deep = file_name(1400000000000000, KEY_A)
    put(queue, "pdq", deep, '{"service_key": "x", "details": ' + "[" * 200000 + "]" * 200000 + "}")
    with open(os.path.join(queue, "pdq", file_name(1400000000000001, KEY_A)), "wb") as handle:
        handle.write(b'{"description": "caf\xe9"}')  # latin-1, not UTF-8
    good = put(queue, "pdq", file_name(1400000000000002, KEY_A),
               event_text("trigger", KEY_A, description="caf\u00e9 \u2603"))
    os.chown(good, 65534, 65534)
    events, unusable = scan(queue)
    assert [(u.path.split("_")[0], u.reason) for u in unusable] == [
        ("pdq/1400000000000000", "nested more than 100 levels deep"), ("pdq/1400000000000001", "not UTF-8")]
    assert len(events) == 1 and events[0].owner == 65534
    with open(good, "rb") as handle:
        assert events[0].text.encode() == handle.read()  # the file's bytes, to be sent unchanged
    assert "\\u00e9" in events[0].text  # the old agent's ASCII escapes are kept as they are


def test_retire_moves_imported_pdq_files_to_imported(tmp_path) -> None:  # type: ignore[no-untyped-def]
    queue = make_outqueue(str(tmp_path))
    names = [file_name(1400000000000000 + n, KEY_A) for n in range(3)]
    for name in names:
        put(queue, "pdq", name, event_text("trigger", KEY_A, "k", "x"))
    moved, problems = retire(queue, names[:2] + ["gone.txt"])
    assert (moved, problems) == (2, [])
    assert sorted(os.listdir(os.path.join(queue, "imported"))) == names[:2]
    assert os.listdir(os.path.join(queue, "pdq")) == names[2:]
    assert oct(os.stat(os.path.join(queue, "imported")).st_mode & 0o7777) == "0o750"
