"""Repairs and fast paths for purerpc 0.8, shared by the server and client adapters.

Speed: purerpc writes every message as its own HTTP/2 DATA frame and its own TLS
write, woken through an anyio event per frame. ``CoalescingWriter`` writes all
that is ready in one TLS write (waiting one scheduler pass for other writers only
when other tasks are ready to run), and ``write_messages`` puts several messages in
one DATA frame (gRPC allows several length-prefixed messages in one), so a busy
stream costs one write per batch. A DATA frame on an open stream is framed here
(``send_data``): h2 would build a frame object, run two state machines and format
log calls for each, none of which changes anything for such a frame.

purerpc leaves three things undone that a long-running Trio program needs:

* it never closes the in-memory event channel of an RPC stream (anyio warns
  about each one when it is garbage-collected): ``release_stream``;
* on the client, it never closes the TLS socket under a channel, and when the
  connection drops its reader task just ends, so every open stream waits
  forever: ``open_channel`` ends each open stream with ``UNAVAILABLE
  connection_lost`` instead, marks the channel closed, and closes the socket on
  exit.

purerpc is pinned to 0.8.0, whose internals these rely on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import h2.connection
import h2.exceptions
import h2.stream
import trio
from google.protobuf.message import DecodeError
from purerpc.grpc_proto import GRPCProtoSocket
from purerpc.grpc_socket import SocketWrapper
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import (
    MessageReceived,
    RequestReceived,
    ResponseEnded,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import ProtocolError
from purerpc.grpclib.status import Status, StatusCode

log = logging.getLogger("mas.transport")

CONNECTION_LOST: Final = "connection_lost"  # status message of streams cut by a dropped connection
_CLOSE_TIMEOUT: Final = 1.0  # seconds allowed to close a socket
_WRITE_CHUNK: Final = 256 * 1024  # bytes written at most per TLS send (each under its deadline)

_CONNECTION_ERRORS: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.ProtocolError,
    ProtocolError,
    ssl.SSLError,
    OSError,
    KeyError,  # purerpc indexes its stream table with ids a broken peer may send
)


_PREFIX: Final = struct.Struct(">?I")  # gRPC message prefix: compressed flag, length
# HTTP/2 frame header of a DATA frame: 24-bit length (as 16 + 8), type 0, no flags, stream.
_DATA_HEADER: Final = struct.Struct(">HBBBI")
# Where a DATA frame (without END_STREAM) changes no state of h2's connection or stream.
_OPEN_CONNECTION: Final = frozenset(
    {h2.connection.ConnectionState.SERVER_OPEN, h2.connection.ConnectionState.CLIENT_OPEN}
)
_SENDING_STREAM: Final = frozenset(
    {h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE}
)


def send_data(connection: GRPCConnection, stream_id: int, data: bytes) -> None:
    """Queue ``data`` as one DATA frame of ``stream_id`` (no END_STREAM), as h2 would.

    On an open stream whose windows and frame size admit it, the frame is written to h2's
    output buffer directly and the two flow-control windows are charged, which is all
    h2's ``send_data`` does for such a frame; anything else goes through h2 (its checks
    and its errors).
    """
    h2_connection = connection.h2_connection
    stream = h2_connection.streams.get(stream_id)
    size = len(data)
    if (
        stream is None
        or stream.state_machine.state not in _SENDING_STREAM
        or h2_connection.state_machine.state not in _OPEN_CONNECTION
        or size > h2_connection.outbound_flow_control_window
        or size > stream.outbound_flow_control_window
        or size > h2_connection.max_outbound_frame_size
    ):
        connection.send_data(stream_id, data)
        return
    output = h2_connection._data_to_send
    output += _DATA_HEADER.pack(size >> 8, size & 0xFF, 0, 0, stream_id)
    output += data
    h2_connection.outbound_flow_control_window -= size
    stream.outbound_flow_control_window -= size


class CoalescingWriter(SocketWrapper):  # type: ignore[misc]
    """purerpc's socket writer task, writing everything that is ready in one TLS write.

    purerpc's own writer wakes for every flushed frame. This one, once woken, lets the
    other tasks that are ready run first (one scheduler pass), so the frames they queue
    go out in the same write: under load one write carries many messages, and when idle
    the delay is one pass of the scheduler.
    """

    def __init__(
        self,
        connection: GRPCConnection,
        stream: anyio.abc.ByteStream,
        write_timeout: float | None = None,
    ) -> None:
        super().__init__(connection, stream)
        self._flush_event = trio.Event()
        self._write_timeout = math.inf if write_timeout is None else write_timeout
        self._in_flight = 0  # bytes taken from the connection and not yet written
        self._drained = trio.Event()

    def output_size(self) -> int:
        """Bytes the connection has to send and has not handed to the kernel yet."""
        return len(self._grpc_connection.h2_connection._data_to_send) + self._in_flight

    async def wait_output_below(self, size: int) -> None:
        """Wait until ``output_size()`` is below ``size`` (the writer makes progress)."""
        while self.output_size() >= size:
            self.wake()
            await self._drained.wait()
            self._drained = trio.Event()

    async def _writer_thread(self) -> None:
        connection = self._grpc_connection
        while True:
            data = connection.data_to_send(_WRITE_CHUNK)
            if data:
                if len(data) < _WRITE_CHUNK and _others_ready():
                    # Let them queue their frames first: one write for all.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    more = connection.data_to_send(_WRITE_CHUNK - len(data))
                    if more:
                        data += more
                self._in_flight = len(data)
                # A peer that takes less than a chunk per write_timeout is gone, for us.
                with trio.fail_after(self._write_timeout):
                    await self._stream.send(data)
                self._in_flight = 0
                self._drained.set()
            elif self._running:
                self._drained.set()
                await self._flush_event.wait()
                self._flush_event = trio.Event()
            else:
                return

    async def flush(self) -> None:
        self.wake()

    def wake(self) -> None:
        """Have the writer send what the HTTP/2 connection holds, if it holds anything.

        (An incoming frame that needs no answer, such as an ack or a heartbeat, then costs
        no wake-up of the writer task.)
        """
        if self._grpc_connection.h2_connection._data_to_send:
            self._flush_event.set()


def _others_ready() -> bool:
    """True when other tasks are queued to run next (they may queue frames too).

    Trio's run queue, read directly: ``current_statistics()`` also counts the I/O
    backend's waiters, a walk over every registered socket. Should Trio's internals
    change, the answer is "yes" (the writer then always waits one pass, as before).
    """
    try:
        return bool(trio._core._run.GLOBAL_RUN_CONTEXT.runner.runq)
    except AttributeError:
        return True


async def write_messages(stream: Any, messages: Sequence[Any]) -> None:
    """Send protobuf ``messages`` on a purerpc stream, in order, in as few DATA frames as fit.

    A frame never exceeds the peer's frame size or flow-control window; a message that does
    not fit goes through purerpc's own path, which waits for window updates. The caller
    serialises writers (one at a time per stream).
    """
    connection = stream._grpc_connection
    stream_id = stream.stream_id
    room = connection.flow_control_window(stream_id)
    pending = bytearray()
    for message in messages:
        data = message.SerializeToString()
        size = _PREFIX.size + len(data)
        if pending and len(pending) + size > room:
            send_data(connection, stream_id, bytes(pending))
            pending.clear()
            room = connection.flow_control_window(stream_id)
        if size <= room:
            pending += _PREFIX.pack(False, len(data))
            pending += data
        else:
            await stream._send(data)
            room = connection.flow_control_window(stream_id)
    if pending:
        send_data(connection, stream_id, bytes(pending))
    await stream._socket.flush()


class Malformed:
    """Stands for a queued message that did not decode (``take_ready`` stops at it)."""

    def __init__(self, error: DecodeError) -> None:
        self.error = error


def take_ready(stream: Any, batch: list[Any], limit: int) -> Any:
    """Move messages already queued on ``stream`` into ``batch`` (decoded), without waiting.

    Stops at ``limit`` messages in ``batch``, when nothing more is queued (returns None), or
    at the first queued event that is not a well-formed message: it is returned (a
    ``Malformed`` for a message that did not decode) for the caller to handle next. Each
    message's bytes go back to the peer's flow-control window, as purerpc's own receive does.
    """
    incoming = stream._incoming_events[1]
    connection = stream._grpc_connection
    stream_id = stream.stream_id
    message_type = stream._incoming_message_type
    taken = False
    try:
        while len(batch) < limit:
            try:
                event = incoming.receive_nowait()
            except anyio.WouldBlock:
                return None
            if type(event) is not MessageReceived:
                return event
            connection.acknowledge_received_data(stream_id, event.flow_controlled_length)
            taken = True
            message = message_type()
            try:
                message.ParseFromString(event.data)
            except DecodeError as exc:
                return Malformed(exc)
            batch.append(message)
        return None
    finally:
        if taken:
            stream._socket.wake()  # window updates, if any are due


def release_stream(stream: Any) -> None:
    """Close a finished purerpc stream's internal event channel (both ends)."""
    for end in getattr(stream, "_incoming_events", ()):
        end.close()


