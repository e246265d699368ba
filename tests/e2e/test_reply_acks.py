"""A reply that acknowledges the request it answers (``Hello.reply_acks``), over the wire.

A client that announces ``reply_acks`` and is told so in the Welcome may name, in its
``StreamReply``, the delivery of the request it answers: the accepted reply then acks
that delivery too (no Ack frame). A reply the server refuses acks nothing: the request
stays in flight and comes back after ``ack_timeout``. A client that does not announce it
gets the base protocol: its request is acked by its Ack only, whatever its reply says.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from rawclient import RawSession, raw_client
from sdk_agents import Echo, Plain, settled

from mas._proto import runtime_pb2 as pb
from mas.config import MasConfig
from mas.errors import StoreError
from mas.runtime import build_store
from mas.server import MasServer
from mas.testing import TestPKI, make_config, open_test_server
from mas.testing.store import YieldingStore

ACK_TIMEOUT = 30.0
TEST_DEADLINE = 20 * ACK_TIMEOUT  # virtual seconds
RULES = [{"type": "allow", "sender": "a", "targets": ["b"]}]


class _FailingReplies(YieldingStore):
    """A store that cannot write messages (a full disk) while ``broken`` is set."""

    broken = False

    async def enqueue_many(self, items: Any) -> Any:
        if self.broken:
            raise StoreError("database or disk is full")
        return await self._yielding("enqueue_many", self._store.enqueue_many)(items)

    async def route_batch(self, items: Any, **options: Any) -> Any:
        if self.broken and items:
            raise StoreError("database or disk is full")
        return await self._yielding("route_batch", self._store.route_batch)(items, **options)


Serve = Callable[[MasConfig], AbstractAsyncContextManager[MasServer]]


@pytest.fixture
def store_box() -> list[_FailingReplies]:
    return []


@pytest.fixture
def serve(pki: TestPKI, store_box: list[_FailingReplies]) -> Serve:
    @asynccontextmanager
    async def serve(config: MasConfig) -> AsyncIterator[MasServer]:
        store = _FailingReplies(build_store(config))
        store_box.append(store)
        async with open_test_server(config, pki, store=store) as server:  # type: ignore[arg-type]
            yield server

    return serve


def _config(b: dict[str, Any] | None = None) -> MasConfig:
    limits = {"ack_timeout": ACK_TIMEOUT, "redelivery_backoff": 1.0}
    return make_config(["a", {"agent_id": "b", **(b or {})}], RULES, limits=limits)


@asynccontextmanager
async def _pair(
    server: MasServer, pki: TestPKI, *, reply_acks: bool
) -> AsyncIterator[tuple[RawSession, RawSession, pb.Welcome]]:
    port = server.address.port
    with trio.fail_after(TEST_DEADLINE):  # on the MockClock: a lost redelivery fails here
        async with (
            raw_client(port, pki.client_ssl_context("a")) as ca,
            raw_client(port, pki.client_ssl_context("b")) as cb,
        ):
            a, b = await ca.transport(), await cb.transport()
            await a.hello("a1")
            welcome = await b.hello("b1", reply_acks=reply_acks)
            yield a, b, welcome


async def _request(a: RawSession, n: int) -> str:
    result = await a.call(
        "request", target_id="b", message_type="ask", data_json=json.dumps({"n": n})
    )
    assert not result.HasField("error"), result
    return str(result.correlation_id)


def _attempt(delivery: pb.Delivery) -> tuple[int, int]:
    envelope = json.loads(delivery.envelope_json)
    return envelope["data"]["n"], envelope["meta"]["attempt"]


async def _no_delivery_within(session: RawSession, seconds: float) -> None:
    with trio.move_on_after(seconds):
        delivery = await session.next_delivery()
        raise AssertionError(f"delivered again: {delivery}")


async def test_an_accepted_reply_acks_the_request_it_names_with_its_delivered_record(
    pki: TestPKI, serve: Serve, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve(_config()) as server, _pair(server, pki, reply_acks=True) as (a, b, hello):
        assert hello.reply_acks is True
        correlation_id = await _request(a, 1)
        request = await b.next_delivery()
        delivered = server.audit.counts["DELIVERED"]
        result = await b.call(
            "reply",
            correlation_id=correlation_id,
            message_type="answer",
            data_json="{}",
            delivery_id=request.delivery_id,
        )
        assert not result.HasField("error"), result
        reply = await a.next_delivery()
        assert json.loads(reply.envelope_json)["meta"]["correlation_id"] == correlation_id
        await a.send(ack=pb.Ack(delivery_id=reply.delivery_id))
        # No Ack from b, and yet the request is done: never redelivered, recorded once.
        await _no_delivery_within(b, 3 * ACK_TIMEOUT)
        assert server.audit.counts["DELIVERED"] == delivered + 2  # the request, the reply
        assert await server.store.release_session("any", 5, 0.0) == 0
        assert await server.store.queue_depth("b") == 0


def _made_up(correlation_id: str) -> dict[str, str]:
    return {"correlation_id": "made-up-correlation", "data_json": "{}"}


def _secret(correlation_id: str) -> dict[str, str]:
    return {"correlation_id": correlation_id, "data_json": '{"card": 4111111111111111}'}


def _fine(correlation_id: str) -> dict[str, str]:
    return {"correlation_id": correlation_id, "data_json": "{}"}


# Each refusal: the reply frame's fields (given the request's correlation id), b's own
# settings, whether the store breaks, and the reason the Result gives.
REFUSALS: dict[str, tuple[Callable[[str], dict[str, str]], dict[str, Any], bool, str]] = {
    "correlation": (_made_up, {}, False, "unknown_correlation_id"),
    "dlp": (_secret, {}, False, "dlp_blocked"),
    "rate_limit": (_fine, {"rate_limit": {"per_minute": 1, "per_hour": 50}}, False, "rate_limited"),
    "store_unavailable": (_fine, {}, True, "store_unavailable"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_reply_acks_nothing_and_its_request_comes_back_after_ack_timeout(
    pki: TestPKI,
    serve: Serve,
    store_box: list[_FailingReplies],
    autojump_clock: trio.testing.MockClock,
    refusal: str,
) -> None:
    fields, settings, broken, reason = REFUSALS[refusal]
    async with serve(_config(settings)) as server, _pair(server, pki, reply_acks=True) as pair:
        a, b, _ = pair
        if refusal == "rate_limit":  # b's one message a minute goes first
            first = await _request(a, 0)
            delivery = await b.next_delivery()
            await b.call(
                "reply", message_type="answer", delivery_id=delivery.delivery_id, **_fine(first)
            )
            await a.next_delivery()
        correlation_id = await _request(a, 1)
        request = await b.next_delivery()
        store_box[0].broken = broken
        started = trio.current_time()
        result = await b.call(
            "reply",
            message_type="answer",
            delivery_id=request.delivery_id,
            **fields(correlation_id),
        )
        assert result.error.message == reason, result
        store_box[0].broken = False
        again = await b.next_delivery()  # never acked: redelivered once its ack is overdue
        assert _attempt(again) == (1, 2)
        assert trio.current_time() - started >= ACK_TIMEOUT
        await b.send(ack=pb.Ack(delivery_id=again.delivery_id))


async def test_a_client_that_does_not_announce_it_gets_the_base_protocol(
    pki: TestPKI, serve: Serve, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve(_config()) as server, _pair(server, pki, reply_acks=False) as (a, b, hello):
        assert hello.reply_acks is False
        correlation_id = await _request(a, 1)
        request = await b.next_delivery()
        started = trio.current_time()
        # Naming the delivery in an accepted reply does not ack it: only an Ack does.
        result = await b.call(
            "reply", message_type="answer", delivery_id=request.delivery_id, **_fine(correlation_id)
        )
        assert not result.HasField("error"), result
        again = await b.next_delivery()
        assert _attempt(again) == (1, 2)
        assert trio.current_time() - started >= ACK_TIMEOUT
        await b.send(ack=pb.Ack(delivery_id=again.delivery_id))
        await _no_delivery_within(b, 3 * ACK_TIMEOUT)


async def test_an_sdk_agent_whose_reply_acked_its_request_writes_no_ack_nor_nack(
    pki: TestPKI,
) -> None:
    # The SDK announces reply_acks: each accepted reply acks its request, so the replier's
    # session sends the server no Ack and, above all, no Nack for it (a Nack there is a
    # wasted frame per request, and would ask for a redelivery were it ever applied).
    requests = 12
    async with open_test_server(_config(), pki) as server:
        assert server.address is not None and server._router is not None
        router = server._router
        seen: dict[str, list[str]] = {"nack": [], "ack": []}
        nack, ack_many = router.nack, router.ack_many

        async def counting_nack(session: Any, delivery_id: str, *args: Any, **kw: Any) -> None:
            seen["nack"].append(session.agent_id)
            await nack(session, delivery_id, *args, **kw)

        async def counting_acks(session: Any, delivery_ids: Any) -> None:
            seen["ack"].extend(session.agent_id for _ in delivery_ids)
            await ack_many(session, delivery_ids)

        router.nack, router.ack_many = counting_nack, counting_acks  # type: ignore[method-assign]
        addr = f"127.0.0.1:{server.address.port}"
        echo = Echo("b", server_addr=addr, tls=pki.client_ssl_context("b"))
        asker = Plain("a", server_addr=addr, tls=pki.client_ssl_context("a"))
        with trio.fail_after(20):
            async with echo, asker:
                for n in range(requests):
                    reply = await asker.request("b", "ping", {"n": n}, timeout=10)
                    assert reply.data == {"n": n}
            await settled(server, 2 * requests)
    assert seen["nack"] == []
    assert "b" not in seen["ack"]  # the replies acked every request
    assert seen["ack"].count("a") == requests  # the requester acks each reply
