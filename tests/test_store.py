"""The SQLite queue on a real file: group commit, state transitions, the pending marker, damaged files."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pdagent_sd import marker
from pdagent_sd.commit import Commit
from pdagent_sd.errors import QueueFull, StorageError
from pdagent_sd.events import validate
from pdagent_sd.statustypes import State
from pdagent_sd.store import PURGE_CHUNK, Store

pytestmark = pytest.mark.unit

KEY = "0123456789abcdef0123456789abcdef"


def event(summary: str = "x"):  # type: ignore[no-untyped-def]
    return validate("v2", {"routing_key": KEY, "event_action": "trigger",
                           "payload": {"summary": summary, "source": "h", "severity": "info"}})


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    store = Store(str(tmp_path / "state"), max_pending=1000)
    store.open()
    yield store
    store.close()


def test_concurrent_enqueues_share_transactions(store) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(32)

    def sender() -> None:
        barrier.wait()
        for _ in range(10):
            store.enqueue(event())

    threads = [threading.Thread(target=sender) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.pending_count == 320
    assert store.commits < 320  # group commit: several sends per fsync


def test_marker_follows_pending_count(store) -> None:  # type: ignore[no-untyped-def]
    assert not os.path.exists(store.marker)
    first = store.enqueue(event())
    assert os.path.exists(store.marker)
    store.record_attempt(first, State.DELIVERED, "delivered", 202, "").result()
    assert not os.path.exists(store.marker)


def test_head_is_fifo_and_retry_keeps_the_place(store) -> None:  # type: ignore[no-untyped-def]
    first, second = store.enqueue(event("one")), store.enqueue(event("two"))
    assert store.reads.oldest_pending(KEY, 1)[0].id == first
    store.record_attempt(first, State.FAILED, "failed", 400, "bad").result()
    assert store.reads.oldest_pending(KEY, 1)[0].id == second
    assert store.retry_failed(KEY) == 1
    assert store.reads.oldest_pending(KEY, 1)[0].id == first
    assert store.pending_count == 2


def test_queue_full_refuses_and_keeps_what_it_has(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(str(tmp_path), max_pending=2)
    store.open()
    try:
        store.enqueue(event())
        store.enqueue(event())
        with pytest.raises(QueueFull):
            store.enqueue(event())
        assert store.pending_count == 2
    finally:
        store.close()


def test_drop_by_id_and_by_key_and_state(store) -> None:  # type: ignore[no-untyped-def]
    ids = [store.enqueue(event()) for _ in range(3)]
    store.record_attempt(ids[0], State.FAILED, "failed", 400, "bad").result()
    assert store.drop(routing_key=KEY, state=State.FAILED) == 1
    assert store.drop(event_id=ids[1]) == 1
    assert store.pending_count == 1


def test_damaged_queue_is_moved_aside_and_a_new_one_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    state.mkdir()
    (state / "queue.db").write_bytes(b"this is not an SQLite database" * 100)
    seen = []
    store = Store(str(state), on_corrupt=lambda target, reason: seen.append(target))
    store.open()
    try:
        assert len(seen) == 1 and os.path.exists(seen[0])
        assert store.corrupt_files() == [os.path.basename(seen[0])]
        store.enqueue(event())
        assert store.pending_count == 1
    finally:
        store.close()


def test_retention_purges_in_chunks_and_keeps_the_rest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    now = [1000000.0]
    store = Store(str(tmp_path / "state"), clock=lambda: now[0])
    store.open()
    try:
        ids = [store.enqueue(event()) for _ in range(PURGE_CHUNK * 2 + 10)]
        for event_id in ids[:-1]:
            store.record_attempt(event_id, State.DELIVERED, "delivered", 202, "")
        store.record_attempt(ids[-1], State.FAILED, "failed", 400, "bad").result()
        commits = store.commits
        now[0] += 2 * 86400
        assert store.purge_expired(86400, 7 * 86400).result() == len(ids) - 1
        assert store.commits - commits == 3  # one transaction per chunk: the writer is never held long
        assert [row.id for row in store.reads.list_events(None, None, 10)] == [ids[-1]]  # failed: kept 7 days
    finally:
        store.close()


def test_a_queue_that_cannot_be_opened_is_an_error_not_damage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    (state / "queue.db").mkdir(parents=True)  # SQLITE_CANTOPEN, like a full disk or a lock: not the file's fault
    seen = []
    store = Store(str(state), on_corrupt=lambda target, reason: seen.append(target))
    with pytest.raises(StorageError, match="cannot open the queue"):
        store.open()
    assert not seen and store.corrupt_files() == []
    assert (state / "queue.db").is_dir()


def test_an_event_is_settled_only_behind_its_keys_earlier_pending_events(store) -> None:  # type: ignore[no-untyped-def]
    """If the result of the first event was lost (its commit failed) but the second one's arrives, the second
    stays pending too: both are sent again, in order, and a resolve is never followed by its trigger."""
    first, second = store.enqueue(event("trigger")), store.enqueue(event("resolve"))
    store.record_attempt(second, State.DELIVERED, "delivered", 202, "").result()
    assert [e.id for e in store.reads.oldest_pending(KEY, 10)] == [first, second]
    store.record_attempt(first, State.DELIVERED, "delivered", 202, "").result()
    store.record_attempt(second, State.DELIVERED, "delivered", 202, "").result()
    assert store.reads.oldest_pending(KEY, 10) == [] and store.pending_count == 0


def test_a_commit_wakes_every_waiter_and_calls_back_once_in_order() -> None:
    commit = Commit()
    assert not commit.done()
    with pytest.raises(TimeoutError):
        commit.result(timeout=0.01)
    seen: list = []
    results: list = []
    waiters = [threading.Thread(target=lambda: results.append(commit.result())) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    commit.add_done_callback(lambda done: seen.append(("first", done.result())))
    commit.add_done_callback(lambda done: seen.append(("second", done.result())))
    commit.set_result(42)
    for waiter in waiters:
        waiter.join(5)
    assert results == [42, 42, 42]
    commit.add_done_callback(lambda done: seen.append(("late", done.result())))  # called at once
    assert seen == [("first", 42), ("second", 42), ("late", 42)]
    assert commit.done() and commit.exception() is None


def test_a_failed_commit_raises_its_error_to_each_waiter() -> None:
    commit = Commit()
    commit.set_exception(StorageError("disk full"))
    assert isinstance(commit.exception(timeout=0), StorageError)
    for _ in range(2):
        with pytest.raises(StorageError, match="disk full"):
            commit.result()


def test_a_state_directory_that_cannot_be_made_is_a_storage_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = Store(str(blocker / "state"))
    with pytest.raises(StorageError, match="cannot create the state directory"):
        store.open()


def test_marker_removed_by_hand_comes_back_at_the_next_commit_and_at_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = Store(str(tmp_path / "state"))
    store.open()
    store.enqueue(event())
    os.unlink(store.marker)
    store.enqueue(event())
    assert os.path.isfile(store.marker)
    os.unlink(store.marker)
    store.close()
    assert os.path.isfile(store.marker)


def test_check_pending_reads_the_queue_and_makes_the_marker_good(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state_dir = str(tmp_path / "state")
    assert not marker.check_pending(state_dir)  # no queue at all
    assert not os.path.exists(state_dir)  # and nothing created for it
    store = Store(state_dir)
    store.open()
    first = store.enqueue(event())
    store.close()
    os.unlink(store.marker)
    assert marker.check_pending(state_dir)
    assert os.path.isfile(store.marker)
    store.open()
    store.record_attempt(first, State.DELIVERED, "delivered", 202, "").result()
    store.close()
    assert not os.path.exists(store.marker)
    assert not marker.check_pending(state_dir)
    assert not os.path.exists(store.marker)


def test_check_pending_makes_events_deferred_before_the_boot_due(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state_dir = str(tmp_path / "state")
    store = Store(state_dir)
    store.open()
    deferred, waiting, due = store.enqueue(event()), store.enqueue(event()), store.enqueue(event())
    later = time.time() + 250  # a long outage's backoff, written before the power cut
    store.record_attempt(deferred, State.PENDING, "deferred", 500, "HTTP 500", next_attempt=later).result()
    store.record_attempt(due, State.PENDING, "deferred", 500, "HTTP 500", next_attempt=1.0).result()
    store.close()
    before_boot = time.time()
    assert marker.check_pending(state_dir)
    store.open()
    retry_times = {row.id: row.next_attempt for row in store.reads.oldest_pending(KEY, 10)}
    store.close()
    assert before_boot <= retry_times[deferred] <= time.time()
    assert retry_times[waiting] == 0 and retry_times[due] == 1.0  # already due: left as they were


def test_check_pending_counts_an_unreadable_queue_as_pending(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "queue.db").write_bytes(b"not a database at all, " * 100)
    assert marker.check_pending(str(state_dir))  # the daemon, once started, says what is wrong with it
