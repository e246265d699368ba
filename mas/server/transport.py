"""One RPC's stream and one connection's HTTP/2 state, with the server's limits.

``RpcStream`` is a purerpc stream seen as typed messages in and out (a batch at a time), its
refusals raised as ``refusal.Refusal``. ``ServerSocket`` is purerpc's server-side HTTP/2
connection with a stream cap, flow-control windows sized to the largest accepted message, a
message over the size limit refused on its own stream, gzip/deflate messages inflated only
up to that limit, and a read loop that hands events to streams without a scheduler pass
each. The read loop also enforces what a client may make the server do
(``guard.ConnectionGuard``: streams, PINGs, SETTINGS per second, bytes of unfinished
messages, the size and count of a header block; GOAWAY past them), refuses a message left
unfinished for too long on its own stream (``DEADLINE_EXCEEDED unfinished_message``, its
buffer dropped), stops reading while the connection's unsent output is over
``max_output_bytes``, closes a connection idle for too long, and forgets what the client
still sends on a finished RPC (a reset, and its buffer dropped). ``mas.server.grpc`` builds
the listener and the dispatcher on them.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, NamedTuple, NoReturn

import anyio
import anyio.abc
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import trio
from google.protobuf.message import DecodeError, Message
from hyperframe.frame import ContinuationFrame, HeadersFrame  # type: ignore[import-untyped]
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.connection import GRPCConfiguration, GRPCConnection
from purerpc.grpclib.events import (
    MessageReceived,
    RequestEnded,
    RequestReceived,
    WindowUpdated,
)
from purerpc.grpclib.exceptions import MessageTooLargeError, UnsupportedMessageEncodingError
from purerpc.grpclib.exceptions import StreamClosedError as PurerpcStreamClosedError
from purerpc.grpclib.status import Status, StatusCode

from .._frames import receive_frames, whole_messages_of
from .._purerpc import CoalescingWriter, Malformed, new_stream, take_ready, write_messages
from ..errors import Reason
from .guard import ConnectionGuard, GuardLimits, UnfinishedMessages, check_headers
from .refusal import Refusal

_FRAME_OVERHEAD: Final = 64 * 1024  # bytes of protobuf framing allowed beyond the payload limit
_RECEIVE_CHUNK: Final = 64 * 1024  # bytes read from the TLS stream at a time
_GOAWAY_TIMEOUT: Final = 1.0  # seconds allowed for a GOAWAY to leave before the socket closes
_FRAME_HEADER: Final = 9  # bytes of an HTTP/2 frame header, counted against a header block
DEFAULT_GUARD: Final = GuardLimits(500, 100, 100, 8_388_608)  # the config's defaults
_PREFIX_SIZE: Final = 5  # bytes of gRPC's prefix before each message
# Seconds a late message (``RpcStream.send_late``) waits for a write to ride in: an
# accepted request's Result waits this long for its reply. Long enough for a handler that
# answers at once on a loaded machine (a whole request/reply took 1-3 ms here; at 2 ms
# most Results missed their reply), short against any request's timeout; a Result that
# waits it out goes alone, as it would have at once.
LATE_DELAY: Final = 0.02
# What writing on a stream raises once its client reset it or its connection is gone.
_UNWRITABLE: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    h2.exceptions.ProtocolError,
    PurerpcStreamClosedError,
)


class RpcStream:
    """A purerpc stream seen as typed messages in and out, its refusals as ``Refusal``.

    ``receive_batch`` and ``send_many`` move every frame that is ready at once: the frames
    read from one socket read are handled together, and the answers to them go out as one
    HTTP/2 DATA frame (gRPC allows several length-prefixed messages in one), so a busy
    stream costs one write per batch instead of one per message. ``send_late`` queues
    messages the client does not need at once to ride in the next write (or alone after
    ``LATE_DELAY``, from ``run_late_writer``; before the status, at the latest).
    """

    __slots__ = (
        "_held",
        "_late",
        "_late_delay",
        "_late_scope",
        "_lock",
        "_max_output",
        "_stream",
        "_write_timeout",
    )

    def __init__(
        self, stream: GRPCProtoStream, write_timeout: float, max_output: int = 2**62
    ) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self._write_timeout = write_timeout
        self._max_output = max_output  # the connection's unsent bytes above which we wait
        self._held: Any = None  # an event taken while draining, handled by the next receive
        self._late: list[Message] = []  # messages that ride in the next write (``send_late``)
        self._late_delay = LATE_DELAY
        self._late_scope: trio.CancelScope | None = None  # ``run_late_writer``'s wait

    async def receive(self) -> Any | None:
        """The next message, or None when the client has finished sending."""
        while True:
            event = self._held
            if event is not None:
                self._held = None
            else:
                incoming = self._stream._incoming_events[1]
                try:  # what is queued already is taken without a scheduler pass
                    event = incoming.receive_nowait()
                except anyio.WouldBlock:
                    event = await incoming.receive()
            if type(event) is MessageReceived:
                self._acknowledge(event)
                await self._stream._socket.flush()
                return self._decode(event.data)
            if isinstance(event, Malformed):
                raise Refusal(Reason.MALFORMED_FRAME)
            if isinstance(event, _RefusedMessage):
                raise Refusal(event.reason)
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
            raise Refusal(Reason.MALFORMED_FRAME) from exc
        return message

    async def send(self, message: Message) -> None:
        """Send one message (see ``send_many``)."""
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[Message]) -> None:
        """Send messages in order, as few DATA frames as fit; concurrent senders are serialised.

        A client that stops reading stalls the write on HTTP/2 flow control, or on the
        connection's unsent output (more than ``max_output`` bytes: TCP is not taking
        it); after ``write_timeout`` the RPC ends with ``DEADLINE_EXCEEDED
        slow_consumer`` rather than holding its resources forever.
        """
        await _acquire(self._lock)
        try:
            if self._late:
                messages = [*self._take_late(), *messages]
            with trio.move_on_after(self._write_timeout) as waited:
                writer = self._stream._socket
                if writer.output_size() >= self._max_output:
                    await writer.wait_output_below(self._max_output)
                await write_messages(self._stream, messages)
        finally:
            self._lock.release()
        if waited.cancelled_caught:
            raise Refusal(Reason.SLOW_CONSUMER)

    def send_late(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` to ride in this stream's next write, or alone ``LATE_DELAY``
        after the first of them (``run_late_writer``), whichever comes first.

        For what the client does not need at once (an accepted request's ``Result``, which
        then usually travels with the reply). Without ``run_late_writer`` running, they
        wait for the next write or ``close``.
        """
        if not self._late and self._late_scope is not None:
            # A deadline, not a wake-up: if a write carries them first, it is lifted again.
            self._late_scope.deadline = trio.current_time() + self._late_delay
        self._late.extend(messages)

    async def run_late_writer(self, delay: float = LATE_DELAY) -> None:
        """Write what ``send_late`` queued ``delay`` after the first of it, unless a write
        carried it meanwhile; until cancelled. Raises what ``send_many`` raises."""
        self._late_delay = delay
        while True:
            with trio.CancelScope() as scope:
                self._late_scope = scope
                if self._late:  # queued while this task was writing, or before it started
                    scope.deadline = trio.current_time() + delay
                await trio.sleep_forever()
            self._late_scope = None
            if self._late:
                await self.send_many(())

    def _take_late(self) -> list[Message]:
        """The late messages, none left queued (so the late writer is not due)."""
        late, self._late = self._late, []
        if self._late_scope is not None:
            self._late_scope.deadline = math.inf
        return late

    async def send_now(self, messages: Sequence[Message]) -> bool:
        """Send ``messages`` if that needs no wait at all; False (nothing sent) otherwise.

        For a task that must not wait on this stream's client (the router delivering from
        a sender's task): it sends only when no other write is under way, the connection's
        unsent output is below ``max_output`` and the messages fit the flow-control windows
        (then, over the server's ``DirectSocket``, the write never waits). False also when
        the stream can no longer be written: its own task's next write reports that.
        """
        stream = self._stream
        if self._lock.locked() or not self.open_for_sending:
            return False
        if self._late:
            messages = [*self._late, *messages]
        if not self._fits_now(messages):
            return False
        self._lock.acquire_nowait()
        try:
            if self._late:
                self._take_late()  # written below with the others (or lost with the stream)
            await write_messages(stream, messages)
        except _UNWRITABLE:
            return False
        finally:
            self._lock.release()
        return True

    def _fits_now(self, messages: Sequence[Message]) -> bool:
        """True when writing ``messages`` needs no wait: the connection's unsent output is
        below ``max_output`` and they fit the stream's flow-control window."""
        stream = self._stream
        if stream._socket.output_size() >= self._max_output:
            return False
        size: int = sum(_PREFIX_SIZE + message.ByteSize() for message in messages)
        window: int = stream._grpc_connection.flow_control_window(stream.stream_id)
        return size <= window

    @property
    def open_for_sending(self) -> bool:
        return self._stream.state in (GRPCStreamState.OPEN, GRPCStreamState.HALF_CLOSED_REMOTE)

    async def close(self, refusal: Refusal | None = None) -> None:
        """Finish the RPC with ``OK``, or with ``refusal``'s status, unless it is finished."""
        if refusal is None:
            status = Status(StatusCode.OK, status_message="")
        else:
            status = Status(StatusCode[refusal.code], status_message=refusal.message)
        async with self._lock:
            if self.open_for_sending:
                # Late messages go before the status that ends the stream, if that needs
                # no wait: nothing bounds this write, and a client that does not read
                # would hold the close (it would not read them either).
                late = self._take_late()
                if late and self._fits_now(late):
                    with contextlib.suppress(*_UNWRITABLE):
                        await write_messages(self._stream, late)
                await self._stream.close(status)


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
    idle_timeout: float = 300.0  # a connection with no open RPC for this long is closed
    max_connections_per_identity: int = 256
    max_connections_per_address: int = 4_096
    max_output_bytes: int = 1_048_576  # unsent output above which the connection stops reading
    guard: GuardLimits = DEFAULT_GUARD


