"""Ingress and delivery: every message a client sends passes through here.

``Router.send`` / ``request`` / ``reply`` check a message (size, payload,
authorization) and route it into the store; the session side (``serve_session``,
``ack``, ``nack``) moves messages from the store to connected agents with
at-least-once delivery. Rejections are raised as ``Rejection(code, reason)``;
the servicer turns them into a gRPC status or a ``Result`` frame through one
table. Only the ``Store`` interface is used, so every backend behaves alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec
import trio

from ..clock import TrioWallClock
from ..config import LimitsConfig
from ..envelope import (
    Envelope,
    ErrorInfo,
    Meta,
    PayloadError,
    decode_data,
    encode_envelope,
    new_correlation_id,
    new_message_id,
)
from ..errors import REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR
from ..policy.authz import AccessPolicy
from ..store import Correlation, QueuedMessage, QueueFullError, Store
from ..store.base import CorrelationRefused
from .sessions import Session, SessionRegistry, delivery_frames

log = logging.getLogger("mas.server.router")

ERROR_REPLY_TYPE: Final = "mas.error"  # a reply of this type is an error reply
DEFAULT_REQUEST_TIMEOUT: Final = 60.0  # seconds, when a request names none
MAX_MESSAGE_TYPE_LENGTH: Final = 256  # characters
_ERROR_KINDS: Final = frozenset({REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR})


class Rejection(Exception):
    """A message the server will not route: gRPC status name and reason token."""

    def __init__(self, code: str, reason: str, *, retry_after: float | None = None) -> None:
        self.code = code
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{code} {reason}")


class Accepted(NamedTuple):
    """A routed message: its id, and the correlation id for a request."""

    message_id: str
    correlation_id: str = ""


class RoutingPolicy(NamedTuple):
    """What routing needs from the configuration; swapped whole on reload."""

    access: AccessPolicy
    agent_ids: frozenset[str]


class Router:
    """Routes messages into the store and from the store to sessions."""

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        policy: Callable[[], RoutingPolicy],
        limits: LimitsConfig,
        clock: TrioWallClock,
    ) -> None:
        self.store = store
        self.registry = registry
        self._policy = policy
        self._limits = limits
        self._clock = clock
        self._retry_scheduled = trio.Event()
        self.delivered = 0
        self.dead_lettered = 0

    # -- ingress -------------------------------------------------------------------

    def _check_message(self, message_type: str, data_json: str) -> dict[str, object]:
        if not message_type or len(message_type) > MAX_MESSAGE_TYPE_LENGTH:
            raise Rejection("INVALID_ARGUMENT", "invalid_message_type")
        limit = self._limits.max_message_bytes
        if len(data_json) > limit or (
            len(data_json) * 4 > limit and len(data_json.encode()) > limit
        ):
            raise Rejection("RESOURCE_EXHAUSTED", "message_too_large")
        try:
            return decode_data(data_json)
        except PayloadError as exc:
            raise Rejection("INVALID_ARGUMENT", "invalid_payload") from exc

    def _authorize(self, sender_id: str, target_id: str) -> None:
        policy = self._policy()
        if not policy.access.allows(sender_id, target_id):
            raise Rejection("PERMISSION_DENIED", "not_authorized")
        if target_id not in policy.agent_ids:
            raise Rejection("NOT_FOUND", "unknown_target")

    async def _enqueue(self, envelope: Envelope, instance_id: str | None) -> None:
        message = QueuedMessage(
            message_id=envelope.message_id,
            target_id=envelope.target_id,
            instance_id=instance_id,
            envelope_json=encode_envelope(envelope),
            enqueued_at=envelope.timestamp,
        )
        try:
            await self.store.enqueue(message)
        except QueueFullError as exc:
            raise Rejection("RESOURCE_EXHAUSTED", "queue_full") from exc
        self.registry.ring(envelope.target_id, instance_id)

    async def send(
        self,
        sender_id: str,
        sender_instance_id: str,
        target_id: str,
        message_type: str,
        data_json: str,
    ) -> Accepted:
        """Route a fire-and-forget message."""
        data = self._check_message(message_type, data_json)
        self._authorize(sender_id, target_id)
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=sender_id,
            target_id=target_id,
            message_type=message_type,
            data=data,
            meta=Meta(sender_instance_id=sender_instance_id or None),
            timestamp=self._clock.now(),
        )
        await self._enqueue(envelope, None)
        return Accepted(envelope.message_id)

    async def request(
        self,
        sender_id: str,
        sender_instance_id: str,
        target_id: str,
        message_type: str,
        data_json: str,
        timeout_ms: int,
    ) -> Accepted:
        """Route a request; its reply will go to ``sender_instance_id`` only."""
        if timeout_ms < 0:
            raise Rejection("INVALID_ARGUMENT", "invalid_timeout")
        timeout = timeout_ms / 1000 if timeout_ms else DEFAULT_REQUEST_TIMEOUT
        timeout = min(timeout, self._limits.max_request_timeout)
        data = self._check_message(message_type, data_json)
        self._authorize(sender_id, target_id)
        now = self._clock.now()
        correlation_id = new_correlation_id()
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=sender_id,
            target_id=target_id,
            message_type=message_type,
            data=data,
            meta=Meta(
                correlation_id=correlation_id,
                expects_reply=True,
                sender_instance_id=sender_instance_id,
            ),
            timestamp=now,
        )
        # The correlation exists before the target can see the request.
        await self.store.put_correlation(
            Correlation(
                correlation_id=correlation_id,
                requester_id=sender_id,
                requester_instance_id=sender_instance_id,
                target_id=target_id,
                request_message_id=envelope.message_id,
                expires_at=now + timeout,
            )
        )
        await self._enqueue(envelope, None)
        return Accepted(envelope.message_id, correlation_id)

    async def reply(
        self,
        replier_id: str,
        replier_instance_id: str,
        correlation_id: str,
        message_type: str,
        data_json: str,
    ) -> Accepted:
        """Route a reply to the instance that made the request (once, from its target)."""
        data = self._check_message(message_type, data_json)
        error = _error_info(message_type, data)
        now = self._clock.now()
        try:
            correlation = await self.store.take_correlation(correlation_id, replier_id, now)
        except CorrelationRefused as exc:
            code = "PERMISSION_DENIED" if exc.reason == "not_authorized" else "NOT_FOUND"
            raise Rejection(code, exc.reason) from exc
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=replier_id,
            target_id=correlation.requester_id,
            message_type=message_type,
            data=data,
            meta=Meta(
                correlation_id=correlation_id,
                is_reply=True,
                sender_instance_id=replier_instance_id or None,
                reply_to_instance_id=correlation.requester_instance_id,
                error=error,
            ),
            timestamp=now,
        )
        try:
            await self._enqueue(envelope, correlation.requester_instance_id)
        except Rejection:
            await self.store.put_correlation(correlation)  # the reply may be tried again
            raise
        return Accepted(envelope.message_id)

    # -- delivery ----------------------------------------------------------------------

    async def serve_session(self, session: Session) -> None:
        """Pump deliveries to a session and expire unacked ones, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, session)
            nursery.start_soon(self._watch_acks, session)

    async def _pump(self, session: Session) -> None:
        session.ring()
        while True:
            await session.wait_for_doorbell()
            while (room := session.prefetch - len(session.in_flight)) > 0:
                deliveries = await self.store.claim(
                    session.agent_id,
                    session.instance_id,
                    session.session_id,
                    room,
                    self._clock.now(),
                )
                if not deliveries:
                    break
                deadline = trio.current_time() + self._limits.ack_timeout
                for delivery in deliveries:
                    session.track(delivery.delivery_id, deadline, delivery.message.attempt)
                for frame in delivery_frames(session, deliveries):
                    await session.rpc.send(frame)
                self.delivered += len(deliveries)

    async def _watch_acks(self, session: Session) -> None:
        while True:
            await session.wait_for_first_deadline()
            for delivery_id in list(session.expired(trio.current_time())):
                log.warning(
                    "delivery %s to %s/%s not acked in %.0f s; redelivering",
                    delivery_id,
                    session.agent_id,
                    session.instance_id,
                    self._limits.ack_timeout,
                )
                await self.nack(session, delivery_id, "ack_timeout", retryable=True)

    async def ack(self, session: Session, delivery_id: str) -> None:
        """The session's agent handled a delivery."""
        if session.untrack(delivery_id) is not None:
            await self.store.ack(delivery_id)

    async def nack(
        self, session: Session, delivery_id: str, reason: str, *, retryable: bool
    ) -> None:
        """The session's agent could not handle a delivery: retry later, or dead-letter."""
        attempt = session.untrack(delivery_id)
        if attempt is None:
            return
        now = self._clock.now()
        if retryable and attempt < self._limits.max_attempts:
            backoff = min(
                self._limits.redelivery_backoff * 2 ** (attempt - 1),
                self._limits.max_redelivery_backoff,
            )
            await self.store.retry(delivery_id, now + backoff)
            self._retry_scheduled.set()
        else:
            dead = await self.store.dead_letter(delivery_id, reason or "nacked", now)
            if dead is not None:
                self.dead_lettered += 1
                log.warning(
                    "message %s to %s dead-lettered after %d attempt(s): %s",
                    dead.message.message_id,
                    dead.message.target_id,
                    dead.message.attempt,
                    reason,
                )

    async def release(self, session: Session) -> None:
        """Return a closed session's unacked deliveries to their queues."""
        session.in_flight.clear()
        requeued = await self.store.release_session(
            session.session_id, self._limits.max_attempts, self._clock.now()
        )
        if requeued:
            self.registry.ring(session.agent_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake sessions when delayed retries fall due; runs until cancelled."""
        task_status.started()
        while True:
            due = await self.store.next_due()
            self._retry_scheduled = trio.Event()
            with trio.move_on_at(self._clock.to_trio(due) if due is not None else float("inf")):
                await self._retry_scheduled.wait()
                continue
            for agent_id in await self.store.pending_agents(self._clock.now()):
                self.registry.ring(agent_id)


def _error_info(message_type: str, data: dict[str, object]) -> ErrorInfo | None:
    """An error reply's ErrorInfo, if ``message_type`` marks one."""
    if message_type != ERROR_REPLY_TYPE:
        return None
    try:
        info = msgspec.convert(data, ErrorInfo)
    except msgspec.ValidationError as exc:
        raise Rejection("INVALID_ARGUMENT", "invalid_error_reply") from exc
    if info.kind not in _ERROR_KINDS:
        raise Rejection("INVALID_ARGUMENT", "invalid_error_reply")
    return info
