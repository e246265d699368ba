"""The agent's side of purerpc: channel, Transport stream and unary calls.

Everything purerpc, h2 and anyio raise is translated here, once, into ``mas`` errors:

- a broken socket, HTTP/2 or TLS error -> ``ConnectionClosedError`` (chained);
- a gRPC status from the server -> ``rejected_error(code, reason)``, except ``UNAVAILABLE``
  (the server is going away, or ``mas._purerpc`` saw the connection drop), which is a
  ``ConnectionClosedError`` too.

purerpc's generated streaming stubs are async generators holding a task group, which corrupt
Trio's nursery stack when abandoned; this module uses the stream objects underneath
(``purerpc.Client(...).rpc(...)``) instead. The channel itself comes from ``mas._purerpc``
(shared with the tests' bare client), which ends every open stream with ``UNAVAILABLE`` when
the connection drops and closes the socket; this module adds the connect deadline, a bounded
flush on exit, and the release of streams that already ended (anyio warns about each stream's
event channel left to the garbage collector).

Cancellation
    ``open_channel`` must be entered and exited in one task (it owns task groups). Any
    exception escaping it, including an ``ExceptionGroup``, means the connection is gone.
    Stream writes are shielded and bounded by ``write_timeout``: a write cut in half would
    corrupt the stream's framing, so a write that stalls past it marks the stream broken.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, NamedTuple

import anyio
import h2.exceptions
import purerpc
import trio
from google.protobuf.message import DecodeError
from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import GRPCError

from .. import _purerpc
from .._proto import runtime_pb2 as pb
from ..errors import ConnectionClosedError, MasError, rejected_error

SERVICE_NAME: Final = "mas.runtime.v1.RuntimeService"
CLOSE_TIMEOUT: Final = 5.0  # seconds to flush and close a channel before it is cut
# Seconds a queued ack waits for another frame to ride on before it is written alone: a
# reply's ack then goes in the next request's write (one frame less for both sides), and
# a busy receiver's acks go out in fewer, larger batches. Far below any ack timeout, and
# short enough that a session's window (64 deliveries by default) does not fill with acks
# waiting at the rates one connection reaches.
ACK_DELAY: Final = 0.002

TRANSPORT_ERRORS: Final = (
    GRPCError,
    h2.exceptions.H2Error,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,  # includes ssl.SSLError
)
"""What purerpc, h2, anyio and the socket raise when the connection is unusable."""


class ServerAddress(NamedTuple):
    """Where the server listens; ``host`` is also the TLS server name."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_server_addr(addr: str) -> ServerAddress:
    """Parse ``"host:port"`` or ``"[v6]:port"``; raises ``ValueError`` naming the input."""
    host, sep, port_text = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address must be bracketed
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"server_addr must be 'host:port' or '[v6-address]:port', got {addr!r}")
    return ServerAddress(host, int(port_text))


release_stream = _purerpc.release_stream


class Channel:
    """An open HTTP/2 connection to the server."""

    def __init__(self, address: ServerAddress, raw: _purerpc.Channel) -> None:
        self.address = address
        self._raw = raw
        self._streams: set[Any] = set()  # released when the channel closes

    @property
    def closed(self) -> bool:
        """True once the connection dropped."""
        return self._raw.closed

    async def open_stream(self, method: str, request_type: Any, response_type: Any) -> Any:
        """Start an RPC; returns purerpc's stream (``send_message``/``receive_message``)."""
        if self._raw.closed:
            raise ConnectionClosedError(f"cannot start {method}: the connection dropped")
        try:
            client = purerpc.Client(SERVICE_NAME, self._raw)
            stream = await client.rpc(method, request_type, response_type)
        except TRANSPORT_ERRORS as exc:
            raise ConnectionClosedError(
                f"cannot start {method} on {self.address}: {exc!r}"
            ) from exc
        self._streams.add(stream)
        return stream

    def finished(self, stream: Any) -> None:
        """Release a stream the server has ended."""
        self._streams.discard(stream)
        release_stream(stream)


