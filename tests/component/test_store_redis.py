"""The store contract on the Redis backend, plus what only a shared Redis store does.

A real ``redis-server`` runs per module (``tests/redis_server.py``); each test gets
a fresh namespace on it. Leases live in Redis time, so the failover tests use real
leases of 0.3 s and stay bounded by ``fail_after``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec
import pytest
import redis
import trio
from audit_contract import *  # noqa: F403
from redis_server import RedisServer, running_redis
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
from mas.errors import ConfigError
from mas.store import EnqueueItem, InFlight, QueuedMessage, Store, StoreLimits
from mas.store.base import Claim, CorrelationRefused
from mas.store.redis import RedisStore, StoreUnavailableError, open_redis_store
from mas.store.redis import audit as redis_audit
from mas.store.redis import batch as redis_batch
from mas.store.redis.durability import persistence_verdict
from mas.store.redis.records import CORRELATION_GRACE_MS

SHORT_LEASE = 0.3  # seconds; renewed every 0.1 s


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
async def store(redis_server: RedisServer, namespace: str) -> AsyncIterator[Store]:
    async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as opened:
        yield opened


TwoServers = Callable[..., AbstractAsyncContextManager[tuple[RedisStore, RedisStore]]]


@pytest.fixture
def two_servers(redis_server: RedisServer, namespace: str) -> TwoServers:
    """Opens two stores (two servers) on one Redis and the test's namespace.

    ``async with two_servers(**options) as (a, b)``: ``url`` (default: the module's
    Redis), ``limits`` (default ``LIMITS``), and ``open_redis_store``'s options.
    """

    @asynccontextmanager
    async def open_two(
        url: str | None = None, limits: StoreLimits = LIMITS, **options: Any
    ) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
        target = url or redis_server.url
        async with (
            open_redis_store(target, limits, namespace=namespace, **options) as a,
            open_redis_store(target, limits, namespace=namespace, **options) as b,
        ):
            yield a, b

    return open_two


async def _redis(url: str, *command: str | bytes | int) -> object:
    """One command on a throwaway connection (to look at what the store wrote)."""

    def run() -> object:
        client = redis.Redis.from_url(url)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    return await trio.to_thread.run_sync(run)


class _Wakes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self._changed = trio.Event()

    def __call__(self, agent_id: str, instance_id: str | None) -> None:
        self.seen.append((agent_id, instance_id))
        self._changed.set()

    async def wait_for(self, wake: tuple[str, str | None]) -> None:
        while wake not in self.seen:
            self._changed = trio.Event()
            await self._changed.wait()


async def test_an_enqueue_on_one_server_wakes_watch_on_the_other(two_servers: TwoServers) -> None:
    with trio.fail_after(5):
        async with (
            two_servers() as (a, b),
            trio.open_nursery() as nursery,
        ):
            on_a, on_b = _Wakes(), _Wakes()
            await nursery.start(a.watch, on_a)
            await nursery.start(b.watch, on_b)
            await enqueue_one(a, _message(1))
            await enqueue_one(a, _message(2, instance="i7"))
            await on_b.wait_for(("b", "i7"))
            assert ("b", None) in on_b.seen
            # A server is not told about its own enqueues: its router rings its sessions.
            await enqueue_one(b, _message(3, target="c"))
            await on_a.wait_for(("c", None))
            assert on_a.seen == [("c", None)]
            nursery.cancel_scope.cancel()


async def test_a_dead_servers_deliveries_are_reclaimed_by_another(two_servers: TwoServers) -> None:
    with trio.fail_after(5):
        async with (
            two_servers(lease_seconds=SHORT_LEASE) as (a, b),
            trio.open_nursery() as nursery,
        ):
            await enqueue_one(a, _message(1))
            [lost] = await a.claim("b", "i1", "s1", 5, NOW)
            on_b = _Wakes()
            await nursery.start(b.watch, on_b)
            a._simulate_crash()
            await on_b.wait_for(("b", None))  # b's lease renewal found a's lease expired
            [again] = await b.claim("b", "i2", "s2", 5, NOW)
            assert (again.message.message_id, again.message.attempt) == ("m1", 2)
            assert again.message.envelope_json == lost.message.envelope_json
            assert b.statistics()["handed_back"] == 1
            nursery.cancel_scope.cancel()


async def test_after_a_reclaim_the_old_owner_can_neither_ack_nor_dead_letter_it(
    redis_server: RedisServer, namespace: str, two_servers: TwoServers
) -> None:
    # A server whose lease expired (paused, not dead) comes back and answers for
    # deliveries another server reclaimed and is delivering now: nothing happens.
    with trio.fail_after(5):
        async with (
            two_servers(lease_seconds=SHORT_LEASE) as (a, b),
            trio.open_nursery() as nursery,
        ):
            await enqueue_one(a, _message(1))
            await enqueue_one(a, _message(2))
            lost = await a.claim("b", "i1", "s1", 5, NOW)
            on_b = _Wakes()
            await nursery.start(b.watch, on_b)
            a._simulate_crash()
            await on_b.wait_for(("b", None))
            again = await b.claim("b", "i2", "s2", 5, NOW)
            assert sorted(d.message.message_id for d in again) == ["m1", "m2"]
            await ack_one(a, lost[0].delivery_id)
            assert await a.dead_letter(lost[1].delivery_id, "nacked", NOW) is None
            assert await b.dead_letters() == []
            stream = f"{namespace}:queue:b"
            assert await _redis(redis_server.url, "XLEN", stream) == 2  # still b's to finish
            assert [d is not None for d in await b.ack_many([d.delivery_id for d in again])] == [
                True,
                True,
            ]
            assert await _redis(redis_server.url, "XLEN", stream) == 0
            nursery.cancel_scope.cancel()


async def test_a_live_servers_slow_delivery_is_not_taken(two_servers: TwoServers) -> None:
    with trio.fail_after(5):
        async with (
            two_servers(lease_seconds=SHORT_LEASE) as (a, b),
        ):
            await enqueue_one(a, _message(1))
            [slow] = await a.claim("b", "i1", "s1", 5, NOW)
            await trio.sleep(4 * SHORT_LEASE)  # several renewals by both servers
            assert await b.claim("b", "i2", "s2", 5, NOW) == []
            assert b.statistics()["handed_back"] == 0
            assert await ack_one(a, slow.delivery_id) == slow


async def test_acknowledged_messages_are_deleted_and_the_stream_with_its_session(
    redis_server: RedisServer, namespace: str
) -> None:
    stream = f"{namespace}:queue:b"
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            for n in range(3):
                await enqueue_one(store, _message(n))
            deliveries = await store.claim("b", "i1", "s1", 5, NOW)
            assert await _redis(redis_server.url, "XLEN", stream) == 3
            await ack_one(store, deliveries[0].delivery_id)
            await ack_one(store, deliveries[1].delivery_id)
            assert await _redis(redis_server.url, "XLEN", stream) == 1
            await ack_one(store, deliveries[2].delivery_id)
            # Empty, kept while the session lasts: the next enqueue appends in one command.
            assert await _redis(redis_server.url, "XLEN", stream) == 0
            await enqueue_one(store, _message(3, instance="i1"))  # its reply queue, too
            [reply] = await store.claim("b", "i1", "s1", 5, NOW)
            await ack_one(store, reply.delivery_id)
            assert await store.release_session("s1", 3, NOW) == 0
            for q in ("b", "b/i1"):  # the session ended: its emptied streams are deleted
                assert await _redis(redis_server.url, "EXISTS", f"{namespace}:queue:{q}") == 0


async def test_a_correlation_is_taken_once_across_servers(two_servers: TwoServers) -> None:
    with trio.fail_after(5):
        async with (
            two_servers() as (a, b),
        ):
            await put_correlation(a, _correlation())
            outcomes: list[str] = []

            async def take(store: RedisStore) -> None:
                try:
                    await take_correlation(store, "c1", "b", NOW)
                    outcomes.append("taken")
                except CorrelationRefused as exc:
                    outcomes.append(exc.reason)

            async with trio.open_nursery() as nursery:
                for store in (a, b, a, b):
                    nursery.start_soon(take, store)
            assert sorted(outcomes) == ["taken"] + ["unknown_correlation_id"] * 3


async def test_two_servers_replying_to_one_request_store_one_reply(two_servers: TwoServers) -> None:
    with trio.fail_after(5):
        async with (
            two_servers() as (a, b),
        ):
            await put_correlation(a, _correlation())
            outcomes: list[str] = []

            async def reply(store: RedisStore, n: int) -> None:
                item = EnqueueItem(
                    message=QueuedMessage(
                        message_id=f"r{n}",
                        target_id="a",
                        instance_id="a1",
                        envelope_json=b"{}",
                        enqueued_at=NOW,
                    ),
                    audit=AuditDraft(time=NOW, decision="ALLOWED", message_id=f"r{n}"),
                    answers="c1",
                )
                [written] = await store.enqueue_many([item])
                outcomes.append(
                    written.reason if isinstance(written, CorrelationRefused) else "stored"
                )

            async with trio.open_nursery() as nursery:
                for n, store in enumerate((a, b, a, b)):
                    nursery.start_soon(reply, store, n)
            assert sorted(outcomes) == ["stored"] + ["unknown_correlation_id"] * 3
            assert len(await a.claim("a", "a1", "s", 10, NOW)) == 1


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    with running_redis(appendonly=True) as server:
        yield server


async def test_a_redis_crash_loses_no_acknowledged_message(
    persistent_redis: RedisServer, two_servers: TwoServers
) -> None:
    server = persistent_redis
    with trio.fail_after(20):
        async with (
            two_servers(url=server.url, lease_seconds=2.0) as (a, b),
            trio.open_nursery() as nursery,
        ):
            on_b = _Wakes()
            await nursery.start(b.watch, on_b)
            accepted: list[str] = []

            async def send(first: int, count: int) -> None:
                for n in range(first, first + count):
                    try:
                        await enqueue_one(a, _message(n, target=f"t{n % 3}"))
                    except StoreUnavailableError:
                        continue  # not acknowledged: the sender would try again
                    accepted.append(f"m{n}")

            await send(0, 3)
            await trio.to_thread.run_sync(lambda: server.stop(kill=True))  # a crash, mid-stream
            async with trio.open_nursery() as senders:
                senders.start_soon(send, 3, 3)  # waits for Redis to come back
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(server.start)
            assert len(accepted) == 6
            claimed = [
                d.message.message_id
                for agent in ("t0", "t1", "t2")
                for d in await b.claim(agent, "i1", "s1", 10, NOW)
            ]
            assert sorted(claimed) == sorted(accepted)
            # The subscription came back too (scripts were reloaded on the way: by
            # whichever store met NOSCRIPT first, as the script cache is the server's).
            await enqueue_one(a, _message(99, target="z"))
            await on_b.wait_for(("z", None))
            reloads = a.statistics()["script_reloads"] + b.statistics()["script_reloads"]
            assert reloads >= 1
            nursery.cancel_scope.cancel()


async def test_an_argument_redis_cannot_take_fails_its_operation_alone(
    redis_server: RedisServer, namespace: str
) -> None:
    results: dict[str, object] = {}

    async def outcome(name: str, call: Any) -> None:
        try:
            results[name] = await call()
        except Exception as exc:
            results[name] = type(exc)

    with trio.fail_after(10):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            client = store._client
            async with trio.open_nursery() as nursery:  # both in one pipeline
                nursery.start_soon(outcome, "bad", lambda: client.call("test", ("SET", "k", True)))
                nursery.start_soon(outcome, "good", lambda: store.queue_depth("b"))
            assert results == {"bad": TypeError, "good": 0}
            await enqueue_one(store, _message(1))  # the lane goes on
            assert await store.queue_depth("b") == 1


@pytest.fixture
def tls_redis() -> Iterator[RedisServer]:
    with running_redis(tls=True) as server:
        yield server


async def test_the_store_works_over_tls_and_reconnects_after_a_restart(
    tls_redis: RedisServer,
) -> None:
    """rediss://: the lane drives redis-py's TLS socket from Trio, through a restart too."""
    with trio.fail_after(20):
        async with open_redis_store(tls_redis.url, LIMITS) as store:
            for n in range(5):
                await enqueue_one(store, _message(n))
            deliveries = await store.claim("b", "i1", "s1", 10, NOW)
            assert len(deliveries) == 5
            await store.ack_many([d.delivery_id for d in deliveries[:2]])
            trips = store.statistics()["round_trips"]
            await store.queue_depth("b")  # an idle TLS connection is reused, not replaced
            assert store.statistics()["round_trips"] == trips + 1
            await trio.to_thread.run_sync(tls_redis.restart)  # nothing persisted: empty
            await enqueue_one(store, _message(9))  # the dropped connection is replaced first
            [delivery] = await store.claim("b", "i1", "s2", 10, NOW)
            assert delivery.message.message_id == "m9"


