"""The delivery state machine, step by step: the real Scheduler and Store, a fake clock, a scripted Events API
(tests/schedrig.py). FIFO under 429, the Retry-After bounds, backoff bounds, the token bucket, storage backoff."""

from __future__ import annotations

from typing import Iterator

import pytest

from pdagent_sd.keys import RoutingKey

from schedrig import DELIVERED, KEY_A, KEY_B, Answer, refused, rig_maker, server_error, throttled, unreachable

pytestmark = pytest.mark.unit


@pytest.fixture
def make_rig(tmp_path) -> Iterator:  # type: ignore[no-untyped-def]
    with rig_maker(str(tmp_path)) as make:
        yield make


def gaps(times):  # type: ignore[no-untyped-def]
    return [round(b - a, 6) for a, b in zip(times, times[1:])]


def test_fifo_holds_under_429_and_other_keys_go_on(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0)
    rig.deliverer.script(KEY_A, DELIVERED, throttled("10"), throttled("20"), DELIVERED)
    for name in ("a1", "a2", "a3", "a4"):
        rig.send(KEY_A, dedup_key=name)
    rig.send(KEY_B, dedup_key="b1")
    rig.send(KEY_B, dedup_key="b2")
    rig.run()
    a = rig.deliverer.of(KEY_A)
    assert [(s.dedup_key, s.outcome) for s in a] == [
        ("a1", "delivered"), ("a2", "retry"), ("a2", "retry"), ("a2", "delivered"), ("a3", "delivered"),
        ("a4", "delivered")]
    assert gaps([s.at for s in a]) == [0, 10, 20, 0, 0]  # Retry-After honoured exactly, nothing overtakes a2
    assert [s.dedup_key for s in rig.deliverer.of(KEY_B)] == ["b1", "b2"]
    assert all(s.at == a[0].at for s in rig.deliverer.of(KEY_B))  # B was not held up by A's throttle
    assert rig.pending() == 0


@pytest.mark.parametrize("coalesce", [False, True])
def test_a_resolve_never_overtakes_its_trigger_through_a_long_outage(make_rig, coalesce) -> None:  # type: ignore
    rig = make_rig(rate_limit_per_minute=0, coalesce=coalesce)
    rig.deliverer.script(KEY_A, *([unreachable()] * 12 + [server_error(503)] * 5))
    rig.send(KEY_A, "trigger", "inc")
    rig.send(KEY_A, "acknowledge", "inc")
    rig.send(KEY_A, "resolve", "inc")
    rig.run()
    actions = [s.action for s in rig.deliverer.sent if s.outcome == "delivered"]
    # with coalescing the resolve that arrived makes the waiting acknowledge redundant (tests/test_coalesce.py)
    assert actions == (["trigger", "resolve"] if coalesce else ["trigger", "acknowledge", "resolve"])
    assert [s.action for s in rig.deliverer.sent[:18]] == ["trigger"] * 18


