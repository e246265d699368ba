"""The store contract: every backend's test module runs these tests.

A backend's module (``test_store_<backend>.py``) defines a ``store`` fixture
that yields a fresh, empty store built with ``LIMITS``, and star-imports this
module, so that each backend passes exactly the same suite::

    from store_contract import *  # noqa: F403

    @pytest.fixture
    async def store() -> AsyncIterator[Store]:
        ...

The ``Store`` interface holds only what the server calls; ``enqueue_one``,
``ack_one``, ``put_correlation`` and ``take_correlation`` below do through it what
single calls did before (``mas`` routes and acks in batches, and records and consumes
correlations with the messages that carry them).
"""

from __future__ import annotations

import msgspec
import pytest

from mas.audit.record import AuditDraft, AuditRecord
from mas.store import (
    Correlation,
    EnqueueItem,
    InFlight,
    QueuedMessage,
    QueueFullError,
    Store,
    StoreLimits,
)
from mas.store.base import CORRELATION_GRACE, Claim, CorrelationRefused, StateTooLargeError

LIMITS = StoreLimits(max_queue_length=5, max_message_age=100.0, max_state_bytes=200)
NOW = 1_000.0
CARRIER = "carrier"  # the queue of the messages that carry correlations for the helpers


async def enqueue_one(
    store: Store, message: QueuedMessage, audit: AuditDraft | None = None
) -> AuditRecord:
    """Route one message (``enqueue_many`` of one item); ``QueueFullError`` when it is full.

    Without ``audit``, the message's record is a plain ``ALLOWED`` draft at its time.
    """
    draft = audit or AuditDraft(time=message.enqueued_at, decision="ALLOWED")
    [written] = await store.enqueue_many([EnqueueItem(message=message, audit=draft)])
    if written is None:
        raise QueueFullError(message.target_id)
    assert isinstance(written, AuditRecord), written
    return written


async def ack_one(store: Store, delivery_id: str) -> InFlight | None:
    """Forget one delivery (``ack_many`` of one id): it, or None if it was not in flight."""
    [acked] = await store.ack_many([delivery_id])
    return acked


def _carrier(correlation_id: str, at: float) -> QueuedMessage:
    return QueuedMessage(
        message_id=f"carrier-{correlation_id}-{at}",
        target_id=CARRIER,
        instance_id=None,
        envelope_json=b"{}",
        enqueued_at=at,
    )


async def put_correlation(store: Store, correlation: Correlation) -> None:
    """Record an open request as the router does: with a message (to ``CARRIER``)."""
    item = EnqueueItem(
        message=_carrier(correlation.correlation_id, NOW),
        audit=AuditDraft(time=NOW, decision="ALLOWED"),
        correlation=correlation,
    )
    [written] = await store.enqueue_many([item])
    assert isinstance(written, AuditRecord), written


async def take_correlation(
    store: Store, correlation_id: str, replier_id: str, now: float
) -> Correlation:
    """Consume an open request as a reply does: found, then answered by a stored message.

    Raises the ``CorrelationRefused`` the look-up or the answering enqueue gives.
    """
    [found] = await store.find_correlations([(correlation_id, replier_id)], now)
    if isinstance(found, CorrelationRefused):
        raise found
    item = EnqueueItem(
        message=_carrier(correlation_id, now),
        audit=AuditDraft(time=now, decision="ALLOWED"),
        answers=correlation_id,
    )
    [written] = await store.enqueue_many([item])
    if isinstance(written, CorrelationRefused):
        raise written
    assert isinstance(written, AuditRecord), written
    return found


def _message(
    n: int, *, target: str = "b", instance: str | None = None, at: float = NOW
) -> QueuedMessage:
    return QueuedMessage(
        message_id=f"m{n}",
        target_id=target,
        instance_id=instance,
        envelope_json=b"{}",
        enqueued_at=at,
    )


async def _ids(
    store: Store, session: str = "s1", limit: int = 10, now: float = NOW, instance: str = "i1"
) -> list[str]:
    return [d.message.message_id for d in await store.claim("b", instance, session, limit, now)]