class ConnectionClosing(Exception):
    """The server closes this connection (``reason`` says why; GOAWAY already queued)."""

    def __init__(self, reason: Reason) -> None:
        self.reason = reason
        super().__init__(reason)


class HeaderLimitExceeded(Exception):
    """A header block over ``max_header_bytes`` or ``max_headers``: the connection ends.

    (A header block the server does not decode in full leaves the connection's HPACK
    state unknown, so this cannot be refused on its stream alone.)
    """

    def __init__(self, reason: Reason) -> None:
        self.reason = reason
        super().__init__(reason)


# -- HTTP/2 with our limits -------------------------------------------------------


class _RefusedMessage(MessageReceived):  # type: ignore[misc]
    """Stands in the stream's event queue for a message refused before it was read whole:
    over the size limit, not decompressible, or left unfinished too long (``reason``)."""

    def __init__(self, stream_id: int, reason: Reason) -> None:
        super().__init__(stream_id, b"", 0)
        self.reason = reason


class _StreamReset(RequestEnded):  # type: ignore[misc]
    """The client reset the stream (RST_STREAM) rather than finishing it."""


class _BoundedReadBuffer(MessageReadBuffer):  # type: ignore[misc]
    """purerpc's message parser, decompressing ``gzip``/``deflate`` within the size limit.

    The limit applies to the decompressed size, and decompression stops one byte past
    it, so a small compressed "bomb" never inflates in memory beyond the limit.
    """

    def decompress(self, data: bytes) -> bytes:
        encoding = self._message_encoding
        if encoding == "gzip":
            inflater = zlib.decompressobj(wbits=31)
        elif encoding == "deflate":
            inflater = zlib.decompressobj(wbits=15)
        else:
            raise UnsupportedMessageEncodingError(f"unsupported compression: {encoding}")
        limit = self._max_message_length
        output: bytes = inflater.decompress(data, limit + 1)
        if len(output) > limit or inflater.unconsumed_tail:
            raise MessageTooLargeError("decompressed message larger than the limit")
        if not inflater.eof:
            raise zlib.error("truncated compressed message")
        return output

    @property
    def buffered(self) -> int:
        """Bytes received of messages not yet complete."""
        return len(self._buffer)

    @property
    def unfinished(self) -> bool:
        """True while part of a message (its prefix at least) has come and the rest not."""
        return bool(self._buffer) or self._message_length is not None