@pytest.mark.parametrize("header, expected", [
    ("100000", 300.0),  # a confused proxy: capped at backoff_max_sec
    ("0", 1.0),  # "now": still backoff_min_sec, never a hot loop
    ("Thu, 01 Jan 1970 00:00:00 GMT", 1.0),  # a date in the past
    ("42", 42.0),
    ("soon", 2.0),  # unparseable: as if absent, the ordinary backoff (failures 1, rng 1.0: 2 * min)
    (None, 2.0),
])
def test_retry_after_is_honoured_within_the_backoff_bounds(make_rig, header, expected) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0, backoff_min_sec=1.0, backoff_max_sec=300.0, rng=lambda: 1.0)
    rig.deliverer.script(KEY_A, throttled(header), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.run()
    assert gaps([s.at for s in rig.deliverer.sent]) == [expected]


def test_retry_after_as_an_http_date_in_the_future(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0, rng=lambda: 0.0)
    from email.utils import formatdate
    rig.deliverer.script(KEY_A, throttled(formatdate(rig.clock.wall() + 90, usegmt=True)), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.run()
    assert gaps([s.at for s in rig.deliverer.sent]) == [90.0]


def test_5xx_retry_after_lengthens_the_backoff_but_never_shortens_it(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0, backoff_min_sec=2.0, backoff_max_sec=64.0, rng=lambda: 1.0)
    # failures 1, 2, 3: full-jitter ceilings 4, 8, 16 (rng 1.0 picks the ceiling)
    rig.deliverer.script(KEY_A, server_error(503, "30"), server_error(503, "1"), server_error(500), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.run()
    assert gaps([s.at for s in rig.deliverer.sent]) == [30.0, 8.0, 16.0]


def test_backoff_stays_within_its_bounds_and_resets_after_a_delivery(make_rig) -> None:  # type: ignore[no-untyped-def]
    low, high = 1.0, 300.0
    rig = make_rig(rate_limit_per_minute=0, backoff_min_sec=low, backoff_max_sec=high, seed=7)
    rig.deliverer.script(KEY_A, *([server_error(502)] * 60), DELIVERED, server_error(502), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.run()
    rig.send(KEY_A, dedup_key="a2")
    rig.run()
    times = [s.at for s in rig.deliverer.sent]
    waits = gaps(times[:61])
    for failures, wait in enumerate(waits, start=1):
        assert low <= wait <= min(high, low * 2 ** failures), (failures, wait)
    assert max(waits) > high / 2  # the jitter does reach up towards the cap
    assert sum(waits) < 60 * high
    assert low <= gaps(times[61:])[0] <= 2 * low  # after a delivery the next failure starts from the bottom again


def test_max_attempts_turns_retries_into_a_dead_letter_that_does_not_block_the_key(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0, max_attempts=3)
    rig.deliverer.script(KEY_A, server_error(), server_error(), server_error(), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.send(KEY_A, dedup_key="a2")
    rig.run()
    assert [(s.dedup_key, s.outcome) for s in rig.deliverer.sent] == [
        ("a1", "retry"), ("a1", "retry"), ("a1", "retry"), ("a2", "delivered")]
    assert rig.states() == {"a1": "failed", "a2": "delivered"}


def test_a_refused_event_is_failed_at_once_and_the_next_goes(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0)
    rig.deliverer.script(KEY_A, refused(400), DELIVERED)
    rig.send(KEY_A, dedup_key="a1")
    rig.send(KEY_A, dedup_key="a2")
    rig.run()
    assert rig.states() == {"a1": "failed", "a2": "delivered"}
    assert rig.clock.elapsed() == 0


def test_token_bucket_lets_a_burst_through_then_paces_at_the_rate(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=60, rate_limit_burst=5)
    for number in range(12):
        rig.send(KEY_A, dedup_key=f"a{number}")
    rig.send(KEY_B, dedup_key="b0")
    rig.run()
    a = [s.at - rig.deliverer.sent[0].at for s in rig.deliverer.of(KEY_A)]
    assert a == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert [s.dedup_key for s in rig.deliverer.of(KEY_A)] == [f"a{n}" for n in range(12)]
    assert rig.deliverer.of(KEY_B)[0].at == rig.deliverer.sent[0].at  # a bucket per key
    assert rig.pending() == 0


def test_token_bucket_refills_while_idle_and_the_status_shows_the_throttle(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=120, rate_limit_burst=2)
    for number in range(3):
        rig.send(KEY_A, dedup_key=f"a{number}")
    rig.step()
    assert len(rig.deliverer.sent) == 2
    throttle = rig.scheduler.key_status(RoutingKey(KEY_A)).throttled_until
    assert throttle == pytest.approx(rig.clock.wall() + 0.5)
    rig.run()
    assert len(rig.deliverer.sent) == 3
    rig.clock.advance(60)  # a full bucket again: two go at once
    for number in range(3, 5):
        rig.send(KEY_A, dedup_key=f"a{number}")
    rig.step()
    assert len(rig.deliverer.sent) == 5 and rig.deliverer.sent[-1].at == rig.deliverer.sent[-2].at


def test_storage_failure_backs_the_key_off_and_resends_what_was_not_recorded(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0, backoff_min_sec=1.0, backoff_max_sec=300.0, rng=lambda: 1.0)
    rig.send(KEY_A, dedup_key="a1")
    rig.send(KEY_A, dedup_key="a2")
    rig.fail_writes(True)
    rig.step()
    # a1 went out, its result could not be recorded: nothing more is sent, the key backs off
    assert [s.dedup_key for s in rig.deliverer.sent] == ["a1"]
    assert rig.scheduler.next_due() == pytest.approx(rig.clock.now + 2.0)  # failures 1: ceiling 2 * min
    rig.run(for_sec=2.0)
    assert [s.dedup_key for s in rig.deliverer.sent] == ["a1", "a1"]
    assert rig.scheduler.next_due() == pytest.approx(rig.clock.now + 4.0)  # failures 2
    rig.run(for_sec=4.0 + 8.0)
    assert gaps([s.at for s in rig.deliverer.sent]) == [2.0, 4.0, 8.0]  # it grows, as for failed attempts
    rig.fail_writes(False)
    rig.run()
    assert [s.dedup_key for s in rig.deliverer.sent] == ["a1"] * 5 + ["a2"]  # order kept
    assert gaps([s.at for s in rig.deliverer.sent])[3:] == [16.0, 0.0]
    assert rig.states() == {"a1": "delivered", "a2": "delivered"}


def test_latency_counts_against_the_clock(make_rig) -> None:  # type: ignore[no-untyped-def]
    rig = make_rig(rate_limit_per_minute=0)
    rig.deliverer.default = Answer(202, latency=0.25)
    for number in range(4):
        rig.send(KEY_A, dedup_key=f"a{number}")
    rig.run()
    assert gaps([s.at for s in rig.deliverer.sent]) == [0.25, 0.25, 0.25]
    assert rig.clock.elapsed() == 1.0


def test_a_flooding_sender_does_not_hold_back_another_senders_key(make_rig) -> None:  # type: ignore[no-untyped-def]
    """Ready keys wait in one line per sender, taken in turn (issue 12): a sender that floods twenty keys
    delays another sender's page by one turn, not by twenty."""
    rig = make_rig(rate_limit_per_minute=0)
    flood_keys = [f"{n:02d}" + "f" * 30 for n in range(20)]
    for key in flood_keys:
        for number in range(10):
            rig.send(key, dedup_key=f"{key[:2]}-{number}", sender_uid=1000)
    rig.send(KEY_B, dedup_key="page", sender_uid=1001)
    rig.run()
    order = [s.dedup_key for s in rig.deliverer.sent]
    assert order.index("page") == 10  # after the first flooding key's turn, not after 200 events
    assert len(order) == 201 and rig.pending() == 0


# --- a routing key is shared, an event is its sender's (issue 18) -------------------------------------------

NOBODY, DEV = 65534, 1000


def flood(rig, count: int, sender_uid: int = NOBODY, key: str = KEY_A) -> None:  # type: ignore[no-untyped-def]
    """`count` triggers of distinct incidents from one untrusted sender, committed together, then its wake."""
    from pdagent_sd.events import validate
    from pdagent_sd.keys import RoutingKey
    from pdagent_sd.queuetypes import Sender

    commits = [rig.store.enqueue_async(validate("v2", {
        "routing_key": key, "event_action": "trigger", "dedup_key": f"junk-{sender_uid}-{number}",
        "payload": {"summary": "junk", "source": "rig", "severity": "info"}}), Sender(sender_uid, False))
        for number in range(count)]
    commits[-1].result()
    rig.scheduler.wake(RoutingKey(key), sender_uid)


@pytest.mark.parametrize("junk", [400, 10_000])
def test_a_trusted_page_on_a_key_another_user_filled_waits_one_token_not_the_backlog(make_rig, junk) -> None:  # type: ignore[no-untyped-def]
    """Trusted senders' events go first on a key; the delay does not grow with another sender's backlog. Old
    rule (one FIFO per key): root's page went out 208 s after nobody's 400, 91 min after 10,000."""
    rig = make_rig()  # shipped defaults: 110/min, a burst of 20, coalescing on
    flood(rig, junk)
    rig.run(for_sec=30.0)  # nobody's burst is gone and the key paces at 110/min
    sent_before = len(rig.deliverer.sent)
    assert 20 < sent_before < 80
    queued_at = rig.clock.monotonic()
    rig.send(KEY_A, dedup_key="systemd/web01/nginx.service", summary="nginx.service failed")  # root
    rig.run(for_sec=15.0)
    page = [s for s in rig.deliverer.sent if s.dedup_key == "systemd/web01/nginx.service"]
    assert len(page) == 1 and page[0].outcome == "delivered"
    assert page[0].at - queued_at <= 60 / 110 + 1e-6  # one token of the bucket
    assert [s.dedup_key for s in rig.deliverer.sent[sent_before:]].index(page[0].dedup_key) <= 1


def test_untrusted_senders_on_one_key_take_turns_and_each_keeps_its_order(make_rig) -> None:  # type: ignore[no-untyped-def]
    """Round robin between sender uids inside a key, FIFO per incident inside a sender: a resolve never
    overtakes its trigger, and a sender that queued 200 events first delays another by one turn each."""
    rig = make_rig(rate_limit_per_minute=0)
    flood(rig, 200, NOBODY)
    rig.send(KEY_A, dedup_key="dev-1", sender_uid=DEV)
    rig.send(KEY_A, action="resolve", dedup_key="dev-1", sender_uid=DEV)
    rig.send(KEY_A, dedup_key="dev-2", sender_uid=DEV)
    rig.run()
    order = [s.dedup_key for s in rig.deliverer.sent]
    assert len(order) == 203 and rig.pending() == 0
    dev = [index for index, key in enumerate(order) if key.startswith("dev-")]
    assert dev[-1] < 4 * 32 + 3  # three turns of nobody's at most before dev's last, not 200 events
    assert [(s.dedup_key, s.action) for s in rig.deliverer.sent if s.dedup_key == "dev-1"] == [
        ("dev-1", "trigger"), ("dev-1", "resolve")]


def test_coalescing_never_crosses_senders(make_rig) -> None:  # type: ignore[no-untyped-def]
    """The attack of issue 18: nobody opens root's unit incident with an info trigger, then sends another
    after root's page is queued. Nothing of root's is superseded, and root's trigger is judged by root's own
    events: a first trigger (truth), not an update of nobody's incident."""
    rig = make_rig()
    dedup = "systemd/web01/nginx.service"
    rig.deliverer.script(KEY_A, throttled(), throttled(), throttled())  # everything stays pending a while
    rig.send(KEY_A, dedup_key=dedup, summary="nobody's info", sender_uid=NOBODY)
    root = rig.send(KEY_A, dedup_key=dedup, summary="nginx.service failed")
    later = rig.send(KEY_A, dedup_key=dedup, summary="nobody's second", sender_uid=NOBODY)
    rows = {row.id: row for row in rig.store.reads.list_events(None, KEY_A, 100)}
    assert rows[root].state == "pending" and rows[root].superseded_by is None
    assert rig.store.reader().execute("SELECT priority FROM events WHERE id = ?", (root,)).fetchone()[0] == 2
    rig.send(KEY_A, dedup_key=dedup, summary="root's update")  # root's own update supersedes nothing of nobody's
    assert rig.store.reader().execute("SELECT state FROM events WHERE id = ?", (later,)).fetchone()[0] == "pending"
    rig.run()
    delivered = [s.dedup_key for s in rig.deliverer.sent if s.outcome == "delivered"]
    assert len(delivered) == 4 and rig.pending() == 0  # all four reach the alert log: nobody only adds to it


def test_a_trusted_page_on_a_key_another_user_woke_does_not_wait_behind_that_users_other_keys(make_rig) -> None:  # type: ignore[no-untyped-def]
    """nobody's twenty keys are ready in nobody's line, the shared key last: root's event on the shared key
    moves it to root's line, so it goes after one turn of nobody's, not after twenty."""
    rig = make_rig(rate_limit_per_minute=0)
    for number in range(20):
        flood(rig, 10, key=f"{number:02d}" + "f" * 30)
    flood(rig, 10)  # KEY_A, woken by nobody: last in nobody's line
    rig.send(KEY_A, dedup_key="page")  # root
    rig.run()
    order = [s.dedup_key for s in rig.deliverer.sent]
    assert len(order) == 211 and order.index("page") <= 10, order.index("page")