async def test_servers_sharing_a_store_keep_one_audit_chain(two_servers: TwoServers) -> None:
    key = b"k" * 32
    limits = msgspec.structs.replace(LIMITS, max_queue_length=100)
    with trio.fail_after(5):
        async with (
            two_servers(limits=limits, audit_key=key) as (a, b),
        ):

            async def send(store: RedisStore, n: int) -> None:
                draft = AuditDraft(time=NOW + n, decision="ALLOWED", message_id=f"m{n}")
                if n % 3:
                    await enqueue_one(store, _message(n), draft)
                else:
                    await store.append_audit([draft, draft])

            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(send, a if n % 2 else b, n)
            records = await b.audit_records(limit=100)
            assert [r.seq for r in records] == list(range(1, 41))
            assert verify(records, key).ok
            assert len({r.message_id for r in records}) == 30
            assert await a.queue_depth("b") == 20


async def test_an_unreachable_redis_is_a_clear_error_without_the_password() -> None:
    with trio.fail_after(5), pytest.raises(StoreUnavailableError) as raised:
        async with open_redis_store(
            "redis://user:hunter2@127.0.0.1:1/0", LIMITS, reconnect_timeout=0.1
        ):
            pass  # pragma: no cover
    assert "127.0.0.1:1" in str(raised.value)
    assert "hunter2" not in str(raised.value)


