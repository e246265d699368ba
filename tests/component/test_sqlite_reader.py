"""SQLite reads that may touch cold pages run on a reader connection in a worker thread.

A page-cache miss on the event loop stops every connection and timer of the server.
The audit follower's reads, the rows a claim promotes from the retry schedule and the
in-flight rows released at start are read on a second, read-only connection in a
worker thread (``SqliteWriter.read``). A slow disk is played by a progress handler that
sleeps on that connection: the event loop must keep ticking meanwhile. The follower
must only read what a power loss cannot take back (with ``sync: full``, flushed).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from mas.audit.record import AuditDraft
from mas.store import EnqueueItem, QueuedMessage, StoreLimits
from mas.store.sqlite import SqliteStore, open_sqlite_store
from mas.store.sqlite import writer as sqlite_writer

NOW = 1_000.0


def _item(n: int) -> EnqueueItem:
    message = QueuedMessage(
        message_id=f"m{n}", target_id="b", instance_id=None, envelope_json=b"{}", enqueued_at=NOW
    )
    draft = AuditDraft(time=NOW, decision="ALLOWED", message_id=f"m{n}", sender_id="a")
    return EnqueueItem(message=message, audit=draft)


def _slow_reader(store: SqliteStore, seconds_per_step: float) -> None:
    """Make the store's reader connection slow, as a cold cache on a slow disk would."""
    reader = store._writer._reader
    assert reader is not None

    def stall() -> int:
        time.sleep(seconds_per_step)
        return 0  # go on

    reader.set_progress_handler(stall, 10)


async def _ticks_during(work: object) -> tuple[object, int, float]:
    """Run ``work()`` while counting 5 ms ticks of the event loop; (result, ticks, seconds)."""
    ticks = 0
    done = trio.Event()
    result: list[object] = []

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await trio.sleep(0.005)
            ticks += 1

    async def run() -> None:
        result.append(await work())  # type: ignore[operator]
        done.set()

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        nursery.start_soon(run)
    return result[0], ticks, time.perf_counter() - started


async def test_the_loop_keeps_ticking_while_the_audit_followers_read_is_slow(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mas.sqlite3"
    async with open_sqlite_store(path, StoreLimits()) as store:
        await store.enqueue_many([_item(n) for n in range(200)])
    # Reopened: the records are in the file only (a server keeps only its own recent ones).
    async with open_sqlite_store(path, StoreLimits()) as store:
        _slow_reader(store, 0.002)
        records, ticks, seconds = await _ticks_during(
            lambda: store.audit_records(0, 1000, flushed_only=True)
        )
    assert [r.seq for r in records] == list(range(1, 201))  # type: ignore[attr-defined]
    assert seconds > 0.1  # the read was slow...
    assert ticks >= seconds / 0.005 / 4  # ...and the loop went on meanwhile


async def test_the_follower_reads_this_servers_recent_records_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mas.sqlite3"
    async with open_sqlite_store(path, StoreLimits()) as store:
        await store.enqueue_many([_item(n) for n in range(3)])  # from a previous process
    reads: list[str] = []
    original = sqlite_writer.SqliteWriter.read

    async def spy(self: sqlite_writer.SqliteWriter, fn: object, *args: object) -> object:
        reads.append(fn.__name__)  # type: ignore[attr-defined]
        return await original(self, fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_writer.SqliteWriter, "read", spy)
    async with open_sqlite_store(path, StoreLimits()) as store:
        reads.clear()
        written = [r for r in await store.enqueue_many([_item(n) for n in range(3, 8)]) if r]
        assert [r.seq for r in await store.audit_records(0, 100, flushed_only=True)] == list(
            range(1, 9)
        )
        assert len(reads) == 1  # the previous process's records: from the file
        assert await store.audit_records(3, 100, flushed_only=True) == written
        assert await store.audit_records(5, 2, flushed_only=True) == written[2:4]
        assert await store.audit_records(8, 100, flushed_only=True) == []
        assert len(reads) == 1  # this server's own records: from memory
        # As the file holds them, byte for byte.
        assert await store.audit_records(3, 100) == written


async def test_the_follower_reads_only_flushed_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "FLUSH_INTERVAL", 3600.0)  # no background flush here
    async with open_sqlite_store(tmp_path / "mas.sqlite3", StoreLimits()) as store:
        [accepted] = await store.enqueue_many([_item(1)])  # durable: flushed before it returns
        draft = AuditDraft(time=NOW, decision="DELIVERED", message_id="m1")
        [delivered] = await store.append_audit([draft])  # not flushed: told to no client
        assert accepted is not None
        flushes = store.statistics().flushes
        assert await store.audit_records(flushed_only=True) == [accepted]
        assert store.statistics().flushes == flushes  # the follower's read flushes nothing
        await store.enqueue_many([_item(2)])  # its flush covers the delivery record too
        seqs = [r.seq for r in await store.audit_records(flushed_only=True)]
        assert seqs == [accepted.seq, delivered.seq, delivered.seq + 1]
        # Without flushed_only, a read flushes first and sees every committed record.
        [late] = await store.append_audit([draft])
        assert (await store.audit_records(after_seq=delivered.seq + 1))[-1] == late


async def test_a_claim_that_promotes_retries_reads_them_in_a_thread_first(
    tmp_path: Path,
) -> None:
    async with open_sqlite_store(tmp_path / "mas.sqlite3", StoreLimits()) as store:
        await store.enqueue_many([_item(n) for n in range(3)])
        taken = await store.claim("b", "i1", "s1", 3, NOW)
        for delivery in taken[:2]:
            await store.retry(delivery.delivery_id, NOW + 10)
        await store.retry(taken[2].delivery_id, NOW + 20)
        assert await store.claim("b", "i1", "s1", 3, NOW + 5) == []  # none due yet
        reads = store._writer.statistics()
        _slow_reader(store, 0.002)
        again, ticks, _ = await _ticks_during(lambda: store.claim("b", "i1", "s1", 3, NOW + 10))
        assert [d.message.message_id for d in again] == ["m0", "m1"]  # type: ignore[attr-defined]
        assert ticks > 0
        assert store.statistics().operations == reads.operations + 1  # one loop transaction
        # The schedule is known to the store: the last one is promoted when due too.
        [last] = await store.claim("b", "i1", "s1", 3, NOW + 20)
        assert (last.message.message_id, last.message.attempt) == ("m2", 2)


async def test_the_release_at_start_reads_in_flight_rows_on_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "mas.sqlite3"
    async with open_sqlite_store(path, StoreLimits()) as store:
        await store.enqueue_many([_item(n) for n in range(3)])
        await store.claim("b", "i1", "s1", 2, NOW)
    seen: list[str] = []
    original = sqlite_writer.SqliteWriter.read

    async def spy(self: sqlite_writer.SqliteWriter, fn: object, *args: object) -> object:
        seen.append(fn.__name__)  # type: ignore[attr-defined]
        return await original(self, fn, *args)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite_writer.SqliteWriter, "read", spy)
        async with open_sqlite_store(path, StoreLimits()) as store:
            claimed = await store.claim("b", "i1", "s2", 5, NOW)
    assert seen[0] == "_in_flight_rows"
    assert [(d.message.message_id, d.message.attempt) for d in claimed] == [
        ("m0", 2),
        ("m1", 2),
        ("m2", 1),
    ]
