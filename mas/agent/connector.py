"""The connection task: connect, say Hello, read the Transport stream, reconnect.

``Connector.run`` owns the agent's connection for the agent's whole life. It connects (retrying with
jittered backoff up to ``connect_timeout`` the first time), says Hello with the agent's fixed
instance id, turns each server frame into actions through ``StreamState`` and carries them out,
sends a heartbeat while idle, and after a drop reconnects with backoff (without limit: a server
restart is survived). Other tasks reach the connection through ``Outbox`` (calls.py).

Error handling
    ``run`` raises the server's ``RejectedError`` when it refuses this identity
    (``UNAUTHENTICATED``, ``PERMISSION_DENIED``) or the session (``INVALID_ARGUMENT``):
    retrying the same Hello cannot help. It raises ``ConnectionClosedError`` naming the address
    and the last error when the first connection cannot be made within ``connect_timeout``.
    A connection failure (``UNAVAILABLE``, a broken socket, a stalled write, a frame that does
    not decode: ``CONNECTION_FAILURES``) is logged and followed by a reconnect. Any other
    exception is a bug: ``run`` raises it, with its traceback, instead of reconnecting.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final

import msgspec
import trio
from google.protobuf.message import DecodeError

from .._proto import runtime_pb2 as pb
from ..envelope import Envelope
from ..errors import ConnectionClosedError, MasError, RejectedError, leaves, rejected_error
from .backoff import Backoff
from .calls import Live, Outbox
from .client import TRANSPORT_ERRORS, ServerAddress, open_channel, open_transport
from .stream import (
    Action,
    Discarded,
    FrameResult,
    Incoming,
    ReplyArrived,
    SendAcks,
    SendNack,
    ServerRefused,
)

log = logging.getLogger("mas.agent")

FATAL_CODES: Final = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT"})
FRAME_BATCH: Final = 256  # server frames handled per read of the stream, at most
STABLE_SESSION: Final = 5.0  # seconds a session must last before the backoff starts over


class Delivered(msgspec.Struct, frozen=True):
    """A message for the handlers, tagged with the connection it came on."""

    generation: int
    delivery_id: str
    envelope: Envelope


class Connector:
    """The connection task of one agent instance (see the module docstring)."""

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
        heartbeat_interval: float = 120.0,
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
        self.outbox = Outbox(label=label, address=str(address), rpc_timeout=rpc_timeout)
        self._closing = False
        self._said_unary = False  # the unary fallback was logged (once per agent)
        self._run_scope = trio.CancelScope()
        self._finished = trio.Event()

    @property
    def generation(self) -> int:
        """Increases with every connection; deliveries of older ones are not acked."""
        return self.outbox.generation

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
                    self.outbox.last_error = error
                    if isinstance(error, RejectedError) and error.code in FATAL_CODES:
                        raise error
                    now = trio.current_time()
                    if not started and now >= first_deadline:
                        raise ConnectionClosedError(
                            f"{self._label}: could not connect to {self.address} within "
                            f"{self._connect_timeout:g}s; last error: {error}"
                        ) from error
                    delay = self._backoff.next_delay()
                    if not started:
                        delay = min(delay, first_deadline - now)
                    log.log(
                        logging.WARNING if self._backoff.attempt <= 1 else logging.INFO,
                        "%s: %s; reconnecting in %.2fs",
                        self._label,
                        error,
                        delay,
                    )
                    with trio.move_on_after(delay):
                        while not self._closing:
                            await self.outbox.wait_changed()
        finally:
            self.outbox.close("the agent is stopping")
            self._finished.set()

    async def _one_connection(
        self, ready: Callable[[], None], first_deadline: float, started: bool
    ) -> Exception:
        """Run one connection to its end; returns the error that ended it."""
        timeout = self._connect_timeout
        if not started:
            timeout = max(0.001, first_deadline - trio.current_time())
        error: Exception = ConnectionClosedError(f"{self._label}: the server ended the session")
        bug: Exception | None = None
        try:
            async with open_channel(self.address, self._ssl_context, connect_timeout=timeout) as ch:
                transport, welcome = await open_transport(
                    ch,
                    instance_id=self.instance_id,
                    prefetch=self._prefetch,
                    hello_timeout=timeout,
                    write_timeout=self._rpc_timeout,
                )
                live = self.outbox.attach(ch, transport, welcome)
                log.debug(
                    "%s: connected to %s as %s/%s (prefetch %d)",
                    self._label,
                    self.address,
                    welcome.agent_id,
                    welcome.instance_id,
                    welcome.prefetch,
                )
                if not welcome.stream_messages and not self._said_unary:
                    self._said_unary = True
                    log.info(
                        "%s: the server at %s does not announce the stream fast path (a "
                        "mas-framework 0.4 server?); sending through the unary RPCs",
                        self._label,
                        self.address,
                    )
                try:
                    ready()
                    await self._serve(live)
                finally:
                    if trio.current_time() - live.since >= STABLE_SESSION:
                        self._backoff.reset()
                    self.outbox.detach(live)
        except* trio.Cancelled:
            raise
        except* Exception as group:  # noqa: BLE001 - sorted below: connection failures or bugs
            bug = _first_bug(group)
            error = _most_telling(group)
        if bug is not None:
            # Reconnecting would hide a bug behind a retry loop: end the agent as a crash,
            # with the bug's own traceback (the supervisor reports it and restarts).
            raise bug
        return error

    async def _serve(self, live: Live) -> None:
        """Read the stream until it ends; raises why, or returns when closing."""
        core = self.outbox.core
        with live.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, live)
                nursery.start_soon(self._acker, live)
                while batch := await live.transport.receive_batch(FRAME_BATCH):
                    for event in batch:
                        for action in core.handle(event):
                            await self._apply(live, action)
                nursery.cancel_scope.cancel()
        if live.transport.broken is not None:
            raise ConnectionClosedError(f"{self._label}: {live.transport.broken}")
        if live.scope.cancelled_caught:
            raise ConnectionClosedError(f"{self._label}: the Transport stream broke")
        if self._closing and live.transport.ended_ok():
            return
        raise live.transport.end_error()

    async def _apply(self, live: Live, action: Action) -> None:
        try:
            await self._apply_one(live, action)
        except ConnectionClosedError as exc:
            if self._closing:
                log.debug("%s: not answered while closing: %s", self._label, exc)
            else:
                live.scope.cancel()  # the stream broke under us: end this connection

    async def _apply_one(self, live: Live, action: Action) -> None:
        if isinstance(action, Incoming):
            await self._on_delivery(Delivered(live.generation, action.delivery_id, action.envelope))
        elif isinstance(action, FrameResult):
            self.outbox.settle(live, action)
        elif isinstance(action, ReplyArrived):
            if not self.outbox.reply_arrived(action):
                log.debug("%s: reply %s came too late", self._label, action.correlation_id)
        elif isinstance(action, SendAcks):  # a reply's: it rides in the next request
            live.transport.ack_soon(*action.delivery_ids)
        elif isinstance(action, SendNack):
            nack = pb.Nack(
                delivery_id=action.delivery_id, reason=action.reason, retryable=action.retryable
            )
            await live.transport.send(pb.ClientEvent(nack=nack))
        elif isinstance(action, ServerRefused):
            if action.code in FATAL_CODES:
                raise rejected_error(action.code, action.reason)
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

    async def _acker(self, live: Live) -> None:
        try:
            await live.transport.run_acker(batching=live.welcome.batching)
        except ConnectionClosedError:
            live.scope.cancel()  # the stream broke: end this connection

    async def _heartbeat(self, live: Live) -> None:
        interval = self._heartbeat_interval
        while True:
            await trio.sleep_until(live.transport.last_write + interval)
            if trio.current_time() >= live.transport.last_write + interval:
                try:
                    await live.transport.send(pb.ClientEvent(heartbeat=pb.Heartbeat()))
                except ConnectionClosedError:
                    live.scope.cancel()
                    return

    async def aclose(self, grace: float) -> None:
        """Close gracefully: half-close the stream, let the server end it, stop ``run``.

        Bounded by ``grace`` seconds; after that the connection is cut.
        """
        self._closing = True
        self.outbox.notify()
        with trio.move_on_after(grace):
            live = self.outbox.live
            if live is not None and live.alive:
                await live.transport.close(batching=live.welcome.batching)
            await self._finished.wait()
        if not self._finished.is_set():
            self._run_scope.cancel()


CONNECTION_FAILURES: Final = (
    MasError,
    *TRANSPORT_ERRORS,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    msgspec.DecodeError,  # a frame from the server that does not decode
    DecodeError,
)
"""What may end a connection without being a bug in this process: reconnect after these."""


def _first_bug(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The first error in ``group`` that is not a connection failure (a bug), if any."""
    for leaf in leaves(group):
        if isinstance(leaf, Exception) and not isinstance(leaf, CONNECTION_FAILURES):
            leaf.__suppress_context__ = True
            return leaf
    return None


def _most_telling(group: ExceptionGroup[Exception]) -> Exception:
    """The error that best explains a failed connection: the server's refusal first."""
    errors = [leaf for leaf in leaves(group) if isinstance(leaf, Exception)]
    for kind in (RejectedError, MasError, Exception):
        for leaf in errors:
            if isinstance(leaf, kind):
                return leaf
    return group


@contextmanager
def unwrap_groups() -> Iterator[None]:
    """Re-raise a lone ``Exception`` that strict nurseries wrapped in groups, as itself.

    A group holding a cancellation, or several errors, is re-raised unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole  # noqa: B904 - the group only wrapped it; its own cause is kept


def sole_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one ``Exception`` a nest of groups wraps, or None (several, or a cancellation)."""
    found = leaves(group)
    if len(found) == 1 and isinstance(found[0], Exception):
        found[0].__suppress_context__ = True
        return found[0]
    return None
