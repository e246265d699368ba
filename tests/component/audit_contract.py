"""The audit part of the store contract (star-imported next to ``store_contract``)."""

from __future__ import annotations

import msgspec
import pytest
from store_contract import LIMITS, NOW, _item, _message, enqueue_one

from mas.audit.chain import verify
from mas.audit.record import GENESIS, AuditDraft, AuditRecord
from mas.audit.retention import Retention
from mas.store import EnqueueItem, InFlight, QueueFullError, Store
from mas.store.base import CorrelationRefused


def _draft(n: int, decision: str = "ALLOWED") -> AuditDraft:
    return AuditDraft(time=NOW + n, decision=decision, message_id=f"m{n}", sender_id="a")  # type: ignore[arg-type]


async def test_enqueue_writes_its_audit_record_into_one_chain(store: Store) -> None:
    first = await enqueue_one(store, _message(1), _draft(1))
    [denied] = await store.append_audit([_draft(2, "AUTHZ_DENIED")])
    third = await enqueue_one(store, _message(3), _draft(3))
    assert first is not None and third is not None
    assert [first.seq, denied.seq, third.seq] == [1, 2, 3]
    assert third.prev_hash == denied.hash and denied.prev_hash == first.hash
    records = await store.audit_records()
    assert [r.message_id for r in records] == ["m1", "m2", "m3"]
    assert verify(records, None).ok
    assert [r.seq for r in await store.audit_records(after_seq=1, limit=1)] == [2]


async def test_a_refused_enqueue_writes_no_audit_record(store: Store) -> None:
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(n))
    before = await store.audit_records()
    with pytest.raises(QueueFullError):
        await enqueue_one(store, _message(99), _draft(99))
    assert await store.audit_records() == before


async def test_a_batch_links_its_records_in_item_order_between_other_writes(
    store: Store,
) -> None:
    [first] = await store.append_audit([_draft(1, "AUTHZ_DENIED")])
    batch = await store.enqueue_many([_item(2), _item(3, target="c", request=True), _item(4)])
    single = await enqueue_one(store, _message(5), _draft(5))
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
        await enqueue_one(store, _message(n))
    filled = await store.audit_records()
    items = [_item(10), _item(11), _item(12, target="c"), _item(13), _item(14, target="c")]
    records = await store.enqueue_many(items)
    assert [r.message_id if r else None for r in records] == ["m10", None, "m12", None, "m14"]
    stored = await store.audit_records()
    assert stored == filled + [r for r in records if r is not None]
    assert [r.seq for r in stored] == list(range(1, len(filled) + 4))
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


# --- server_id and retention -------------------------------------------------------------


async def test_every_record_names_the_server_that_linked_it(store: Store) -> None:
    record = await enqueue_one(store, _message(1), _draft(1))
    [denied] = await store.append_audit([_draft(2, "AUTHZ_DENIED")])
    [batched] = await store.enqueue_many([_item(3)])
    assert isinstance(batched, AuditRecord) and record is not None
    assert store.server_id
    assert {record.server_id, denied.server_id, batched.server_id} == {store.server_id}
    # A record that already names a server keeps that name (it is part of the hash).
    [named] = await store.append_audit([msgspec.structs.replace(_draft(4), server_id="other")])
    assert named.server_id == "other"


async def test_retention_trims_the_oldest_records_and_keeps_an_anchor(store: Store) -> None:
    written = await store.append_audit([_draft(n) for n in range(1, 11)])
    assert await store.audit_anchor() == (0, GENESIS)
    assert await store.trim_audit(Retention(keep=4)) == 6
    assert await store.audit_anchor() == (6, written[5].hash)
    kept = await store.audit_records()
    assert [r.seq for r in kept] == [7, 8, 9, 10]
    assert [r.seq for r in await store.audit_records(after_seq=8, limit=1)] == [9]
    assert verify(kept, None, removed=await store.audit_anchor()).ok
    # New records link after the kept ones; nothing trimmed twice.
    [more] = await store.append_audit([_draft(11)])
    assert (more.seq, more.prev_hash) == (11, written[-1].hash)
    assert await store.trim_audit(Retention(keep=5)) == 0
    # What is kept still shows a deletion: record 7 gone, the anchor says 6.
    report = verify((await store.audit_records())[1:], None, removed=await store.audit_anchor())
    assert not report.ok and report.problem is not None
    assert report.problem.kind == "deleted" and report.problem.seq == 7