async def test_claim_takes_in_order_reply_queue_first(store: Store) -> None:
    for n in range(3):
        await enqueue_one(store, _message(n))
    await enqueue_one(store, _message(9, instance="i1"))
    assert await _ids(store, limit=2) == ["m9", "m0"]
    assert await _ids(store) == ["m1", "m2"]
    assert await _ids(store) == []


async def test_reply_queue_is_private_to_its_instance(store: Store) -> None:
    await enqueue_one(store, _message(1, instance="i1"))
    assert await _ids(store, session="s2", instance="i2") == []
    assert await _ids(store, session="s1", instance="i1") == ["m1"]


async def test_competing_sessions_never_get_the_same_message(store: Store) -> None:
    for n in range(4):
        await enqueue_one(store, _message(n))
    first = await _ids(store, session="s1", limit=2)
    second = await _ids(store, session="s2", limit=5, instance="i2")
    assert sorted(first + second) == ["m0", "m1", "m2", "m3"]
    assert not set(first) & set(second)


async def test_ack_forgets_and_unknown_ack_is_harmless(store: Store) -> None:
    await enqueue_one(store, _message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    assert (await ack_one(store, delivery.delivery_id)) == delivery
    assert await ack_one(store, delivery.delivery_id) is None
    assert await store.release_session("s1", 5, NOW) == 0


async def test_retry_waits_for_not_before_and_counts_the_attempt(store: Store) -> None:
    await enqueue_one(store, _message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    await store.retry(delivery.delivery_id, NOW + 10)
    assert await store.next_due() == NOW + 10
    assert await _ids(store, now=NOW + 5) == []
    assert await store.pending_agents(NOW + 10) == {"b"}
    [again] = await store.claim("b", "i1", "s1", 1, NOW + 10)
    assert (again.message.message_id, again.message.attempt) == ("m1", 2)
    assert again.delivery_id != delivery.delivery_id


async def test_dead_letter_keeps_the_whole_message(store: Store) -> None:
    await enqueue_one(store, _message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    await store.dead_letter(delivery.delivery_id, "invalid", NOW + 1)
    [dead] = await store.dead_letters("b")
    assert (dead.message, dead.reason, dead.dead_lettered_at) == (
        delivery.message,
        "invalid",
        NOW + 1,
    )
    assert await store.dead_letters("other") == []


async def test_release_session_requeues_in_order_at_the_front(store: Store) -> None:
    for n in range(3):
        await enqueue_one(store, _message(n, at=NOW + n))
    await store.claim("b", "i1", "s1", 2, NOW + 5)  # m0, m1 in flight
    assert await store.release_session("s1", 5, NOW + 5) == 2
    claimed = await store.claim("b", "i2", "s2", 5, NOW + 5)
    assert [(d.message.message_id, d.message.attempt) for d in claimed] == [
        ("m0", 2),
        ("m1", 2),
        ("m2", 1),
    ]


async def test_release_session_keeps_the_order_of_messages_enqueued_together(
    store: Store,
) -> None:
    # One batch: the same enqueued_at for all, so only the queue's own order tells them
    # apart (the memory store once put them back in the order of a set of random ids).
    await store.enqueue_many([_item(n) for n in range(LIMITS.max_queue_length)])
    taken = await store.claim("b", "i1", "s1", 10, NOW)
    assert len(taken) == LIMITS.max_queue_length
    assert await store.release_session("s1", 5, NOW) == LIMITS.max_queue_length
    again = await store.claim("b", "i2", "s2", 10, NOW)
    assert [(d.message.message_id, d.message.attempt) for d in again] == [
        (f"m{n}", 2) for n in range(LIMITS.max_queue_length)
    ]


async def test_retries_due_together_go_to_the_front_earliest_due_first(store: Store) -> None:
    await store.enqueue_many([_item(n) for n in range(4)])
    first, second, third = await store.claim("b", "i1", "s1", 3, NOW)
    await store.retry(second.delivery_id, NOW + 1)
    await store.retry(third.delivery_id, NOW + 2)
    await store.retry(first.delivery_id, NOW + 3)
    claimed = await store.claim("b", "i1", "s1", 10, NOW + 5)
    assert [(d.message.message_id, d.message.attempt) for d in claimed] == [
        ("m1", 2),
        ("m2", 2),
        ("m0", 2),
        ("m3", 1),
    ]


async def test_release_session_dead_letters_past_max_attempts(store: Store) -> None:
    await enqueue_one(store, _message(1))
    await store.claim("b", "i1", "s1", 1, NOW)
    assert await store.release_session("s1", 1, NOW) == 0
    assert [d.reason for d in await store.dead_letters("b")] == ["session_lost"]


async def test_queue_length_is_bounded(store: Store) -> None:
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(n))
    with pytest.raises(QueueFullError):
        await enqueue_one(store, _message(99))
    assert await store.queue_depth("b") == LIMITS.max_queue_length
    # Another agent's queue is unaffected.
    await enqueue_one(store, _message(100, target="c"))


async def test_messages_older_than_max_age_are_dead_lettered_not_delivered(store: Store) -> None:
    await enqueue_one(store, _message(1, at=NOW))
    await enqueue_one(store, _message(2, at=NOW + 50))
    assert await _ids(store, now=NOW + 120) == ["m2"]
    assert [(d.message.message_id, d.reason) for d in await store.dead_letters("b")] == [
        ("m1", "expired")
    ]


def _correlation(expires_at: float = NOW + 60) -> Correlation:
    return Correlation(
        correlation_id="c1",
        requester_id="a",
        requester_instance_id="a1",
        target_id="b",
        request_message_id="m1",
        expires_at=expires_at,
    )


async def test_correlation_is_single_use_and_only_for_the_target(store: Store) -> None:
    await put_correlation(store, _correlation())
    with pytest.raises(CorrelationRefused) as refused:
        await take_correlation(store, "c1", "mallory", NOW)
    assert refused.value.reason == "not_authorized"
    assert (await take_correlation(store, "c1", "b", NOW)) == _correlation()
    with pytest.raises(CorrelationRefused) as refused:
        await take_correlation(store, "c1", "b", NOW)
    assert refused.value.reason == "unknown_correlation_id"


async def test_correlations_are_found_in_one_call_without_being_consumed(store: Store) -> None:
    live = _correlation()
    short = msgspec.structs.replace(_correlation(expires_at=NOW + 1), correlation_id="c2")
    for correlation in (live, short):
        await put_correlation(store, correlation)
    found = await store.find_correlations(
        [("c1", "b"), ("c1", "b"), ("c2", "b"), ("c1", "mallory"), ("nope", "b")], NOW + 2
    )
    assert found[:2] == [live, live]
    outcomes = [f.reason if isinstance(f, CorrelationRefused) else "open" for f in found]
    assert outcomes == [
        "open",
        "open",  # a look-up consumes nothing
        "correlation_id_expired",
        "not_authorized",
        "unknown_correlation_id",
    ]
    assert await _take(store, "c1", "b") == "taken"
    assert await store.find_correlations([], NOW) == []


async def test_expired_correlation_is_refused_as_expired_then_forgotten(store: Store) -> None:
    await put_correlation(store, _correlation(expires_at=NOW + 1))
    with pytest.raises(CorrelationRefused) as refused:
        await take_correlation(store, "c1", "b", NOW + 2)
    assert refused.value.reason == "correlation_id_expired"
    later = NOW + 2 + CORRELATION_GRACE
    await store.sweep(later, reply_max_age=3600)
    [found] = await store.find_correlations([("c1", "b")], later)
    assert isinstance(found, CorrelationRefused)
    # Redis forgets it by its key's expiry (real time), the others by the sweep.
    assert found.reason in {"unknown_correlation_id", "correlation_id_expired"}


def _reply(n: int, answers: str, *, at: float = NOW) -> EnqueueItem:
    """Reply ``m<n>`` to requester a's instance a1, consuming correlation ``answers``."""
    return EnqueueItem(
        message=_message(n, target="a", instance="a1", at=at),
        audit=AuditDraft(time=at, decision="ALLOWED", message_id=f"m{n}", target_id="a"),
        answers=answers,
    )


async def test_a_reply_consumes_its_correlation_in_the_enqueue_that_stores_it(
    store: Store,
) -> None:
    await store.enqueue_many([_item(1, request=True), _item(2, request=True)])
    records = await store.enqueue_many([_reply(10, "c1"), _reply(11, "c1"), _reply(12, "nope")])
    assert isinstance(records[0], AuditRecord) and records[0].message_id == "m10"
    assert [r.reason for r in records[1:] if isinstance(r, CorrelationRefused)] == [
        "unknown_correlation_id",  # the first reply of the batch took it
        "unknown_correlation_id",
    ]
    assert await _take(store, "c1", "b") == "unknown_correlation_id"
    # A reply refused by the store leaves the other correlation alone.
    assert await _take(store, "c2", "b") == "taken"
    replies = await store.claim("a", "a1", "s9", 10, NOW)
    assert [d.message.message_id for d in replies] == ["m10"]


async def test_a_reply_after_its_deadline_is_refused_as_expired(store: Store) -> None:
    await store.enqueue_many([_item(1, request=True)])  # expires at NOW + 60
    [late] = await store.enqueue_many([_reply(10, "c1", at=NOW + 61)])
    assert isinstance(late, CorrelationRefused)
    assert late.reason == "correlation_id_expired"
    assert await store.claim("a", "a1", "s9", 10, NOW + 61) == []


async def test_a_reply_refused_for_a_full_queue_leaves_its_correlation_open(
    store: Store,
) -> None:
    await store.enqueue_many([_item(1, request=True)])
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(100 + n, target="a", instance="a1"))
    assert await store.enqueue_many([_reply(10, "c1")]) == [None]
    assert await _take(store, "c1", "b") == "taken"


async def test_sweep_deletes_stale_replies_but_not_fresh_ones_or_queued_work(
    store: Store,
) -> None:
    await enqueue_one(store, _message(1, target="a", instance="gone", at=NOW))
    await enqueue_one(store, _message(2, target="a", instance="gone", at=NOW + 80))
    await enqueue_one(store, _message(3, target="a", at=NOW))  # the shared queue is never swept
    swept = await store.sweep(NOW + 90, reply_max_age=50)
    claimed = [d.message.message_id for d in await store.claim("a", "gone", "s", 10, NOW + 90)]
    if swept:  # Redis bounds reply streams by length and age instead (see RedisStore.sweep)
        assert claimed == ["m2", "m3"]
    else:
        assert claimed == ["m1", "m2", "m3"]


async def test_state_partial_updates_and_reset(store: Store) -> None:
    assert (await store.read_state("b")).values == {}
    await store.update_state("b", {"x": "1", "y": "[null, true]"})
    await store.update_state("b", {"x": '{"n": {"m": []}}'})
    assert (await store.read_state("b")).values == {"x": '{"n": {"m": []}}', "y": "[null, true]"}
    assert (await store.read_state("a")).values == {}
    await store.reset_state("b")
    assert (await store.read_state("b")).values == {}


async def test_state_size_is_bounded_and_a_refused_update_changes_nothing(store: Store) -> None:
    await store.update_state("b", {"x": "1"})
    with pytest.raises(StateTooLargeError):
        await store.update_state("b", {"y": '"' + "z" * 300 + '"'})
    assert (await store.read_state("b")).values == {"x": "1"}


async def test_dead_letters_can_be_replayed(store: Store) -> None:
    for n in (1, 2):
        await enqueue_one(store, _message(n))
    for delivery in await store.claim("b", "i1", "s1", 2, NOW):
        await store.dead_letter(delivery.delivery_id, "bad", NOW)
    [replayed] = await store.replay_dead_letters(["m2"], NOW + 500)
    assert replayed.message.message_id == "m2"
    assert [d.message.message_id for d in await store.dead_letters("b")] == ["m1"]
    [again] = await store.claim("b", "i1", "s1", 5, NOW + 500)  # not expired: enqueued anew
    assert (again.message.message_id, again.message.attempt) == ("m2", 1)
    assert len(await store.replay_dead_letters(None, NOW + 500)) == 1
    assert await store.dead_letters() == []


# -- batches -----------------------------------------------------------------------------


def _item(
    n: int, *, target: str = "b", instance: str | None = None, request: bool = False
) -> EnqueueItem:
    """Message ``m<n>`` with its audit draft; as a request, with correlation ``c<n>``."""
    correlation = None
    if request:
        correlation = Correlation(
            correlation_id=f"c{n}",
            requester_id="a",
            requester_instance_id="a1",
            target_id=target,
            request_message_id=f"m{n}",
            expires_at=NOW + 60,
        )
    return EnqueueItem(
        message=_message(n, target=target, instance=instance),
        audit=AuditDraft(time=NOW + n, decision="ALLOWED", message_id=f"m{n}", target_id=target),
        correlation=correlation,
    )


async def _take(store: Store, correlation_id: str, replier: str) -> str:
    """ "taken", or the reason the correlation was refused."""
    try:
        await take_correlation(store, correlation_id, replier, NOW)
    except CorrelationRefused as exc:
        return exc.reason
    return "taken"


async def test_enqueue_many_keeps_the_order_of_its_items(store: Store) -> None:
    await enqueue_one(store, _message(0))
    items = [_item(1), _item(2, instance="i1"), _item(3), _item(4, instance="i1"), _item(5)]
    records = await store.enqueue_many(items)
    assert [r.message_id if r else None for r in records] == ["m1", "m2", "m3", "m4", "m5"]
    assert await store.queue_depth("b") == 4
    assert await _ids(store) == ["m2", "m4", "m0", "m1", "m3", "m5"]


async def test_an_empty_batch_does_nothing(store: Store) -> None:
    assert await store.enqueue_many([]) == []
    assert await store.ack_many([]) == []
    assert await store.queue_depth("b") == 0


async def test_a_full_queue_refuses_only_its_own_items_and_none_of_their_parts(
    store: Store,
) -> None:
    for n in range(LIMITS.max_queue_length - 1):
        await enqueue_one(store, _message(n))
    items = [
        _item(10, request=True),  # takes b's last place
        _item(11, target="c", request=True),
        _item(12, request=True),  # b is full now
        _item(13, target="c"),
        _item(14),
        _item(15, instance="i1", request=True),  # b's reply queue is another queue
    ]
    records = await store.enqueue_many(items)
    assert [r.message_id if r else None for r in records] == [
        "m10",
        "m11",
        None,
        "m13",
        None,
        "m15",
    ]
    assert await store.queue_depth("b") == LIMITS.max_queue_length
    assert await store.queue_depth("c") == 2
    assert await _take(store, "c12", "b") == "unknown_correlation_id"  # never written
    for written, target in (("c10", "b"), ("c11", "c"), ("c15", "b")):
        assert await _take(store, written, target) == "taken"


async def test_later_items_of_a_batch_see_the_queue_as_earlier_ones_left_it(
    store: Store,
) -> None:
    size = LIMITS.max_queue_length
    records = await store.enqueue_many([_item(n) for n in range(size + 2)])
    assert [r is not None for r in records] == [True] * size + [False, False]
    assert await store.queue_depth("b") == size
    assert await _ids(store) == [f"m{n}" for n in range(size)]
    # Room made by a claim is seen by the next batch.
    assert [r is not None for r in await store.enqueue_many([_item(20), _item(21)])] == [
        True,
        True,
    ]


async def test_a_batch_whose_queues_are_all_full_writes_nothing(store: Store) -> None:
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(n))
    assert await store.enqueue_many([_item(10, request=True), _item(11)]) == [None, None]
    assert await store.queue_depth("b") == LIMITS.max_queue_length
    assert await _take(store, "c10", "b") == "unknown_correlation_id"