async def test_one_round_trip_per_enqueue_claim_and_ack_batch(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            before = store.statistics()
            await enqueue_one(store, _message(1))
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            await ack_one(store, delivery.delivery_id)
            after = store.statistics()
            assert after["round_trips"] - before["round_trips"] == 3
            assert after["commands"] - before["commands"] == 3
            assert after["round_trips_per_sent"] == 1.0
            assert after["round_trips_per_delivered"] == 2.0

            # Concurrent operations share one pipeline: a round trip serves many messages.
            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(enqueue_one, store, _message(n, target="c"))
                    nursery.start_soon(enqueue_one, store, _message(n, target="d"))
            deliveries = await store.claim("c", "i1", "s1", 5, NOW)
            deliveries += await store.claim("d", "i1", "s1", 5, NOW)
            await store.ack_many([d.delivery_id for d in deliveries])
            stats = store.statistics()
            assert stats["round_trips"] - after["round_trips"] <= 4
            # The acks of a batch are one script call, whatever their streams.
            assert stats["commands"] - after["commands"] == 8 + 2 + 1
            assert stats["round_trips_per_sent"] < 0.5
            assert stats["round_trips_per_delivered"] < 1.0


async def test_redis_commands_per_one_way_message(
    redis_server: RedisServer, namespace: str
) -> None:
    """Commands Redis runs (scripts included) for one message sent, claimed and acked."""

    async def calls() -> int:
        info = await _redis(redis_server.url, "INFO", "commandstats")
        assert isinstance(info, dict)
        return sum(
            int(v["calls"])
            for k, v in info.items()
            if k.startswith("cmdstat_") and not k.startswith(("cmdstat_client", "cmdstat_hello"))
        )

    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await enqueue_one(store, _message(0))
            await store.claim("b", "i1", "s1", 5, NOW)  # kept in flight: the stream stays
            start = await calls()
            await enqueue_one(store, _message(1))
            sent = await calls() - start - 1  # minus the INFO call
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            await ack_one(store, delivery.delivery_id)
            delivered = await calls() - start - sent - 2
    # enqueue (a routed message carries its audit record): EVALSHA + HGET, XADD
    # (NOMKSTREAM: the stream exists), HINCRBY, SCARD (PUBLISH with other servers); for
    # the record MGET (turn, head), RPUSH, SET (head)
    assert sent == 5 + 3
    # claim (per batch): EVALSHA + ZRANGEBYSCORE, HMGET (both queues' counts: the empty
    # reply queue is not looked at), LPOP, XREADGROUP, HDEL, SADD; ack (per stream and
    # batch): EVALSHA + XACK, XDEL, and an XPENDING per entry (still this consumer's? a
    # reclaimed entry is not acked)
    assert delivered == 7 + 4


async def test_scripts_are_reloaded_after_a_script_flush(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await _redis(redis_server.url, "SCRIPT", "FLUSH")
            await enqueue_one(store, _message(1))
            assert await store.queue_depth("b") == 1
            assert store.statistics()["script_reloads"] == 1


async def test_batch_scripts_are_reloaded_after_a_script_flush(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await _redis(redis_server.url, "SCRIPT", "FLUSH")
            [record] = await store.enqueue_many([_item(1)])
            assert record is not None
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            await _redis(redis_server.url, "SCRIPT", "FLUSH")
            assert await store.ack_many([delivery.delivery_id]) == [delivery]
            assert await _redis(redis_server.url, "XLEN", f"{namespace}:queue:b") == 0
            assert store.statistics()["script_reloads"] == 2


async def test_closing_a_server_hands_back_unreleased_deliveries(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as b:
            async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as a:
                await enqueue_one(a, _message(1))
                assert len(await a.claim("b", "i1", "s1", 5, NOW)) == 1
            [again] = await b.claim("b", "i2", "s2", 5, NOW)
            assert again.message.attempt == 2


async def test_hand_backs_past_release_max_attempts_are_dead_lettered(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as b:
            async with open_redis_store(
                redis_server.url, LIMITS, namespace=namespace, release_max_attempts=1
            ) as a:
                await enqueue_one(a, _message(1))
                await enqueue_one(a, _message(2))
                await a.claim("b", "i1", "s1", 1, NOW)  # m1, attempt 1 of 1
            [dead] = await b.dead_letters("b")
            assert (dead.message.message_id, dead.reason) == ("m1", "session_lost")
            assert [d.message.message_id for d in await b.claim("b", "i2", "s2", 5, NOW)] == ["m2"]


# -- batches ---------------------------------------------------------------------------


async def _command_calls(url: str, *names: str) -> dict[str, int]:
    """Calls Redis has run of each command (scripts' commands included), from INFO."""
    info = await _redis(url, "INFO", "commandstats")
    assert isinstance(info, dict)
    return {name: int(info.get(f"cmdstat_{name}", {"calls": 0})["calls"]) for name in names}


def _spent(before: dict[str, object], after: dict[str, object]) -> tuple[object, ...]:
    keys = ("round_trips", "commands", "batches")
    return tuple(after[k] - before[k] for k in keys)  # type: ignore[operator]


async def test_a_batch_is_one_script_call_in_one_round_trip(
    redis_server: RedisServer, namespace: str
) -> None:
    limits = msgspec.structs.replace(LIMITS, max_queue_length=100)
    names = ("evalsha", "xadd", "hset", "rpush", "xack", "xdel")
    url = redis_server.url
    with trio.fail_after(5):
        # A long lease: no renewal (an EVALSHA of its own) runs while counting.
        async with open_redis_store(url, limits, namespace=namespace, lease_seconds=60) as store:
            items = [
                _item(n, instance="i1" if n % 3 else None, request=n % 2 == 0) for n in range(32)
            ]
            stats, calls = store.statistics(), await _command_calls(url, *names)
            records = await store.enqueue_many(items)
            stats_after, calls_after = store.statistics(), await _command_calls(url, *names)
            assert all(r is not None for r in records)
            assert _spent(stats, stats_after) == (1, 1, 1)
            ran = {name: calls_after[name] - calls[name] for name in names}
            # 32 + 2: on each of the two new streams, the first XADD (NOMKSTREAM) finds none
            assert ran == {"evalsha": 1, "xadd": 34, "hset": 16, "rpush": 1, "xack": 0, "xdel": 0}
            pttl = await _redis(url, "PTTL", f"{namespace}:corr:c0")
            assert isinstance(pttl, int) and 0 < pttl <= CORRELATION_GRACE_MS

            deliveries = await store.claim("b", "i1", "s1", 32, NOW)  # from both streams
            stats, calls = store.statistics(), await _command_calls(url, *names)
            assert await store.ack_many([d.delivery_id for d in deliveries]) == deliveries
            stats_after, calls_after = store.statistics(), await _command_calls(url, *names)
            assert _spent(stats, stats_after) == (1, 1, 1)
            ran = {name: calls_after[name] - calls[name] for name in names}
            assert ran == {"evalsha": 1, "xadd": 0, "hset": 0, "rpush": 0, "xack": 2, "xdel": 2}
            for q in ("b", "b/i1"):  # emptied, kept until the session ends, as by ack
                assert await _redis(url, "XLEN", f"{namespace}:queue:{q}") == 0


async def test_a_queue_that_refused_lately_is_predicted_full(
    redis_server: RedisServer, namespace: str
) -> None:
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            for n in range(LIMITS.max_queue_length):
                await enqueue_one(store, _message(n))
            filled = LIMITS.max_queue_length  # records, one per message
            # Unknown to be full: the first try finds out, the second writes.
            before = store.statistics()
            outcome = await store.enqueue_many([_item(10), _item(11, target="c")])
            assert [r is not None for r in outcome] == [False, True]
            assert _spent(before, store.statistics())[0] == 2
            # Known to be full: one try.
            before = store.statistics()
            outcome = await store.enqueue_many([_item(12), _item(13, target="c")])
            assert [r is not None for r in outcome] == [False, True]
            assert _spent(before, store.statistics())[0] == 1
            # Drained meanwhile: the prediction is wrong, the item is written all the same.
            [delivery] = await store.claim("b", "i1", "s1", 1, NOW)
            await ack_one(store, delivery.delivery_id)
            before = store.statistics()
            outcome = await store.enqueue_many([_item(14), _item(15)])
            assert [r is not None for r in outcome] == [True, False]
            assert _spent(before, store.statistics())[0] == 2
            records = await store.audit_records()
            assert [r.message_id for r in records[filled:]] == ["m11", "m13", "m14"]
            assert verify(records, None).ok


async def test_servers_writing_batches_together_keep_one_audit_chain(
    two_servers: TwoServers,
) -> None:
    key = b"k" * 32
    limits = msgspec.structs.replace(LIMITS, max_queue_length=40)
    accepted: list[str] = []
    with trio.fail_after(10):
        async with (
            two_servers(limits=limits, audit_key=key) as (a, b),
        ):

            async def send(store: RedisStore, k: int) -> None:
                if k % 5 == 4:
                    draft = AuditDraft(time=NOW, decision="AUTHZ_DENIED", message_id=f"d{k}")
                    await store.append_audit([draft])
                    accepted.append(f"d{k}")
                    return
                # Queue "b" fills up halfway: later batches have refused items.
                items = [_item(100 * k + n, target="bc"[n % 2], request=n == 0) for n in range(6)]
                for item, record in zip(items, await store.enqueue_many(items), strict=True):
                    if record is not None:
                        assert record.message_id == item.message.message_id
                        accepted.append(record.message_id)

            async with trio.open_nursery() as nursery:
                for k in range(30):
                    nursery.start_soon(send, a if k % 2 else b, k)
            records = await b.audit_records(limit=1000)
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            assert verify(records, key).ok
            assert sorted(r.message_id for r in records) == sorted(accepted)
            assert await a.queue_depth("b") == 40  # 24 batches x 3 offered: full
            assert await a.queue_depth("c") == 40
            assert len(records) == 80 + 6  # 144 items offered, 64 refused; 6 appended


async def test_a_session_released_during_an_outage_is_handed_back_once_redis_returns(
    persistent_redis: RedisServer,
) -> None:
    server = persistent_redis
    with trio.fail_after(20):
        async with (
            open_redis_store(
                server.url, LIMITS, lease_seconds=SHORT_LEASE, reconnect_timeout=0.3
            ) as a,
            trio.open_nursery() as nursery,
        ):
            await enqueue_one(a, _message(1))
            [held] = await a.claim("b", "i1", "s1", 5, NOW)
            on_a = _Wakes()
            await nursery.start(a.watch, on_a)
            await trio.to_thread.run_sync(lambda: server.stop(kill=True))
            with pytest.raises(StoreUnavailableError):  # the session ends while Redis is away
                await a.release_session("s1", 5, NOW)
            await trio.to_thread.run_sync(server.start)
            # Its own sessions are rung: its own notifications never come back to it.
            await on_a.wait_for(("b", None))
            with trio.fail_after(10):
                # Polls Redis, the shared thing under test: no local event to wait on.
                while not (again := await a.claim("b", "i2", "s2", 5, NOW)):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert [(d.message.message_id, d.message.attempt) for d in again] == [("m1", 2)]
            assert again[0].message.envelope_json == held.message.envelope_json
            nursery.cancel_scope.cancel()


async def test_after_a_redis_outage_longer_than_a_lease_live_servers_keep_their_deliveries(
    persistent_redis: RedisServer, two_servers: TwoServers
) -> None:
    server = persistent_redis
    with trio.fail_after(20):
        async with (
            two_servers(url=server.url, lease_seconds=SHORT_LEASE) as (a, b),
        ):
            await enqueue_one(a, _message(1))
            await enqueue_one(a, _message(2, target="c"))
            [on_a] = await a.claim("b", "i1", "s1", 5, NOW)
            [on_b] = await b.claim("c", "i1", "s2", 5, NOW)
            await trio.to_thread.run_sync(lambda: server.stop(kill=True))
            await trio.sleep(4 * SHORT_LEASE)  # every lease runs out meanwhile
            await trio.to_thread.run_sync(server.start)
            await trio.sleep(6 * SHORT_LEASE)  # both renew, then beat again
            assert (a.statistics()["handed_back"], b.statistics()["handed_back"]) == (0, 0)
            assert await a.claim("b", "i9", "s9", 5, NOW) == []  # nobody took them over
            assert await ack_one(a, on_a.delivery_id) == on_a
            assert await ack_one(b, on_b.delivery_id) == on_b


async def test_redis_without_persistence_is_said_loudly_or_refused(
    redis_server: RedisServer, persistent_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # redis_server runs with appendonly no: a crash there loses what was accepted.
    with trio.fail_after(10):
        async with open_redis_store(redis_server.url, LIMITS, namespace=secrets.token_hex(4)):
            pass
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("appendonly is off" in m and "require_durable" in m for m in warned), warned
        with pytest.raises(StoreUnavailableError, match="require_durable"):
            async with open_redis_store(redis_server.url, LIMITS, require_durable=True):
                raise AssertionError("started on a Redis that loses accepted messages")
        # appendonly yes, appendfsync always: durable, and says so at INFO only.
        caplog.clear()
        async with open_redis_store(persistent_redis.url, LIMITS, require_durable=True):
            pass
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_each_persistence_setting_says_what_a_redis_crash_loses() -> None:
    assert persistence_verdict({"appendonly": "yes", "appendfsync": "always"})[0]
    durable, meaning = persistence_verdict({"appendonly": "yes", "appendfsync": "everysec"})
    assert durable and "last second" in meaning
    assert not persistence_verdict({"appendonly": "yes", "appendfsync": "no"})[0]
    assert not persistence_verdict({"appendonly": "no", "appendfsync": "always"})[0]


async def test_an_operation_abandoned_while_redis_is_away_never_runs(
    persistent_redis: RedisServer,
) -> None:
    server = persistent_redis
    with trio.fail_after(20):
        async with open_redis_store(server.url, LIMITS) as a:
            await trio.to_thread.run_sync(lambda: server.stop(kill=True))
            with trio.move_on_after(0.5) as waited:  # the sender gives up: not accepted
                await enqueue_one(a, _message(1))
            assert waited.cancelled_caught
            await trio.to_thread.run_sync(server.start)
            await enqueue_one(a, _message(2))  # Redis is back: the link has reconnected
            assert [d.message.message_id for d in await a.claim("b", "i", "s", 5, NOW)] == ["m2"]


async def test_servers_sharing_a_chain_must_share_its_key(
    redis_server: RedisServer, namespace: str
) -> None:
    first_key, other_key = b"k" * 32, b"o" * 32
    async with open_redis_store(
        redis_server.url, LIMITS, namespace=namespace, audit_key=first_key
    ) as first:
        await first.append_audit([AuditDraft(time=NOW, decision="ALLOWED")])
        async with open_redis_store(
            redis_server.url, LIMITS, namespace=namespace, audit_key=first_key
        ) as same:
            [record] = await same.append_audit([AuditDraft(time=NOW, decision="ALLOWED")])
        with pytest.raises(ConfigError, match="not the one the audit chain in Redis is keyed"):
            async with open_redis_store(
                redis_server.url, LIMITS, namespace=namespace, audit_key=other_key
            ):
                pass
    assert verify(await _all_records(redis_server, namespace), first_key).ok
    assert record.seq == 2


async def _all_records(redis_server: RedisServer, namespace: str) -> list[AuditRecord]:
    async with open_redis_store(
        redis_server.url, LIMITS, namespace=namespace, audit_key=b"k" * 32
    ) as store:
        return await store.audit_records()


# -- one pipeline for what one routing step does -----------------------------------------


def _delivered(delivery: InFlight) -> AuditDraft:
    return AuditDraft(time=NOW + 1, decision="DELIVERED", message_id=delivery.message.message_id)


async def test_a_request_and_its_reply_route_in_three_round_trips(
    redis_server: RedisServer, namespace: str
) -> None:
    """The request with its target's claim: 1; the reply with its requester's claim: 1, and
    the ack of the request with its DELIVERED record: 1 more (it waits for the reply)."""
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            start = store.statistics()["round_trips"]
            request = _item(1, request=True)
            routed = await store.route_batch(
                [request], claims=[Claim(agent_id="b", instance_id="i1", session_id="s1", limit=5)]
            )
            [[delivery]] = routed.claimed
            assert store.statistics()["round_trips"] - start == 1

            reply = EnqueueItem(
                message=_message(2, target="a", instance="a1"),
                audit=AuditDraft(time=NOW + 2, decision="ALLOWED", message_id="m2"),
                answers="c1",
                acks=delivery.delivery_id,
            )
            claim = Claim(agent_id="a", instance_id="a1", session_id="s2", limit=5)
            routed = await store.route_batch([reply], acked=_delivered, claims=[claim], now=NOW + 2)
            assert store.statistics()["round_trips"] - start == 3
            [[answer]] = routed.claimed
            assert answer.message.message_id == "m2"
            assert routed.acked == [delivery]
            assert routed.ack_records is not None  # linked in the ack's round trip
            [record] = routed.ack_records
            assert (record.decision, record.message_id) == ("DELIVERED", "m1")
            chain = await store.audit_records()
            assert chain[-1] == record
            assert verify(chain, store.audit_key).ok
            assert await store.release_session("s1", 5, NOW) == 0  # the request was acked


async def test_an_ack_stands_when_its_records_cannot_be_written(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server holds the chain's turn past the wait: the ack is done, and its
    records are left to the caller (None), as the contract allows."""
    monkeypatch.setattr(redis_audit, "AUDIT_TIMEOUT", 0.3)
    with trio.fail_after(10):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await enqueue_one(store, _message(1))
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            await _redis(redis_server.url, "SET", f"{namespace}:audit-turn", "other", "PX", 5000)
            acked, records = await store.ack_recorded([delivery.delivery_id], _delivered)
            assert acked == [delivery]
            assert records is None
            await _redis(redis_server.url, "DEL", f"{namespace}:audit-turn")
            assert await store.release_session("s1", 5, NOW) == 0  # acked, not handed back
            assert not [r for r in await store.audit_records() if r.decision == "DELIVERED"]


async def test_operations_sent_along_a_call_that_never_went_out_end_unsent(
    store: Store,
) -> None:
    assert isinstance(store, RedisStore)
    client = store._client
    first, second = client.operation("x", ("PING",)), client.operation("x", ("PING",))
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.call_many([first, second])
    with trio.fail_after(1):  # ended, not waiting for ever
        for op in (first, second):
            with pytest.raises(StoreUnavailableError, match="not sent"):
                await client.outcome(op)
    after = client.operation("x", ("PING",))
    await client.call_many([after])
    assert await client.outcome(after) == [b"PONG"]


async def test_a_claim_that_fails_in_its_enqueues_pipeline_takes_nothing_and_loses_nothing(
    redis_server: RedisServer, namespace: str
) -> None:
    """The claim's script fails (its front list is not a list) after the enqueue wrote the
    message: the batch is stored, the claim takes nothing, and the message waits."""
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await _redis(redis_server.url, "SET", f"{namespace}:front:b", "not a list")
            claim = Claim(agent_id="b", instance_id="i1", session_id="s1", limit=5)
            routed = await store.route_batch([_item(1)], claims=[claim], now=NOW)
            [record] = routed.results
            assert isinstance(record, AuditRecord) and record.message_id == "m1"
            assert routed.claimed == [[]]
            await _redis(redis_server.url, "DEL", f"{namespace}:front:b")
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            assert delivery.message.message_id == "m1"


async def test_a_reply_whose_ack_fails_is_still_reported_stored(
    redis_server: RedisServer, namespace: str
) -> None:
    """The reply's enqueue and claim went through, its request's ack fails (Redis refuses
    XACK to this user): the reply is stored and claimed, and acks nothing."""
    with trio.fail_after(5):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            routed = await store.route_batch(
                [_item(1, request=True)],
                claims=[Claim(agent_id="b", instance_id="i1", session_id="s1", limit=5)],
            )
            [[delivery]] = routed.claimed
            reply = EnqueueItem(
                message=_message(2, target="a", instance="a1"),
                audit=AuditDraft(time=NOW + 2, decision="ALLOWED", message_id="m2"),
                answers="c1",
                acks=delivery.delivery_id,
            )
            claim = Claim(agent_id="a", instance_id="a1", session_id="s2", limit=5)
            await _redis(redis_server.url, "ACL", "SETUSER", "default", "-xack")
            try:
                routed = await store.route_batch([reply], acked=_delivered, claims=[claim], now=NOW)
            finally:
                await _redis(redis_server.url, "ACL", "SETUSER", "default", "+@all")
            [record] = routed.results
            assert isinstance(record, AuditRecord) and record.message_id == "m2"
            assert [d.message.message_id for d in routed.claimed[0]] == ["m2"]
            assert routed.acked == [] and routed.ack_records is None
            # Not acked: the request goes back with its session.
            assert await store.release_session("s1", 5, NOW) == 1


async def test_an_enqueue_cut_off_by_the_chains_turn_says_so_and_wrote_nothing(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server holds the chain's turn past ``AUDIT_TIMEOUT``: the enqueue fails as
    unavailable, saying the turn never came, and nothing of it is in the queue."""
    monkeypatch.setattr(redis_audit, "AUDIT_TIMEOUT", 0.3)
    monkeypatch.setattr(redis_batch, "AUDIT_TIMEOUT", 0.3)
    with trio.fail_after(10):
        async with open_redis_store(redis_server.url, LIMITS, namespace=namespace) as store:
            await _redis(redis_server.url, "SET", f"{namespace}:audit-turn", "other", "PX", 5000)
            with pytest.raises(StoreUnavailableError, match=r"no turn to append within 0\.3 s"):
                await enqueue_one(store, _message(1))
            await _redis(redis_server.url, "DEL", f"{namespace}:audit-turn")
            assert await store.queue_depth("b") == 0
            await enqueue_one(store, _message(2))  # the chain is this server's again
            assert await store.queue_depth("b") == 1


async def test_an_enqueue_cut_off_by_a_silent_redis_says_its_outcome_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stops answering (SIGSTOP) mid-enqueue: the error says Redis did not answer
    and that the write may have been applied, not that the chain gave no turn; once Redis
    answers again the write it had received is there and the store goes on."""
    monkeypatch.setattr(redis_audit, "AUDIT_TIMEOUT", 0.5)
    monkeypatch.setattr(redis_batch, "AUDIT_TIMEOUT", 0.5)
    with running_redis() as server, trio.fail_after(20):
        async with open_redis_store(server.url, LIMITS, namespace="silent") as store:
            await enqueue_one(store, _message(1))
            server.pause()
            try:
                with pytest.raises(StoreUnavailableError, match="Redis did not answer") as raised:
                    await enqueue_one(store, _message(2))
                assert "may or may not have been applied" in str(raised.value)
                assert "no turn" not in str(raised.value)
            finally:
                server.resume()
            await enqueue_one(store, _message(3))
            # The cut-off enqueue had reached Redis: it was applied (at-least-once).
            assert await store.queue_depth("b") == 3


async def test_a_claim_whose_reply_was_lost_is_delivered_by_the_next_claim() -> None:
    """Redis stops answering (SIGSTOP) while a routing batch's pipeline, with its claim for
    an idle session, is on its way: the call fails, but Redis runs it once it resumes, so
    the message is pending under the session's consumer with nobody told. The session's
    next claim delivers it, instead of leaving it stuck until the session ends."""
    with running_redis() as server, trio.fail_after(30):
        async with open_redis_store(
            server.url, LIMITS, namespace="lost", socket_timeout=0.5
        ) as store:
            claim = Claim(agent_id="b", instance_id="i1", session_id="s1", limit=5)
            assert await store.claim("b", "i1", "s1", 5, NOW) == []  # the consumer exists
            await _unanswered(server, store.route_batch([_item(1)], claims=[claim], now=NOW))
            await _until_pending(server.url, "lost:queue:b", 1)  # Redis ran the claim
            [delivery] = await store.claim("b", "i1", "s1", 5, NOW)
            assert delivery.message.message_id == "m1"
            assert delivery.message.attempt == 1
            assert await store.claim("b", "i1", "s1", 5, NOW) == []  # once
            assert await store.ack_many([delivery.delivery_id]) == [delivery]
            assert await store.release_session("s1", 5, NOW) == 0  # nothing else pending


async def test_a_claim_that_failed_after_it_ran_is_delivered_by_the_next_one() -> None:
    """The same for a session's own claim: it fails unanswered, Redis runs it, and the
    next claim of that session delivers what it took."""
    with running_redis() as server, trio.fail_after(30):
        async with open_redis_store(
            server.url, LIMITS, namespace="lost", socket_timeout=0.5
        ) as store:
            await enqueue_one(store, _message(1))
            await enqueue_one(store, _message(2))
            await _unanswered(server, store.claim("b", "i1", "s1", 5, NOW))
            await _until_pending(server.url, "lost:queue:b", 2)
            [first] = await store.claim("b", "i1", "s1", 1, NOW)  # within the room it has
            [second] = await store.claim("b", "i1", "s1", 5, NOW)
            assert {first.message.message_id, second.message.message_id} == {"m1", "m2"}
            assert await store.claim("b", "i1", "s1", 5, NOW) == []
            assert await store.release_session("s1", 5, NOW) == 2  # both handed back


async def test_what_a_lost_claim_left_is_dead_lettered_once_too_old() -> None:
    """The next claim comes after ``max_message_age``: what the lost claim took is
    dead-lettered as expired, as a claim would, not delivered."""
    with running_redis() as server, trio.fail_after(30):
        async with open_redis_store(
            server.url, LIMITS, namespace="lost", socket_timeout=0.5
        ) as store:
            await enqueue_one(store, _message(1))
            await _unanswered(server, store.claim("b", "i1", "s1", 5, NOW))
            await _until_pending(server.url, "lost:queue:b", 1)
            later = NOW + LIMITS.max_message_age + 1
            assert await store.claim("b", "i1", "s1", 5, later) == []
            [dead] = await store.dead_letters("b")
            assert (dead.message.message_id, dead.reason) == ("m1", "expired")
            assert await store.release_session("s1", 5, later) == 0


async def _unanswered(server: RedisServer, call: Awaitable[object]) -> None:
    """Make ``call`` with Redis stopped (SIGSTOP): it fails unanswered on the socket
    timeout, and Redis runs what it received once it resumes."""
    server.pause()
    try:
        with pytest.raises(StoreUnavailableError):
            await call
    finally:
        server.resume()


async def _until_pending(url: str, stream: str, count: int) -> None:
    """Wait until ``stream`` has ``count`` entries pending (Redis ran what it received
    while it was stopped)."""
    while True:
        summary: Any = await _redis(url, "XPENDING", stream, "mas")
        if summary["pending"] >= count:
            return
        await trio.sleep(0.05)  # another process's progress: polled, bounded by the test