async def test_retention_by_age_stops_at_the_first_young_record_and_keeps_the_newest(
    store: Store,
) -> None:
    await store.append_audit([_draft(n) for n in range(1, 6)])  # times NOW + 1 ... NOW + 5
    assert await store.trim_audit(Retention(before=NOW + 3.5)) == 3
    assert [r.seq for r in await store.audit_records()] == [4, 5]
    assert await store.trim_audit(Retention(before=NOW + 100)) == 1  # the newest stays
    assert [r.seq for r in await store.audit_records()] == [5]
    assert await store.trim_audit(Retention(keep=0, up_to_seq=3)) == 0  # bounded by the file


async def test_a_trim_goes_in_bounded_steps(store: Store) -> None:
    await store.append_audit([_draft(n) for n in range(1, 9)])
    assert await store.trim_audit(Retention(keep=1, limit=3)) == 3
    assert await store.trim_audit(Retention(keep=1, limit=3)) == 3
    assert await store.trim_audit(Retention(keep=1, limit=3)) == 1
    assert [r.seq for r in await store.audit_records()] == [8]
    assert verify(await store.audit_records(), None, removed=await store.audit_anchor()).ok


async def test_ack_recorded_acks_as_ack_many_does_with_each_acked_deliverys_record(
    store: Store,
) -> None:
    await store.enqueue_many([_item(n) for n in range(3)])
    first, second, third = await store.claim("b", "i1", "s1", 3, NOW)

    def delivered(delivery: InFlight) -> AuditDraft:
        return AuditDraft(
            time=NOW + 1, decision="DELIVERED", message_id=delivery.message.message_id
        )

    ids = [third.delivery_id, "unknown", first.delivery_id, third.delivery_id]
    acked, records = await store.ack_recorded(ids, delivered)
    assert acked == [third, None, first, None]  # as ack_many: the second third finds nothing
    before = [r for r in await store.audit_records() if r.decision == "DELIVERED"]
    if records is None:  # the caller writes the drafts (Redis): nothing was linked
        assert before == []
    else:  # one record per acked delivery, in order, linked into the one chain
        assert [r.message_id for r in records] == ["m2", "m0"]
        assert before == records
        assert verify(await store.audit_records(), store.audit_key).ok
    assert await store.ack_recorded(ids, delivered) == ([None] * 4, None if records is None else [])
    assert await store.release_session("s1", 5, NOW) == 1  # only the second is left
    [again] = await store.claim("b", "i1", "s2", 5, NOW)
    assert again.message.message_id == second.message.message_id


async def test_route_batch_acks_what_a_written_reply_answers_and_nothing_for_a_refused_one(
    store: Store,
) -> None:
    await store.enqueue_many([_item(1, request=True), _item(2, request=True)])
    first, second = await store.claim("b", "i1", "s1", 2, NOW)

    def delivered(delivery: InFlight) -> AuditDraft:
        return AuditDraft(
            time=NOW + 5, decision="DELIVERED", message_id=delivery.message.message_id
        )

    def reply(n: int, answers: str, acks: str) -> EnqueueItem:
        item = _item(n, target="a", instance="a1")
        return msgspec.structs.replace(item, answers=answers, acks=acks)

    # The first reply is written and acks its request; the second names a correlation
    # that is not open: refused, so the delivery it names stays in flight.
    routed = await store.route_batch(
        [reply(10, "c1", first.delivery_id), reply(11, "made-up", second.delivery_id)],
        acked=delivered,
    )
    records, acked, linked = routed.results, routed.acked, routed.ack_records
    assert isinstance(records[0], AuditRecord) and records[0].message_id == "m10"
    assert isinstance(records[1], CorrelationRefused)
    assert acked == [first]
    if linked is not None:  # in the enqueue's transaction, after the reply's record
        assert [(r.decision, r.message_id) for r in linked] == [("DELIVERED", "m1")]
        assert linked[0].seq == records[0].seq + 1
        assert verify(await store.audit_records(), store.audit_key).ok
    # Only the unanswered request is left to the session: released, it comes back.
    assert await store.ack_many([first.delivery_id]) == [None]
    assert await store.release_session("s1", 5, NOW) == 1
    [again] = await store.claim("b", "i1", "s2", 5, NOW)
    assert again.message.message_id == second.message.message_id
