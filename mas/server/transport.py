"""One RPC's stream and one connection's HTTP/2 state, with the server's limits.

``RpcStream`` is a purerpc stream seen as typed messages in and out (a batch at a time),
with errors as ``RpcError``. ``ServerSocket`` is purerpc's server-side HTTP/2 connection with
a stream cap, flow-control windows sized to the largest accepted message, a message over the
size limit refused on its own stream, and a read loop that hands events to streams without
a scheduler pass each. ``mas.server.grpc`` builds the listener and the dispatcher on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, NamedTuple

import anyio
import anyio.abc
import h2.exceptions
import h2.settings
import trio
from google.protobuf.message import DecodeError, Message
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState
from purerpc.grpclib.connection import GRPCConfiguration, GRPCConnection
from purerpc.grpclib.events import (
    MessageReceived,
    RequestEnded,
    RequestReceived,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import MessageTooLargeError
from purerpc.grpclib.status import Status, StatusCode

from .._purerpc import CoalescingWriter, Malformed, take_ready, write_messages

_FRAME_OVERHEAD: Final = 64 * 1024  # bytes of protobuf framing allowed beyond the payload limit
_RECEIVE_CHUNK: Final = 64 * 1024  # bytes read from the TLS stream at a time


class RpcError(Exception):
    """End the current RPC with a gRPC status (``code`` is a StatusCode name)."""

    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{code} {reason}")


class RpcStream:
    """A purerpc stream seen as typed messages in and out, errors as ``RpcError``.

    ``receive_batch`` and ``send_many`` move every frame that is ready at once: the frames
    read from one socket read are handled together, and the answers to them go out as one
    HTTP/2 DATA frame (gRPC allows several length-prefixed messages in one), so a busy
    stream costs one write per batch instead of one per message.
    """

    __slots__ = ("_held", "_lock", "_stream", "_write_timeout")

    def __init__(self, stream: GRPCProtoStream, write_timeout: float) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self._write_timeout = write_timeout
        self._held: Any = None  # an event taken while draining, handled by the next receive

    async def receive(self) -> Any | None:
        """The next message, or None when the client has finished sending."""
        while True:
            event = self._held
            if event is not None:
                self._held = None
            else:
                event = await self._stream._incoming_events[1].receive()
            if type(event) is MessageReceived:
                self._acknowledge(event)
                await self._stream._socket.flush()
                return self._decode(event.data)
            if isinstance(event, Malformed):
                raise RpcError("INVALID_ARGUMENT", "malformed_frame")
            if isinstance(event, _OversizeMessage):
                raise RpcError("RESOURCE_EXHAUSTED", "message_too_large")
            if isinstance(event, RequestEnded):
                self._stream._end_stream_event = event
                return None
            # RequestReceived: the headers, already read by the dispatcher

    async def receive_batch(self, limit: int) -> list[Any] | None:
        """The next message and those already waiting behind it (at most ``limit``).

        None when the client has finished sending. Waits only for the first message; an end
        of stream or a bad frame met while collecting is reported by the next call.
        """
        first = await self.receive()
        if first is None:
            return None
        batch = [first]
        self._held = take_ready(self._stream, batch, limit)
        return batch

    def _acknowledge(self, event: MessageReceived) -> None:
        """Give the message's bytes back to the peer's flow-control window."""
        self._stream._grpc_connection.acknowledge_received_data(
            self._stream.stream_id, event.flow_controlled_length
        )

    def _decode(self, data: bytes) -> Any:
        message = self._stream._incoming_message_type()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            raise RpcError("INVALID_ARGUMENT", "malformed_frame") from exc
        return message

    async def send(self, message: Message) -> None:
        """Send one message (see ``send_many``)."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[Message]) -> None:
        """Send messages in order, as few DATA frames as fit; concurrent senders are serialised.

        A client that stops reading stalls the write on HTTP/2 flow control;
        after ``write_timeout`` the RPC ends with ``DEADLINE_EXCEEDED
        slow_consumer`` rather than holding its resources forever.
        """
        await _acquire(self._lock)
        try:
            with trio.move_on_after(self._write_timeout) as waited:
                await write_messages(self._stream, messages)
        finally:
            self._lock.release()
        if waited.cancelled_caught:
            raise RpcError("DEADLINE_EXCEEDED", "slow_consumer")

    @property
    def open_for_sending(self) -> bool:
        return self._stream.state in (GRPCStreamState.OPEN, GRPCStreamState.HALF_CLOSED_REMOTE)

    async def close(self, code: str = "OK", reason: str = "") -> None:
        """Finish the RPC with a status, unless it is finished already."""
        async with self._lock:
            if self.open_for_sending:
                await self._stream.close(Status(StatusCode[code], status_message=reason))


