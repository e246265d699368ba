"""The agent's link to the server: connect, reconnect, carry frames and unary calls.

``Link.run`` is one task that owns the connection for the agent's whole life: it connects
(retrying with jittered backoff up to ``connect_timeout`` the first time), says Hello with the
agent's fixed instance id, reads the Transport stream and turns each server frame into actions
through ``SessionCore``, and reconnects after a drop. Other tasks call ``send``, ``request``,
``reply``, ``ack``/``nack`` and ``unary``; these wait (within their own deadline) while the link
is reconnecting.

Error handling
    ``run`` raises the server's ``RejectedError`` when it refuses the Hello for good
    (``UNAUTHENTICATED``, ``PERMISSION_DENIED``, ``INVALID_ARGUMENT``), and
    ``ConnectionClosedError`` when the first connection cannot be made in time. Frames whose
    ``Result`` had not arrived when a connection dropped fail with ``ConnectionClosedError``
    (their fate is unknown); accepted requests keep waiting for their reply until their own
    deadline, across reconnects.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import trio

from .._proto import runtime_pb2 as pb
from ..envelope import Envelope
from ..errors import ConnectionClosedError, MasError, RejectedError, RequestTimeoutError
from .backoff import Backoff
from .client import Channel, ServerAddress, Transport, call_unary, open_channel, open_transport
from .session import (
    Action,
    Discarded,
    FrameKind,
    FrameResult,
    Incoming,
    ReplyArrived,
    SendAcks,
    SendNack,
    ServerRefused,
    SessionCore,
)

log = logging.getLogger("mas.agent")

FATAL_HELLO_CODES: Final = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"})
STABLE_SESSION: Final = 5.0  # seconds a session must last before the backoff starts over
MAX_TIMEOUT_MS: Final = 2**31 - 1  # StreamRequest.timeout_ms is an int32


class Delivered(msgspec.Struct, frozen=True):
    """A message for the handlers, tagged with the connection it came on."""

    generation: int
    delivery_id: str
    envelope: Envelope


class _Slot:
    """One outbound frame's wait: its Result, then, for a request, its reply."""

    __slots__ = ("error", "replied", "reply", "result", "settled")

    def __init__(self) -> None:
        self.settled = trio.Event()
        self.result: FrameResult | None = None
        self.error: MasError | None = None
        self.replied = trio.Event()
        self.reply: Envelope | None = None


class _Live:
    """One connection: its channel, Transport stream and the frames waiting on it."""

    def __init__(self, channel: Channel, transport: Transport, welcome: pb.Welcome, gen: int):
        self.channel = channel
        self.transport = transport
        self.welcome = welcome
        self.generation = gen
        self.alive = True
        self.frames: dict[int, _Slot] = {}
        self.calls: set[trio.CancelScope] = set()
        self.scope = trio.CancelScope()
        self.since = trio.current_time()