@asynccontextmanager
async def open_channel(
    address: ServerAddress, ssl_context: ssl.SSLContext, *, connect_timeout: float
) -> AsyncIterator[Channel]:
    """Connect over mTLS (bounded by ``connect_timeout``) and serve HTTP/2 until exit.

    Raises ``ConnectionClosedError`` if the TCP connect or TLS handshake fails or times out.
    """
    channel: Channel | None = None
    # One scope around everything: its deadline bounds the connect, then (lifted) the body,
    # then the flush on exit. (A scope around the connect alone would not nest with the
    # task groups the channel opens.)
    with trio.CancelScope(deadline=trio.current_time() + connect_timeout) as scope:
        try:
            async with _purerpc.open_channel(address.host, address.port, ssl_context) as raw:
                scope.deadline = math.inf
                channel = Channel(address, raw)
                try:
                    yield channel
                finally:
                    scope.deadline = trio.current_time() + CLOSE_TIMEOUT
        except TRANSPORT_ERRORS as exc:
            if channel is not None:
                raise
            raise ConnectionClosedError(f"cannot connect to {address}: {exc!r}") from exc
        finally:
            if channel is not None:
                for stream in channel._streams:
                    release_stream(stream)
                channel._streams.clear()
    if channel is None:
        raise ConnectionClosedError(f"no TLS connection to {address} within {connect_timeout:.3g}s")


def status_error(stream: Any, what: str) -> MasError:
    """The error for a stream the server ended (read after ``receive_message()`` gave None)."""
    event = stream.end_stream_event
    if not isinstance(event, ResponseEnded):
        return ConnectionClosedError(f"{what} ended without a gRPC status")
    code = getattr(event.status.status_code, "name", str(event.status.status_code))
    reason = event.status.status_message or code.lower()
    if code == "UNAVAILABLE":
        return ConnectionClosedError(f"{what}: server unavailable ({reason})")
    return rejected_error(code, reason)


async def call_unary(channel: Channel, method: str, request: Any, response_type: Any) -> Any:
    """One unary RPC: send, half-close, read the answer or the error status.

    The caller bounds it with a deadline; cancelling it abandons only this RPC's stream.
    """
    stream = await channel.open_stream(method, type(request), response_type)
    try:
        await stream.send_message(request)
        await stream.close()
        response = await stream.receive_message()
        if response is not None:
            while await stream.receive_message() is not None:
                pass  # a unary answer has one message; read on to the status
    except TRANSPORT_ERRORS as exc:
        raise ConnectionClosedError(f"{method} failed, the connection broke: {exc!r}") from exc
    channel.finished(stream)
    if response is None or not _ended_ok(stream):
        raise status_error(stream, method)
    return response


def _ended_ok(stream: Any) -> bool:
    event = stream.end_stream_event
    return isinstance(event, ResponseEnded) and event.status.status_code.name == "OK"


class _Outgoing:
    """Frames written together by whichever sender takes the lock first."""

    __slots__ = ("error", "frames")

    def __init__(self) -> None:
        self.frames: list[pb.ClientEvent] = []
        self.error: ConnectionClosedError | None = None


