"""What "accepted" means on Redis: ``WAIT`` and ``WAITAOF`` before an enqueue is answered.

Real servers: a primary and a replica (``--replicaof``) of Debian's redis-server 7.0
for ``WAIT``; Valkey 8 (Redis 7.2-compatible, from the test extra) for ``WAITAOF``,
which 7.0 lacks. A stopped replica is a SIGSTOP: it keeps its connection and
acknowledges nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator

import msgspec
import pytest
import redis
import trio
from redis_server import RedisServer, running_redis, running_replica, waitaof_server
from store_contract import LIMITS, NOW, _item, ack_one

from mas.errors import ConfigError
from mas.store.base import STORE_NOT_DURABLE, CorrelationRefused
from mas.store.redis import open_redis_store
from mas.store.redis.accept import AcceptWait

TIMEOUT = 0.5  # seconds an accept waits for its acknowledgements in these tests
FSYNC_REPLICA_TIMEOUT = 2.5  # the same for WAITAOF with replicas (see its test)
ROOMY = msgspec.structs.replace(LIMITS, max_queue_length=100)
# An envelope big enough that a few seconds of them overflow the socket buffers between
# a stopped replica and its primary (the rest waits in the primary's memory).
BULK = b'{"pad": "' + b"x" * 256_000 + b'"}'


@pytest.fixture(scope="module")
def primary() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def replica(primary: RedisServer) -> Iterator[RedisServer]:
    with running_replica(primary) as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"t{secrets.token_hex(6)}"


def _xlen(server: RedisServer, key: str) -> int:
    client = redis.Redis(port=server.port, socket_timeout=5)
    try:
        return int(client.xlen(key))
    finally:
        client.close()


async def test_an_accepted_batch_is_on_the_replica_when_the_sender_is_answered(
    primary: RedisServer, replica: RedisServer, namespace: str
) -> None:
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    with trio.fail_after(10):
        async with open_redis_store(
            primary.url, ROOMY, namespace=namespace, accept=accept
        ) as store:
            records = await store.enqueue_many([_item(n) for n in range(20)])
            assert all(r is not None and not isinstance(r, Exception) for r in records)
            # Read on the replica at once: WAIT returned only once it had every write.
            assert _xlen(replica, f"{namespace}:queue:b") == 20
            stats = store.statistics()
            assert (stats["accept_waits"], stats["accept_refusals"]) == (1, 0)


async def test_one_wait_serves_every_enqueue_of_a_pipeline(
    primary: RedisServer, replica: RedisServer, namespace: str
) -> None:
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    with trio.fail_after(10):
        async with open_redis_store(
            primary.url, LIMITS, namespace=namespace, accept=accept, lease_seconds=60
        ) as store:
            before = store.statistics()["accept_waits"]
            async with trio.open_nursery() as nursery:  # sent together: one pipeline
                for n in range(8):
                    nursery.start_soon(store.enqueue_many, [_item(n, target=f"t{n}")])
            assert store.statistics()["accept_waits"] - before == 1
            # Claims and acks do not wait.
            [delivery] = await store.claim("t0", "i1", "s1", 5, NOW)
            await ack_one(store, delivery.delivery_id)
            assert store.statistics()["accept_waits"] - before == 1


async def test_a_stopped_replica_refuses_accepts_after_the_timeout_then_recovers(
    primary: RedisServer, replica: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    async with open_redis_store(primary.url, LIMITS, namespace=namespace, accept=accept) as store:
        replica.pause()
        try:
            with trio.fail_after(TIMEOUT + 3):  # refused after the timeout, not hung
                started = trio.current_time()
                outcome = await store.enqueue_many([_item(1), _item(2)])
                waited = trio.current_time() - started
            assert [getattr(r, "reason", r) for r in outcome] == [STORE_NOT_DURABLE] * 2
            assert all(isinstance(r, CorrelationRefused) for r in outcome)
            assert waited >= TIMEOUT * 0.9
            assert any("store_not_durable" in r.getMessage() for r in caplog.records)
            # Written all the same (only not acknowledged): they may still be delivered.
            claimed = await store.claim("b", "i1", "s1", 5, NOW)
            assert [d.message.message_id for d in claimed] == ["m1", "m2"]
        finally:
            replica.resume()
        with trio.fail_after(10):  # the replica catches up: accepts succeed again
            while True:
                [record] = await store.enqueue_many([_item(3)])
                if not isinstance(record, CorrelationRefused):
                    break
            assert record is not None
        assert _xlen(replica, f"{namespace}:queue:b") >= 1


async def test_accept_fsync_is_refused_at_start_on_redis_7_0(primary: RedisServer) -> None:
    version = primary.info("server")["redis_version"]
    assert version.startswith("7.0"), version  # Debian 12's; this test is about it
    with trio.fail_after(10), pytest.raises(ConfigError, match=r"7\.0.*WAITAOF.*7\.2"):
        async with open_redis_store(primary.url, LIMITS, accept=AcceptWait(fsync=True)):
            raise AssertionError("started with accept_fsync on a Redis without WAITAOF")


async def test_accept_replicas_on_a_replica_is_refused_at_start(replica: RedisServer) -> None:
    with trio.fail_after(10), pytest.raises(ConfigError, match="is a replica"):
        async with open_redis_store(replica.url, LIMITS, accept=AcceptWait(replicas=1)):
            raise AssertionError("started on a replica")


async def test_too_few_connected_replicas_is_warned_at_start(
    primary: RedisServer, replica: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with open_redis_store(primary.url, LIMITS, accept=AcceptWait(replicas=2)):
            pass
    assert any("1 connected replica(s)" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING for r in caplog.records)


# -- WAITAOF (Valkey 8: Redis 7.2-compatible) ------------------------------------------


@pytest.fixture(scope="module")
def aof_primary() -> Iterator[RedisServer]:
    with running_redis(appendonly=True, executable=waitaof_server()) as server:
        yield server


async def test_accept_fsync_waits_for_the_local_fsync(
    aof_primary: RedisServer, namespace: str
) -> None:
    with trio.fail_after(10):
        async with open_redis_store(
            aof_primary.url, LIMITS, namespace=namespace, accept=AcceptWait(fsync=True)
        ) as store:
            records = await store.enqueue_many([_item(n) for n in range(5)])
            assert all(r is not None and not isinstance(r, Exception) for r in records)
            stats = store.statistics()
            assert (stats["accept_waits"], stats["accept_refusals"]) == (1, 0)


async def test_accept_fsync_with_replicas_refuses_while_the_replica_is_stopped(
    aof_primary: RedisServer, namespace: str
) -> None:
    # A replica reports its fsync on its once-a-second ACK when a write and its
    # WAITAOF arrive together (Valkey 8, measured): about 1 s per batch, so this
    # combination needs a timeout above a second (README, "what survives").
    timeout = FSYNC_REPLICA_TIMEOUT
    accept = AcceptWait(replicas=1, fsync=True, timeout=timeout)
    with running_replica(aof_primary) as aof_replica:
        async with open_redis_store(
            aof_primary.url, LIMITS, namespace=namespace, accept=accept
        ) as store:
            with trio.fail_after(10):
                [record] = await store.enqueue_many([_item(1)])
                assert record is not None and not isinstance(record, Exception)
            aof_replica.pause()
            try:
                with trio.fail_after(timeout + 3):
                    [record] = await store.enqueue_many([_item(2)])
                assert isinstance(record, CorrelationRefused)
                assert record.reason == STORE_NOT_DURABLE
            finally:
                aof_replica.resume()


async def test_accept_fsync_without_appendonly_is_refused_at_start() -> None:
    with running_redis(executable=waitaof_server()) as server:  # appendonly no
        with trio.fail_after(10), pytest.raises(ConfigError, match="appendonly"):
            async with open_redis_store(server.url, LIMITS, accept=AcceptWait(fsync=True)):
                raise AssertionError("started with accept_fsync and no append-only file")


async def test_every_accepted_message_survives_a_failover_to_the_replica(
    namespace: str,
) -> None:
    """kill -9 of the primary under load, then the replica promoted: nothing accepted lost.

    The replica is stopped for a while before the kill, so that it lags behind: without
    the wait, what the primary accepted meanwhile would be lost with it.
    """
    limits = msgspec.structs.replace(LIMITS, max_queue_length=100_000)
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    accepted: list[str] = []
    enough = trio.Event()  # 300 accepted: time to stop the replica
    with running_redis() as doomed, running_replica(doomed) as survivor:
        with trio.fail_after(30):
            async with open_redis_store(
                doomed.url, limits, namespace=namespace, accept=accept, reconnect_timeout=0.2
            ) as store:

                async def send(lane: int) -> None:
                    for n in range(lane * 10_000, lane * 10_000 + 2_000):
                        item = _item(n)  # large, so that a stopped replica falls behind
                        message = msgspec.structs.replace(item.message, envelope_json=BULK)
                        try:
                            [record] = await store.enqueue_many(
                                [msgspec.structs.replace(item, message=message)]
                            )
                        except Exception:
                            return
                        if record is not None and not isinstance(record, Exception):
                            accepted.append(f"m{n}")
                            if len(accepted) >= 300:
                                enough.set()

                async with trio.open_nursery() as nursery:
                    for lane in range(4):
                        nursery.start_soon(send, lane)
                    await enough.wait()
                    survivor.pause()
                    await trio.sleep(3 * TIMEOUT)  # sends go on meanwhile
                    await trio.to_thread.run_sync(lambda: doomed.stop(kill=True))
                    survivor.resume()
                assert store.statistics()["accept_refusals"] > 0
        client = redis.Redis(port=survivor.port, socket_timeout=5)
        try:
            client.execute_command("REPLICAOF", "NO", "ONE")  # the failover
            entries = client.xrange(f"{namespace}:queue:b")
        finally:
            client.close()
    kept = {fields[b"m"].decode() for _, fields in entries}
    assert len(accepted) >= 300
    assert set(accepted) <= kept, f"lost {len(set(accepted) - kept)} of {len(accepted)}"


async def test_the_wait_follows_enqueues_sent_again_after_a_script_flush(
    primary: RedisServer, replica: RedisServer, namespace: str
) -> None:
    """After NOSCRIPT the enqueues are sent again, and still refused while unacknowledged.

    (On Redis 7.0 the first pipeline's WAIT would refuse too: a client's WAIT covers
    the replication offset at its last command, whoever wrote it.)
    """
    accept = AcceptWait(replicas=1, timeout=TIMEOUT)
    async with open_redis_store(
        primary.url, ROOMY, namespace=namespace, accept=accept, lease_seconds=60
    ) as store:
        with trio.fail_after(10):  # every write of the store's connection acknowledged
            [record] = await store.enqueue_many([_item(0)])
        assert not isinstance(record, CorrelationRefused)
        client = redis.Redis(port=primary.port, socket_timeout=5)
        try:
            client.script_flush()
        finally:
            client.close()
        replica.pause()  # the enqueues sent again cannot be acknowledged
        try:
            with trio.fail_after(TIMEOUT * 2 + 3):
                [record] = await store.enqueue_many([_item(1)])
        finally:
            replica.resume()
        assert isinstance(record, CorrelationRefused), record
        assert record.reason == STORE_NOT_DURABLE
        stats = store.statistics()
        assert (stats["script_reloads"], stats["accept_refusals"]) == (1, 1)