async def test_correlations_of_a_batch_are_taken_once_by_their_target_only(
    store: Store,
) -> None:
    await store.enqueue_many([_item(1, request=True), _item(2, target="c", request=True)])
    assert await _take(store, "c1", "c") == "not_authorized"
    assert await _take(store, "c1", "b") == "taken"
    assert await _take(store, "c1", "b") == "unknown_correlation_id"
    assert await _take(store, "c2", "b") == "not_authorized"
    assert await _take(store, "c2", "c") == "taken"
    [request] = await store.claim("c", "i1", "s1", 5, NOW)
    assert request.message.message_id == "m2"


async def test_ack_many_answers_each_id_as_ack_would(store: Store) -> None:
    await store.enqueue_many([_item(n) for n in range(3)] + [_item(3, instance="i1")])
    deliveries = await store.claim("b", "i1", "s1", 4, NOW)
    by_id = {d.message.message_id: d for d in deliveries}
    m0, m1, m2, m3 = (by_id[f"m{n}"].delivery_id for n in range(4))
    acked = await store.ack_many([m0, "unknown", m3, m0, m1])
    assert acked == [by_id["m0"], None, by_id["m3"], None, by_id["m1"]]
    assert await store.ack_many([m1, m0]) == [None, None]
    assert await ack_one(store, m2) == by_id["m2"]
    assert await store.release_session("s1", 5, NOW) == 0  # nothing left in flight
    assert await _ids(store, session="s2") == []


