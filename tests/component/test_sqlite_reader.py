"""The audit follower reads only what a power loss cannot take back, and flushes nothing.

With ``sync: full`` a record is readable for the JSONL follower (``flushed_only``) once a
flush covers it; the follower's polling read never makes a flush of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mas.audit.record import AuditDraft
from mas.store import EnqueueItem, QueuedMessage, StoreLimits, sqlite_writer
from mas.store.sqlite import open_sqlite_store

NOW = 1_000.0


def _item(n: int) -> EnqueueItem:
    message = QueuedMessage(
        message_id=f"m{n}", target_id="b", instance_id=None, envelope_json=b"{}", enqueued_at=NOW
    )
    draft = AuditDraft(time=NOW, decision="ALLOWED", message_id=f"m{n}", sender_id="a")
    return EnqueueItem(message=message, audit=draft)


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
