"""The SQLite and Redis stores against the memory store, step by step, over generated histories.

The contract tests pin chosen cases; here hypothesis draws whole histories of what a
server asks of its store (batches routed with the claims of idle sessions, plain claims,
acks, retries, dead letters, lost sessions, time passing past retries and past
``max_message_age``) and both stores run each step. Every step's outcome must be the
same on both: the messages each claim took, in order, with their attempts; what each ack
found; the queue depths; the dead letters. The memory store is the reference: the other
stores' shortcuts (on SQLite a claim in its enqueue's transaction taking the new rows on
arrival, retries promoted only when one is due; on Redis scripts and pipelines) must
not be visible. (It found the memory store releasing a batch's messages in random order,
and both it and Redis promoting retries due together latest first.)
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_server import running_redis

from mas.audit.record import AuditDraft
from mas.store import EnqueueItem, InFlight, MemoryStore, QueuedMessage, Store, StoreLimits
from mas.store.base import Claim
from mas.store.redis import open_redis_store
from mas.store.sqlite import open_sqlite_store

LIMITS = StoreLimits(max_queue_length=6, max_message_age=40.0)
# Redis runs the histories with queues that never fill: a batch one of whose queues
# refuses is written on a second try, after its claims ran (they then claim again after
# the write, but an older message of the shared queue may have gone before a new reply),
# so its claims' order may differ there. The contract tests cover its refusals.
UNBOUNDED = StoreLimits(max_queue_length=10**6, max_message_age=LIMITS.max_message_age)
START = 1_000.0
MAX_ATTEMPTS = 3
# (agent, instance) of each session; b has two instances, c one.
SESSIONS = {"s1": ("b", "i1"), "s2": ("b", "i2"), "s3": ("c", "k1")}
TARGETS = [("b", None), ("b", "i1"), ("b", "i2"), ("c", None), ("c", "k1")]

# A message's target, and how long before the step it was enqueued: the router stamps
# its own time, but the store must not rely on that (past max_message_age: expired).
_items = st.lists(
    st.tuples(st.sampled_from(TARGETS), st.sampled_from([0.0, 0.0, 0.0, 45.0])), max_size=5
)
# Claim limits from 1: a server claims only for a session with room (a claim of 0 takes
# nothing; whether it promotes due retries first differs between stores, unseen).
_claims = st.lists(
    st.tuples(st.sampled_from(sorted(SESSIONS)), st.integers(1, 4)),
    max_size=3,
    unique_by=lambda claim: claim[0],
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("route"), _items, _claims),
        st.tuples(  # one message that acks a delivery as it is written (a reply's reply_acks)
            st.just("acking"),
            st.sampled_from(TARGETS),
            st.sampled_from(sorted(SESSIONS)),
            st.integers(0, 5),
            _claims,
        ),
        st.tuples(st.just("claim"), st.sampled_from(sorted(SESSIONS)), st.integers(1, 4)),
        st.tuples(st.just("ack"), st.sampled_from(sorted(SESSIONS)), st.integers(0, 5)),
        st.tuples(st.just("retry"), st.sampled_from(sorted(SESSIONS)), st.floats(0.5, 10.0)),
        st.tuples(st.just("dead"), st.sampled_from(sorted(SESSIONS))),
        st.tuples(st.just("lose"), st.sampled_from(sorted(SESSIONS))),
        st.tuples(st.just("wait"), st.floats(0.1, 25.0)),
    ),
    min_size=1,
    max_size=40,
)


class _Side:
    """One store and the deliveries it has in flight per session (by message id)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.in_flight: dict[str, dict[str, InFlight]] = {s: {} for s in SESSIONS}

    def took(self, session: str, deliveries: Sequence[InFlight]) -> list[tuple[str, int]]:
        for delivery in deliveries:
            self.in_flight[session][delivery.message.message_id] = delivery
        return [(d.message.message_id, d.message.attempt) for d in deliveries]

    def pick(self, session: str, index: int) -> InFlight | None:
        """The ``index``-th delivery of the session in message-id order (both sides agree)."""
        mine = sorted(self.in_flight[session])
        if not mine:
            return None
        return self.in_flight[session].pop(mine[index % len(mine)])


def _item(n: int, target: tuple[str, str | None], enqueued_at: float) -> EnqueueItem:
    agent_id, instance_id = target
    now = enqueued_at
    message = QueuedMessage(
        message_id=f"m{n:03}",
        target_id=agent_id,
        instance_id=instance_id,
        envelope_json=b"{}",
        enqueued_at=now,
    )
    audit = AuditDraft(time=now, decision="ALLOWED", message_id=message.message_id)
    return EnqueueItem(message=message, audit=audit)


def _claim(session: str, limit: int) -> Claim:
    agent_id, instance_id = SESSIONS[session]
    return Claim(agent_id=agent_id, instance_id=instance_id, session_id=session, limit=limit)


