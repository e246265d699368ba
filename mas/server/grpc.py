"""The purerpc adapter: TLS listener, HTTP/2 connections and per-RPC dispatch.

purerpc's own ``Server`` binds every interface, hides the peer certificate,
swallows cancellation in bare ``except:`` blocks and trusts its peers with very
large limits. This module uses only purerpc's protocol pieces (its HTTP/2 state
machine and stream objects) and owns everything around them:

* its own accept loop on the configured host and port, with a connection cap in all
  and per source address (refused before TLS; the warning at most once per
  ``_WARN_INTERVAL`` per address, so a flood logs one line);
* the TLS handshake under a deadline, then identity at the door: the servicer's
  ``admit`` verifies the peer certificate once (audited once when refused); a refused
  connection answers each RPC with its refusal and is closed, and an admitted one
  counts against its agent's ``max_connections_per_identity``;
* HTTP/2 limits set before a byte reaches a handler (``transport.ServerSocket``):
  concurrent streams per connection, flow-control windows sized to the largest
  accepted message, a message over the size limit (after decompression) answered on
  its own stream with ``RESOURCE_EXHAUSTED message_too_large`` (the connection carries
  on), per-connection budgets for streams, PINGs, SETTINGS and unfinished messages
  (GOAWAY past them), output backpressure and idle timeouts;
* a dispatcher that ends an RPC with a ``refusal.Refusal``'s status (its reason's
  row of ``refusal.STATUS``), never swallows
  ``trio.Cancelled``; a stream the client reset or a connection that is closing
  ends its RPC quietly, and a connection ends with one log line.

Nothing outside this module and ``transport`` imports purerpc on the server side.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple, Protocol

import anyio
import anyio.abc
import h2.errors
import h2.exceptions
import h2.settings
import trio
from anyio.streams.tls import TLSAttribute, TLSStream
from google.protobuf.message import Message
from purerpc.grpc_proto import GRPCProtoStream
from purerpc.grpclib.events import (
    RequestReceived,
)
from purerpc.grpclib.exceptions import StreamClosedError as PurerpcStreamClosedError

from .._purerpc import DirectSocket, release_stream
from ..errors import ConfigError, Reason, StoreError, leaves
from .refusal import Refusal
from .transport import ConnectionClosing, RpcStream, ServerLimits, ServerSocket

log = logging.getLogger("mas.server.grpc")

SERVICE_NAME: Final = "mas.runtime.v1.RuntimeService"
_CLOSE_TIMEOUT: Final = 1.0  # seconds allowed for closing one connection's socket
_WARN_INTERVAL: Final = 10.0  # seconds between two warnings about the same flood
_WARNED_KEYS: Final = 4096  # flood keys remembered for that (then forgotten at once)


class PeerConnection:
    """One accepted TLS connection, as the servicer sees it."""

    __slots__ = ("address", "certificate_der", "connection_id", "state")

    def __init__(self, connection_id: int, address: str, certificate_der: bytes | None) -> None:
        self.connection_id = connection_id
        self.address = address
        self.certificate_der = certificate_der
        # Per-connection facts the servicer caches (verified identity, sessions).
        self.state: dict[str, Any] = {}


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

    async def admit(self, peer: PeerConnection) -> str | Refusal:
        """At the door: the connection's agent id, or the refusal it gets (audited once)."""
        ...


class BoundAddress(NamedTuple):
    """Where the server listens (port is the real one when 0 was asked for)."""

    host: str
    port: int


# -- dispatch ---------------------------------------------------------------------------


async def _single_request(rpc: RpcStream) -> Any:
    request = await rpc.receive()
    if request is None:
        raise Refusal(Reason.MISSING_REQUEST)
    if await rpc.receive() is not None:
        raise Refusal(Reason.MORE_THAN_ONE_REQUEST)
    return request


_CONNECTION_GONE: Final = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.StreamClosedError,
    # A stream the client reset before its handler answered is forgotten by h2.
    h2.exceptions.StreamIDTooLowError,
    PurerpcStreamClosedError,
)