async def test_ack_many_leaves_other_deliveries_in_flight(store: Store) -> None:
    await store.enqueue_many([_item(n) for n in range(3)])
    first, _, third = await store.claim("b", "i1", "s1", 3, NOW)
    assert await store.ack_many([third.delivery_id, first.delivery_id]) == [third, first]
    assert await store.release_session("s1", 5, NOW) == 1
    [again] = await store.claim("b", "i1", "s2", 5, NOW)
    assert (again.message.message_id, again.message.attempt) == ("m1", 2)


# -- route_batch: the enqueue, its acks and the claims of idle sessions, in one step -----


def _claim(session: str = "s1", instance: str = "i1", limit: int = 10) -> Claim:
    return Claim(agent_id="b", instance_id=instance, session_id=session, limit=limit)


async def test_route_batch_claims_what_it_just_wrote_behind_what_waited(store: Store) -> None:
    await enqueue_one(store, _message(0))
    routed = await store.route_batch(
        [_item(1), _item(2, instance="i1")], claims=[_claim(limit=2)], now=NOW
    )
    assert [r.message_id if isinstance(r, AuditRecord) else r for r in routed.results] == [
        "m1",
        "m2",
    ]
    # The claim is the one ``claim`` would make after the enqueue: reply queue first,
    # then the shared queue in order, within its limit.
    [claimed] = routed.claimed
    assert [d.message.message_id for d in claimed] == ["m2", "m0"]
    assert {d.session_id for d in claimed} == {"s1"}
    assert await _ids(store, session="s2", instance="i2") == ["m1"]
    # Claimed means in flight to that session: acked once, released with it.
    assert await store.ack_many([claimed[0].delivery_id]) == [claimed[0]]
    assert await store.release_session("s1", 5, NOW) == 1


