"""The audit part of the store contract (star-imported next to ``store_contract``)."""

from __future__ import annotations

import pytest
from store_contract import LIMITS, NOW, _message

from mas.audit.chain import verify
from mas.audit.record import AuditDraft
from mas.store import QueueFullError, Store


def _draft(n: int, decision: str = "ALLOWED") -> AuditDraft:
    return AuditDraft(time=NOW + n, decision=decision, message_id=f"m{n}", sender_id="a")  # type: ignore[arg-type]


async def test_enqueue_writes_its_audit_record_into_one_chain(store: Store) -> None:
    first = await store.enqueue(_message(1), _draft(1))
    [denied] = await store.append_audit([_draft(2, "AUTHZ_DENIED")])
    third = await store.enqueue(_message(3), _draft(3))
    assert first is not None and third is not None
    assert [first.seq, denied.seq, third.seq] == [1, 2, 3]
    assert third.prev_hash == denied.hash and denied.prev_hash == first.hash
    assert await store.enqueue(_message(4)) is None  # no draft, no record
    records = await store.audit_records()
    assert [r.message_id for r in records] == ["m1", "m2", "m3"]
    assert verify(records, None).ok
    assert [r.seq for r in await store.audit_records(after_seq=1, limit=1)] == [2]


async def test_a_refused_enqueue_writes_no_audit_record(store: Store) -> None:
    for n in range(LIMITS.max_queue_length):
        await store.enqueue(_message(n))
    with pytest.raises(QueueFullError):
        await store.enqueue(_message(99), _draft(99))
    assert await store.audit_records() == []