def _sole_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested groups (strict nurseries wrap), else ``exc`` itself."""
    found = leaves(exc)
    return found[0] if len(found) == 1 else exc


def _telling(errors: Sequence[BaseException]) -> BaseException | None:
    """Of the errors (``leaves``) a connection ended with, the one that says why, if any.

    A ``ConnectionClosing`` (the server's own decision) wins; otherwise, when every one is
    the peer going away or breaking the protocol, the first of them; otherwise the only
    one, and None for several (a failure, logged with them all).
    """
    for leaf in errors:
        if isinstance(leaf, ConnectionClosing):
            return leaf
    expected = (*_CONNECTION_GONE, h2.exceptions.ProtocolError, OSError, trio.TooSlowError)
    if all(isinstance(leaf, expected) for leaf in errors) or len(errors) == 1:
        return errors[0]
    return None


async def _dispatch(
    stream: GRPCProtoStream,
    peer: PeerConnection,
    service: Service,
    limits: ServerLimits,
    socket: ServerSocket,
) -> None:
    try:
        await _dispatch_one(stream, peer, service, limits)
    finally:
        socket.finish_stream(stream)
        socket.rpc_finished()


async def _refuse(
    stream: GRPCProtoStream, refusal: Refusal, limits: ServerLimits, socket: ServerSocket
) -> None:
    """Answer an RPC of a connection refused at the door, then close the connection."""
    rpc = RpcStream(stream, limits.write_timeout, limits.max_output_bytes)
    try:
        await stream.start_response()
        await _close_quietly(rpc, refusal)
    except _CONNECTION_GONE:
        pass
    finally:
        release_stream(stream)
        socket.finish_stream(stream)
        socket.rpc_finished()
        socket.request_close(refusal.reason)


async def _dispatch_one(
    stream: GRPCProtoStream, peer: PeerConnection, service: Service, limits: ServerLimits
) -> None:
    rpc = RpcStream(stream, limits.write_timeout, limits.max_output_bytes)
    try:
        await _run_method(stream, rpc, peer, service, limits)
    except BaseException as exc:  # re-raised below unless it is ours to answer
        leaf = _sole_leaf(exc)
        if isinstance(leaf, Refusal):
            await _close_quietly(rpc, leaf)
        elif isinstance(leaf, (*_CONNECTION_GONE, h2.exceptions.ProtocolError)):
            # The connection went away, or is closing (GOAWAY sent): nothing to answer.
            return
        elif isinstance(leaf, StoreError):
            log.error("store failure during an RPC (connection %d): %s", peer.connection_id, leaf)
            await _close_quietly(rpc, Refusal(Reason.STORE_UNAVAILABLE))
        elif isinstance(exc, Exception):
            log.exception("RPC handler failed (connection %d)", peer.connection_id)
            await _close_quietly(rpc, Refusal(Reason.INTERNAL_ERROR))
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
        raise Refusal(Reason.EXPECTED_HEADERS)
    method = service.methods.get(event.method_name) if event.service_name == SERVICE_NAME else None
    if method is None:
        detail = f"/{event.service_name}/{event.method_name}"
        raise Refusal(Reason.UNKNOWN_METHOD, detail=detail)
    stream.expect_message_type(method.request_type)
    if method.stream is not None:
        await method.stream(peer, rpc)
    else:
        assert method.unary is not None
        request: Any = None
        with trio.move_on_after(limits.first_message_timeout):
            request = await _single_request(rpc)
        if request is None:
            raise Refusal(Reason.REQUEST_TIMEOUT)
        response = await method.unary(peer, request)
        await rpc.send(response)
    await rpc.close()


async def _close_quietly(rpc: RpcStream, refusal: Refusal) -> None:
    try:
        await rpc.close(refusal)
    except (*_CONNECTION_GONE, h2.exceptions.ProtocolError):
        pass


# -- listener and connections ----------------------------------------------------------


def _peer_host(stream: anyio.abc.ByteStream) -> str:
    try:
        address: Any = stream.extra(anyio.abc.SocketAttribute.remote_address)
        return str(address[0])
    except (anyio.TypedAttributeLookupError, TypeError, ValueError, IndexError):
        return "unknown"


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
        self._per_address: Counter[str] = Counter()
        self._per_identity: Counter[str] = Counter()
        self._warned: dict[str, float] = {}

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and serve until cancelled; reports the bound address."""
        try:
            listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as exc:  # in use, not this host's address, unresolvable name
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"cannot listen on {where} (server_listen_addr): {reason}; stop whatever "
                "holds that port, or choose another address or port (port 0 picks a free one)"
            ) from exc
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
                self._warn("connections", "refusing connections: %d open", self.active_connections)
                await _aclose(stream)
                continue
            host = _peer_host(stream)
            if self._per_address[host] >= self._limits.max_connections_per_address:
                self._warn(host, "refusing connections from %s: too many open", host)
                await _aclose(stream)
                continue
            self._per_address[host] += 1
            nursery.start_soon(self._connection, stream, host)

    def reconfigure(self, limits: ServerLimits) -> None:
        """Use ``limits`` for connections accepted from now on (a config reload)."""
        self._limits = limits

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """A warning, at most once per ``_WARN_INTERVAL`` for ``key`` (floods log one line)."""
        now = trio.current_time()
        if now - self._warned.get(key, -math.inf) >= _WARN_INTERVAL:
            if len(self._warned) > _WARNED_KEYS:
                self._warned.clear()
            self._warned[key] = now
            log.warning(message, *args)

    async def _connection(self, tcp: anyio.abc.SocketStream, host: str) -> None:
        self.active_connections += 1
        self._next_connection_id += 1
        connection_id = self._next_connection_id
        address = _peer_address(tcp)
        tls: TLSStream | None = None
        agent_id: str | None = None
        refused_at_door = False
        try:
            try:
                with trio.fail_after(self._limits.handshake_timeout):
                    tls = await TLSStream.wrap(
                        DirectSocket(tcp),
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
            admitted = await self._service.admit(peer)
            refused_at_door = isinstance(admitted, Refusal)
            if isinstance(admitted, str):
                if self._per_identity[admitted] >= self._limits.max_connections_per_identity:
                    self._warn(admitted, "refusing connections of %s: too many open", admitted)
                    admitted = Refusal(Reason.TOO_MANY_CONNECTIONS)
                else:
                    agent_id = admitted
                    self._per_identity[agent_id] += 1
            await self._serve_connection(tls, peer, admitted)
        except BaseException as exc:  # a client must never take the server down
            found = leaves(exc)
            errors = [leaf for leaf in found if isinstance(leaf, Exception)]
            if errors:
                leaf = _telling(errors)
                if isinstance(leaf, ConnectionClosing):
                    # Idle connections closing is routine, and a refusal at the door was
                    # logged by the servicer; a client past a limit is news.
                    routine = leaf.reason == Reason.IDLE_TIMEOUT or refused_at_door
                    level = logging.DEBUG if routine else logging.WARNING
                    log.log(level, "connection %d from %s closed: %s", connection_id, address, leaf)
                elif isinstance(leaf, trio.TooSlowError):
                    log.info("connection %d from %s closed: slow_reader", connection_id, address)
                elif isinstance(leaf, (*_CONNECTION_GONE, h2.exceptions.ProtocolError, OSError)):
                    log.debug("connection %d from %s closed: %r", connection_id, address, leaf)
                else:
                    log.error(
                        "connection %d from %s failed; closing it",
                        connection_id,
                        address,
                        exc_info=exc,
                    )
            if len(errors) < len(found):  # Cancelled, KeyboardInterrupt: never swallowed
                if not isinstance(exc, BaseExceptionGroup):
                    raise
                _, rest = exc.split(Exception)
                assert rest is not None
                raise rest from None  # only the non-Exception part of a group propagates
        finally:
            self.active_connections -= 1
            _decrement(self._per_address, host)
            if agent_id is not None:
                _decrement(self._per_identity, agent_id)
            await _aclose(tls if tls is not None else tcp)

    async def _serve_connection(
        self, tls: TLSStream, peer: PeerConnection, admitted: str | Refusal
    ) -> None:
        socket = ServerSocket(tls, self._limits)
        limits = self._limits
        service = self._service
        async with socket, trio.open_nursery() as rpcs:
            if isinstance(admitted, Refusal):
                # Refused at the door: each RPC gets the refusal, then the connection ends.

                def spawn(stream: GRPCProtoStream) -> None:
                    socket.rpc_started()
                    rpcs.start_soon(_refuse, stream, admitted, limits, socket)

            else:

                def spawn(stream: GRPCProtoStream) -> None:
                    socket.rpc_started()
                    rpcs.start_soon(_dispatch, stream, peer, service, limits, socket)

            await socket.serve(spawn)
            # The peer is gone: no RPC of this connection can progress any more.
            rpcs.cancel_scope.cancel()


def _decrement(counts: Counter[str], key: str) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


async def _aclose(stream: anyio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.aclose()
