"""The store contract on the SQLite backend, plus what only a durable store can show."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from audit_contract import *  # noqa: F403
from audit_contract import _draft
from state_contract import *  # noqa: F403
from store_contract import *  # noqa: F403
from store_contract import (
    LIMITS,
    NOW,
    _correlation,
    _item,
    _message,
    ack_one,
    enqueue_one,
    put_correlation,
    take_correlation,
)

from mas.audit.chain import verify
from mas.audit.record import AuditDraft, AuditRecord
from mas.errors import ConfigError, MasError
from mas.store import InFlight, QueuedMessage, QueueFullError, Store, StoreLimits
from mas.store.base import CorrelationRefused, StateTooLargeError, StateVersionConflict
from mas.store.sqlite import (
    SCHEMA_VERSION,
    SqliteStore,
    StoreError,
    StoreUnusableError,
    open_sqlite_store,
)
from mas.store.sqlite import schema as sqlite_schema
from mas.store.sqlite.writer import FLUSH_INTERVAL, MAX_CALLS_PER_TRANSACTION, open_writer

CRASH_WRITER = Path(__file__).with_name("sqlite_crash_writer.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_sqlite_store(tmp_path / "mas.sqlite3", LIMITS) as opened:
        yield opened


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "mas.sqlite3"


async def _claimed(store: Store, limit: int = 10, now: float = NOW) -> list[tuple[str, int]]:
    deliveries = await store.claim("b", "i1", "s1", limit, now)
    return [(d.message.message_id, d.message.attempt) for d in deliveries]


# -- durability across restarts --------------------------------------------------------


async def test_everything_survives_close_and_reopen(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            for n in range(3):
                await enqueue_one(store, _message(n))
            await enqueue_one(store, _message(9, instance="i1"))
            [doomed] = await store.claim("b", "i9", "s9", 1, NOW)  # m0 from the shared queue
            await store.dead_letter(doomed.delivery_id, "invalid", NOW + 1)
            await store.update_state("b", {"x": "1", "y": "[null, true]"})
            await put_correlation(store, _correlation())
        async with open_sqlite_store(path, LIMITS) as store:
            assert await store.queue_depth("b") == 2
            assert await _claimed(store) == [("m9", 1), ("m1", 1), ("m2", 1)]
            assert (await store.read_state("b")).values == {"x": "1", "y": "[null, true]"}
            assert await take_correlation(store, "c1", "b", NOW) == _correlation()
            [dead] = await store.dead_letters("b")
            assert (dead.message, dead.reason) == (doomed.message, "invalid")


async def test_in_flight_messages_of_a_previous_process_are_redelivered(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            for n in range(3):
                await enqueue_one(store, _message(n))
            assert await _claimed(store, limit=2) == [("m0", 1), ("m1", 1)]
        # The process "died" with m0 and m1 in flight; they come back first, once more.
        async with open_sqlite_store(path, LIMITS) as store:
            assert await store.queue_depth("b") == 3
            assert await _claimed(store) == [("m0", 2), ("m1", 2), ("m2", 1)]
        # Again, now with a bound of two attempts: m0 and m1 have had theirs.
        async with open_sqlite_store(path, LIMITS, release_max_attempts=2) as store:
            assert [(d.message.message_id, d.reason) for d in await store.dead_letters()] == [
                ("m0", "session_lost"),
                ("m1", "session_lost"),
            ]
            assert await _claimed(store) == [("m2", 2)]


async def test_retries_and_correlations_keep_their_times_across_restarts(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            await enqueue_one(store, _message(1))
            [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
            await store.retry(delivery.delivery_id, NOW + 10)
            await put_correlation(store, _correlation(expires_at=NOW + 5))
        async with open_sqlite_store(path, LIMITS) as store:
            assert await store.next_due() == NOW + 10
            assert await _claimed(store, now=NOW + 9) == []
            assert await _claimed(store, now=NOW + 10) == [("m1", 2)]
            with pytest.raises(CorrelationRefused):
                await take_correlation(store, "c1", "b", NOW + 5)


async def test_the_audit_chain_survives_restarts_and_continues(path: Path) -> None:
    key = b"k" * 32
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS, audit_key=key) as store:
            await enqueue_one(store, _message(1), _draft(1))
            await store.append_audit([_draft(2, "AUTHZ_DENIED")])
        async with open_sqlite_store(path, LIMITS, audit_key=key) as store:
            third = await enqueue_one(store, _message(3), _draft(3))
            records = await store.audit_records()
            assert await store.queue_depth("b") == 2
    assert third is not None and third.seq == 3
    assert [r.message_id for r in records] == ["m1", "m2", "m3"]
    assert verify(records, key).ok
    assert not verify(records, None).ok  # the chain is keyed


async def test_a_retry_falling_due_goes_before_waiting_messages(store: Store) -> None:
    with trio.fail_after(10):
        for n in range(3):
            await enqueue_one(store, _message(n))
        [first] = await store.claim("b", "i1", "s1", 1, NOW)
        await store.retry(first.delivery_id, NOW + 1)
        assert await _claimed(store, limit=1, now=NOW + 1) == [("m0", 2)]
        assert await _claimed(store, now=NOW + 1) == [("m1", 1), ("m2", 1)]


# -- the file ----------------------------------------------------------------------------


def _pragma(path: Path, name: str) -> Any:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_schema_version_is_set_and_a_migrated_file_reopens(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            await store.update_state("b", {"x": "1"})
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        assert _pragma(path, "journal_mode") == "wal"
        async with open_sqlite_store(path, LIMITS) as store:
            assert (await store.read_state("b")).values == {"x": "1"}
        assert _pragma(path, "user_version") == SCHEMA_VERSION


async def test_an_older_file_is_migrated_step_by_step(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            await store.update_state("b", {"x": "1"})
        # A future version 2 is one more tuple of statements in MIGRATIONS.
        step = ("ALTER TABLE meta ADD COLUMN note TEXT",)
        monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS, step))
        monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        async with open_sqlite_store(path, LIMITS) as store:
            assert (await store.read_state("b")).values == {"x": "1"}
    assert _pragma(path, "user_version") == SCHEMA_VERSION + 1
    with closing(sqlite3.connect(path)) as conn:
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(meta)")]


async def test_a_file_from_a_newer_schema_is_refused(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS):
            pass
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(StoreUnusableError, match="newer than this version of mas") as refused:
            async with open_sqlite_store(path, LIMITS):
                pass
        assert isinstance(refused.value, ConfigError)
        assert isinstance(refused.value, MasError)
        assert str(path) in str(refused.value)


async def test_a_database_that_is_not_a_mas_store_is_refused(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY)")
    with trio.fail_after(10), pytest.raises(StoreUnusableError, match="not a mas store"):
        async with open_sqlite_store(path, LIMITS):
            pass
    path.with_name("junk").write_bytes(b"this is not a database at all" * 100)
    with trio.fail_after(10), pytest.raises(StoreUnusableError, match="cannot use"):
        async with open_sqlite_store(path.with_name("junk"), LIMITS):
            pass


async def test_a_second_opener_of_the_same_file_is_refused(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS):
            with pytest.raises(StoreUnusableError, match="in use by another"):
                async with open_sqlite_store(path, LIMITS):
                    pass
        async with open_sqlite_store(path, LIMITS):  # free again once closed
            pass


async def test_an_opening_that_hangs_is_given_up_and_cleaned_up_later(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mas.store.sqlite import writer as sqlite_writer

    release = threading.Event()
    real_open = sqlite_writer.SqliteWriter._open_file

    def slow_open(self: sqlite_writer.SqliteWriter) -> Any:
        opened = real_open(self)  # takes the lock, opens the file...
        release.wait(10)  # ...and then the disk "hangs"
        return opened

    monkeypatch.setattr(sqlite_writer.SqliteWriter, "_open_file", slow_open)
    with trio.fail_after(20):
        with pytest.raises(StoreError, match=r"took over 0\.2 s"):
            async with open_writer(path, shutdown_timeout=0.2):
                pass
        monkeypatch.setattr(sqlite_writer.SqliteWriter, "_open_file", real_open)
        release.set()  # the abandoned thread finishes, then closes and unlocks the file
        for _ in range(200):
            try:
                async with open_sqlite_store(path, LIMITS) as store:
                    await enqueue_one(store, _message(1))
                break
            except StoreUnusableError:  # still locked by the abandoned opener
                await trio.to_thread.run_sync(time.sleep, 0.05)
        else:
            raise AssertionError("the abandoned opening never released the file")


async def test_a_closed_store_refuses_operations(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            pass
        with pytest.raises(StoreError, match="closed"):
            await enqueue_one(store, _message(1))


# -- group commit ---------------------------------------------------------------------


async def test_concurrent_enqueues_share_flushes(path: Path) -> None:
    with trio.fail_after(30):
        async with open_sqlite_store(path, StoreLimits(max_queue_length=1_000)) as store:
            before = store.statistics()
            async with trio.open_nursery() as nursery:
                for n in range(500):
                    nursery.start_soon(enqueue_one, store, _message(n))
            after = store.statistics()
            assert await store.queue_depth("b") == 500
    assert after.operations - before.operations == 500
    # Calls made in one scheduler pass share transactions of at most 32, and their flushes.
    transactions = after.transactions - before.transactions
    assert 500 / MAX_CALLS_PER_TRANSACTION <= transactions < 50
    assert after.commits - before.commits == transactions  # each one wrote
    assert after.flushes - before.flushes < 50  # one fsync for many messages
    assert after.largest_flush > 10
    assert after.pending == 0


async def test_a_batch_is_one_operation_and_one_commit(path: Path) -> None:
    limits = StoreLimits(max_queue_length=40)
    with trio.fail_after(10):
        async with open_sqlite_store(path, limits) as store:
            items = [
                _item(n, instance="i1" if n % 4 else None, request=n % 2 == 0) for n in range(50)
            ]
            before = store.statistics()
            records = await store.enqueue_many(items)
            enqueued = store.statistics()
            deliveries = await store.claim("b", "i1", "s1", 100, NOW)
            claimed = store.statistics()
            acked = await store.ack_many([d.delivery_id for d in deliveries])
            after = store.statistics()
    assert sum(r is not None for r in records) == 50  # 12 shared, 38 on the reply queue
    assert acked == deliveries and len(deliveries) == 50
    for start, end in ((before, enqueued), (claimed, after)):
        assert end.operations - start.operations == 1
        assert end.commits - start.commits == 1
    assert enqueued.flushes - before.flushes == 1  # accepted messages are flushed at once
    assert after.flushes == claimed.flushes  # a lost claim or ack only redelivers: no flush


async def test_concurrent_batches_see_the_queue_as_the_earlier_ones_left_it(path: Path) -> None:
    results: dict[int, list[Any]] = {}
    with trio.fail_after(10):
        async with open_writer(path, shutdown_timeout=10) as writer:
            store = SqliteStore(writer, StoreLimits(max_queue_length=6))

            async def send(k: int) -> None:
                results[k] = await store.enqueue_many([_item(10 * k + n) for n in range(3)])

            before = writer.statistics()
            async with trio.open_nursery() as nursery:
                for k in range(4):  # all four run in one scheduler pass
                    nursery.start_soon(send, k)
            after = writer.statistics()
            # The queue holds 6: two batches fit whole, the other two are refused whole.
            accepted = sorted(sum(r is not None for r in records) for records in results.values())
            assert accepted == [0, 0, 3, 3]
            assert await store.queue_depth("b") == 6
            assert verify(await store.audit_records(), None).ok
            # Two or one transactions (the pass's first call, then those that joined the
            # second), at most one flush each.
            assert 1 <= after.transactions - before.transactions <= 2
            assert 1 <= after.commits - before.commits <= 2
            assert 1 <= after.flushes - before.flushes <= 2


async def test_calls_of_one_pass_share_a_transaction_and_one_that_fails_loses_nothing(
    path: Path,
) -> None:
    """A version conflict among enqueues: a shared transaction it is in is rolled back and
    each call runs again alone, so the conflict is refused alone and every message is
    stored. Trio's scheduling order decides who shares, so it is tried until a conflict
    shared a transaction (more transactions than calls: one was run again)."""
    reruns = 0
    with trio.fail_after(30):
        async with open_sqlite_store(path, StoreLimits(max_queue_length=1_000)) as store:
            for attempt in range(40):
                agent = f"agent-{attempt}"
                version = await store.update_state(agent, {"k": "0"})
                outcomes: dict[str, Any] = {}

                async def enqueue(n: int, outcomes: dict[str, Any] = outcomes) -> None:
                    outcomes[f"m{n}"] = await enqueue_one(store, _message(n))

                async def update(
                    expected: int, agent: str = agent, outcomes: dict[str, Any] = outcomes
                ) -> None:
                    try:
                        outcomes[f"v{expected}"] = await store.update_state(
                            agent, {"k": str(expected)}, expected_version=expected
                        )
                    except StateVersionConflict as exc:
                        outcomes[f"v{expected}"] = exc

                before = store.statistics()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(enqueue, 10 * attempt + 1)
                    nursery.start_soon(enqueue, 10 * attempt + 2)
                    nursery.start_soon(update, version)
                    nursery.start_soon(update, version + 5)  # refused
                    nursery.start_soon(enqueue, 10 * attempt + 3)
                after = store.statistics()
                state = await store.read_state(agent)
                assert (state.values, state.version) == ({"k": str(version)}, version + 1)
                assert isinstance(outcomes[f"v{version + 5}"], StateVersionConflict)
                assert outcomes[f"v{version}"] == version + 1
                assert all(
                    isinstance(outcomes[f"m{10 * attempt + n}"], AuditRecord) for n in (1, 2, 3)
                )
                assert after.operations - before.operations == 5
                if after.transactions - before.transactions > 5:
                    reruns += 1
                if reruns >= 3:
                    break
            assert await store.queue_depth("b") == 3 * (attempt + 1)
            assert verify(await store.audit_records(), None).ok  # the chain's end was reread
    assert reruns >= 3


async def _cancel_each_other(writer: Any, tag: str) -> tuple[list[bool], bool]:
    """Two calls, each cancelling the other's caller from inside its own operation; which
    of them returned, and whether they shared one transaction."""
    scopes = [trio.CancelScope(), trio.CancelScope()]
    returned = [False, False]

    def write(conn: sqlite3.Connection, key: str, other: int) -> None:
        scopes[other].cancel()  # the other caller, mid-way through its call
        conn.execute("INSERT INTO meta VALUES (?, 'x')", (key,))

    async def caller(i: int) -> None:
        with scopes[i]:
            await writer.call(write, f"{tag}-{i}", 1 - i, durable=True)
            returned[i] = True
            await trio.sleep_forever()

    async def spin() -> None:  # keeps a task ready, so calls wait for company
        for _ in range(10):
            await trio.lowlevel.checkpoint()

    before = writer.statistics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        nursery.start_soon(caller, 0)
        nursery.start_soon(caller, 1)
        await trio.testing.wait_all_tasks_blocked()
        for scope in scopes:  # a caller whose operation never ran is not cancelled yet
            scope.cancel()
    after = writer.statistics()
    operations = after.operations - before.operations
    return returned, (operations, after.transactions - before.transactions) == (2, 1)


async def test_a_call_cancelled_while_its_transaction_runs_returns_or_changed_nothing(
    path: Path,
) -> None:
    """A call either raised ``Cancelled`` and wrote nothing, or returned and wrote; when
    two shared one transaction (Trio's scheduling order decides, so it is tried until it
    happens), both returned, the cancels arriving after."""
    shared = 0
    with trio.fail_after(30):
        async with open_writer(path, shutdown_timeout=10) as writer:
            for attempt in range(40):
                returned, together = await _cancel_each_other(writer, f"t{attempt}")
                written = await writer.read(
                    lambda conn, like: {
                        row[0]
                        for row in conn.execute("SELECT key FROM meta WHERE key LIKE ?", (like,))
                    },
                    f"t{attempt}-%",
                )
                assert written == {f"t{attempt}-{i}" for i in (0, 1) if returned[i]}
                assert any(returned)
                if together:
                    assert all(returned)
                    shared += 1
                if shared >= 3:
                    break
    assert shared >= 3


async def test_no_transaction_holds_more_than_its_bound_of_calls(path: Path) -> None:
    with trio.fail_after(30):
        async with open_sqlite_store(path, StoreLimits(max_queue_length=1_000)) as store:
            before = store.statistics()
            async with trio.open_nursery() as nursery:
                for n in range(3 * MAX_CALLS_PER_TRANSACTION):
                    nursery.start_soon(enqueue_one, store, _message(n))
            after = store.statistics()
            assert await store.queue_depth("b") == 3 * MAX_CALLS_PER_TRANSACTION
    assert after.transactions - before.transactions >= 3


async def test_reads_do_not_commit(store: SqliteStore) -> None:
    with trio.fail_after(10):
        before = store.statistics()
        await store.dead_letters("b")
        await store.queue_depth("b")
        after = store.statistics()
    assert (after.operations - before.operations, after.commits - before.commits) == (2, 0)
    assert after.flushes == before.flushes


async def _enqueued(store: Store, message: QueuedMessage) -> None:
    """Enqueue ``message``, keeping only the outcome (returns None once it is written)."""
    await enqueue_one(store, message)


async def _outcome(results: dict[str, object], name: str, call: Callable[[], Any]) -> None:
    try:
        results[name] = await call()
    except Exception as exc:
        results[name] = type(exc)


async def test_a_failing_operation_does_not_undo_the_rest_of_its_batch(path: Path) -> None:
    limits = StoreLimits(max_queue_length=2, max_message_age=100.0, max_state_bytes=50)
    results: dict[str, object] = {}
    with trio.fail_after(10):
        async with open_writer(path, shutdown_timeout=10) as writer:
            store = SqliteStore(writer, limits)
            for n in range(2):
                await enqueue_one(store, _message(n, target="full"))
            calls: dict[str, Callable[[], Any]] = {
                "enqueue": lambda: _enqueued(store, _message(1)),
                "overflow": lambda: _enqueued(store, _message(3, target="full")),
                "state": lambda: store.update_state("b", {"k": "1"}),
                "too_large": lambda: store.update_state("b", {"big": "x" * 100}),
                "other_state": lambda: store.update_state("c", {"k": "2"}),
            }
            async with trio.open_nursery() as nursery:
                for name, call in calls.items():
                    nursery.start_soon(_outcome, results, name, call)
            assert results == {
                "enqueue": None,
                "overflow": QueueFullError,
                "state": 1,  # the state's new version
                "too_large": StateTooLargeError,
                "other_state": 1,
            }
            assert await store.queue_depth("b") == 1
            assert await store.queue_depth("full") == 2
            assert (await store.read_state("b")).values == {"k": "1"}
            assert (await store.read_state("c")).values == {"k": "2"}


async def test_an_error_that_ends_the_transaction_is_contained(path: Path) -> None:
    """An operation after which SQLite rolled back its transaction fails alone."""

    def lose_all(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta VALUES ('lost', 'x')")
        conn.execute("ROLLBACK")  # what SQLite does itself on some errors (SQLITE_FULL...)
        raise sqlite3.OperationalError("disk full")

    def lost_rows(conn: sqlite3.Connection) -> list[Any]:
        return conn.execute("SELECT * FROM meta WHERE key = 'lost'").fetchall()

    results: dict[str, object] = {}
    with trio.fail_after(10):
        async with open_writer(path, shutdown_timeout=10) as writer:
            store = SqliteStore(writer, LIMITS)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    _outcome, results, "enqueue", lambda: _enqueued(store, _message(1))
                )
                nursery.start_soon(_outcome, results, "lost", lambda: writer.call(lose_all))
            assert results == {"enqueue": None, "lost": StoreError}
            assert await store.queue_depth("b") == 1
            assert await writer.call(lost_rows) == []
            await enqueue_one(store, _message(2))  # the next transaction works
            assert await store.queue_depth("b") == 2


async def test_a_caller_cancelled_before_its_operation_ran_changes_nothing(path: Path) -> None:
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            with trio.CancelScope() as scope:
                scope.cancel()
                await enqueue_one(store, _message(1))
            assert scope.cancelled_caught
            assert await store.queue_depth("b") == 0


async def test_a_caller_cancelled_after_its_operation_ran_gets_the_result(path: Path) -> None:
    seen: list[str] = []
    scope = trio.CancelScope()

    def insert_and_get_cancelled(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO meta VALUES ('probe', 'written')")
        scope.cancel()  # the caller is cancelled while its operation waits for the commit
        return "done"

    with trio.fail_after(10):
        async with open_writer(path, shutdown_timeout=10) as writer:
            with scope:
                seen.append(await writer.call(insert_and_get_cancelled))
                await trio.lowlevel.checkpoint()  # the cancellation is delivered here
                seen.append("not reached")
            assert seen == ["done"]

            def probe(conn: sqlite3.Connection) -> Any:
                return conn.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone()

            assert await writer.call(probe) == ("written",)


# -- flushes and checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("sync", ["full", "normal"])
async def test_full_sync_flushes_once_for_concurrent_commits(
    path: Path, sync: str, mock_clock: trio.testing.MockClock
) -> None:  # the clock stands still: no background flush comes in between
    with trio.fail_after(10):
        limits = StoreLimits(max_queue_length=1_000)
        async with open_sqlite_store(path, limits, sync=sync) as store:  # type: ignore[arg-type]
            before = store.statistics()
            await enqueue_one(store, _message(0))
            single = store.statistics()
            async with trio.open_nursery() as nursery:
                for n in range(1, 40):
                    nursery.start_soon(enqueue_one, store, _message(n))
            after = store.statistics()
            assert await store.queue_depth("b") == 40
    if sync == "normal":
        assert after.flushes == 0  # not yet: the flush comes within a second
    else:
        assert single.flushes - before.flushes == 1
        # A flush covers every commit made before it started: far fewer flushes than calls.
        assert 1 <= after.flushes - single.flushes <= after.commits - single.commits


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (real time, bounded) for a worker thread's work to show."""
    for _ in range(1_000):
        if condition():
            return
        await trio.to_thread.run_sync(time.sleep, 0.01)
    raise AssertionError("the condition did not come true within 10 s")


