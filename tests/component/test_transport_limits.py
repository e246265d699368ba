"""The HTTP/2 connection's time limits, driven over memory streams with a MockClock.

``ServerSocket`` (the server's purerpc connection with our limits) reads raw frames that
the test writes; time is Trio's mock clock, so a 30-second limit costs nothing.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import trio.lowlevel
import trio.testing
from purerpc.grpclib.events import RequestReceived
from rawclient import H2Attacker, grpc_message

from mas._proto import runtime_pb2 as pb
from mas._purerpc import release_stream
from mas.server.guard import GuardLimits
from mas.server.refusal import Refusal
from mas.server.transport import RpcStream, ServerLimits, ServerSocket

TIMEOUT = 30.0  # unfinished_message_timeout of these tests, seconds
HELLO = pb.ClientEvent(hello=pb.Hello(instance_id="i1"))


class _Bytes(anyio.abc.ByteStream):
    """One end of a Trio memory stream pair, as the anyio byte stream purerpc reads."""

    def __init__(self, stream: trio.testing.MemoryStream | Any) -> None:
        self._stream = stream

    async def send(self, item: bytes) -> None:
        await self._stream.send_all(item)

    async def receive(self, max_bytes: int = 65_536) -> bytes:
        data: bytes = await self._stream.receive_some(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Any:
        # purerpc sets TCP options on the raw socket; a memory stream has none to set.
        return {anyio.abc.SocketAttribute.raw_socket: lambda: _NoSocketOptions()}


class _NoSocketOptions:
    def setsockopt(self, *args: Any) -> None:
        pass


def _limits() -> ServerLimits:
    return ServerLimits(
        max_message_bytes=1 << 20,
        max_concurrent_streams=64,
        max_connections=10,
        handshake_timeout=10.0,
        first_message_timeout=10.0,
        write_timeout=10.0,
        guard=GuardLimits(500, 100, 100, 8 << 20, unfinished_message_timeout=TIMEOUT),
    )


async def _open_stream(attacker: H2Attacker, spawned: list[Any]) -> Any:
    """Open a Transport stream; the server's stream object for it, headers taken."""
    await attacker.preface(window=2**24)
    stream_id, headers = attacker.headers("Transport")
    await attacker.send(headers)
    while not spawned:
        await trio.lowlevel.checkpoint()
    stream = spawned[0]
    assert isinstance(await stream._incoming_events[1].receive(), RequestReceived)
    assert stream.stream_id == stream_id
    return stream


@pytest.fixture
async def connection(autojump_clock: trio.testing.MockClock) -> Any:
    server_end, client_end = trio.testing.memory_stream_pair()
    socket = ServerSocket(_Bytes(server_end), _limits())
    spawned: list[Any] = []

    def spawn(stream: Any) -> None:
        socket.rpc_started()
        spawned.append(stream)

    async with socket, trio.open_nursery() as nursery:
        nursery.start_soon(socket.serve, spawn)
        yield socket, H2Attacker(_Bytes(client_end)), spawned
        nursery.cancel_scope.cancel()
    for stream in spawned:
        release_stream(stream)


async def test_message_left_unfinished_is_refused_at_the_timeout_and_its_buffer_freed(
    connection: Any, autojump_clock: trio.testing.MockClock
) -> None:
    socket, attacker, spawned = connection
    stream = await _open_stream(attacker, spawned)
    rpc = RpcStream(stream, write_timeout=10.0)
    began = trio.current_time()
    # 60 KB of a 1 MB message, then nothing more.
    partial = grpc_message(b"\0" * 60_000, length=1 << 20)
    await attacker.send(attacker.data(stream.stream_id, partial))
    with pytest.raises(Refusal) as refused, trio.fail_after(2 * TIMEOUT):
        await rpc.receive()
    assert (refused.value.code, refused.value.reason) == ("DEADLINE_EXCEEDED", "unfinished_message")
    assert trio.current_time() - began == pytest.approx(TIMEOUT, abs=0.1)
    assert socket._grpc_connection.buffered() == 0
    # What the client still sends on that stream is dropped, not buffered.
    await attacker.send(attacker.data(stream.stream_id, b"\0" * 60_000))
    await trio.sleep(1)
    assert socket._grpc_connection.buffered() == 0


async def test_a_message_finished_in_time_is_delivered_and_the_next_gets_its_own_clock(
    connection: Any, autojump_clock: trio.testing.MockClock
) -> None:
    _socket, attacker, spawned = connection
    stream = await _open_stream(attacker, spawned)
    rpc = RpcStream(stream, write_timeout=10.0)
    stream.expect_message_type(pb.ClientEvent)
    body = HELLO.SerializeToString()
    message = grpc_message(body)
    # Each message is finished 20 s after it began (under the 30 s limit), and the next one
    # begins in the same frame as the end of the last: three in a row, 60 s in all.
    await attacker.send(attacker.data(stream.stream_id, message[:3]))
    for _ in range(3):
        await trio.sleep(20)
        await attacker.send(attacker.data(stream.stream_id, message[3:] + message[:3]))
        with trio.fail_after(1):
            assert (await rpc.receive()) == HELLO
    # The fourth is never finished: refused 30 s after it began.
    began = trio.current_time()
    with pytest.raises(Refusal) as refused, trio.fail_after(2 * TIMEOUT):
        await rpc.receive()
    assert refused.value.reason == "unfinished_message"
    assert trio.current_time() - began == pytest.approx(TIMEOUT, abs=0.1)
