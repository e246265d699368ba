"""At-least-once delivery over real mTLS: windows, nacks, retries, dead letters, offline queues.

Timed behaviour (redelivery backoff, ack timeouts) runs under Trio's MockClock,
so the tests take no real time. Every test runs over a store that yields before and
after each call (``mas.testing.store.yielding``), as I/O backends do; the untimed
ones also over a real SQLite file.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from rawclient import RawSession, raw_client, sessions

from mas._proto import runtime_pb2 as pb
from mas.config import MasConfig
from mas.runtime import build_store, store_limits
from mas.server import MasServer
from mas.store.sqlite import open_sqlite_store
from mas.testing import TestPKI, make_config, open_test_server
from mas.testing.store import yielding

Serve = Callable[[MasConfig], AbstractAsyncContextManager[MasServer]]


def _serving(pki: TestPKI, backend: str, directory: Path) -> Serve:
    @asynccontextmanager
    async def serve(config: MasConfig) -> AsyncIterator[MasServer]:
        if backend == "memory":
            async with open_test_server(config, pki, store=yielding(build_store(config))) as s:
                yield s
            return
        async with (
            open_sqlite_store(directory / "mas.sqlite3", store_limits(config), sync="normal") as db,
            open_test_server(config, pki, store=yielding(db)) as s,
        ):
            yield s

    return serve


@pytest.fixture(params=["memory", "sqlite"])
def serve(request: pytest.FixtureRequest, pki: TestPKI, tmp_path: Path) -> Serve:
    """A server over a yielding store: memory, or a real SQLite file."""
    return _serving(pki, request.param, tmp_path)


@pytest.fixture
def serve_timed(pki: TestPKI, tmp_path: Path) -> Serve:
    """For MockClock tests: the yielding memory store (SQLite's flushes take real time)."""
    return _serving(pki, "memory", tmp_path)


ONE_WAY = [{"type": "allow", "sender": "a", "targets": ["b"]}]


def _n(delivery: pb.Delivery) -> tuple[int, int]:
    envelope = json.loads(delivery.envelope_json)
    return envelope["data"]["n"], envelope["meta"]["attempt"]


async def _send_numbers(a: RawSession, count: int) -> None:
    for n in range(count):
        result = await a.call(
            "send", target_id="b", message_type="t", data_json=json.dumps({"n": n})
        )
        assert not result.HasField("error"), result


async def test_retryable_nack_is_redelivered_with_backoff_then_dead_lettered(
    pki: TestPKI, serve_timed: Serve, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a", "b"], ONE_WAY, limits={"max_attempts": 3, "redelivery_backoff": 2.0})
    async with serve_timed(config) as server:
        async with sessions(server, pki, "a", "b") as (a, b):
            await _send_numbers(a, 1)
            times = []
            for expected_attempt in (1, 2, 3):
                delivery = await b.next_delivery()
                times.append(trio.current_time())
                assert _n(delivery) == (0, expected_attempt)
                await b.send(
                    nack=pb.Nack(delivery_id=delivery.delivery_id, reason="busy", retryable=True)
                )
            # Backoff doubles: 2 s, then 4 s.
            assert round(times[1] - times[0]) == 2
            assert round(times[2] - times[1]) == 4
            with trio.move_on_after(60):
                await b.next_delivery()
                raise AssertionError("a dead-lettered message was delivered again")
            dead = await server.store.dead_letters("b")
            assert [(d.reason, d.message.attempt) for d in dead] == [("busy", 3)]
            assert json.loads(dead[0].message.envelope_json)["data"] == {"n": 0}


async def test_non_retryable_nack_dead_letters_at_once(pki: TestPKI, serve: Serve) -> None:
    with trio.fail_after(10):
        async with serve(make_config(["a", "b"], ONE_WAY)) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                await _send_numbers(a, 1)
                delivery = await b.next_delivery()
                await b.send(
                    nack=pb.Nack(
                        delivery_id=delivery.delivery_id, reason="invalid", retryable=False
                    )
                )
                await a.call("send", target_id="b", message_type="t", data_json='{"n": 1}')
                assert _n(await b.next_delivery()) == (1, 1)
                assert [d.reason for d in await server.store.dead_letters("b")] == ["invalid"]


async def test_unacked_delivery_is_redelivered_after_ack_timeout(
    pki: TestPKI, serve_timed: Serve, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(
        ["a", "b"], ONE_WAY, limits={"ack_timeout": 30.0, "redelivery_backoff": 1.0}
    )
    async with serve_timed(config) as server:
        async with sessions(server, pki, "a", "b") as (a, b):
            await _send_numbers(a, 1)
            first = await b.next_delivery()
            started = trio.current_time()
            again = await b.next_delivery()  # never acked the first
            assert _n(again) == (0, 2)
            assert trio.current_time() - started >= 30.0
            # A late ack of the expired delivery is ignored; the new one is acked normally.
            await b.send(ack=pb.Ack(delivery_id=first.delivery_id))
            await b.send(ack=pb.Ack(delivery_id=again.delivery_id))


async def test_in_flight_window_bounds_unacked_deliveries(
    pki: TestPKI, serve_timed: Serve, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a", "b"], ONE_WAY, limits={"prefetch": 2})
    async with serve_timed(config) as server:
        port = server.address.port
        async with (
            raw_client(port, pki.client_ssl_context("a")) as ca,
            raw_client(port, pki.client_ssl_context("b")) as cb,
        ):
            a, b = await ca.transport(), await cb.transport()
            await a.hello("a1")
            welcome = await b.hello("b1", prefetch=10)
            assert welcome.prefetch == 2  # the server's limit wins over the client's wish
            await _send_numbers(a, 5)
            first, second = await b.next_delivery(), await b.next_delivery()
            with trio.move_on_after(5) as waited:
                await b.next_delivery()
            assert waited.cancelled_caught, "a third delivery came before any ack"
            await b.send(ack=pb.Ack(delivery_id=first.delivery_id))
            assert _n(await b.next_delivery()) == (2, 1)
            del second


async def test_messages_for_an_offline_agent_wait_and_are_bounded(
    pki: TestPKI, serve: Serve
) -> None:
    config = make_config(["a", "b"], ONE_WAY, limits={"max_queue_length": 3})
    with trio.fail_after(10):
        async with serve(config) as server:
            port = server.address.port
            async with raw_client(port, pki.client_ssl_context("a")) as ca:
                a = await ca.transport()
                await a.hello("a1")
                await _send_numbers(a, 3)
                full = await a.call("send", target_id="b", message_type="t", data_json='{"n": 3}')
                assert (full.error.code, full.error.message) == ("RESOURCE_EXHAUSTED", "queue_full")
            async with raw_client(port, pki.client_ssl_context("b")) as cb:
                b = await cb.transport()
                await b.hello("b1", batching=True)
                received: list[int] = []
                while len(received) < 3:
                    event = await b.receive()
                    batch = (
                        list(event.deliveries.deliveries)
                        if event.WhichOneof("event") == "deliveries"
                        else [event.delivery]
                    )
                    received += [_n(d)[0] for d in batch]
                    await b.send(acks=pb.AckBatch(delivery_ids=[d.delivery_id for d in batch]))
                assert received == [0, 1, 2]


@asynccontextmanager
async def _sender_and_two_instances(
    pki: TestPKI, serve: Serve, prefetch: int
) -> AsyncIterator[tuple[RawSession, RawSession, RawSession]]:
    """Sender ``a`` and two instances of ``b`` (``b-1``, ``b-2``), each with its session."""
    config = make_config(["a", "b"], ONE_WAY, limits={"prefetch": prefetch})
    async with serve(config) as server:
        port = server.address.port
        async with (
            raw_client(port, pki.client_ssl_context("a")) as ca,
            raw_client(port, pki.client_ssl_context("b")) as cb1,
            raw_client(port, pki.client_ssl_context("b")) as cb2,
        ):
            a, b1, b2 = await ca.transport(), await cb1.transport(), await cb2.transport()
            await a.hello("a1")
            await b1.hello("b-1")
            await b2.hello("b-2")
            yield a, b1, b2


async def test_shared_queue_spreads_over_instances(pki: TestPKI, serve: Serve) -> None:
    with trio.fail_after(10):
        async with _sender_and_two_instances(pki, serve, prefetch=1) as (a, b1, b2):
            await _send_numbers(a, 2)
            # With a window of one, each instance holds one message.
            got = sorted([_n(await b1.next_delivery())[0], _n(await b2.next_delivery())[0]])
            assert got == [0, 1]


async def test_messages_sent_one_at_a_time_spread_over_idle_instances(
    pki: TestPKI, serve: Serve
) -> None:
    # Each message is handed to an idle instance by the sender's task (or rung to the pumps,
    # when a hand-over cannot be done): the instances take turns, so neither gets them all.
    with trio.fail_after(10):
        async with _sender_and_two_instances(pki, serve, prefetch=8) as (a, b1, b2):
            await _send_numbers(a, 8)
            got: dict[str, list[int]] = {"b-1": [], "b-2": []}
            done = trio.Event()

            async def collect(name: str, session: RawSession) -> None:
                while True:
                    got[name].append(_n(await session.next_delivery())[0])
                    if sum(len(numbers) for numbers in got.values()) == 8:
                        done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, "b-1", b1)
                nursery.start_soon(collect, "b-2", b2)
                await done.wait()
                nursery.cancel_scope.cancel()
            assert sorted(got["b-1"] + got["b-2"]) == list(range(8))
            assert len(got["b-1"]) >= 2 and len(got["b-2"]) >= 2, got


async def test_sessions_per_agent_are_limited(pki: TestPKI, serve: Serve) -> None:
    from rawclient import CallFailed

    config = make_config(["a"], limits={"max_sessions_per_agent": 1})
    with trio.fail_after(10):
        async with serve(config) as server:
            async with raw_client(server.address.port, pki.client_ssl_context("a")) as ca:
                first = await ca.transport()
                await first.hello("one")
                second = await ca.transport()
                await second.send(hello=pb.Hello(instance_id="two"))
                try:
                    await second.receive()
                except CallFailed as failed:
                    assert (failed.code, failed.reason) == (
                        "RESOURCE_EXHAUSTED",
                        "too_many_sessions",
                    )
                else:
                    raise AssertionError("a second session was accepted")
