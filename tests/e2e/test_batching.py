"""Frames that arrive together are handled as one batch, each with its own outcome.

A raw client writes several frames in one HTTP/2 DATA frame, so the server reads them
in one piece and routes them with one ``enqueue_many``; every frame still gets its own
``Result`` (accepted, or refused with its own reason), in order, and the store sees
exactly the accepted messages, in order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import trio
from rawclient import CallFailed, sessions

from mas._proto import runtime_pb2 as pb
from mas.audit.record import AuditRecord
from mas.store import EnqueueItem, MemoryStore, StoreLimits
from mas.testing import TestPKI, make_config, open_test_server


class CountingStore(MemoryStore):
    """The memory store, noting the size of every ``enqueue_many`` batch."""

    def __init__(self, limits: StoreLimits) -> None:
        super().__init__(limits)
        self.batches: list[int] = []

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[AuditRecord | None]:
        self.batches.append(len(items))
        return await super().enqueue_many(items)


RULES = [{"type": "allow", "sender": "a", "targets": ["b"]}]


async def test_frames_written_together_are_routed_in_order_each_with_its_own_result(
    pki: TestPKI,
) -> None:
    config = make_config(["a", "b", "c"], RULES, limits={"max_queue_length": 3})
    store = CountingStore(StoreLimits(max_queue_length=3))
    with trio.fail_after(10):
        async with open_test_server(config, pki, store=store) as server:
            async with sessions(server, pki, "a") as [a]:
                plan = [
                    (("send", "b", '{"n": 0}'), None),
                    (("send", "c", '{"n": 1}'), ("PERMISSION_DENIED", "not_authorized")),
                    (("send", "b", "[not an object]"), ("INVALID_ARGUMENT", "invalid_payload")),
                    (("request", "b", '{"n": 3}'), None),
                    (("send", "b", '{"n": 4}'), None),
                    (("send", "b", '{"n": 5}'), ("RESOURCE_EXHAUSTED", "queue_full")),
                    (("reply", "", '{"n": 6}'), ("INVALID_ARGUMENT", "unknown_correlation_id")),
                ]
                frames = []
                for (kind, target, data), _ in plan:
                    fields = {"message_type": "t", "data_json": data}
                    if kind == "reply":
                        fields["correlation_id"] = "no-such-request"
                    else:
                        fields["target_id"] = target
                    frames.append(a.frame(kind, **fields))
                await a.send_together([frame for _, frame in frames])
                results: dict[int, pb.Result] = {}
                while len(results) < len(frames):
                    event = await a.receive()
                    if event.WhichOneof("event") == "result":
                        results[event.result.seq] = event.result
                for (seq, _), (_, expected) in zip(frames, plan, strict=True):
                    result = results[seq]
                    if expected is None:
                        assert not result.HasField("error"), result
                        assert result.message_id
                    else:
                        assert (result.error.code, result.error.message) == expected
                request_result = results[frames[3][0]]
                assert request_result.correlation_id  # a request gets its correlation id
                # Routed as one batch: the five frames that passed the gateway (the
                # queue-full one is refused by the store, inside the batch).
                assert store.batches == [4]
            async with sessions(server, pki, "b") as [b]:
                delivered = []
                for _ in range(3):
                    delivery = await b.next_delivery()
                    delivered.append(json.loads(delivery.envelope_json)["data"]["n"])
                    await b.send(ack=pb.Ack(delivery_id=delivery.delivery_id))
                assert delivered == [0, 3, 4]
        decisions = server.audit.statistics()["decisions"]
        assert decisions["ALLOWED"] == 3
        assert decisions["AUTHZ_DENIED"] == 1
        assert decisions["INVALID"] == 3  # bad payload, queue full, unknown correlation


async def test_acks_written_together_are_all_applied(pki: TestPKI) -> None:
    config = make_config(["a", "b"], RULES)
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a", "b") as [a, b]:
                for n in range(5):
                    assert not (
                        await a.call(
                            "send", target_id="b", message_type="t", data_json=json.dumps({"n": n})
                        )
                    ).HasField("error")
                ids = [(await b.next_delivery()).delivery_id for _ in range(5)]
                await b.send_together(
                    [pb.ClientEvent(ack=pb.Ack(delivery_id=i)) for i in ids[:3]]
                    + [pb.ClientEvent(acks=pb.AckBatch(delivery_ids=ids[3:] + ids[:1]))]
                )
            # The session ended: what was not acked would now be back in b's queue.
            await server.registry.wait_empty()
            assert await server.store.queue_depth("b") == 0
        assert server.audit.statistics()["decisions"]["DELIVERED"] == 5


async def test_replies_written_together_take_their_correlations_once(pki: TestPKI) -> None:
    config = make_config(["a", "b"], [{"type": "allow_bidirectional", "agents": ["a", "b"]}])
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a", "b") as [a, b]:
                for n in range(3):
                    result = await a.call(
                        "request", target_id="b", message_type="q", data_json=json.dumps({"n": n})
                    )
                    assert not result.HasField("error"), result
                correlations = []
                for _ in range(3):
                    delivery = await b.next_delivery()
                    envelope = json.loads(delivery.envelope_json)
                    correlations.append((envelope["meta"]["correlation_id"], envelope["data"]))
                frames = [
                    b.frame("reply", correlation_id=cid, message_type="r", data_json=json.dumps(d))
                    for cid, d in [*correlations, correlations[0]]  # the last one is a replay
                ]
                await b.send_together([frame for _, frame in frames])
                outcomes = {}
                while len(outcomes) < len(frames):
                    event = await b.receive()
                    if event.WhichOneof("event") == "result":
                        error = event.result.error
                        outcomes[event.result.seq] = error.message if error.code else "ok"
                assert [outcomes[seq] for seq, _ in frames] == ["ok"] * 3 + [
                    "unknown_correlation_id"
                ]
                replies = []
                for _ in range(3):
                    delivery = await a.next_delivery()
                    replies.append(json.loads(delivery.envelope_json)["data"]["n"])
                assert sorted(replies) == [0, 1, 2]


class _Garbage:
    """A 'message' whose bytes do not parse as a ClientEvent (a truncated field)."""

    def SerializeToString(self) -> bytes:  # protobuf's method name
        return b"\x0a\xff\x01"


async def test_a_malformed_frame_after_good_ones_ends_the_stream_after_they_are_answered(
    pki: TestPKI,
) -> None:
    config = make_config(["a", "b"], RULES)
    with trio.fail_after(10):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a") as [a]:
                seq, good = a.frame("send", target_id="b", message_type="t", data_json="{}")
                await a.send_together([good, _Garbage()])  # type: ignore[list-item]
                event = await a.receive()
                assert event.WhichOneof("event") == "result"
                assert event.result.seq == seq and not event.result.HasField("error")
                with pytest.raises(CallFailed) as failed:
                    await a.receive()
                assert (failed.value.code, failed.value.reason) == (
                    "INVALID_ARGUMENT",
                    "malformed_frame",
                )
            async with sessions(server, pki, "b") as [b]:  # the server carries on
                delivery = await b.next_delivery()
                assert json.loads(delivery.envelope_json)["data"] == {}