class _ClientSocket(GRPCProtoSocket):  # type: ignore[misc]
    """A client purerpc socket whose streams learn when the connection is gone.

    It writes through ``CoalescingWriter`` and hands received events to their streams
    without a scheduler pass per event (a stream's queue is bounded by its flow-control
    window, which its reader gives back only as it reads).
    """

    closed = False

    def __init__(self, config: GRPCConfiguration, sock: anyio.abc.ByteStream) -> None:
        super().__init__(config, sock)
        self._socket = CoalescingWriter(self._grpc_connection, sock)

    async def _reader_thread(self) -> None:
        try:
            await self._read_loop()
        except _CONNECTION_ERRORS as exc:
            log.debug("connection lost: %r", exc)
        finally:
            self.closed = True
            lost = Status(StatusCode.UNAVAILABLE, status_message=CONNECTION_LOST)
            for stream in list(self._streams.values()):
                if stream._end_stream_event is None:
                    with contextlib.suppress(
                        anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
                    ):
                        stream._incoming_events[0].send_nowait(
                            ResponseEnded(stream.stream_id, lost)
                        )

    async def _read_loop(self) -> None:
        streams = self._streams
        while True:
            try:
                data = await self._socket.recv(self._receive_buffer_size)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            events = self._grpc_connection.receive_data(data)
            self._socket.wake()
            for event in events:
                if isinstance(event, WindowUpdated):
                    if event.stream_id == 0:
                        targets = list(streams.values())
                    else:
                        targets = [s for s in (streams.get(event.stream_id),) if s is not None]
                    for target in targets:
                        target._flow_control_update_event.set()
                    continue
                if isinstance(event, RequestReceived):
                    raise ProtocolError("server opened a stream toward the client")
                stream = streams.get(event.stream_id)
                if stream is None:
                    continue
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    stream._incoming_events[0].send_nowait(event)
                if isinstance(event, ResponseEnded):
                    stream._close_remote()


class Channel:
    """What ``purerpc.Client`` needs of a channel, plus ``closed``."""

    def __init__(self, host: str, port: int, grpc_socket: _ClientSocket) -> None:
        self._host = host
        self._port = port
        self._grpc_socket = grpc_socket

    @property
    def closed(self) -> bool:
        """True once the connection has dropped; new RPCs would never be answered."""
        return self._grpc_socket.closed


@asynccontextmanager
async def open_channel(host: str, port: int, ssl_context: ssl.SSLContext) -> AsyncIterator[Channel]:
    """Connect over TLS and yield a channel; on exit close its streams and socket.

    Connection errors (``OSError``, TLS failures) propagate from the connect.
    """
    stream = await anyio.connect_tcp(
        host, port, ssl_context=ssl_context, tls=True, tls_standard_compatible=False
    )
    grpc_socket = _ClientSocket(GRPCConfiguration(client_side=True), stream)
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(grpc_socket)
            yield Channel(host, port, grpc_socket)
    finally:
        grpc_socket.closed = True
        for open_stream in list(grpc_socket._streams.values()):
            release_stream(open_stream)
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.aclose()
