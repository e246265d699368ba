"""A request's Result that rides with its reply (``Hello.late_results``), over the wire.

A client that announces ``late_results`` and is told so in the Welcome lets the server
hold an accepted request's Result for up to ``LATE_DELAY``: it then travels in the frame
that carries the reply (one frame fewer per request/reply), or alone once the delay is
over, and never after the stream's end. A refused request's Result is not held, and a
client that does not announce it gets every Result at once, as in the base protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.settings
import trio
import trio.testing
from rawclient import CallFailed, RawSession, raw_client

from mas._proto import runtime_pb2 as pb
from mas._purerpc import take_ready
from mas.server import MasServer
from mas.server.transport import LATE_DELAY
from mas.testing import TestPKI, make_config, open_test_server

RULES = [{"type": "allow", "sender": "a", "targets": ["b"]}]


@asynccontextmanager
async def _pair(
    pki: TestPKI, *, late_results: bool
) -> AsyncIterator[tuple[MasServer, RawSession, RawSession, pb.Welcome]]:
    async with open_test_server(make_config(["a", "b"], RULES), pki) as server:
        assert server.address is not None
        port = server.address.port
        async with (
            raw_client(port, pki.client_ssl_context("a")) as ca,
            raw_client(port, pki.client_ssl_context("b")) as cb,
        ):
            a, b = await ca.transport(), await cb.transport()
            welcome = await a.hello("a1", late_results=late_results)
            await b.hello("b1")
            yield server, a, b, welcome


async def _send_request(a: RawSession, target_id: str = "b") -> int:
    seq, frame = a.frame("request", target_id=target_id, message_type="ask", data_json="{}")
    await a.stream.send_message(frame)
    return seq


async def _ends_ok(a: RawSession, unexpected: str) -> None:
    """The stream's next event is its end, with status OK; any frame fails the test."""
    try:
        extra = await a.receive()
    except CallFailed as ended:
        assert ended.code == "OK", ended
    else:
        raise AssertionError(f"{unexpected}: {extra}")


async def test_the_result_waits_for_the_reply_and_comes_in_its_frame(
    pki: TestPKI, mock_clock: trio.testing.MockClock
) -> None:
    """On a clock that does not move, only the reply can take the Result out."""
    with trio.fail_after(10):
        async with _pair(pki, late_results=True) as (_, a, b, welcome):
            assert welcome.late_results is True
            seq = await _send_request(a)
            request = await b.next_delivery()
            correlation_id = json.loads(request.envelope_json)["meta"]["correlation_id"]
            queued: list[pb.ServerEvent] = []
            assert take_ready(a.stream, queued, 10) is None and not queued  # nothing yet
            await b.call(
                "reply",
                correlation_id=correlation_id,
                message_type="answer",
                data_json="{}",
                delivery_id=request.delivery_id,
            )
            first = await a.receive()
            assert first.WhichOneof("event") == "result" and first.result.seq == seq, first
            assert first.result.correlation_id == correlation_id
            # The reply came in the same read: it was queued with the Result.
            take_ready(a.stream, queued, 10)
            assert [e.WhichOneof("event") for e in queued] in (["delivery"], ["deliveries"])


async def test_without_a_reply_the_result_comes_alone_after_the_delay(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with _pair(pki, late_results=True) as (_, a, b, _welcome):
            started = trio.current_time()
            seq = await _send_request(a)
            event = await a.receive()
            assert event.WhichOneof("event") == "result" and event.result.seq == seq
            assert not event.result.HasField("error")
            assert LATE_DELAY <= trio.current_time() - started < 10 * LATE_DELAY
            await b.next_delivery()  # stored and delivered all the same


async def test_a_refused_requests_result_is_not_held(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with _pair(pki, late_results=True) as (_, a, _b, _welcome):
            started = trio.current_time()
            seq = await _send_request(a, target_id="nobody-allowed")
            event = await a.receive()
            assert event.result.seq == seq and event.result.error.code == "PERMISSION_DENIED"
            assert trio.current_time() - started < LATE_DELAY


async def test_a_held_result_is_written_before_the_stream_ends(
    pki: TestPKI, mock_clock: trio.testing.MockClock
) -> None:
    """The client half-closes with a Result still held (the clock never lets it go)."""
    with trio.fail_after(10):
        async with _pair(pki, late_results=True) as (_, a, b, _welcome):
            seq = await _send_request(a)
            await b.next_delivery()  # the request is in: its Result is held
            await a.close()
            event = await a.receive()
            assert event.WhichOneof("event") == "result" and event.result.seq == seq
            await _ends_ok(a, "a frame after the Result")


async def test_a_client_that_does_not_announce_it_gets_every_result_at_once(
    pki: TestPKI, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with _pair(pki, late_results=False) as (_, a, b, welcome):
            assert welcome.late_results is False
            started = trio.current_time()
            seq = await _send_request(a)
            event = await a.receive()
            assert event.WhichOneof("event") == "result" and event.result.seq == seq
            assert trio.current_time() - started < LATE_DELAY
            await b.next_delivery()


async def test_a_held_result_never_holds_the_close_of_a_client_that_reads_nothing(
    pki: TestPKI, mock_clock: trio.testing.MockClock
) -> None:
    """Its client shrinks its stream's window to nothing: the held Result cannot be
    written without waiting, so the stream ends without it (its status is not
    flow-controlled) instead of its close waiting, unbounded, for a window update."""
    async with _pair(pki, late_results=True) as (_, a, b, _welcome):
        h2_connection = a.stream._socket._grpc_connection.h2_connection
        h2_connection.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        await a.stream._socket.flush()
        await _send_request(a)
        await b.next_delivery()  # the request is stored: its Result is held
        await a.close()
        mock_clock.rate = 1.0  # from here on a real-time bound (the late writer has ended)
        with trio.fail_after(10):
            await _ends_ok(a, "written past a closed window")