class _HeaderBlockTooLarge(Exception):
    """Raised inside h2's frame parsing (not an h2 error: the GOAWAY is ours to send)."""


class _BoundedFrameBuffer(h2.frame_buffer.FrameBuffer):  # type: ignore[misc]
    """h2's frame parser, with the raw bytes of one header block bounded.

    h2 gathers a HEADERS frame and its CONTINUATION frames until END_HEADERS before it
    decodes any of them, up to 64 frames of the frame size (4 MiB here). This stops at
    ``max_bytes`` of frames (headers counted), so a CONTINUATION flood, empty frames
    included, costs the server no more than one header block's worth of memory.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(server=True)
        self._max_bytes = max_bytes
        self._block_bytes = 0  # of the header block being gathered

    def _update_header_buffer(self, f: Any) -> Any:
        if isinstance(f, (HeadersFrame, ContinuationFrame)):
            if not self._headers_buffer:
                self._block_bytes = 0
            self._block_bytes += _FRAME_HEADER + f.body_len
            if self._block_bytes > self._max_bytes or (
                len(self._headers_buffer) >= h2.frame_buffer.CONTINUATION_BACKLOG
            ):
                raise _HeaderBlockTooLarge(Reason.HEADERS_TOO_LARGE)
        return super()._update_header_buffer(f)


class _LimitedConnection(GRPCConnection):  # type: ignore[misc]
    """purerpc's HTTP/2 state machine with a stream cap and per-stream size errors."""

    def __init__(
        self,
        config: GRPCConfiguration,
        max_concurrent_streams: int,
        guard: GuardLimits = DEFAULT_GUARD,
    ) -> None:
        self._max_concurrent_streams = max_concurrent_streams
        self._guard_limits = guard
        self.unfinished = UnfinishedMessages(guard.unfinished_message_timeout)
        self._now = 0.0  # of the read being handled (for ``unfinished``)
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
                codes.MAX_HEADER_LIST_SIZE: self._guard_limits.max_header_bytes,
            },
        )
        self.h2_connection.max_inbound_frame_size = 2**14 * 4
        # From the first byte, not only once the client has acknowledged our SETTINGS
        # (until then h2 would decode header lists of up to 64 KiB).
        self.h2_connection.decoder.max_header_list_size = self._guard_limits.max_header_bytes
        self.h2_connection.incoming_buffer = _BoundedFrameBuffer(
            self._guard_limits.max_header_bytes
        )

    def _give_back_window(self, stream_id: int, length: int) -> None:
        if length <= 0:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2_connection.acknowledge_received_data(length, stream_id)

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Any]:
        """The gRPC events of ``data``, counting what the guard budgets in ``self.counts``.

        Raises ``HeaderLimitExceeded`` for a header block past the limits (GOAWAY queued).
        """
        streams = pings = settings = 0
        events: list[Any] = []
        self._now = now
        try:
            h2_events = receive_frames(self.h2_connection, data)
        except _HeaderBlockTooLarge as exc:  # our frame buffer's bound
            self.go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, Reason.HEADERS_TOO_LARGE)
            raise HeaderLimitExceeded(Reason.HEADERS_TOO_LARGE) from exc
        except h2.exceptions.DenialOfServiceError as exc:
            # HPACK's bound on the decoded size (an "HPACK bomb"): h2 has queued its
            # GOAWAY (ENHANCE_YOUR_CALM, without a reason) already.
            raise HeaderLimitExceeded(Reason.HEADERS_TOO_LARGE) from exc
        for event in h2_events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                events.extend(self._data_received(event))
            elif kind is h2.events.RequestReceived:
                streams += 1
                self._check_headers(event.headers)
                events.extend(self._request_received(event))
            elif kind is h2.events.StreamEnded:
                events.extend(self._stream_ended(event))
            elif kind is h2.events.StreamReset:
                events.extend(self._stream_reset(event))
            elif kind is h2.events.WindowUpdated:
                events.extend(self._window_updated(event))
            elif kind is h2.events.RemoteSettingsChanged:
                settings += 1
                events.extend(self._remote_settings_changed(event))
            elif kind is h2.events.PingReceived:
                pings += 1
            elif kind is h2.events.TrailersReceived:
                self._check_headers(event.headers)
            # Everything else (acks, priority, unknown frames) needs nothing from us.
        self.counts = (streams, pings, settings)
        return events

    counts: tuple[int, int, int] = (0, 0, 0)

    def _check_headers(self, headers: Sequence[Any]) -> None:
        reason = check_headers(len(headers), self._guard_limits)
        if reason is not None:
            self.go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, reason)
            raise HeaderLimitExceeded(reason)

    def _request_received(self, event: Any) -> list[Any]:
        events: list[Any] = super()._request_received(event)
        request = events[0]
        self.message_read_buffers[event.stream_id] = _BoundedReadBuffer(
            request.message_encoding, self.config.max_message_length
        )
        return events

    def buffered(self) -> int:
        """Bytes of unfinished messages held for all streams."""
        return sum(b.buffered for b in self.message_read_buffers.values())

    def forget_stream(self, stream_id: int) -> None:
        """A finished RPC: drop what its client still sends; reset the stream if still open."""
        self._drop_buffer(stream_id)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream = self.h2_connection.streams.get(stream_id)
            if stream is not None and not stream.closed:
                # NO_ERROR: the response (with its status) is complete and the client may
                # stop sending (RFC 9113 8.1); CANCEL would make a stock client report
                # CANCELLED instead of the status it was sent.
                self.h2_connection.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _drop_buffer(self, stream_id: int) -> None:
        """Forget ``stream_id``'s unfinished message, giving its bytes back to the window."""
        self.unfinished.forget(stream_id)
        buffer = self.message_read_buffers.pop(stream_id, None)
        if buffer is not None:
            self._give_back_window(stream_id, buffer._buffer.flow_controlled_length)

    def refuse_overdue(self, now: float) -> list[Any]:
        """Drop the messages unfinished past ``unfinished_message_timeout``; their refusals.

        Each stream gets ``DEADLINE_EXCEEDED unfinished_message`` (its RPC ends with it),
        and what its client still sends is dropped as it comes.
        """
        refusals = []
        for stream_id in self.unfinished.overdue(now):
            if stream_id in self.message_read_buffers:
                self._drop_buffer(stream_id)
                refusals.append(_RefusedMessage(stream_id, Reason.UNFINISHED_MESSAGE))
        return refusals

    def _data_received(self, event: Any) -> list[Any]:
        stream_id = event.stream_id
        buffer = self.message_read_buffers.get(stream_id)
        if buffer is None:
            # The stream was refused (oversize, overdue); drop the rest of it, keep the
            # window open.
            self._give_back_window(stream_id, event.flow_controlled_length)
            return []
        whole = whole_messages_of(event, buffer)  # the usual frame, without the buffer
        if whole is not None:
            self.unfinished.update(stream_id, False, bool(whole), self._now)
            return whole
        try:
            buffer.data_received(event.data, event.flow_controlled_length)
        except MessageTooLargeError:
            self._refused(stream_id, event)
            return [_RefusedMessage(stream_id, Reason.MESSAGE_TOO_LARGE)]
        except UnsupportedMessageEncodingError:
            self._refused(stream_id, event)
            return [_RefusedMessage(stream_id, Reason.UNSUPPORTED_ENCODING)]
        except zlib.error:
            self._refused(stream_id, event)
            return [_RefusedMessage(stream_id, Reason.MALFORMED_FRAME)]
        events = [
            MessageReceived(stream_id, message, length)
            for message, length in buffer.read_all_complete_messages_flowcontrol()
        ]
        self.unfinished.update(stream_id, buffer.unfinished, bool(events), self._now)
        return events

    def _refused(self, stream_id: int, event: Any) -> None:
        del self.message_read_buffers[stream_id]
        self.unfinished.forget(stream_id)
        self._give_back_window(stream_id, event.flow_controlled_length)

    def _stream_ended(self, event: Any) -> list[Any]:
        self.message_read_buffers.pop(event.stream_id, None)
        self.unfinished.forget(event.stream_id)
        return [RequestEnded(event.stream_id)]

    def _stream_reset(self, event: Any) -> list[Any]:
        self.message_read_buffers.pop(event.stream_id, None)
        self.unfinished.forget(event.stream_id)
        return [_StreamReset(event.stream_id)]

    @property
    def closed(self) -> bool:
        """True once a GOAWAY was queued (by us or by h2 for a protocol error)."""
        state: Any = self.h2_connection.state_machine.state
        return bool(state == h2.connection.ConnectionState.CLOSED)

    def go_away(self, code: h2.errors.ErrorCodes, reason: str = "") -> None:
        """Queue a GOAWAY; ``reason`` goes in its debug data (grpcio reads "too_many_pings")."""
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2_connection.close_connection(code, additional_data=reason.encode() or None)