async def test_route_batch_claims_for_several_sessions_in_turn(store: Store) -> None:
    routed = await store.route_batch(
        [_item(1), _item(2), _item(3)],
        claims=[_claim("s1", "i1", limit=1), _claim("s2", "i2", limit=5)],
        now=NOW,
    )
    first, second = routed.claimed
    assert [d.message.message_id for d in first] == ["m1"]
    assert [d.message.message_id for d in second] == ["m2", "m3"]
    assert await store.queue_depth("b") == 0


async def test_route_batch_claims_nothing_a_refused_item_would_have_carried(
    store: Store,
) -> None:
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(n))
    routed = await store.route_batch([_item(10)], claims=[_claim(limit=10)], now=NOW)
    assert routed.results == [None]  # the queue was full
    [claimed] = routed.claimed
    assert [d.message.message_id for d in claimed] == [f"m{n}" for n in range(5)]


async def test_route_batch_claims_what_it_wrote_beside_a_refused_item(store: Store) -> None:
    # Redis writes such a batch on a second try (its first found b's queue full): the
    # claims must still see what the batch wrote.
    for n in range(LIMITS.max_queue_length):
        await enqueue_one(store, _message(n))
    claim = Claim(agent_id="c", instance_id="k1", session_id="s3", limit=5)
    routed = await store.route_batch([_item(10), _item(11, target="c")], claims=[claim], now=NOW)
    assert routed.results[0] is None  # b's queue is full
    [claimed] = routed.claimed
    assert [d.message.message_id for d in claimed] == ["m11"]