async def _step(side: _Side, step: tuple[Any, ...], now: float, first_id: int) -> Any:
    """Run one step on one side; its outcome in terms both sides share."""
    store, kind = side.store, step[0]
    if kind == "route":
        _, targets, claims = step
        items = [_item(first_id + k, target, now - age) for k, (target, age) in enumerate(targets)]
        routed = await store.route_batch(
            items, claims=[_claim(s, limit) for s, limit in claims], now=now
        )
        accepted = [r is not None for r in routed.results]
        taken = [side.took(s, got) for (s, _), got in zip(claims, routed.claimed, strict=True)]
        return accepted, taken
    if kind == "acking":
        _, target, session, index, claims = step
        delivery = side.pick(session, index)
        item = _item(first_id, target, now)
        if delivery is not None:
            item = msgspec.structs.replace(item, acks=delivery.delivery_id)
        routed = await store.route_batch(
            [item], claims=[_claim(s, limit) for s, limit in claims], now=now
        )
        if delivery is not None and routed.results[0] is None:  # not written: not acked
            side.in_flight[session][delivery.message.message_id] = delivery
        acked = [d.message.message_id for d in routed.acked]
        taken = [side.took(s, got) for (s, _), got in zip(claims, routed.claimed, strict=True)]
        return routed.results[0] is not None, acked, taken
    if kind == "claim":
        _, session, limit = step
        agent_id, instance_id = SESSIONS[session]
        return side.took(session, await store.claim(agent_id, instance_id, session, limit, now))
    if kind in ("ack", "retry", "dead"):
        session = step[1]
        delivery = side.pick(session, step[2] if kind == "ack" else 0)
        if delivery is None:
            return None
        if kind == "ack":
            [acked] = await store.ack_many([delivery.delivery_id])
            return acked is not None and acked.message.message_id
        if kind == "retry":
            retried = await store.retry(delivery.delivery_id, now + step[2])
            return retried is not None and retried.message.message_id
        dead = await store.dead_letter(delivery.delivery_id, "nacked", now)
        return dead is not None and dead.message.message_id
    if kind == "lose":
        session = step[1]
        side.in_flight[session].clear()
        return await store.release_session(session, MAX_ATTEMPTS, now)
    return None  # "wait": only the clock moves


async def _state(store: Store) -> tuple[Any, ...]:
    dead = sorted((d.message.message_id, d.reason) for d in await store.dead_letters())
    return await store.queue_depth("b"), await store.queue_depth("c"), dead


OpenStore = Callable[[], AbstractAsyncContextManager[tuple[Store, StoreLimits]]]


async def _replay(steps: list[tuple[Any, ...]], open_store: OpenStore) -> None:
    async with open_store() as (store, limits):
        memory, other = _Side(MemoryStore(limits)), _Side(store)
        now, next_id = START, 0
        for number, step in enumerate(steps):
            if step[0] == "wait":
                now += step[1]
            expected = await _step(memory, step, now, next_id)
            got = await _step(other, step, now, next_id)
            assert got == expected, f"step {number} {step}: got {got}, memory {expected}"
            state = await _state(other.store)
            assert state == await _state(memory.store), f"after step {number} {step}"
            if step[0] == "route":
                next_id += len(step[1])
            elif step[0] == "acking":
                next_id += 1


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis() as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest) -> OpenStore:
    """A fresh store of the backend per call: a new file, or a new Redis namespace."""

    @asynccontextmanager
    async def sqlite() -> AsyncIterator[tuple[Store, StoreLimits]]:
        with tempfile.TemporaryDirectory() as directory:
            async with open_sqlite_store(Path(directory) / "mas.sqlite3", LIMITS) as store:
                yield store, LIMITS

    @asynccontextmanager
    async def redis() -> AsyncIterator[tuple[Store, StoreLimits]]:
        url = request.getfixturevalue("redis_url")
        namespace = f"d{secrets.token_hex(6)}"
        async with open_redis_store(url, UNBOUNDED, namespace=namespace) as store:
            yield store, UNBOUNDED

    return sqlite if request.param == "sqlite" else redis


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=_steps)
# Cases always tried: a reply queue that waited before new shared arrivals, and an arrival
# already past max_message_age (a claim on arrival must see both); two retries falling
# due together (the earliest due goes first); a batch one of whose queues turns out full
# (Redis writes it on a second try: its claims must still see what was written); a
# claim whose first messages expired while back at the front takes the next ones too.
@example(
    steps=[
        ("route", [(("c", None), 0.0)] * 3, [("s3", 3)]),
        ("lose", "s3"),
        ("wait", 20.0),
        ("wait", 25.0),
        ("route", [(("c", None), 0.0)], [("s3", 1)]),
    ]
)
@example(
    steps=[
        ("route", [(("b", None), 0.0)] * 3, []),
        ("route", [(("b", None), 0.0)] * 4 + [(("c", None), 0.0)], [("s3", 1)]),
    ]
)
@example(
    steps=[
        ("route", [(("b", None), 0.0)] * 3, [("s1", 3)]),
        ("retry", "s1", 5.0),
        ("retry", "s1", 2.0),
        ("wait", 10.0),
        ("claim", "s1", 4),
    ]
)
@example(steps=[("route", [(("b", "i1"), 0.0)], []), ("route", [(("b", None), 0.0)], [("s1", 1)])])
@example(steps=[("route", [(("b", None), 45.0), (("b", None), 0.0)], [("s2", 2)])])
def test_each_store_does_what_the_memory_store_does(
    open_store: OpenStore, steps: list[tuple[Any, ...]]
) -> None:
    trio.run(_replay, steps, open_store)
