"""What the server reads from the SDK per message, counted by kind: a regression bound.

A real server (memory store) and SDK agents over loopback mTLS in one process; a spy on
the server's ``RpcStream.receive_batch`` counts the client frames of every kind. Per
request/reply the SDK sends the request, the reply (which acks the request:
``reply_acks``) and one ack of the reply's delivery (riding in the next frame or written
alone after ``ACK_DELAY``); per one-way send, the send and its ack. Anything more is a
frame the server reads, parses and handles for nothing: the SDK once nacked every request
its reply had acked, one stray frame per request/reply that no other test saw.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
from sdk_agents import Echo, Plain, Sink, settled

from mas.server import transport
from mas.testing import TestPKI, make_config, open_test_server

WARMUP = 5
MESSAGES = 30


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Client frames the server read, by kind (``acks`` also counts the ids as ``acked``)."""
    seen: Counter[str] = Counter()
    receive_batch = transport.RpcStream.receive_batch

    async def counting(self: transport.RpcStream, limit: int) -> Any:
        batch = await receive_batch(self, limit)
        for frame in batch or ():
            descriptor = frame.DESCRIPTOR
            if "event" not in descriptor.oneofs_by_name:  # a unary call's request
                continue
            kind = frame.WhichOneof("event")
            seen[kind] += 1
            if kind == "acks":
                seen["acked"] += len(frame.acks.delivery_ids)
            elif kind == "ack":
                seen["acked"] += 1
        return batch

    monkeypatch.setattr(transport.RpcStream, "receive_batch", counting)
    return seen


async def test_client_frames_per_request_reply_and_per_send(
    pki: TestPKI, frames: Counter[str]
) -> None:
    rules = [{"type": "allow", "sender": "asker", "targets": ["echo", "sink"]}]
    config = make_config(["asker", "echo", "sink"], rules)
    with trio.fail_after(30):
        async with open_test_server(config, pki) as server:
            assert server.address is not None
            addr = f"127.0.0.1:{server.address.port}"
            echo = Echo("echo", server_addr=addr, tls=pki.client_ssl_context("echo"))
            sink = Sink("sink", server_addr=addr, tls=pki.client_ssl_context("sink"))
            asker = Plain("asker", server_addr=addr, tls=pki.client_ssl_context("asker"))
            async with echo, sink, asker:
                for i in range(WARMUP):
                    await asker.request("echo", "ping", {"i": i}, timeout=10)
                await settled(server, 2 * WARMUP)
                frames.clear()
                for i in range(MESSAGES):
                    await asker.request("echo", "ping", {"i": i}, timeout=10)
                await settled(server, 2 * (WARMUP + MESSAGES))
                requests = frames.copy()
                frames.clear()
                for i in range(MESSAGES):
                    await asker.send("sink", "note", {"i": i})
                await settled(server, 2 * (WARMUP + MESSAGES) + MESSAGES)
                sends = frames.copy()
    # Each request/reply: its request, its reply (acking the request), the reply's ack.
    assert requests["request"] == requests["reply"] == MESSAGES, requests
    assert requests["acked"] == MESSAGES, requests  # the replies' deliveries only
    allowed = {"ack", "acks", "acked", "heartbeat"}  # a heartbeat: time, not messages
    assert set(requests) <= {"request", "reply", *allowed}, requests
    # Each send: the send and the sink's ack (acks ride together, or in the next frame).
    assert sends["send"] == MESSAGES and sends["acked"] == MESSAGES, sends
    assert set(sends) <= {"send", *allowed}, sends
