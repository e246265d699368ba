"""Running handlers: inbox -> bounded concurrency -> outcome -> ack, nack or error reply.

The connector's receive loop hands each delivery to ``Dispatcher.deliver``, which never waits
(so the loop keeps reading the ``Result`` frames and replies that running handlers may be
waiting for): it starts the delivery's handler task itself when a slot is free and nothing
waits before it, and otherwise queues it for ``dispatch``, which starts a handler task per
queued delivery once one of ``max_concurrency`` slots is free. With the server's prefetch
window this is the agent's backpressure: the server stops pushing while ``prefetch``
deliveries are unanswered.

Each handler runs under ``trio.move_on_after(handler_timeout)``. ``handlers.decide`` maps how
it went to the answer: ack; error reply then ack (a request); nack (a plain send). An error
reply is a ``StreamReply`` of type ``mas.error`` whose data is ``{"kind", "message"}``; the
server turns it into a reply envelope with ``meta.error`` set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

import msgspec
import trio

from ..envelope import ERROR_REPLY_TYPE
from ..errors import MasError
from .calls import Outbox
from .connector import Connector, Delivered
from .handlers import Failure, HandlerSpec, convert_payload, decide, describe_exception
from .message import AgentMessage, encode_object

log = logging.getLogger("mas.agent")

STOPPING_REASON: Final = "agent_stopping"  # nack reason for deliveries refused while stopping
INBOX_FULL_REASON: Final = "agent_inbox_full"  # nack reason past the inbox's bound


class HandlerOwner(Protocol):
    """What the dispatcher needs of the agent whose handlers it runs (:class:`mas.Agent`):
    its name, its fallback and stop hooks; its handlers are ``handlers`` (its class's
    table), looked up on it by attribute name."""

    @property
    def agent_id(self) -> str: ...

    @property
    def instance_id(self) -> str: ...

    async def on_message(self, message: AgentMessage) -> None: ...

    async def on_stop(self) -> None: ...


class Dispatcher:
    """Runs one agent's handlers (see the module docstring)."""

    def __init__(
        self,
        agent: HandlerOwner,
        handlers: Mapping[str, HandlerSpec],
        *,
        max_concurrency: int,
        handler_timeout: float,
        inbox_size: int,
        default_fallback: bool,
    ) -> None:
        self._agent = agent
        self._handlers = handlers
        self._inbox, self._queued = trio.open_memory_channel[Delivered](inbox_size)
        self._default_fallback = default_fallback  # on_message is not overridden
        self._slots = trio.Semaphore(max_concurrency)
        self._handler_timeout = handler_timeout
        self._draining = False
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._in_hand: Delivered | None = None
        self._dispatch_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None  # of the handlers, while ``dispatch`` runs
        self._waiting = 0  # deliveries queued (or in hand) and not yet started
        self._starting = 0  # handlers started that have not run their first step yet
        self.connector: Connector | None = None

    @property
    def _label(self) -> str:
        return f"agent {self._agent.agent_id}/{self._agent.instance_id}"

    def _require_connector(self) -> Connector:
        assert self.connector is not None, "Dispatcher.connector is set before the connector runs"
        return self.connector

    def _outbox(self) -> Outbox:
        return self._require_connector().outbox

    # -- intake ---------------------------------------------------------------------------

    async def deliver(self, item: Delivered) -> None:
        """Called by the connector for each delivery: queue it, or refuse it while stopping.

        Never waits for room: the connector's one read loop calls this, and it also reads the
        results and replies that running handlers wait for. The inbox holds two of the
        windows the agent asks the server for, so a server that keeps its window never
        fills it; a delivery past that is given back (a retryable nack), not waited on.
        """
        if self._draining:
            await self._nack(item, STOPPING_REASON, retryable=True)
            return
        if self._nursery is not None and not self._waiting and not self._starting:
            # Nothing waits before it and a slot is free: start it now, without the hop
            # through the inbox (one at a time, so handlers still start in delivery order).
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                pass
            else:
                self._start(self._nursery, item)
                return
        try:
            self._inbox.send_nowait(item)
            self._waiting += 1
        except trio.WouldBlock:
            log.warning("%s: inbox full; delivery %s given back", self._label, item.delivery_id)
            await self._nack(item, INBOX_FULL_REASON, retryable=True)

    async def dispatch(self, nursery: trio.Nursery) -> None:
        """Start a handler task per queued delivery, at most ``max_concurrency`` at once."""
        self._nursery = nursery
        try:
            with self._dispatch_scope:
                async for item in self._queued:
                    # (A scheduler pass per item, here, keeps handlers starting in delivery
                    # order: Trio runs the tasks of one pass in no fixed order.)
                    if item.generation != self._require_connector().generation:
                        self._waiting -= 1
                        continue  # its connection is gone: the server has requeued it
                    self._in_hand = item
                    try:
                        self._slots.acquire_nowait()
                    except trio.WouldBlock:
                        await self._slots.acquire()
                    self._in_hand = None
                    self._waiting -= 1
                    self._start(nursery, item)
        finally:
            self._nursery = None

    def _start(self, nursery: trio.Nursery, item: Delivered) -> None:
        """Run ``item``'s handler in a task of its own (a slot is taken for it)."""
        self._running += 1
        self._starting += 1
        self._idle = trio.Event()
        nursery.start_soon(self._handle, item)

    async def drain(self, grace: float) -> None:
        """Stop taking deliveries, nack the queued ones, give running handlers ``grace``."""
        self._draining = True
        self._dispatch_scope.cancel()
        await self.nack_queued()
        with trio.move_on_after(grace):
            await self._idle.wait()
        if self._running:
            log.warning(
                "%s: %d handler(s) still running after %gs; cancelling them",
                self._label,
                self._running,
                grace,
            )

    async def nack_queued(self) -> None:
        """Give back what was queued but never started (retryable nacks)."""
        self._draining = True
        pending = [self._in_hand] if self._in_hand is not None else []
        self._in_hand = None
        while True:
            try:
                pending.append(self._queued.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        for item in pending:
            await self._nack(item, STOPPING_REASON, retryable=True)

    # -- one delivery ---------------------------------------------------------------------

    async def _handle(self, item: Delivered) -> None:
        self._starting -= 1
        acked = False  # an accepted reply acked the delivery (``reply_acks``): no Ack due

        async def replier(correlation_id: str, message_type: str, data: Any) -> str:
            nonlocal acked
            message_id, acked_too = await self._outbox().reply_acking(
                correlation_id,
                message_type,
                encode_object(data),
                (item.generation, item.delivery_id),
            )
            acked = acked or acked_too
            return message_id

        try:
            message = AgentMessage(item.envelope, replier=replier)
            failure, text = await self._invoke(message)
            outcome = decide(
                expects_reply=message.expects_reply, failure=failure, replied=message.replied
            )
            if outcome.error_reply_kind is not None:
                acked = await self._error_reply(message, outcome.error_reply_kind, text, item)
            if not outcome.ack:
                await self._nack(item, text, retryable=outcome.retryable)
            elif not acked:  # an accepted reply acked it already (``reply_acks``)
                await self._ack(item)
            if failure is None and message.expects_reply and not message.replied:
                log.warning(
                    "%s: handler for request %r from %r returned without replying; "
                    "the requester will time out",
                    self._label,
                    message.message_type,
                    message.sender_id,
                )
        finally:
            self._slots.release()
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _invoke(self, message: AgentMessage) -> tuple[Failure | None, str]:
        """Run the handler; returns how it failed (None if it did not) and an error text."""
        agent = self._agent
        spec = self._handlers.get(message.message_type)
        if spec is None and self._default_fallback:
            # The default fallback is a handler like the others (timeout, error handling);
            # a request it cannot answer gets an error reply instead of a timeout.
            failure, text = await self._run(message, agent.on_message, (message,))
            if failure is None and message.expects_reply:
                return Failure.HANDLER_ERROR, (
                    f"LookupError: agent {agent.agent_id!r} has no handler for message type "
                    f"{message.message_type!r}"
                )
            return failure, text
        args: tuple[Any, ...] = (message,)
        if spec is not None and spec.model is not None:
            try:
                args = (message, convert_payload(spec.model, message.data))
            except msgspec.ValidationError as exc:
                log.warning(
                    "%s: payload of %r from %r does not fit %s: %s",
                    self._label,
                    message.message_type,
                    message.sender_id,
                    getattr(spec.model, "__qualname__", spec.model),
                    exc,
                )
                return Failure.VALIDATION, describe_exception(exc)
        handler = agent.on_message if spec is None else getattr(agent, spec.attr)
        return await self._run(message, handler, args)

    async def _run(
        self, message: AgentMessage, handler: Any, args: tuple[Any, ...]
    ) -> tuple[Failure | None, str]:
        """Run one handler under ``handler_timeout``; how it failed (None if not) and why."""
        with trio.move_on_after(self._handler_timeout):
            try:
                await handler(*args)
            except Exception as exc:
                log.error(
                    "%s: handler for %r (message %s from %r) raised",
                    self._label,
                    message.message_type,
                    message.message_id,
                    message.sender_id,
                    exc_info=True,
                )
                return Failure.HANDLER_ERROR, describe_exception(exc)
            return None, ""
        log.error(
            "%s: handler for %r (message %s from %r) did not finish within %gs; cancelled",
            self._label,
            message.message_type,
            message.message_id,
            message.sender_id,
            self._handler_timeout,
        )
        return Failure.TIMEOUT, (
            f"TimeoutError: handler for {message.message_type!r} did not finish within "
            f"{self._handler_timeout:g}s"
        )

    async def _error_reply(
        self, message: AgentMessage, kind: str, text: str, item: Delivered
    ) -> bool:
        """Send the error reply; True if it also acked ``item`` (``reply_acks``)."""
        cid = message.correlation_id
        if not cid:
            return False
        data = msgspec.json.encode({"kind": kind, "message": text})
        try:
            _, acked = await self._outbox().reply_acking(
                cid, ERROR_REPLY_TYPE, data.decode(), (item.generation, item.delivery_id)
            )
            return acked
        except MasError as exc:
            log.warning(
                "%s: could not send the error reply to %r for %r: %s",
                self._label,
                message.sender_id,
                message.message_type,
                exc,
            )
            return False

    async def _ack(self, item: Delivered) -> None:
        try:
            await self._outbox().ack(item.generation, item.delivery_id)
        except (MasError, trio.TooSlowError) as exc:
            log.debug("%s: ack of %s not sent (%s)", self._label, item.delivery_id, exc)

    async def _nack(self, item: Delivered, reason: str, *, retryable: bool) -> None:
        try:
            await self._outbox().nack(item.generation, item.delivery_id, reason, retryable)
        except (MasError, trio.TooSlowError) as exc:
            log.debug("%s: nack of %s not sent (%s)", self._label, item.delivery_id, exc)

    async def call_on_stop(self) -> None:
        """Run ``on_stop``; its exception is logged, not raised (the agent is stopping)."""
        try:
            await self._agent.on_stop()
        except Exception:
            log.error("%s: on_stop raised", self._label, exc_info=True)
