"""When the SDK writes an ack: in the next frame, or alone ``ACK_DELAY`` after it was queued.

``Transport``'s ack timing is pure bookkeeping around its writes, so it is tested here on
Trio's ``MockClock`` with the writes recorded instead of sent (the wire itself, and that the
acks reach a real server, are tested end to end in ``tests/e2e/test_agents.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from mas._proto import runtime_pb2 as pb
from mas.agent import client
from mas.agent.client import ACK_DELAY, Transport


class Writes:
    """The frames of each write, by kind: ``[["ack", "request"], ["acks"]]``."""

    def __init__(self) -> None:
        self.kinds: list[list[str]] = []
        self.changed = trio.Event()

    async def write(self, stream: Any, events: list[pb.ClientEvent]) -> None:
        self.kinds.append([event.WhichOneof("event") for event in events])
        self.changed.set()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    recorder = Writes()
    monkeypatch.setattr(client._purerpc, "write_messages", recorder.write)
    return recorder


@asynccontextmanager
async def running_acker(transport: Transport, *, batching: bool) -> AsyncIterator[None]:
    """``transport``'s acker running (and waiting) in the block; cancelled after it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: transport.run_acker(batching=batching))
        await trio.testing.wait_all_tasks_blocked()
        yield
        nursery.cancel_scope.cancel()


def _request() -> pb.ClientEvent:
    return pb.ClientEvent(request=pb.StreamRequest(seq=1, target_id="b", message_type="t"))


async def test_a_queued_ack_rides_in_the_next_frame_and_the_acker_stays_asleep(
    writes: Writes, mock_clock: trio.testing.MockClock
) -> None:
    transport = Transport(object(), write_timeout=5.0)
    async with running_acker(transport, batching=True):
        transport.ack_soon("d1")
        transport.ack_soon("d2")
        await transport.send(_request())
        assert writes.kinds == [["acks", "request"]]
        mock_clock.jump(10 * ACK_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == [["acks", "request"]]  # nothing left for the acker


async def test_a_lone_ack_is_written_alone_ack_delay_after_it_was_queued(
    writes: Writes, mock_clock: trio.testing.MockClock
) -> None:
    transport = Transport(object(), write_timeout=5.0)
    async with running_acker(transport, batching=True):
        transport.ack_soon("d1")
        mock_clock.jump(ACK_DELAY / 2)
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == []  # waiting for a frame to ride on
        transport.ack_soon("d2")  # joins the first: its deadline does not move
        mock_clock.jump(ACK_DELAY / 2)
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == [["acks"]]
        # The next one waits its own delay again.
        transport.ack_soon("d3")
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == [["acks"]]
        mock_clock.jump(ACK_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == [["acks"], ["ack"]]


async def test_acks_queued_before_the_acker_starts_are_written_after_the_delay(
    writes: Writes, mock_clock: trio.testing.MockClock
) -> None:
    transport = Transport(object(), write_timeout=5.0)
    transport.ack_soon("d1")  # before the Welcome: no acker yet, and no frame takes it
    await transport.send(_request())
    assert writes.kinds == [["request"]]
    async with running_acker(transport, batching=False):
        assert writes.kinds == [["request"]]
        mock_clock.jump(ACK_DELAY)
        await trio.testing.wait_all_tasks_blocked()
        assert writes.kinds == [["request"], ["ack"]]