async def _acquire(lock: trio.Lock) -> None:
    """Take ``lock``; without a scheduler pass when it is free (the usual case)."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


class ServerLimits(NamedTuple):
    """Transport limits applied before any handler runs."""

    max_message_bytes: int
    max_concurrent_streams: int
    max_connections: int
    handshake_timeout: float
    first_message_timeout: float  # a unary RPC's request must arrive within this
    write_timeout: float  # a response the client does not read within this ends the RPC


# -- HTTP/2 with our limits -------------------------------------------------------


class _OversizeMessage(MessageReceived):  # type: ignore[misc]
    """Stands in the stream's event queue for a message that exceeded the limit."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(stream_id, b"", 0)


class _LimitedConnection(GRPCConnection):  # type: ignore[misc]
    """purerpc's HTTP/2 state machine with a stream cap and per-stream size errors."""

    def __init__(self, config: GRPCConfiguration, max_concurrent_streams: int) -> None:
        self._max_concurrent_streams = max_concurrent_streams
        super().__init__(config)

    def _set_h2_connection_local_settings(self) -> None:
        codes = h2.settings.SettingCodes
        self.h2_connection.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: self._max_concurrent_streams,
                # One whole message may be in flight per stream, no more.
                codes.INITIAL_WINDOW_SIZE: self.config.max_message_length + _FRAME_OVERHEAD,
                codes.MAX_FRAME_SIZE: 2**14 * 4,
                codes.MAX_HEADER_LIST_SIZE: self.MAX_HEADER_LIST_SIZE,
            },
        )
        self.h2_connection.max_inbound_frame_size = 2**14 * 4

    def _give_back_window(self, stream_id: int, length: int) -> None:
        if length <= 0:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2_connection.acknowledge_received_data(length, stream_id)

    def _data_received(self, event: Any) -> list[Any]:
        buffer = self.message_read_buffers.get(event.stream_id)
        if buffer is None:
            # The stream was refused (oversize); drop the rest of it, keep the window open.
            self._give_back_window(event.stream_id, event.flow_controlled_length)
            return []
        try:
            buffer.data_received(event.data, event.flow_controlled_length)
        except MessageTooLargeError:
            del self.message_read_buffers[event.stream_id]
            self._give_back_window(event.stream_id, event.flow_controlled_length)
            return [_OversizeMessage(event.stream_id)]
        return [
            MessageReceived(event.stream_id, message, length)
            for message, length in buffer.read_all_complete_messages_flowcontrol()
        ]

    def _stream_ended(self, event: Any) -> list[Any]:
        self.message_read_buffers.pop(event.stream_id, None)
        return [RequestEnded(event.stream_id)]

    def _stream_reset(self, event: Any) -> list[Any]:
        self.message_read_buffers.pop(event.stream_id, None)
        return [RequestEnded(event.stream_id)]


class ServerSocket(GRPCProtoSocket):  # type: ignore[misc]
    """A server-side purerpc socket with our connection class and our read loop."""

    def __init__(self, stream: anyio.abc.ByteStream, limits: ServerLimits) -> None:
        AsyncExitStack.__init__(self)
        # Frames up to twice the payload limit are parsed, so that a payload just over the
        # limit is refused by the router with a reason and the stream carries on.
        frame_limit = 2 * limits.max_message_bytes + _FRAME_OVERHEAD
        config = GRPCConfiguration(client_side=False, max_message_length=frame_limit)
        self._grpc_connection = _LimitedConnection(config, limits.max_concurrent_streams)
        self._socket = CoalescingWriter(self._grpc_connection, stream)
        self._receive_buffer_size = _RECEIVE_CHUNK
        self._streams: dict[int, GRPCProtoStream] = {}

    async def serve(self, spawn: Callable[[GRPCProtoStream], None]) -> None:
        """Read frames until the peer goes away, calling ``spawn`` for each new RPC.

        Events are handed to their streams without waiting: a stream's queue is bounded
        by its HTTP/2 flow-control window, which its reader gives back only as it reads.
        """
        streams = self._streams
        while True:
            try:
                data = await self._socket.recv(self._receive_buffer_size)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            events = self._grpc_connection.receive_data(data)
            await self._socket.flush()
            for event in events:
                if isinstance(event, WindowUpdated):
                    targets = (
                        list(streams.values())
                        if event.stream_id == 0
                        else [s for s in (streams.get(event.stream_id),) if s is not None]
                    )
                    for stream in targets:
                        await stream._set_flow_control_update()
                    continue
                if isinstance(event, RequestReceived):
                    self._allocate_stream(event.stream_id)
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    stream._incoming_events[0].send_nowait(event)
                if isinstance(event, RequestReceived):
                    spawn(stream)
                elif isinstance(event, RequestEnded):
                    stream._close_remote()
