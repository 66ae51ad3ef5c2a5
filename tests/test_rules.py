"""Unit tests: event validation, the delivery rules table, backoff, the token bucket and config."""

from __future__ import annotations

import pytest

from pdagent_sd import config
from pdagent_sd.delivery import Outcome, classify, error_text, parse_retry_after
from pdagent_sd.errors import ConfigError, InvalidEvent
from pdagent_sd.events import Action, Api, validate
from pdagent_sd.keys import mask
from pdagent_sd.scheduler import TokenBucket, backoff_delay

pytestmark = pytest.mark.unit

KEY = "0123456789abcdef0123456789ABCDEF"


def v2(**fields):  # type: ignore[no-untyped-def]
    body = {"routing_key": KEY, "event_action": "trigger",
            "payload": {"summary": "disk full", "source": "db1", "severity": "critical"}}
    body.update(fields)
    return body


# --- events --------------------------------------------------------------------------------------------


def test_v2_trigger_without_dedup_key_gets_one_and_is_not_changed_in_place() -> None:
    body = v2()
    event = validate("v2", body)
    assert event.api is Api.V2 and event.action is Action.TRIGGER
    assert len(event.dedup_key) == 32 and event.body["dedup_key"] == event.dedup_key
    assert "dedup_key" not in body


def test_v2_default_source_fills_only_a_missing_source() -> None:
    body = v2()
    del body["payload"]["source"]
    assert validate("v2", body, default_source="host.example").body["payload"]["source"] == "host.example"
    assert validate("v2", v2(), default_source="host.example").body["payload"]["source"] == "db1"


@pytest.mark.parametrize("mutate, field", [
    (lambda b: b.pop("routing_key"), "routing_key"),
    (lambda b: b.update(routing_key="short"), "routing_key"),
    (lambda b: b.update(event_action="explode"), "event_action"),
    (lambda b: b["payload"].pop("summary"), "payload.summary"),
    (lambda b: b["payload"].update(summary="x" * 1025), "payload.summary"),
    (lambda b: b["payload"].update(severity="fatal"), "payload.severity"),
    (lambda b: b["payload"].pop("source"), "payload.source"),
    (lambda b: b["payload"].update(timestamp="yesterday"), "payload.timestamp"),
    (lambda b: b.update(dedup_key="k" * 256), "dedup_key"),
    (lambda b: b.update(images=[{"src": "http://insecure/x.png"}]), "images[0].src"),
    (lambda b: b.update(links=[{"text": "no href"}]), "links[0].href"),
    (lambda b: b.update(links="not a list"), "links"),
    (lambda b: b.pop("payload"), "payload"),
    (lambda b: b["payload"].update(custom_details="x" * (513 * 1024)), "bytes"),
])
def test_v2_rules_name_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    body = v2()
    mutate(body)
    with pytest.raises(InvalidEvent, match=field.replace("[", r"\[").replace("]", r"\]")):
        validate("v2", body)


def test_v2_acknowledge_and_resolve_need_a_dedup_key_but_no_payload() -> None:
    with pytest.raises(InvalidEvent, match="dedup_key is required"):
        validate("v2", {"routing_key": KEY, "event_action": "resolve"})
    event = validate("v2", {"routing_key": KEY, "event_action": "acknowledge", "dedup_key": "d1"})
    assert event.dedup_key == "d1" and event.action is Action.ACKNOWLEDGE


@pytest.mark.parametrize("stamp", ["2026-11-26T13:44:30Z", "2026-11-26T13:44:30.123+01:00", "2026-11-26"])
def test_iso_8601_timestamps_accepted(stamp: str) -> None:
    body = v2()
    body["payload"]["timestamp"] = stamp
    validate("v2", body)