class Link:
    """The connection manager of one agent instance (see the module docstring)."""

    def __init__(
        self,
        *,
        label: str,
        address: ServerAddress,
        ssl_context: ssl.SSLContext,
        instance_id: str,
        on_delivery: Callable[[Delivered], Awaitable[None]],
        prefetch: int = 0,
        rpc_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        heartbeat_interval: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._label = label
        self.address = address
        self._ssl_context = ssl_context
        self.instance_id = instance_id
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._rpc_timeout = rpc_timeout
        self._connect_timeout = connect_timeout
        self._heartbeat_interval = heartbeat_interval
        self._backoff = backoff or Backoff()
        self._core = SessionCore()
        self._live: _Live | None = None
        self._changed = trio.Event()
        self._generation = 0
        self._drops = 0
        self._replies: dict[str, _Slot] = {}
        self._closing = False
        self._failed: MasError | None = None
        self._last_error: BaseException | None = None
        self._run_scope = trio.CancelScope()
        self._finished = trio.Event()

    # -- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._live is not None and self._live.alive

    @property
    def generation(self) -> int:
        """Increases with every connection; deliveries of older ones are not acked."""
        return self._generation

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_live(self, deadline: float, what: str) -> _Live:
        while True:
            live = self._live
            if live is not None and live.alive:
                return live
            if self._failed is not None or self._closing:
                raise ConnectionClosedError(f"{self._label}: cannot {what}, the agent is stopping")
            with trio.move_on_at(deadline):
                await self._changed.wait()
                continue
            raise ConnectionClosedError(
                f"{self._label}: cannot {what}, not connected to {self.address} "
                f"(reconnecting; last error: {self._last_error!r})"
            )

    # -- outbound -------------------------------------------------------------------------

    async def send(self, target_id: str, message_type: str, data_json: str) -> str:
        """Send a message; returns its message id once the server accepted it."""
        deadline = trio.current_time() + self._rpc_timeout
        what = f"send {message_type!r} to {target_id!r}"

        def frame(seq: int) -> pb.ClientEvent:
            return pb.ClientEvent(
                send=pb.StreamSend(
                    seq=seq, target_id=target_id, message_type=message_type, data_json=data_json
                )
            )

        result, _ = await self._frame("send", frame, deadline, what)
        return result.message_id

    async def reply(self, correlation_id: str, message_type: str, data_json: str) -> str:
        """Reply to a request; returns the reply's message id once the server accepted it."""
        deadline = trio.current_time() + self._rpc_timeout

        def frame(seq: int) -> pb.ClientEvent:
            return pb.ClientEvent(
                reply=pb.StreamReply(
                    seq=seq,
                    correlation_id=correlation_id,
                    message_type=message_type,
                    data_json=data_json,
                )
            )

        result, _ = await self._frame("reply", frame, deadline, f"reply {message_type!r}")
        return result.message_id

    async def request(
        self, target_id: str, message_type: str, data_json: str, timeout: float
    ) -> Envelope:
        """Send a request and wait for its reply envelope until ``timeout`` has passed."""
        start = trio.current_time()
        deadline = start + timeout
        drops = self._drops
        what = f"request {message_type!r} from {target_id!r}"

        def frame(seq: int) -> pb.ClientEvent:
            remaining_ms = int(max(0.0, deadline - trio.current_time()) * 1000)
            return pb.ClientEvent(
                request=pb.StreamRequest(
                    seq=seq,
                    target_id=target_id,
                    message_type=message_type,
                    data_json=data_json,
                    timeout_ms=max(1, min(remaining_ms, MAX_TIMEOUT_MS)),
                )
            )

        result_deadline = min(deadline, start + self._rpc_timeout)
        result, slot = await self._frame("request", frame, result_deadline, what)
        cid = result.correlation_id
        try:
            with trio.move_on_at(deadline):
                await slot.replied.wait()
        finally:
            if slot.reply is None:
                self._replies.pop(cid, None)
                self._core.stop_awaiting(cid)
        if slot.reply is not None:
            return slot.reply
        if not self.connected:
            state = "the connection to the server is down"
        elif self._drops != drops:
            state = "the connection to the server dropped meanwhile and was restored"
        else:
            state = "the connection to the server was up throughout"
        raise RequestTimeoutError(f"{self._label}: no reply to {what} within {timeout:g}s ({state})")

    async def _frame(
        self,
        kind: FrameKind,
        build: Callable[[int], pb.ClientEvent],
        result_deadline: float,
        what: str,
    ) -> tuple[FrameResult, _Slot]:
        waited = result_deadline - trio.current_time()
        live = await self._wait_live(result_deadline, what)
        seq = self._core.open_frame(kind)
        slot = _Slot()
        live.frames[seq] = slot
        try:
            await live.transport.send(build(seq))
            with trio.move_on_at(result_deadline):
                await slot.settled.wait()
        finally:
            if not slot.settled.is_set():
                live.frames.pop(seq, None)
                if live.alive:
                    self._core.abandon_frame(seq)
        if slot.error is not None:
            raise slot.error
        if slot.result is None:
            raise RequestTimeoutError(
                f"{self._label}: the server did not confirm {what} within {waited:.3g}s; "
                "whether it was delivered is unknown"
            )
        if slot.result.error is not None:
            raise slot.result.error
        return slot.result, slot

    async def ack(self, generation: int, delivery_id: str) -> None:
        """Ack a delivery of connection ``generation`` (a no-op if that connection is gone)."""
        live = self._live
        if live is None or not live.alive or live.generation != generation:
            return
        with trio.fail_after(self._rpc_timeout):
            await live.transport.ack(delivery_id, batching=live.welcome.batching)

    async def nack(self, generation: int, delivery_id: str, reason: str, retryable: bool) -> None:
        """Nack a delivery of connection ``generation`` (a no-op if that connection is gone)."""
        live = self._live
        if live is None or not live.alive or live.generation != generation:
            return
        nack = pb.Nack(delivery_id=delivery_id, reason=reason[:200], retryable=retryable)
        with trio.fail_after(self._rpc_timeout):
            await live.transport.send(pb.ClientEvent(nack=nack))

    async def unary(self, method: str, request: Any, response_type: Any) -> Any:
        """One unary RPC on the live connection, bounded by ``rpc_timeout``."""
        deadline = trio.current_time() + self._rpc_timeout
        live = await self._wait_live(deadline, f"call {method}")
        with trio.CancelScope(deadline=deadline) as scope:
            live.calls.add(scope)
            try:
                return await call_unary(live.channel, method, request, response_type)
            finally:
                live.calls.discard(scope)
        if not live.alive:
            raise ConnectionClosedError(f"{self._label}: the connection dropped during {method}")
        raise RequestTimeoutError(
            f"{self._label}: {method} got no answer within {self._rpc_timeout:g}s"
        )

    # -- the connection task --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then serve and reconnect until ``aclose``; ``started()`` after Welcome."""
        first_deadline = trio.current_time() + self._connect_timeout
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            with self._run_scope:
                while not self._closing:
                    error = await self._one_connection(ready, first_deadline, started)
                    if self._closing:
                        break
                    self._last_error = error
                    if isinstance(error, RejectedError) and error.code in FATAL_HELLO_CODES:
                        self._failed = error
                        raise error
                    now = trio.current_time()
                    if not started and now >= first_deadline:
                        self._failed = ConnectionClosedError(
                            f"{self._label}: could not connect to {self.address} within "
                            f"{self._connect_timeout:g}s; last error: {error}"
                        )
                        raise self._failed from error
                    delay = self._backoff.next_delay()
                    if not started:
                        delay = min(delay, first_deadline - now)
                    log.warning(
                        "%s: connection to %s failed (%s); retrying in %.2fs",
                        self._label,
                        self.address,
                        error,
                        delay,
                    )
                    with trio.move_on_after(delay):
                        while not self._closing:
                            await self._changed.wait()
        finally:
            self._finished.set()
            self._notify()

    async def _one_connection(
        self, ready: Callable[[], None], first_deadline: float, started: bool
    ) -> Exception:
        """Run one connection to its end; returns the error that ended it."""
        timeout = self._connect_timeout
        if not started:
            timeout = max(0.001, first_deadline - trio.current_time())
        error: Exception = ConnectionClosedError(f"{self._label}: the server ended the session")
        try:
            async with open_channel(self.address, self._ssl_context, connect_timeout=timeout) as ch:
                transport, welcome = await open_transport(
                    ch,
                    instance_id=self.instance_id,
                    prefetch=self._prefetch,
                    timeout=timeout,
                    write_timeout=self._rpc_timeout,
                )
                live = self._attach(ch, transport, welcome)
                try:
                    ready()
                    await self._serve(live)
                finally:
                    self._detach(live)
        except* trio.Cancelled:
            raise
        except* Exception as group:
            error = _most_telling(group)
        return error

    def _attach(self, channel: Channel, transport: Transport, welcome: pb.Welcome) -> _Live:
        self._generation += 1
        live = _Live(channel, transport, welcome, self._generation)
        self._live = live
        log.info(
            "%s: connected to %s as %s/%s (prefetch %d)",
            self._label,
            self.address,
            welcome.agent_id,
            welcome.instance_id,
            welcome.prefetch,
        )
        self._notify()
        return live

    def _detach(self, live: _Live) -> None:
        live.alive = False
        if self._live is live:
            self._live = None
        if trio.current_time() - live.since >= STABLE_SESSION:
            self._backoff.reset()
        self._drops += 1
        self._core.connection_lost()
        for slot in live.frames.values():
            slot.error = ConnectionClosedError(
                f"{self._label}: the connection to {self.address} was lost before the server "
                "confirmed this message; whether it was delivered is unknown"
            )
            slot.settled.set()
        live.frames.clear()
        for scope in live.calls:
            scope.cancel()
        self._notify()

    async def _serve(self, live: _Live) -> None:
        """Read the stream until it ends; raises why, or returns when closing."""
        with live.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, live)
                while (event := await live.transport.receive()) is not None:
                    for action in self._core.handle(event):
                        await self._apply(live, action)
                nursery.cancel_scope.cancel()
        if live.transport.broken is not None:
            raise ConnectionClosedError(f"{self._label}: {live.transport.broken}")
        if self._closing and live.transport.ended_ok():
            return
        raise live.transport.end_error()

    async def _apply(self, live: _Live, action: Action) -> None:
        try:
            await self._apply_one(live, action)
        except ConnectionClosedError:
            live.scope.cancel()  # the stream broke under us: end this connection

    async def _apply_one(self, live: _Live, action: Action) -> None:
        if isinstance(action, Incoming):
            await self._on_delivery(Delivered(live.generation, action.delivery_id, action.envelope))
        elif isinstance(action, FrameResult):
            slot = live.frames.pop(action.seq, None)
            if slot is not None:
                slot.result = action
                if action.kind == "request" and action.error is None:
                    self._replies[action.correlation_id] = slot
                slot.settled.set()
        elif isinstance(action, ReplyArrived):
            waiter = self._replies.pop(action.correlation_id, None)
            if waiter is not None:
                waiter.reply = action.envelope
                waiter.replied.set()
        elif isinstance(action, SendAcks):
            await live.transport.ack(*action.delivery_ids, batching=live.welcome.batching)
        elif isinstance(action, SendNack):
            nack = pb.Nack(
                delivery_id=action.delivery_id, reason=action.reason, retryable=action.retryable
            )
            await live.transport.send(pb.ClientEvent(nack=nack))
        elif isinstance(action, ServerRefused):
            log.warning("%s: server error %s %s", self._label, action.code, action.reason)
        elif isinstance(action, Discarded):
            log.log(
                logging.WARNING if action.notable else logging.DEBUG,
                "%s: dropped (%s) delivery=%s correlation=%s",
                self._label,
                action.reason,
                action.delivery_id,
                action.correlation_id,
            )

    async def _heartbeat(self, live: _Live) -> None:
        interval = self._heartbeat_interval
        while True:
            await trio.sleep_until(live.transport.last_write + interval)
            if trio.current_time() >= live.transport.last_write + interval:
                try:
                    await live.transport.send(pb.ClientEvent(heartbeat=pb.Heartbeat()))
                except ConnectionClosedError:
                    live.scope.cancel()
                    return

    # -- closing --------------------------------------------------------------------------

    async def aclose(self, timeout: float) -> None:
        """Close gracefully: half-close the stream, let the server end it, stop ``run``.

        Bounded by ``timeout``; after that the connection is cut.
        """
        self._closing = True
        self._notify()
        with trio.move_on_after(timeout):
            live = self._live
            if live is not None and live.alive:
                await live.transport.close()
            await self._finished.wait()
        if not self._finished.is_set():
            self._run_scope.cancel()


def _most_telling(group: BaseExceptionGroup[Exception]) -> Exception:
    """The error that best explains a failed connection: the server's refusal first."""
    leaves: list[Exception] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        elif isinstance(exc, Exception):
            leaves.append(exc)
    for kind in (RejectedError, MasError, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


def sole_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one ``Exception`` a nest of groups wraps, or None (several, or a cancellation)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], Exception):
        leaves[0].__suppress_context__ = True
        return leaves[0]
    return None
