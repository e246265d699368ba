"""Enqueue numbered messages into a SQLite store until killed (for the crash test).

Usage: ``python sqlite_crash_writer.py STORE_PATH``. Several producers enqueue
messages whose ids are 0, 1, 2, ... to agent ``sink``; each number is printed,
one per line, only after its ``enqueue_many`` returned, that is once the message is
acknowledged as durable. The test kills this process with SIGKILL part-way and
checks that every printed number is in the store.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import trio

from mas.audit.record import AuditDraft
from mas.store import EnqueueItem, QueuedMessage, StoreLimits
from mas.store.sqlite import SqliteStore, open_sqlite_store

PRODUCERS = 8  # concurrent enqueuers, so commits hold several messages
LIMITS = StoreLimits(max_queue_length=10_000_000)


async def _produce(store: SqliteStore, numbers: itertools.count[int]) -> None:
    for n in numbers:
        message = QueuedMessage(
            message_id=str(n),
            target_id="sink",
            instance_id=None,
            envelope_json=b'{"n": %d}' % n,
            enqueued_at=1_000.0,
        )
        [written] = await store.enqueue_many(
            [EnqueueItem(message=message, audit=AuditDraft(time=1_000.0, decision="ALLOWED"))]
        )
        assert written is not None
        sys.stdout.write(f"{n}\n")
        sys.stdout.flush()


async def main(path: Path) -> None:
    numbers = itertools.count()  # shared: each number goes to exactly one producer
    async with open_sqlite_store(path, LIMITS) as store, trio.open_nursery() as nursery:
        for _ in range(PRODUCERS):
            nursery.start_soon(_produce, store, numbers)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