class ServerSocket(GRPCProtoSocket):  # type: ignore[misc]
    """A server-side purerpc socket with our connection class, read loop and budgets.

    The read loop stops reading while the connection's unsent output is above
    ``max_output_bytes`` (every PING, SETTINGS and stream a client sends makes the server
    write, so a client that sends and never reads would otherwise grow the server's
    buffers without bound); output that stays unsent for ``write_timeout`` closes the
    connection (a slow reader). Past a ``ConnectionGuard`` budget, the client gets a
    GOAWAY (``ENHANCE_YOUR_CALM``) and ``serve`` raises ``ConnectionClosing``.
    """

    def __init__(self, stream: anyio.abc.ByteStream, limits: ServerLimits) -> None:
        AsyncExitStack.__init__(self)
        # Frames up to twice the payload limit are parsed, so that a payload just over the
        # limit is refused by the router with a reason and the stream carries on.
        frame_limit = 2 * limits.max_message_bytes + _FRAME_OVERHEAD
        config = GRPCConfiguration(client_side=False, max_message_length=frame_limit)
        self._grpc_connection = _LimitedConnection(
            config, limits.max_concurrent_streams, limits.guard
        )
        self._socket = CoalescingWriter(self._grpc_connection, stream, limits.write_timeout)
        self._receive_buffer_size = _RECEIVE_CHUNK
        self._streams: dict[int, GRPCProtoStream] = {}
        self._limits = limits
        self.open_rpcs = 0  # RPCs whose handler still runs (kept by the dispatcher)
        self._idle_deadline = trio.current_time() + limits.first_message_timeout
        self._idle_scope: trio.CancelScope | None = None
        self._serve_scope = trio.CancelScope()
        self._closing: Reason | None = None  # why an RPC asked to close the connection

    def _stream_ctor(self, stream_id: int) -> GRPCProtoStream:
        return new_stream(self, stream_id)

    def finish_stream(self, stream: GRPCProtoStream) -> None:
        """The RPC on ``stream`` is over: forget it, and anything its client still sends."""
        self._streams.pop(stream.stream_id, None)
        self._grpc_connection.forget_stream(stream.stream_id)
        self._socket.wake()

    async def close_with(self, reason: Reason) -> NoReturn:
        """Send GOAWAY (``ENHANCE_YOUR_CALM``, with ``reason``) and raise ``ConnectionClosing``."""
        self._grpc_connection.go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, reason)
        self._socket.wake()
        with trio.move_on_after(_GOAWAY_TIMEOUT):
            await self._socket.wait_output_below(1)
        raise ConnectionClosing(reason)

    def request_close(self, reason: Reason) -> None:
        """From an RPC's task: have ``serve`` stop reading, send GOAWAY and raise."""
        if self._closing is None:
            self._closing = reason
            self._serve_scope.cancel()

    async def serve(self, spawn: Callable[[GRPCProtoStream], None]) -> None:
        """Read frames until the peer goes away, calling ``spawn`` for each new RPC.

        Events are handed to their streams without waiting: a stream's queue is bounded
        by its HTTP/2 flow-control window, which its reader gives back only as it reads.
        """
        streams = self._streams
        connection = self._grpc_connection
        writer = self._socket
        limits = self._limits
        guard = ConnectionGuard(limits.guard, trio.current_time())
        with self._serve_scope:
            await self._read_loop(spawn, streams, connection, writer, limits, guard)
        if self._closing is not None:
            await self.close_with(self._closing)

    async def _read_loop(
        self,
        spawn: Callable[[GRPCProtoStream], None],
        streams: dict[int, GRPCProtoStream],
        connection: _LimitedConnection,
        writer: CoalescingWriter,
        limits: ServerLimits,
        guard: ConnectionGuard,
    ) -> None:
        while True:
            if writer.output_size() > limits.max_output_bytes:
                # Backpressure: read nothing more until the client has read our answers.
                with trio.move_on_after(limits.write_timeout) as waited:
                    await writer.wait_output_below(limits.max_output_bytes)
                if waited.cancelled_caught:
                    raise ConnectionClosing(Reason.SLOW_READER)
            try:
                data = await self._receive_while_busy(connection)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            now = trio.current_time()
            if data is None:
                # A message left unfinished too long: its RPC gets the refusal.
                events = connection.refuse_overdue(now)
            else:
                try:
                    events = connection.receive_data(data, now)
                except HeaderLimitExceeded as exc:
                    await self.close_with(exc.reason)
            writer.wake()
            reason = guard.on_frames(*connection.counts, now) if data is not None else None
            if reason is None and connection.message_read_buffers:
                reason = guard.on_buffered(connection.buffered())
            if reason is not None:
                await self.close_with(reason)
            reset = {e.stream_id for e in events if isinstance(e, _StreamReset)}
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
                    if event.stream_id in reset:
                        # Opened and reset in one read: no task for a call already gone.
                        connection.message_read_buffers.pop(event.stream_id, None)
                        continue
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

    async def _receive_while_busy(self, connection: _LimitedConnection) -> bytes | None:
        """The next bytes, or None when an unfinished message is overdue.

        A connection without an open RPC for too long gets a GOAWAY. The idle clock runs
        from the connection's start (with the first message's deadline: nothing was asked
        of the server yet) or from the end of its last RPC (``idle_timeout``); frames that
        open no RPC (PINGs, SETTINGS) do not reset it.
        """
        deadline = min(self._idle_deadline, connection.unfinished.next_deadline())
        with trio.CancelScope(deadline=deadline) as scope:
            self._idle_scope = scope
            try:
                data: bytes = await self._socket.recv(self._receive_buffer_size)
                return data
            finally:
                self._idle_scope = None
        if trio.current_time() < self._idle_deadline:
            return None
        connection.go_away(h2.errors.ErrorCodes.NO_ERROR)
        self._socket.wake()
        with trio.move_on_after(_GOAWAY_TIMEOUT):
            await self._socket.wait_output_below(1)
        raise ConnectionClosing(Reason.IDLE_TIMEOUT)

    def rpc_started(self) -> None:
        """A handler starts: the connection is busy (no idle deadline)."""
        self.open_rpcs += 1
        self._set_idle_deadline(math.inf)

    def rpc_finished(self) -> None:
        """A handler ended; the last one starts the idle clock."""
        self.open_rpcs -= 1
        if not self.open_rpcs:
            self._set_idle_deadline(trio.current_time() + self._limits.idle_timeout)

    def _set_idle_deadline(self, deadline: float) -> None:
        self._idle_deadline = deadline
        if self._idle_scope is not None:
            unfinished = self._grpc_connection.unfinished.next_deadline()
            self._idle_scope.deadline = min(deadline, unfinished)
