"""A well-behaved agent pair whose request/reply must keep working during an attack."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import trio
from rawclient import RawSession, raw_client

from mas._proto import runtime_pb2 as pb

PROBE_AGENTS = ("alice", "bob")  # alice requests, bob replies
PROBE_PERMISSIONS = [{"type": "allow_bidirectional", "agents": list(PROBE_AGENTS)}]
ROUND_TRIP_TIMEOUT = 5.0  # seconds one request/reply may take, even under attack


async def _answer(bob: RawSession) -> None:
    while True:
        delivery = await bob.next_delivery()
        envelope = json.loads(delivery.envelope_json)
        _, reply = bob.frame(
            "reply",
            correlation_id=envelope["meta"]["correlation_id"],
            message_type="pong",
            data_json=json.dumps(envelope["data"]),
        )
        await bob.send_together(
            [reply, pb.ClientEvent(ack=pb.Ack(delivery_id=delivery.delivery_id))]
        )


async def _round_trip(alice: RawSession, n: int) -> None:
    _, request = alice.frame(
        "request", target_id="bob", message_type="ping", data_json=json.dumps({"n": n})
    )
    await alice.send_together([request])
    while True:
        event = await alice.receive()
        kind = event.WhichOneof("event")
        if kind == "result":
            assert not event.result.HasField("error"), event.result
        elif kind in ("delivery", "deliveries"):
            delivery = event.delivery if kind == "delivery" else event.deliveries.deliveries[0]
            assert json.loads(delivery.envelope_json)["data"] == {"n": n}
            await alice.send(ack=pb.Ack(delivery_id=delivery.delivery_id))
            return


class Probe:
    """Request/reply between alice and bob, timed; ``latencies`` in seconds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.baseline: list[float] = []  # round trips before the attack began
        self.attack_started = False

    async def start(self, port: int, pki: Any, *, task_status: Any) -> None:
        """``run``, reporting readiness once a first round trip (before the attack) is done."""
        await self.run(port, pki, ready=task_status)

    async def run(
        self, port: int, pki: Any, *, count: int | None = None, ready: Any = None
    ) -> None:
        """Round trips until cancelled (or ``count`` of them); each must finish in time."""
        async with AsyncExitStack() as stack:
            # Each connection opens its session at once (a silent connection is closed).
            bob_client = await stack.enter_async_context(
                raw_client(port, pki.client_ssl_context("bob"))
            )
            bob = await bob_client.transport()
            await bob.hello("bob1")
            alice_client = await stack.enter_async_context(
                raw_client(port, pki.client_ssl_context("alice"))
            )
            alice = await alice_client.transport()
            await alice.hello("alice1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_answer, bob)
                n = 0
                while count is None or n < count:
                    started = trio.current_time()
                    with trio.fail_after(ROUND_TRIP_TIMEOUT):
                        await _round_trip(alice, n)
                    elapsed = trio.current_time() - started
                    (self.latencies if self.attack_started else self.baseline).append(elapsed)
                    if ready is not None and len(self.baseline) >= 20:
                        ready.started()
                        ready = None
                    n += 1
                    await trio.sleep(0.01)  # a steady trickle, not a load test
                nursery.cancel_scope.cancel()

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
