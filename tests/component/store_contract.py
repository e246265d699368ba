"""The store contract: every backend's test module runs these tests.

A backend's module (``test_store_<backend>.py``) defines a ``store`` fixture
that yields a fresh, empty store built with ``LIMITS``, and star-imports this
module, so that each backend passes exactly the same suite::

    from store_contract import *  # noqa: F403

    @pytest.fixture
    async def store() -> AsyncIterator[Store]:
        ...
"""

from __future__ import annotations

import pytest

from mas.store import Correlation, QueuedMessage, QueueFullError, Store, StoreLimits
from mas.store.base import CorrelationRefused, StateTooLargeError

LIMITS = StoreLimits(max_queue_length=5, max_message_age=100.0, max_state_bytes=200)
NOW = 1_000.0


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
        await store.enqueue(_message(n))
    await store.enqueue(_message(9, instance="i1"))
    assert await _ids(store, limit=2) == ["m9", "m0"]
    assert await _ids(store) == ["m1", "m2"]
    assert await _ids(store) == []


async def test_reply_queue_is_private_to_its_instance(store: Store) -> None:
    await store.enqueue(_message(1, instance="i1"))
    assert await _ids(store, session="s2", instance="i2") == []
    assert await _ids(store, session="s1", instance="i1") == ["m1"]


async def test_competing_sessions_never_get_the_same_message(store: Store) -> None:
    for n in range(4):
        await store.enqueue(_message(n))
    first = await _ids(store, session="s1", limit=2)
    second = await _ids(store, session="s2", limit=5, instance="i2")
    assert sorted(first + second) == ["m0", "m1", "m2", "m3"]
    assert not set(first) & set(second)


async def test_ack_forgets_and_unknown_ack_is_harmless(store: Store) -> None:
    await store.enqueue(_message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    assert (await store.ack(delivery.delivery_id)) == delivery
    assert await store.ack(delivery.delivery_id) is None
    assert await store.release_session("s1", 5, NOW) == 0


async def test_retry_waits_for_not_before_and_counts_the_attempt(store: Store) -> None:
    await store.enqueue(_message(1))
    [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
    await store.retry(delivery.delivery_id, NOW + 10)
    assert await store.next_due() == NOW + 10
    assert await _ids(store, now=NOW + 5) == []
    assert await store.pending_agents(NOW + 10) == {"b"}
    [again] = await store.claim("b", "i1", "s1", 1, NOW + 10)
    assert (again.message.message_id, again.message.attempt) == ("m1", 2)
    assert again.delivery_id != delivery.delivery_id


async def test_dead_letter_keeps_the_whole_message(store: Store) -> None:
    await store.enqueue(_message(1))
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
        await store.enqueue(_message(n, at=NOW + n))
    await store.claim("b", "i1", "s1", 2, NOW + 5)  # m0, m1 in flight
    assert await store.release_session("s1", 5, NOW + 5) == 2
    claimed = await store.claim("b", "i2", "s2", 5, NOW + 5)
    assert [(d.message.message_id, d.message.attempt) for d in claimed] == [
        ("m0", 2),
        ("m1", 2),
        ("m2", 1),
    ]


async def test_release_session_dead_letters_past_max_attempts(store: Store) -> None:
    await store.enqueue(_message(1))
    await store.claim("b", "i1", "s1", 1, NOW)
    assert await store.release_session("s1", 1, NOW) == 0
    assert [d.reason for d in await store.dead_letters("b")] == ["session_lost"]


async def test_queue_length_is_bounded(store: Store) -> None:
    for n in range(LIMITS.max_queue_length):
        await store.enqueue(_message(n))
    with pytest.raises(QueueFullError):
        await store.enqueue(_message(99))
    assert await store.queue_depth("b") == LIMITS.max_queue_length
    # Another agent's queue is unaffected.
    await store.enqueue(_message(100, target="c"))


async def test_messages_older_than_max_age_are_dead_lettered_not_delivered(store: Store) -> None:
    await store.enqueue(_message(1, at=NOW))
    await store.enqueue(_message(2, at=NOW + 50))
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
    await store.put_correlation(_correlation())
    with pytest.raises(CorrelationRefused) as refused:
        await store.take_correlation("c1", "mallory", NOW)
    assert refused.value.reason == "not_authorized"
    assert (await store.take_correlation("c1", "b", NOW)) == _correlation()
    with pytest.raises(CorrelationRefused) as refused:
        await store.take_correlation("c1", "b", NOW)
    assert refused.value.reason == "unknown_correlation"


async def test_expired_correlation_is_refused(store: Store) -> None:
    await store.put_correlation(_correlation(expires_at=NOW + 1))
    with pytest.raises(CorrelationRefused) as refused:
        await store.take_correlation("c1", "b", NOW + 2)
    assert refused.value.reason == "unknown_correlation"


async def test_state_partial_updates_and_reset(store: Store) -> None:
    assert await store.get_state("b") == {}
    await store.update_state("b", {"x": "1", "y": "[null, true]"})
    await store.update_state("b", {"x": '{"n": {"m": []}}'})
    assert await store.get_state("b") == {"x": '{"n": {"m": []}}', "y": "[null, true]"}
    assert await store.get_state("a") == {}
    await store.reset_state("b")
    assert await store.get_state("b") == {}


async def test_state_size_is_bounded_and_a_refused_update_changes_nothing(store: Store) -> None:
    await store.update_state("b", {"x": "1"})
    with pytest.raises(StateTooLargeError):
        await store.update_state("b", {"y": '"' + "z" * 300 + '"'})
    assert await store.get_state("b") == {"x": "1"}


async def test_dead_letters_can_be_replayed(store: Store) -> None:
    for n in (1, 2):
        await store.enqueue(_message(n))
    for delivery in await store.claim("b", "i1", "s1", 2, NOW):
        await store.dead_letter(delivery.delivery_id, "bad", NOW)
    [replayed] = await store.replay_dead_letters(["m2"], NOW + 500)
    assert replayed.message.message_id == "m2"
    assert [d.message.message_id for d in await store.dead_letters("b")] == ["m1"]
    [again] = await store.claim("b", "i1", "s1", 5, NOW + 500)  # not expired: enqueued anew
    assert (again.message.message_id, again.message.attempt) == ("m2", 1)
    assert len(await store.replay_dead_letters(None, NOW + 500)) == 1
    assert await store.dead_letters() == []