def test_v1_rules() -> None:
    event = validate("v1", {"service_key": KEY, "event_type": "trigger", "description": "cpu"})
    assert event.api is Api.V1 and event.body["incident_key"] == event.dedup_key
    with pytest.raises(InvalidEvent, match="description"):
        validate("v1", {"service_key": KEY, "event_type": "trigger"})
    with pytest.raises(InvalidEvent, match="incident_key is required"):
        validate("v1", {"service_key": KEY, "event_type": "resolve"})
    with pytest.raises(InvalidEvent, match=r"contexts\[0\].type"):
        validate("v1", {"service_key": KEY, "event_type": "trigger", "description": "x",
                        "contexts": [{"type": "video"}]})


def test_change_rules() -> None:
    event = validate("change", {"routing_key": KEY, "payload": {"summary": "deploy 42"}})
    assert event.api is Api.CHANGE and event.dedup_key == "" and event.action is Action.CHANGE
    with pytest.raises(InvalidEvent, match="payload.summary"):
        validate("change", {"routing_key": KEY, "payload": {}})


def test_unknown_api_and_non_object_events_are_refused() -> None:
    with pytest.raises(InvalidEvent, match="api must be"):
        validate("v3", v2())
    with pytest.raises(InvalidEvent, match="JSON object"):
        validate("v2", ["not", "an", "object"])


def test_routing_keys_are_masked_in_text() -> None:
    assert mask(KEY) == "0123…CDEF"
    assert mask("short") == "*****"


# --- delivery rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize("api, status, outcome, throttled", [
    (Api.V2, 202, Outcome.DELIVERED, False),
    (Api.V1, 200, Outcome.DELIVERED, False),
    (Api.V2, 429, Outcome.RETRY, True),
    (Api.V2, 408, Outcome.RETRY, True),
    (Api.V1, 403, Outcome.RETRY, True),
    (Api.V2, 403, Outcome.FAILED, False),
    (Api.V2, 500, Outcome.RETRY, False),
    (Api.V2, 503, Outcome.RETRY, False),
    (Api.V2, 400, Outcome.FAILED, False),
    (Api.V2, 404, Outcome.FAILED, False),
    (Api.V2, 413, Outcome.FAILED, False),
])
def test_delivery_rules_table(api: Api, status: int, outcome: Outcome, throttled: bool) -> None:
    result = classify(api, status, "", None)
    assert result.outcome is outcome and result.throttled is throttled and result.http_status == status


def test_pagerduty_error_text_is_kept() -> None:
    text = '{"status":"invalid event","message":"Event object is invalid","errors":["Length of summary"]}'
    assert error_text(text) == "Event object is invalid; Length of summary"
    assert classify(Api.V2, 400, text, None).error == "Event object is invalid; Length of summary"
    assert error_text("<html>bad gateway</html>") == "<html>bad gateway</html>"


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 5.0 ") == 5.0 and parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") is None and parse_retry_after("5.") is None and parse_retry_after("٣") is None
    assert parse_retry_after("Thu, 26 Nov 2026 13:00:30 GMT", now=1795698000.0) == pytest.approx(30.0)
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert classify(Api.V2, 429, "", "3").retry_after == 3.0


# --- backoff and throttle ---------------------------------------------------------------------------------


def test_backoff_is_full_jitter_within_its_bounds() -> None:
    assert backoff_delay(1, 1.0, 300.0, rng=lambda: 0.0) == 1.0
    assert backoff_delay(1, 1.0, 300.0, rng=lambda: 1.0) == 2.0
    assert backoff_delay(5, 1.0, 300.0, rng=lambda: 1.0) == 32.0
    assert backoff_delay(50, 1.0, 300.0, rng=lambda: 1.0) == 300.0
    assert backoff_delay(50, 1.0, 300.0, rng=lambda: 0.5) == pytest.approx(150.5)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(per_minute=60, burst=2, now=0.0)
    assert bucket.wait_time(0.0) == 0.0
    assert bucket.wait_time(0.0) == 0.0
    assert bucket.wait_time(0.0) == pytest.approx(1.0)
    assert bucket.wait_time(1.0) == 0.0
    assert TokenBucket(per_minute=0, burst=1, now=0.0).wait_time(0.0) == 0.0