async def test_route_batch_claims_promote_due_retries_as_claim_does(store: Store) -> None:
    await enqueue_one(store, _message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    await store.retry(delivery.delivery_id, NOW + 10)
    early = await store.route_batch([_item(2)], claims=[_claim("s2", "i2")], now=NOW + 5)
    assert [d.message.message_id for d in early.claimed[0]] == ["m2"]
    later = await store.route_batch([], claims=[_claim("s2", "i2")], now=NOW + 10)
    [again] = later.claimed[0]
    assert (again.message.message_id, again.message.attempt) == ("m1", 2)
    assert await store.next_due() is None


async def test_route_batch_claims_on_an_empty_queue_within_its_limit_the_rest_waits(
    store: Store,
) -> None:
    # On SQLite the claimed rows are written in flight as they arrive (no waiting row
    # first): they must still be in flight in every sense, acked once, released with
    # their session to the front of the queue, ahead of the row that waited.
    routed = await store.route_batch(
        [_item(1), _item(2), _item(3)], claims=[_claim("s1", limit=2)], now=NOW
    )
    [claimed] = routed.claimed
    assert [d.message.message_id for d in claimed] == ["m1", "m2"]
    assert await store.queue_depth("b") == 1
    assert await store.ack_many([claimed[0].delivery_id, claimed[0].delivery_id]) == [
        claimed[0],
        None,
    ]
    assert await store.release_session("s1", 5, NOW) == 1
    again = await store.claim("b", "i1", "s2", 10, NOW)
    assert [(d.message.message_id, d.message.attempt) for d in again] == [("m2", 2), ("m3", 1)]


async def test_route_batch_claims_of_one_agent_keep_their_order_when_a_queue_waited(
    store: Store,
) -> None:
    await enqueue_one(store, _message(0, instance="i1"))  # waits in i1's reply queue
    routed = await store.route_batch(
        [_item(1), _item(2), _item(3, instance="i2")],
        claims=[_claim("s2", "i2", limit=2), _claim("s1", "i1", limit=5)],
        now=NOW,
    )
    second, first = routed.claimed
    assert [d.message.message_id for d in second] == ["m3", "m1"]
    assert [d.message.message_id for d in first] == ["m0", "m2"]
    assert await store.queue_depth("b") == 0


async def test_route_batch_claim_dead_letters_an_arrival_past_max_age(store: Store) -> None:
    late = NOW + LIMITS.max_message_age + 1  # the item was enqueued at NOW
    routed = await store.route_batch([_item(1), _item(2)], claims=[_claim()], now=late)
    assert routed.claimed == [[]]
    dead = await store.dead_letters("b")
    assert sorted((d.message.message_id, d.reason) for d in dead) == [
        ("m1", "expired"),
        ("m2", "expired"),
    ]


async def test_route_batch_claims_on_arrival_for_two_agents_at_once(store: Store) -> None:
    routed = await store.route_batch(
        [_item(1), _item(2, target="c"), _item(3, target="c", instance="k1")],
        claims=[
            Claim(agent_id="c", instance_id="k1", session_id="s3", limit=10),
            _claim("s1", limit=10),
        ],
        now=NOW,
    )
    for_c, for_b = routed.claimed
    assert [d.message.message_id for d in for_c] == ["m3", "m2"]
    assert {d.session_id for d in for_c} == {"s3"}
    assert [d.message.message_id for d in for_b] == ["m1"]
    assert await store.release_session("s3", 5, NOW) == 2
    assert [d.message.message_id for d in await store.claim("c", "k1", "s4", 10, NOW)] == [
        "m3",
        "m2",
    ]


async def test_route_batch_without_claims_or_acks_is_enqueue_many(store: Store) -> None:
    routed = await store.route_batch([_item(1)], now=NOW)
    assert isinstance(routed.results[0], AuditRecord)
    assert routed.acked == [] and routed.claimed == []
    assert await _ids(store) == ["m1"]
