"""The purerpc adapter: TLS listener, HTTP/2 connections and per-RPC dispatch.

purerpc's own ``Server`` binds every interface, hides the peer certificate,
swallows cancellation in bare ``except:`` blocks and trusts its peers with very
large limits. This module uses only purerpc's protocol pieces (its HTTP/2 state
machine and stream objects) and owns everything around them:

* its own accept loop on the configured host and port, with a connection cap;
* the TLS handshake under a deadline, and the peer certificate handed to the
  servicer with every call;
* HTTP/2 limits set before a byte reaches a handler: concurrent streams per
  connection, flow-control windows sized to the largest accepted message, and a
  message over the size limit answered on its own stream with
  ``RESOURCE_EXHAUSTED message_too_large`` (the connection carries on);
* a dispatcher that maps ``RpcError`` to a gRPC status and never swallows
  ``trio.Cancelled``.

Nothing outside this module imports purerpc on the server side.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any, Final, NamedTuple, Protocol

import anyio
import anyio.abc
import h2.errors
import h2.exceptions
import h2.settings
import trio
from anyio.streams.tls import TLSAttribute, TLSStream
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
from purerpc.grpclib.exceptions import StreamClosedError as PurerpcStreamClosedError
from purerpc.grpclib.status import Status, StatusCode

from .._purerpc import CoalescingWriter, Malformed, release_stream, take_ready, write_messages
from ..errors import StoreError

log = logging.getLogger("mas.server.grpc")

SERVICE_NAME: Final = "mas.runtime.v1.RuntimeService"
_FRAME_OVERHEAD: Final = 64 * 1024  # bytes of protobuf framing allowed beyond the payload limit
_RECEIVE_CHUNK: Final = 64 * 1024  # bytes read from the TLS stream at a time
_CLOSE_TIMEOUT: Final = 1.0  # seconds allowed for closing one connection's socket


class RpcError(Exception):
    """End the current RPC with a gRPC status (``code`` is a StatusCode name)."""

    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{code} {reason}")


class PeerConnection:
    """One accepted TLS connection, as the servicer sees it."""

    __slots__ = ("address", "certificate_der", "connection_id", "state")

    def __init__(self, connection_id: int, address: str, certificate_der: bytes | None) -> None:
        self.connection_id = connection_id
        self.address = address
        self.certificate_der = certificate_der
        # Per-connection facts the servicer caches (verified identity, sessions).
        self.state: dict[str, Any] = {}


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


UnaryHandler = Callable[[PeerConnection, Any], Awaitable[Message]]
StreamHandler = Callable[[PeerConnection, RpcStream], Awaitable[None]]


class Method(NamedTuple):
    """One RPC of the service: its request type and its handler."""

    request_type: type[Message]
    unary: UnaryHandler | None = None
    stream: StreamHandler | None = None


class Service(Protocol):
    """What the dispatcher needs from the servicer."""

    @property
    def methods(self) -> Mapping[str, Method]: ...


class ServerLimits(NamedTuple):
    """Transport limits applied before any handler runs."""

    max_message_bytes: int
    max_concurrent_streams: int
    max_connections: int
    handshake_timeout: float
    first_message_timeout: float  # a unary RPC's request must arrive within this
    write_timeout: float  # a response the client does not read within this ends the RPC


class BoundAddress(NamedTuple):
    """Where the server listens (port is the real one when 0 was asked for)."""

    host: str
    port: int


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


class _ServerSocket(GRPCProtoSocket):  # type: ignore[misc]
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


# -- dispatch ---------------------------------------------------------------------------


async def _single_request(rpc: RpcStream) -> Any:
    request = await rpc.receive()
    if request is None:
        raise RpcError("INVALID_ARGUMENT", "missing_request")
    if await rpc.receive() is not None:
        raise RpcError("INVALID_ARGUMENT", "more_than_one_request")
    return request


_CONNECTION_GONE: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.StreamClosedError,
    PurerpcStreamClosedError,
)


def _sole_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (strict nurseries wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _dispatch(
    stream: GRPCProtoStream, peer: PeerConnection, service: Service, limits: ServerLimits
) -> None:
    rpc = RpcStream(stream, limits.write_timeout)
    try:
        await _run_method(stream, rpc, peer, service, limits)
    except BaseException as exc:  # re-raised below unless it is ours to answer
        leaf = _sole_leaf(exc)
        if isinstance(leaf, RpcError):
            await _close_quietly(rpc, leaf.code, leaf.reason)
        elif isinstance(leaf, _CONNECTION_GONE):
            return  # the connection went away; nothing to answer
        elif isinstance(leaf, StoreError):
            log.error("store failure during an RPC (connection %d): %s", peer.connection_id, leaf)
            await _close_quietly(rpc, "UNAVAILABLE", "store_unavailable")
        elif isinstance(exc, Exception):
            log.exception("RPC handler failed (connection %d)", peer.connection_id)
            await _close_quietly(rpc, "INTERNAL", "internal_error")
        else:
            raise  # Cancelled, KeyboardInterrupt: never swallowed
    finally:
        release_stream(stream)


async def _run_method(
    stream: GRPCProtoStream,
    rpc: RpcStream,
    peer: PeerConnection,
    service: Service,
    limits: ServerLimits,
) -> None:
    await stream.start_response()
    event = await stream.receive_event()
    if not isinstance(event, RequestReceived):
        raise RpcError("INTERNAL", "expected_headers")
    method = service.methods.get(event.method_name) if event.service_name == SERVICE_NAME else None
    if method is None:
        raise RpcError("UNIMPLEMENTED", f"unknown method /{event.service_name}/{event.method_name}")
    stream.expect_message_type(method.request_type)
    if method.stream is not None:
        await method.stream(peer, rpc)
    else:
        assert method.unary is not None
        request: Any = None
        with trio.move_on_after(limits.first_message_timeout):
            request = await _single_request(rpc)
        if request is None:
            raise RpcError("DEADLINE_EXCEEDED", "request_timeout")
        response = await method.unary(peer, request)
        await rpc.send(response)
    await rpc.close()


async def _close_quietly(rpc: RpcStream, code: str, reason: str) -> None:
    try:
        await rpc.close(code, reason)
    except (*_CONNECTION_GONE, h2.exceptions.ProtocolError):
        pass


# -- listener and connections ----------------------------------------------------------


def _peer_address(stream: anyio.abc.ByteStream) -> str:
    try:
        address: Any = stream.extra(anyio.abc.SocketAttribute.remote_address)
        host, port = address[:2]
    except (anyio.TypedAttributeLookupError, TypeError, ValueError):
        return "unknown"
    return f"{host}:{port}"


class GrpcServer:
    """Accepts TLS connections and runs the RPCs of one ``Service`` on them."""

    def __init__(self, service: Service, ssl_context: ssl.SSLContext, limits: ServerLimits) -> None:
        self._service = service
        self._ssl_context = ssl_context
        self._limits = limits
        self._next_connection_id = 0
        self.active_connections = 0
        self.refused_handshakes = 0

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; reports the bound address."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        async with listener, trio.open_nursery() as nursery:
            bound = BoundAddress(host, listener.extra(anyio.abc.SocketAttribute.local_port))
            for sub_listener in listener.listeners:
                nursery.start_soon(self._accept_loop, sub_listener, nursery)
            log.info("listening on %s:%d (mTLS)", bound.host, bound.port)
            task_status.started(bound)
            await trio.sleep_forever()

    async def _accept_loop(self, listener: Any, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # EMFILE and friends: back off briefly instead of spinning.
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if self.active_connections >= self._limits.max_connections:
                log.warning("refusing connection: %d connections open", self.active_connections)
                await _aclose(stream)
                continue
            nursery.start_soon(self._connection, stream)

    async def _connection(self, tcp: anyio.abc.SocketStream) -> None:
        self.active_connections += 1
        self._next_connection_id += 1
        connection_id = self._next_connection_id
        address = _peer_address(tcp)
        tls: TLSStream | None = None
        try:
            try:
                with trio.fail_after(self._limits.handshake_timeout):
                    tls = await TLSStream.wrap(
                        tcp,
                        server_side=True,
                        ssl_context=self._ssl_context,
                        standard_compatible=False,
                    )
            except (
                trio.TooSlowError,
                anyio.BrokenResourceError,
                anyio.EndOfStream,
                ssl.SSLError,
                OSError,
            ) as exc:
                self.refused_handshakes += 1
                log.info("TLS handshake with %s failed: %s", address, exc or type(exc).__name__)
                return
            peer = PeerConnection(
                connection_id, address, tls.extra(TLSAttribute.peer_certificate_binary, None)
            )
            socket = _ServerSocket(tls, self._limits)
            async with socket, trio.open_nursery() as rpcs:
                await socket.serve(
                    lambda stream: rpcs.start_soon(
                        _dispatch, stream, peer, self._service, self._limits
                    )
                )
                # The peer is gone: no RPC of this connection can progress any more.
                rpcs.cancel_scope.cancel()
        except BaseException as exc:  # a client must never take the server down
            errors, rest = _split_errors(exc)
            if errors is not None:
                leaf = _sole_leaf(errors)
                if isinstance(leaf, (*_CONNECTION_GONE, h2.exceptions.ProtocolError, OSError)):
                    log.info("connection %d from %s closed: %r", connection_id, address, leaf)
                else:
                    log.error(
                        "connection %d from %s failed; closing it",
                        connection_id,
                        address,
                        exc_info=errors,
                    )
            if rest is exc:
                raise  # Cancelled, KeyboardInterrupt: never swallowed
            if rest is not None:
                raise rest from None  # the non-Exception part of a group propagates
        finally:
            self.active_connections -= 1
            await _aclose(tls if tls is not None else tcp)


def _split_errors(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """(the ``Exception`` part, the rest) of an exception or exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


async def _aclose(stream: anyio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.aclose()