# --- config ---------------------------------------------------------------------------------------------


def test_config_defaults_files_drop_ins_and_environment(tmp_path) -> None:  # type: ignore[no-untyped-def]
    main = tmp_path / "agent.conf"
    main.write_text("[Agent]\nrate_limit_per_minute = 60\nkeep_delivered = 2d\n")
    (tmp_path / "agent.conf.d").mkdir()
    (tmp_path / "agent.conf.d" / "10-eu.conf").write_text("[Agent]\nevents_url = https://events.eu.pagerduty.com/\n")
    (tmp_path / "agent.conf.d" / "20-rate.conf").write_text("[Agent]\nrate_limit_per_minute = 30\n")
    loaded = config.load(str(main), {"PDAGENT_IDLE_EXIT_SEC": "5min"})
    assert loaded.rate_limit_per_minute == 30
    assert loaded.events_url == "https://events.eu.pagerduty.com"
    assert loaded.keep_delivered == 2 * 86400
    assert loaded.idle_exit_sec == 300
    assert loaded.keep_failed == 30 * 86400  # default


@pytest.mark.parametrize("text, expected", [
    ("[Agent]\nmax_pending_events = lots\n", "max_pending_events"),
    ("[Agent]\nbackoff_min_sec = 0\n", "backoff_min_sec"),
    ("[Agent]\nevents_url = ftp://x\n", "events_url"),
    ("not an ini file\n", "cannot read"),
])
def test_bad_config_values_name_file_and_key(tmp_path, text: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.conf"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as caught:
        config.load(str(path), {})
    assert str(path) in caught.value.message


def test_insecure_events_url_needs_an_explicit_yes() -> None:
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        config.load("/nonexistent", {"PDAGENT_EVENTS_URL": "http://10.1.2.3:8080"})
    assert config.load("/nonexistent", {"PDAGENT_EVENTS_URL": "http://127.0.0.1:8080"})
    assert config.load("/nonexistent", {"PDAGENT_EVENTS_URL": "http://10.1.2.3", "PDAGENT_ALLOW_INSECURE_HTTP": "yes"})


def test_unknown_keys_warn_but_do_not_stop(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.conf"
    path.write_text("[Agent]\nrate_limit_per_minit = 5\n")
    config.load(str(path), {})
    assert "rate_limit_per_minit" in caplog.text


def test_every_setting_is_documented() -> None:
    import os

    from agentproc import ROOT

    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as docs:
        text = docs.read()
    for setting in config.SETTINGS:
        assert f"`{setting.name}`" in text, setting.name
    for section in (config.SECTION, config.UNIT_ALERTS):
        assert config.render_markdown(section) in text, f"regenerate the [{section}] table from config.render_markdown"


def test_shipped_config_file_matches_the_settings_table() -> None:
    import os

    from agentproc import ROOT

    with open(os.path.join(ROOT, "packaging", "agent.conf"), encoding="utf-8") as shipped:
        assert shipped.read() == config.render_ini(), "regenerate packaging/agent.conf from config.render_ini()"


def test_every_module_is_in_the_design_notes_map() -> None:
    """docs/design-notes.md says which module owns what, in one table: a module added or renamed goes there too."""
    import os

    from agentproc import ROOT

    with open(os.path.join(ROOT, "docs", "design-notes.md"), encoding="utf-8") as notes:
        text = notes.read()
    package = os.path.join(ROOT, "pdagent_sd")
    modules = [os.path.relpath(os.path.join(folder, name), package)
               for folder in (package, os.path.join(package, "cli"), os.path.join(package, "integrations"))
               for name in sorted(os.listdir(folder)) if name.endswith(".py") and name != "__init__.py"]
    missing = [module for module in modules if f"| `{module}` |" not in text]
    assert modules and not missing, f"add to the module map in docs/design-notes.md: {missing}"