async def test_normal_sync_flushes_within_a_second_of_a_commit(
    path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_sqlite_store(path, LIMITS, sync="normal") as store:
        await enqueue_one(store, _message(1))
        await trio.testing.wait_all_tasks_blocked()
        assert store.statistics().flushes == 0
        mock_clock.jump(FLUSH_INTERVAL)
        await _until(lambda: store.statistics().flushes == 1)
        mock_clock.jump(FLUSH_INTERVAL * 10)  # nothing new was written: no flush
        await trio.testing.wait_all_tasks_blocked()
        assert store.statistics().flushes == 1
        await enqueue_one(store, _message(2))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(FLUSH_INTERVAL)
        await _until(lambda: store.statistics().flushes == 2)


async def test_full_sync_flushes_claims_acks_and_records_later_and_before_a_durable_read(
    path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with open_sqlite_store(path, LIMITS) as store:
        await enqueue_one(store, _message(1))
        assert store.statistics().flushes == 1
        [delivery] = await store.claim("b", "i1", "s1", 10, NOW)
        await store.append_audit([_draft(2)])  # a delivery's record: told to no one
        assert store.statistics().flushes == 1  # neither waited for a flush
        # The audit file copies what audit_records returns: it waits for every commit before.
        await store.audit_records()
        assert store.statistics().flushes == 2
        await ack_one(store, delivery.delivery_id)
        await trio.testing.wait_all_tasks_blocked()
        assert store.statistics().flushes == 2
        mock_clock.jump(FLUSH_INTERVAL)  # the background flush covers the ack
        await _until(lambda: store.statistics().flushes == 3)


async def test_a_failed_flush_breaks_the_store_until_it_is_reopened(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync no later fsync can vouch for the lost pages: refuse everything."""
    from mas.store.sqlite import writer as sqlite_writer

    real = sqlite_writer._fdatasync
    failing = True

    def fdatasync(fd: int) -> None:
        if failing:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(sqlite_writer, "_fdatasync", fdatasync)
    results: dict[str, object] = {}
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            async with trio.open_nursery() as nursery:  # two callers waiting on one flush
                for n in (1, 2):
                    nursery.start_soon(
                        _outcome, results, f"m{n}", partial(enqueue_one, store, _message(n))
                    )
            assert results == {"m1": StoreError, "m2": StoreError}
            failing = False  # the disk "recovered": a flush would succeed now, proving nothing
            with pytest.raises(StoreError, match="restart the server"):
                await enqueue_one(store, _message(3))
            with pytest.raises(StoreError, match="restart the server"):
                await store.queue_depth("b")
            assert store.statistics().flushes == 0
        async with open_sqlite_store(path, LIMITS) as store:  # a restart: usable again
            await enqueue_one(store, _message(4))


async def test_the_wal_stays_small_under_constant_writes(path: Path) -> None:
    """Checkpoints copy the whole WAL, so it starts over instead of growing without end."""
    wal = path.with_name(path.name + "-wal")
    with trio.fail_after(30):
        async with open_writer(path, checkpoint_every=8, shutdown_timeout=10) as writer:
            store = SqliteStore(writer, StoreLimits(max_queue_length=10_000))
            for n in range(400):
                await store.enqueue_many([_item(4 * n + k) for k in range(4)])
                [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
                await ack_one(store, delivery.delivery_id)
            assert writer.statistics().checkpoints >= 100
            # 1,200 commits of several pages each would make a WAL of about 25 MB.
            assert wal.stat().st_size < 2_000_000


async def test_checkpoints_run_in_a_worker_thread_after_enough_commits(path: Path) -> None:
    wal = path.with_name(path.name + "-wal")
    with trio.fail_after(10):
        async with open_writer(path, checkpoint_every=4, shutdown_timeout=10) as writer:
            store = SqliteStore(writer, StoreLimits(max_queue_length=100))
            for n in range(8):
                await enqueue_one(store, _message(n))
            await _until(lambda: writer.statistics().checkpoints >= 1)  # a worker thread
            assert await store.queue_depth("b") == 8
            assert wal.exists()
        assert not wal.exists()  # closing checkpointed the rest into the database file


# -- a real crash ------------------------------------------------------------------------


async def test_a_killed_process_loses_no_acknowledged_message(path: Path) -> None:
    acknowledged: set[int] = set()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, str(CRASH_WRITER), str(path)],
                    stdout=subprocess.PIPE,
                    env=env,
                    check=False,
                )
            )
            assert process.stdout is not None
            pending = b""
            while len(acknowledged) < 200:
                chunk = await process.stdout.receive_some()
                assert chunk, "the writer exited before it was killed"
                *lines, pending = (pending + chunk).split(b"\n")
                acknowledged.update(int(line) for line in lines)
            process.send_signal(signal.SIGKILL)
        assert process.returncode == -signal.SIGKILL

        async with open_sqlite_store(path, StoreLimits(max_queue_length=10**7)) as store:
            deliveries = await store.claim("sink", "i1", "s1", 10**6, NOW)
    stored = [int(d.message.message_id) for d in deliveries]
    assert len(stored) == len(set(stored))
    assert acknowledged <= set(stored)
    for delivery in deliveries:
        assert delivery.message.envelope_json == b'{"n": %s}' % delivery.message.message_id.encode()


async def test_a_lock_held_by_another_process_delays_calls_without_freezing_the_loop(
    path: Path,
) -> None:
    # An operator's sqlite3 shell holds a write lock: the store's calls wait for it, but
    # every other task of the server (sessions, timers) keeps running meanwhile.
    async with open_sqlite_store(path, LIMITS) as store:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            other.execute("BEGIN IMMEDIATE")
            ticks = 0
            stored = trio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stored.is_set():
                    ticks += 1
                    await trio.sleep(0.01)

            async def release_later() -> None:
                await trio.sleep(0.5)
                other.execute("COMMIT")

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker)
                    nursery.start_soon(release_later)
                    await enqueue_one(store, _message(1))
                    stored.set()
            assert ticks >= 10, f"the event loop ran {ticks} times in 0.5 s of waiting"
            assert await _claimed(store) == [("m1", 1)]
            # Held for longer than the store waits: a clear error, the store still usable.
            other.execute("BEGIN IMMEDIATE")
            with trio.fail_after(20), pytest.raises(StoreError, match="locked by another"):
                await enqueue_one(store, _message(2))
            other.execute("COMMIT")
            await enqueue_one(store, _message(3))
        finally:
            other.close()


async def test_a_rolled_back_transaction_leaves_the_chain_end_kept_in_memory_whole(
    path: Path,
) -> None:
    """The store links after the chain's end it keeps in memory: a rollback must not move it."""
    async with open_sqlite_store(path, LIMITS) as store:
        await store.enqueue_many([_item(1, request=True)])
        [request] = await store.claim("b", "i1", "s1", 1, NOW)

        def failing(delivery: InFlight) -> AuditDraft:
            raise RuntimeError("drafting failed")  # after the reply's record was written

        reply = msgspec.structs.replace(
            _item(2, target="a", instance="a1"), answers="c1", acks=request.delivery_id
        )
        with pytest.raises(RuntimeError):
            await store.route_batch([reply], acked=failing)
        [after] = await store.append_audit([_draft(3)])
        records = await store.audit_records()
        assert [r.message_id for r in records] == ["m1", "m3"]
        assert after.prev_hash == records[0].hash
        assert verify(records, None).ok
        assert await store.audit_records(0, 10, flushed_only=True) == records


# -- inline flushes ------------------------------------------------------------------------


async def test_a_lone_durable_call_flushes_on_the_loop_and_a_busy_loop_uses_the_thread(
    path: Path, mock_clock: trio.testing.MockClock
) -> None:  # the clock stands still: no background flush comes in between
    with trio.fail_after(10):
        async with open_sqlite_store(path, LIMITS) as store:
            before = store.statistics()
            await enqueue_one(store, _message(1))  # nothing else is ready to run
            alone = store.statistics()
            assert (alone.flushes - before.flushes, alone.inline_flushes) == (1, 1)

            stop = trio.Event()

            async def busy() -> None:  # always ready to run while the enqueue waits
                while not stop.is_set():
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                # Started, so ready to run, with no pass before the enqueue's flush.
                nursery.start_soon(busy)
                await enqueue_one(store, _message(2))
                stop.set()
            shared = store.statistics()
    assert shared.flushes - alone.flushes == 1
    assert shared.inline_flushes == alone.inline_flushes  # the loop had other work


async def test_a_slow_flush_sends_the_next_ones_to_the_thread_for_a_while(
    path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    from mas.store.sqlite import writer as sqlite_writer

    real = sqlite_writer._fdatasync
    slow = True

    def fdatasync(fd: int) -> None:
        if slow:
            time.sleep(sqlite_writer.INLINE_FLUSH_MAX * 2)  # a disk that turned slow
        real(fd)

    monkeypatch.setattr(sqlite_writer, "_fdatasync", fdatasync)
    with trio.fail_after(3 * sqlite_writer.INLINE_BACKOFF):  # the test jumps the clock
        async with open_sqlite_store(path, LIMITS) as store:
            await enqueue_one(store, _message(1))  # inline, and slow
            slowed = store.statistics()
            slow = False
            await enqueue_one(store, _message(2))
            threaded = store.statistics()
            mock_clock.jump(sqlite_writer.INLINE_BACKOFF)
            await enqueue_one(store, _message(3))
            again = store.statistics()
            assert await store.queue_depth("b") == 3
    assert slowed.inline_flushes == 1
    assert (threaded.flushes - slowed.flushes, threaded.inline_flushes) == (1, 1)
    assert (again.flushes - threaded.flushes, again.inline_flushes) == (1, 2)
