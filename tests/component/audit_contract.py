"""The audit part of the store contract (star-imported next to ``store_contract``)."""

from __future__ import annotations

import msgspec
import pytest
from store_contract import LIMITS, NOW, _item, _message

from mas.audit.chain import verify
from mas.audit.record import AuditDraft
from mas.store import EnqueueItem, QueueFullError, Store


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


async def test_a_batch_links_its_records_in_item_order_between_other_writes(
    store: Store,
) -> None:
    [first] = await store.append_audit([_draft(1, "AUTHZ_DENIED")])
    batch = await store.enqueue_many([_item(2), _item(3, target="c", request=True), _item(4)])
    single = await store.enqueue(_message(5), _draft(5))
    [denied] = await store.append_audit([_draft(6, "RATE_LIMITED")])
    last = await store.enqueue_many([_item(7, instance="i1")])
    written = [first, *batch, single, denied, *last]
    assert all(record is not None for record in written)
    records = await store.audit_records()
    assert records == written
    assert [r.seq for r in records] == list(range(1, 8))
    assert [r.message_id for r in records] == [f"m{n}" for n in range(1, 8)]
    assert verify(records, None).ok


async def test_refused_items_of_a_batch_leave_no_gap_in_the_chain(store: Store) -> None:
    for n in range(LIMITS.max_queue_length - 1):
        await store.enqueue(_message(n))
    items = [_item(10), _item(11), _item(12, target="c"), _item(13), _item(14, target="c")]
    records = await store.enqueue_many(items)
    assert [r.message_id if r else None for r in records] == ["m10", None, "m12", None, "m14"]
    stored = await store.audit_records()
    assert stored == [r for r in records if r is not None]
    assert [r.seq for r in stored] == [1, 2, 3]
    assert verify(stored, None).ok
    [after] = await store.append_audit([_draft(15)])
    assert after.prev_hash == stored[-1].hash
    assert verify(await store.audit_records(), None).ok


async def test_an_invalid_item_fails_its_whole_batch(store: Store) -> None:
    nan = msgspec.structs.replace(_draft(2), time=float("nan"))
    bad = EnqueueItem(message=_message(2), audit=nan)
    with pytest.raises(ValueError, match="finite"):
        await store.enqueue_many([_item(1), bad])
    assert await store.queue_depth("b") == 0
    assert await store.audit_records() == []