class Transport:
    """The agent's ``Transport`` stream: one writer at a time, reads from one task.

    Frames that several tasks send while a write is under way go out together, in one
    HTTP/2 DATA frame, written by the first of them to get the lock; each sender still
    learns whether its own frame was written. Queued acks (``ack_soon``) ride in the next
    such write, or are written alone ``ACK_DELAY`` after they were queued.
    """

    def __init__(self, stream: Any, *, write_timeout: float) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self._write_timeout = write_timeout
        self._closed = False
        self._outgoing: _Outgoing | None = None  # frames waiting for the lock
        self._pending_acks: list[str] = []
        self._batching: bool | None = None  # the Welcome's, once the acker runs
        self._ack_delay = ACK_DELAY
        self._acker_scope: trio.CancelScope | None = None  # its deadline: acks are due
        self._held: Any = None  # an event met while draining, for the next receive
        self.broken: str | None = None  # why the stream can no longer be written
        self.last_write = trio.current_time()

    async def send(self, event: pb.ClientEvent) -> None:
        """Write one frame; ``ConnectionClosedError`` if the stream is unusable."""
        outgoing = self._outgoing
        if outgoing is None:
            outgoing = self._outgoing = _Outgoing()
        outgoing.frames.append(event)
        try:
            await _acquire(self._lock)
        except trio.Cancelled:
            if outgoing is self._outgoing:  # not written: a cancelled send sends nothing
                outgoing.frames[:] = [frame for frame in outgoing.frames if frame is not event]
            raise
        try:
            if outgoing is self._outgoing:  # nobody wrote it meanwhile: write the lot
                self._outgoing = None
                frames = outgoing.frames
                if self._pending_acks and self._batching is not None:
                    frames = [*self._take_acks(self._batching), *frames]  # acks ride along
                try:
                    await self._write(frames)
                except ConnectionClosedError as exc:
                    outgoing.error = exc
        finally:
            self._lock.release()
        if outgoing.error is not None:
            raise outgoing.error

    async def ack(self, *delivery_ids: str, batching: bool) -> None:
        """Ack deliveries; acks queued meanwhile by other tasks go out in the same frame."""
        self._pending_acks.extend(delivery_ids)
        await _acquire(self._lock)
        try:
            await self._write_acks(batching)
        finally:
            self._lock.release()

    def ack_soon(self, *delivery_ids: str) -> None:
        """Queue acks: they ride in the next frame written, or ``run_acker`` writes them."""
        if not self._pending_acks and self._acker_scope is not None:
            # The acker's deadline, not a wake-up: if a frame carries the acks first,
            # the deadline is lifted again and the acker never runs for them.
            self._acker_scope.deadline = trio.current_time() + self._ack_delay
        self._pending_acks.extend(delivery_ids)

    async def run_acker(self, *, batching: bool, delay: float = ACK_DELAY) -> None:
        """Write the acks ``ack_soon`` queued, ``delay`` after the first of them unless a
        frame carried them meanwhile; all that are waiting in one frame; forever.

        Raises ``ConnectionClosedError`` once the stream cannot be written.
        """
        self._batching, self._ack_delay = batching, delay
        while True:
            with trio.CancelScope() as scope:
                self._acker_scope = scope
                if self._pending_acks:  # queued while this task was writing, or before
                    scope.deadline = trio.current_time() + delay
                await trio.sleep_forever()
            self._acker_scope = None
            if self._pending_acks:
                await self.ack(batching=batching)

    def _take_acks(self, batching: bool) -> list[pb.ClientEvent]:
        """The pending acks as frames (none left pending, so the acker is not due)."""
        ids, self._pending_acks = self._pending_acks, []
        if self._acker_scope is not None:
            self._acker_scope.deadline = math.inf
        if batching and len(ids) > 1:
            return [pb.ClientEvent(acks=pb.AckBatch(delivery_ids=ids))]
        return [pb.ClientEvent(ack=pb.Ack(delivery_id=one)) for one in ids]

    async def _write_acks(self, batching: bool) -> None:
        """Write the pending acks (the caller holds the lock)."""
        if self._pending_acks:  # else another task's frame carried them
            await self._write(self._take_acks(batching))

    async def _write(self, events: list[pb.ClientEvent]) -> None:
        if self.broken is not None or self._closed:
            raise ConnectionClosedError(self.broken or "the Transport stream is closed")
        deadline = trio.current_time() + self._write_timeout
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                await _purerpc.write_messages(self._stream, events)
            except TRANSPORT_ERRORS as exc:
                self.broken = f"writing to the Transport stream failed: {exc!r}"
                raise ConnectionClosedError(self.broken) from exc
        if scope.cancelled_caught:
            self.broken = f"a write to the server stalled for {self._write_timeout:g}s"
            raise ConnectionClosedError(self.broken)
        self.last_write = trio.current_time()

    async def receive(self) -> pb.ServerEvent | None:
        """The next server frame, or None once the server ended the stream."""
        batch = await self.receive_batch(1)
        return batch[0] if batch else None

    async def receive_batch(self, limit: int) -> list[pb.ServerEvent]:
        """The next server frame and those already queued behind it (at most ``limit``).

        Empty once the server ended the stream.
        """
        stream = self._stream
        try:
            held, self._held = self._held, None
            if held is None:
                first = await stream.receive_message()
            elif isinstance(held, _purerpc.Malformed):
                raise held.error
            elif isinstance(held, ResponseEnded):
                stream._end_stream_event = held
                first = None
            else:  # response headers: purerpc's receive takes note of them and reads on
                stream._start_stream_event = held
                first = await stream.receive_message()
            if first is None:
                return []
            batch: list[pb.ServerEvent] = [first]
            self._held = _purerpc.take_ready(stream, batch, limit)
        except (*TRANSPORT_ERRORS, DecodeError) as exc:
            raise ConnectionClosedError(f"reading the Transport stream failed: {exc!r}") from exc
        return batch

    def end_error(self) -> MasError:
        """Why the server ended the stream (after ``receive()`` returned None)."""
        return status_error(self._stream, "the Transport stream")

    def ended_ok(self) -> bool:
        """True if the server ended the stream with status OK."""
        return _ended_ok(self._stream)

    async def close(self, *, batching: bool = True) -> None:
        """Write the queued acks, then half-close our side (the server then ends the
        stream); never raises."""
        async with self._lock:
            if self._closed or self.broken is not None:
                return
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                try:
                    await self._write_acks(batching)
                except ConnectionClosedError:
                    return
            self._closed = True
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT):
                try:
                    await self._stream.close()
                except (*TRANSPORT_ERRORS, TypeError):
                    pass  # already closed by the peer: nothing left to say


