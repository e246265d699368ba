"""Repairs and fast paths for purerpc 0.8, shared by the server and client adapters.

Speed: purerpc writes every message as its own HTTP/2 DATA frame and its own TLS
write, from a writer task woken through an anyio event per frame, and Trio passes
through the scheduler once more after every socket send; anyio's memory stream, which
carries a stream's incoming events, passes twice for every frame that finds it empty.
Here a task that queues frames writes them itself (``CoalescingWriter.flush``) over a
``DirectSocket``, whose send hands the bytes to the kernel at once and leaves only what
the socket cannot take to the writer task: no wake-up and no scheduler pass per write.
A stream's events wait on an ``EventQueue`` (one pass). ``write_messages`` puts several
messages in one DATA frame (gRPC allows several length-prefixed messages in one), so a
busy stream costs one write per batch. DATA frames on open streams are framed and read
without h2's per-frame bookkeeping (``mas._frames``; the client's ``FastConnection``),
which changes nothing for such a frame but costs about 30 µs of CPU per frame read.

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
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import anyio
import anyio.abc
import h2.events
import h2.exceptions
import trio
from anyio.streams.tls import TLSStream
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

from ._frames import receive_frames, send_data, whole_messages_of
from ._sched import others_ready

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


# What a TLS write raises once the connection is unusable.
_BROKEN: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ssl.SSLError,
    OSError,
)

_PREFIX: Final = struct.Struct(">?I")  # gRPC message prefix: compressed flag, length


class DirectSocket(anyio.abc.ByteStream):
    """The TCP stream under a connection's TLS: sends in turn, and, once ``direct``, at once.

    TLS writes from two tasks: the connection's writer, and its reader whenever reading a
    record makes OpenSSL answer (a refused renegotiation's alert, a TLS 1.3 KeyUpdate).
    anyio refuses a second concurrent send with ``BusyResourceError``; here the second
    waits its turn (a fair lock, so records keep their order).

    Once ``direct`` is set (by ``CoalescingWriter``, after the handshake), a send never
    waits: it goes to the kernel at once when the socket takes it all (no scheduler pass,
    where Trio's own send makes one after every write), and what the socket does not take
    waits in ``backlog`` for ``drain``, which the writer task runs (``on_backlog`` wakes it).
    A later send queues behind the backlog, so the bytes keep their order.
    """

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream
        self._raw: Any = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self._lock = trio.Lock()
        self._backlog = bytearray()
        self.in_flight = 0  # bytes of the backlog handed to a send still under way
        self.direct = False
        self.on_backlog: Callable[[], None] | None = None

    @property
    def unsent(self) -> int:
        """Bytes given to ``send`` and not yet taken by the kernel."""
        return len(self._backlog) + self.in_flight

    async def send(self, item: bytes) -> None:
        if self.direct:
            self.send_nowait(item)
        else:
            await self._send_in_turn(item)

    def send_nowait(self, item: bytes) -> None:
        """Send what the socket takes now; queue the rest for ``drain``."""
        if not self._backlog and not self._lock.locked() and self._raw is not None:
            try:
                sent = self._raw.send(item)
            except OSError:  # would block, or broken: ``drain`` waits, or raises anyio's error
                sent = 0
            if sent == len(item):
                return
            item = item[sent:]
        self._backlog += item
        if self.on_backlog is not None:
            self.on_backlog()

    async def drain(self, chunk: int, patience: float) -> None:
        """Send the backlog, waiting for the socket, at least ``chunk`` bytes per ``patience``.

        Raises ``trio.TooSlowError`` past it, and what the socket raises.
        """
        while self._backlog:
            data = bytes(self._backlog[:chunk])
            del self._backlog[:chunk]
            self.in_flight = len(data)
            try:
                with trio.fail_after(patience):
                    await self._send_in_turn(data)
            finally:
                self.in_flight = 0

    async def _send_in_turn(self, item: bytes) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()  # the usual case: no scheduler pass
        try:
            await self._stream.send(item)
        finally:
            self._lock.release()

    async def receive(self, max_bytes: int = 65_536) -> bytes:
        return await self._stream.receive(max_bytes)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self._stream.extra_attributes


class CoalescingWriter(SocketWrapper):  # type: ignore[misc]
    """purerpc's socket writer, writing from the task that queued the frames when it can.

    ``flush`` (after a task queued frames) encrypts what the HTTP/2 connection holds and
    hands it to the kernel in that task, without waking the writer task: over a
    ``DirectSocket`` such a send never waits. The writer task sends what the socket
    could not take at once (waiting for it, within ``write_timeout``), what ``wake``
    asks for from code that cannot wait, and what is flushed while other tasks are ready
    to run: it lets them run first (one scheduler pass), so that under load the frames
    they queue go out in one write. Over any other stream every write goes through it.
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
        self._error: BaseException | None = None  # of a direct write, raised by the writer
        below = getattr(stream, "transport_stream", None)
        self._direct: DirectSocket | None = below if isinstance(below, DirectSocket) else None
        if self._direct is not None:
            self._direct.direct = True
            self._direct.on_backlog = self._kick

    def output_size(self) -> int:
        """Bytes the connection has to send and has not handed to the kernel yet."""
        size = len(self._grpc_connection.h2_connection._data_to_send) + self._in_flight
        if self._direct is not None:
            size += self._direct.unsent
        return size

    async def wait_output_below(self, size: int) -> None:
        """Wait until ``output_size()`` is below ``size`` (the writer makes progress)."""
        while self.output_size() >= size:
            self._flush_event.set()
            await self._drained.wait()
            self._drained = trio.Event()

    async def _writer_thread(self) -> None:
        connection = self._grpc_connection
        direct = self._direct
        while True:
            if self._error is not None:
                raise self._error
            if direct is not None and direct.unsent:
                # A peer that takes less than a chunk per write_timeout is gone, for us.
                await direct.drain(_WRITE_CHUNK, self._write_timeout)
                continue
            if connection.h2_connection._data_to_send:
                if others_ready():
                    # Let them queue their frames first: one write for all.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                data = connection.data_to_send(_WRITE_CHUNK)
                self._in_flight = len(data)
                with trio.fail_after(self._write_timeout):
                    await self._stream.send(data)  # over a DirectSocket: without waiting
                self._in_flight = 0
            elif self._running:
                self._drained.set()
                await self._flush_event.wait()
                self._flush_event = trio.Event()
            else:
                return

    async def flush(self) -> None:
        """Send what the connection holds: from this task over a ``DirectSocket``.

        When other tasks are ready to run (they may queue frames too: many senders at
        once), the writer task sends instead, after them, all in one write.
        """
        if self._direct is None or self._error is not None or others_ready():
            self.wake()
            return
        connection = self._grpc_connection
        try:
            while connection.h2_connection._data_to_send:
                await self._stream.send(connection.data_to_send(_WRITE_CHUNK))
        except _BROKEN as exc:  # the TLS stream broke: the writer ends the connection
            self._error = exc
            self._flush_event.set()
            return
        if not self._direct.unsent:
            self._drained.set()

    def _kick(self) -> None:
        self._flush_event.set()

    def wake(self) -> None:
        """Have the writer send what the HTTP/2 connection holds, if it holds anything.

        (An incoming frame that needs no answer, such as an ack or a heartbeat, then costs
        no wake-up of the writer task.)
        """
        if self._grpc_connection.h2_connection._data_to_send:
            self._flush_event.set()


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


class EventQueue:
    """A stream's incoming events: purerpc's memory object stream, one scheduler pass cheaper.

    anyio's ``receive`` passes through the scheduler once before it looks at its buffer, and
    once more to wait: two task steps for every frame that finds the queue empty. This queue
    is both ends of the stream's ``_incoming_events`` pair (one producer, the connection's read
    loop; one consumer, the RPC's task): ``receive`` returns what is queued without a pass, or
    waits in one. ``close`` (either end) ends it: the reader gets ``EndOfStream`` once the queue
    is empty, a writer ``BrokenResourceError``, as with anyio's.
    """

    __slots__ = ("_closed", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._waiter: trio.lowlevel.Task | None = None
        self._closed = False

    def send_nowait(self, item: Any) -> None:
        if self._closed:
            raise anyio.BrokenResourceError
        self._items.append(item)
        self._wake()

    async def send(self, item: Any) -> None:
        self.send_nowait(item)

    def receive_nowait(self) -> Any:
        if self._items:
            return self._items.popleft()
        if self._closed:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._items and not self._closed:
            if self._waiter is not None:
                raise anyio.BusyResourceError("receiving")
            self._waiter = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        return self.receive_nowait()

    def close(self) -> None:
        self._closed = True
        self._wake()

    async def aclose(self) -> None:
        self.close()

    def _wake(self) -> None:
        task = self._waiter
        if task is not None:
            self._waiter = None
            trio.lowlevel.reschedule(task)


def new_stream(socket: Any, stream_id: int) -> Any:
    """purerpc's stream object for ``stream_id``, its incoming events on an ``EventQueue``."""
    stream = socket.StreamClass(socket._grpc_connection, stream_id, socket._socket, socket)
    for end in stream._incoming_events:
        end.close()
    queue = EventQueue()
    stream._incoming_events = (queue, queue)
    return stream


def release_stream(stream: Any) -> None:
    """Close a finished purerpc stream's internal event channel (both ends)."""
    for end in getattr(stream, "_incoming_events", ()):
        end.close()


class FastConnection(GRPCConnection):  # type: ignore[misc]
    """purerpc's HTTP/2 connection, reading DATA frames of open streams without h2.

    ``receive_data`` returns purerpc's events, as purerpc's does: the leading DATA frames
    of a read are parsed here (``mas._frames.receive_frames``), and a frame's whole,
    uncompressed messages are cut from it directly instead of through purerpc's byte
    buffer; anything else takes purerpc's and h2's own paths.
    """

    def receive_data(self, data: bytes) -> list[Any]:
        events: list[Any] = []
        for event in receive_frames(self.h2_connection, data):
            kind = type(event)
            if kind is h2.events.DataReceived:
                events.extend(self._data_received(event))
                continue
            translate = _TRANSLATIONS.get(kind)
            if translate is not None:
                events.extend(translate(self, event))
        return events

    def _data_received(self, event: Any) -> list[Any]:
        buffer = self.message_read_buffers.get(event.stream_id)
        whole = None if buffer is None else whole_messages_of(event, buffer)
        if whole is not None:
            return whole
        events: list[Any] = super()._data_received(event)
        return events


# purerpc's handler of each h2 event it turns into its own (the rest it ignores).
_TRANSLATIONS: Final[dict[type, Callable[[GRPCConnection, Any], list[Any]]]] = {
    h2.events.RequestReceived: GRPCConnection._request_received,
    h2.events.ResponseReceived: GRPCConnection._response_received,
    h2.events.TrailersReceived: GRPCConnection._trailers_received,
    h2.events.InformationalResponseReceived: GRPCConnection._informational_response_received,
    h2.events.WindowUpdated: GRPCConnection._window_updated,
    h2.events.RemoteSettingsChanged: GRPCConnection._remote_settings_changed,
    h2.events.StreamEnded: GRPCConnection._stream_ended,
}


class _ClientSocket(GRPCProtoSocket):  # type: ignore[misc]
    """A client purerpc socket whose streams learn when the connection is gone.

    It writes through ``CoalescingWriter`` and hands received events to their streams
    without a scheduler pass per event (a stream's queue is bounded by its flow-control
    window, which its reader gives back only as it reads).
    """

    closed = False

    def __init__(self, config: GRPCConfiguration, sock: anyio.abc.ByteStream) -> None:
        super().__init__(config, sock)
        self._grpc_connection = FastConnection(config)
        self._socket = CoalescingWriter(self._grpc_connection, sock)

    def _stream_ctor(self, stream_id: int) -> Any:
        return new_stream(self, stream_id)

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
    tcp = await anyio.connect_tcp(host, port)
    try:
        stream = await TLSStream.wrap(
            DirectSocket(tcp),
            server_side=False,
            hostname=host,
            ssl_context=ssl_context,
            standard_compatible=False,
        )
    except BaseException:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await tcp.aclose()
        raise
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
