"""Delivery under interleavings: the store yields (or is held) between a read and the next step.

Each test here wraps the store in ``mas.testing.YieldingStore`` and holds one call at
a gate, so the router is caught exactly between the store's answer and what it does
with it, the window in which SQLite and Redis let other tasks run.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from rawclient import CallFailed, RawSession, raw_client, sessions

from mas._proto import runtime_pb2 as pb
from mas.errors import StoreError
from mas.store.memory import MemoryStore
from mas.testing import TestPKI, make_config, open_test_server
from mas.testing.store import YieldingStore

ONE_WAY = [{"type": "allow", "sender": "a", "targets": ["b"]}]


async def _wait_calls(store: YieldingStore, name: str, count: int) -> None:
    with trio.fail_after(30):
        await store.wait_calls(name, count)


async def _nack(b: RawSession, delivery: pb.Delivery) -> None:
    await b.send(nack=pb.Nack(delivery_id=delivery.delivery_id, reason="busy", retryable=True))


def _attempt(delivery: pb.Delivery) -> int:
    return int(json.loads(delivery.envelope_json)["meta"]["attempt"])


async def test_retry_stored_while_scheduler_reads_next_due_is_not_lost(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    # The retry scheduler reads the earliest due retry, then waits; a nack stored
    # after that read but before the wait must still wake it.
    store = YieldingStore(MemoryStore())
    config = make_config(["a", "b"], ONE_WAY, limits={"max_attempts": 5, "redelivery_backoff": 2.0})
    async with open_test_server(config, pki, store=store) as server:  # type: ignore[arg-type]
        async with sessions(server, pki, "a", "b") as (a, b):
            await a.call("send", target_id="b", message_type="t", data_json='{"n": 0}')
            first = await b.next_delivery()
            before = store.calls.get("next_due", 0)
            await _nack(b, first)
            await _wait_calls(store, "next_due", before + 1)  # it now waits for the due retry
            store.hold("next_due")
            second = await b.next_delivery()  # the retry fell due; the scheduler read again
            assert _attempt(second) == 2
            with trio.fail_after(30):
                await store.held.wait()  # ... and found nothing delayed: it is at the gate
            retries = store.calls.get("retry", 0)
            await _nack(b, second)
            await _wait_calls(store, "retry", retries + 1)
            store.release("next_due")
            with trio.move_on_after(120) as waited:
                third = await b.next_delivery()
            assert not waited.cancelled_caught, "the retried message was never redelivered"
            assert _attempt(third) == 3


def _deep(depth: int) -> str:
    return '{"a": ' + "[" * depth + "]" * depth + "}"


async def test_deeply_nested_payload_is_refused_alone_and_the_session_lives(
    pki: TestPKI,
) -> None:
    config = make_config(["a", "b"], ONE_WAY)
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                plan = [
                    ("send", '{"n": 0}', ""),
                    ("send", _deep(100_000), "invalid_payload"),
                    ("request", _deep(5_000), "invalid_payload"),
                    ("send", '{"n": 1}', ""),
                ]
                frames = []
                for kind, data, _ in plan:
                    frames.append(a.frame(kind, target_id="b", message_type="t", data_json=data))
                await a.send_together([frame for _, frame in frames])
                results: dict[int, pb.Result] = {}
                while len(results) < len(plan):
                    event = await a.receive()
                    if event.WhichOneof("event") == "result":
                        results[event.result.seq] = event.result
                for (seq, _), (_, _, reason) in zip(frames, plan, strict=True):
                    result = results[seq]
                    assert result.error.message == reason, (seq, result)
                # The session still serves: another message goes through.
                ok = await a.call("send", target_id="b", message_type="t", data_json='{"n": 2}')
                assert not ok.HasField("error"), ok
                got = [json.loads((await b.next_delivery()).envelope_json)["data"] for _ in "123"]
                assert got == [{"n": 0}, {"n": 1}, {"n": 2}]


async def _request(a: RawSession, b: RawSession, **fields: object) -> dict[str, object]:
    result = await a.call("request", target_id="b", message_type="q", data_json="{}", **fields)
    assert not result.HasField("error"), result
    return json.loads((await b.next_delivery()).envelope_json)  # type: ignore[no-any-return]


async def test_a_reply_cancelled_before_it_is_stored_leaves_its_correlation_open(
    pki: TestPKI,
) -> None:
    # The replier's session is replaced while its reply is between the correlation
    # look-up and the enqueue: the reply is not stored, and its retry must succeed.
    store = YieldingStore(MemoryStore())
    config = make_config(["a", "b"], [{"type": "allow_bidirectional", "agents": ["a", "b"]}])
    with trio.fail_after(20):
        async with open_test_server(config, pki, store=store) as server:  # type: ignore[arg-type]
            async with sessions(server, pki, "a", "b") as (a, b):
                request = await _request(a, b)
                correlation_id = request["meta"]["correlation_id"]  # type: ignore[index]
                # As if the request had come through another server sharing the store: this
                # server does not remember its correlation, so the reply looks it up.
                server._router._recent.forget(correlation_id)
                store.hold("find_correlations")
                _, frame = b.frame(
                    "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                )
                await b.send(**{"reply": frame.reply})
                await store.held.wait()
                async with sessions(server, pki, "b") as [b_again]:  # replaces b's session
                    store.release("find_correlations")
                    retried = await b_again.call(
                        "reply", correlation_id=correlation_id, message_type="r", data_json="{}"
                    )
                    assert not retried.HasField("error"), retried
                    reply = json.loads((await a.next_delivery()).envelope_json)
                    assert reply["meta"]["correlation_id"] == correlation_id


async def test_a_payload_that_looks_like_a_request_is_not_one(pki: TestPKI) -> None:
    # "Is this a request" is read from the envelope's meta, never searched for in the
    # payload: a send carrying '"expects_reply":true' is acked as a plain message.
    store = MemoryStore()
    config = make_config(["a", "b"], ONE_WAY)
    with trio.fail_after(20):
        async with open_test_server(config, pki, store=store) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                await a.call(
                    "send", target_id="b", message_type="t", data_json='{"expects_reply":true}'
                )
                delivery = await b.next_delivery()
                [session] = server.registry.of_agent("b")
                assert session.window[delivery.delivery_id].is_request is False


async def test_a_request_past_its_deadline_is_not_delivered_but_audited_and_counted(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a", "b"], [{"type": "allow_bidirectional", "agents": ["a", "b"]}])
    async with open_test_server(config, pki) as server:
        async with sessions(server, pki, "a") as [a]:
            late = await a.call(
                "request", target_id="b", message_type="q", data_json='{"n": 0}', timeout_ms=1000
            )
            assert not late.HasField("error"), late
            await a.call(
                "request", target_id="b", message_type="q", data_json='{"n": 1}', timeout_ms=60_000
            )
            await trio.sleep(5)  # b connects after the first request's deadline
            async with sessions(server, pki, "b") as [b]:
                delivery = json.loads((await b.next_delivery()).envelope_json)
                assert delivery["data"] == {"n": 1}
                assert delivery["meta"]["deadline"] > delivery["timestamp"]
                with trio.move_on_after(10):
                    await b.next_delivery()
                    raise AssertionError("an expired request was delivered")
        assert server.statistics()["expired"] == 1
        records = await server.store.audit_records()
        expired = [r for r in records if r.decision == "EXPIRED"]
        assert [r.message_id for r in expired] == [late.message_id]


async def test_a_late_reply_is_refused_with_the_seed_status_for_an_expired_request(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    config = make_config(["a", "b"], [{"type": "allow_bidirectional", "agents": ["a", "b"]}])
    async with open_test_server(config, pki) as server:
        async with sessions(server, pki, "a", "b") as (a, b):
            request = await _request(a, b, timeout_ms=1000)
            await trio.sleep(2)
            late = await b.call(
                "reply",
                correlation_id=request["meta"]["correlation_id"],  # type: ignore[index]
                message_type="r",
                data_json="{}",
            )
            assert (late.error.code, late.error.message) == (
                "FAILED_PRECONDITION",
                "correlation_id_expired",
            )
        records = await server.store.audit_records()
        assert [r.reason for r in records if r.decision == "EXPIRED"] == ["correlation_id_expired"]


async def test_a_connection_loses_its_instance_when_another_connection_takes_it_over(
    pki: TestPKI,
) -> None:
    config = make_config(["a", "b"], [{"type": "allow_bidirectional", "agents": ["a", "b"]}])
    request = pb.RequestRequest(target_id="a", message_type="q", data_json="{}", instance_id="b1")
    with trio.fail_after(20):
        async with open_test_server(config, pki) as server:
            port, context = server.address.port, pki.client_ssl_context("b")
            async with raw_client(port, context) as first, raw_client(port, context) as second:
                old = await first.transport()
                await old.hello("b1")
                new = await second.transport()
                await new.hello("b1")  # takes instance b1 over; the old session ends
                with pytest.raises(CallFailed) as refused:
                    await old.receive()
                assert refused.value.reason == "replaced_by_new_session"
                with pytest.raises(CallFailed) as refused:
                    await first.unary("Request", request, pb.RequestResponse)
                assert (refused.value.code, refused.value.reason) == (
                    "FAILED_PRECONDITION",
                    "instance_not_bound",
                )
                # The connection that holds it now may use it.
                await second.unary("Request", request, pb.RequestResponse)


class _Unwritable(YieldingStore):
    """A store whose writes fail (a full disk, Redis away) while ``broken`` is set."""

    broken = False

    async def enqueue_many(self, items: Any) -> Any:
        if self.broken:
            raise StoreError("database or disk is full")
        return await self._yielding("enqueue_many", self._store.enqueue_many)(items)

    async def route_batch(self, items: Any, **options: Any) -> Any:
        if self.broken and items:
            raise StoreError("database or disk is full")
        return await self._yielding("route_batch", self._store.route_batch)(items, **options)


async def test_a_store_that_cannot_write_refuses_each_message_and_the_session_lives(
    pki: TestPKI,
) -> None:
    store = _Unwritable(MemoryStore())
    config = make_config(["a", "b"], ONE_WAY)
    with trio.fail_after(20):
        async with open_test_server(config, pki, store=store) as server:  # type: ignore[arg-type]
            async with sessions(server, pki, "a", "b") as (a, b):
                store.broken = True
                refused = await a.call("send", target_id="b", message_type="t", data_json="{}")
                assert (refused.error.code, refused.error.message) == (
                    "UNAVAILABLE",
                    "store_unavailable",
                )
                store.broken = False  # space again: the same session sends on
                ok = await a.call("send", target_id="b", message_type="t", data_json='{"n": 1}')
                assert not ok.HasField("error"), ok
                delivered = json.loads((await b.next_delivery()).envelope_json)
                assert delivered["data"] == {"n": 1}