async def _acquire(lock: trio.Lock) -> None:
    """Take ``lock``; without a scheduler pass when nobody else writes (the usual case)."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


async def open_transport(
    channel: Channel,
    *,
    instance_id: str,
    prefetch: int,
    hello_timeout: float,
    write_timeout: float,
) -> tuple[Transport, pb.Welcome]:
    """Open the Transport stream and say Hello; returns it with the server's Welcome.

    Raises the ``RejectedError`` the server answered with (``UNAUTHENTICATED`` ...), or
    ``ConnectionClosedError`` if the server went away or gave no Welcome within ``hello_timeout``.
    """
    hello = pb.ClientEvent(
        hello=pb.Hello(
            instance_id=instance_id,
            batching=True,
            prefetch=max(0, prefetch),
            reply_acks=True,  # a reply also acks the request it answers (if the server says so)
            late_results=True,  # a request's Result may come with its reply (likewise)
        )
    )
    try:
        with trio.fail_after(hello_timeout):
            stream = await channel.open_stream("Transport", pb.ClientEvent, pb.ServerEvent)
            transport = Transport(stream, write_timeout=write_timeout)
            await transport.send(hello)
            event = await transport.receive()
    except trio.TooSlowError as exc:
        raise ConnectionClosedError(
            f"no Welcome from {channel.address} within {hello_timeout:g}s of Hello"
        ) from exc
    if event is None:
        raise transport.end_error()
    kind = event.WhichOneof("event")
    if kind == "error":
        raise rejected_error(event.error.code, event.error.message or event.error.code.lower())
    if kind != "welcome":
        raise ConnectionClosedError(f"the server answered Hello with {kind!r}, not Welcome")
    return transport, event.welcome
