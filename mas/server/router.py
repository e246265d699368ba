"""Ingress and delivery: every message a client sends passes through here.

``Router.send`` / ``request`` / ``reply`` check a message (size, payload), run
the gateway pipeline (authorization, rate limit, circuit breaker, DLP) and route
it into the store together with its audit record; a refusal is audited and
raised as ``Rejection(code, reason)``, which the servicer turns into a gRPC
status or a ``Result`` frame. The session side (``serve_session``, ``ack``,
``nack``) moves messages from the store to connected agents with at-least-once
delivery, feeds the circuit breakers, and audits ``DELIVERED``, ``NACKED`` and
``DLQ``. Only the ``Store`` interface is used, so every backend behaves alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec
import trio

from ..audit.record import AuditDraft, Decision, payload_digest
from ..clock import TrioWallClock
from ..config import LimitsConfig
from ..envelope import (
    Envelope,
    ErrorInfo,
    Meta,
    PayloadError,
    decode_data,
    encode_data,
    encode_envelope,
    new_correlation_id,
    new_message_id,
)
from ..errors import REMOTE_HANDLER_ERROR, REMOTE_VALIDATION_ERROR
from ..store import Correlation, InFlight, QueuedMessage, QueueFullError, Store
from ..store.base import CorrelationRefused
from .audit_log import AuditLog
from .gateway import Admitted, Denied, Gateway, Kind
from .sessions import Session, SessionRegistry, delivery_frames

log = logging.getLogger("mas.server.router")

ERROR_REPLY_TYPE: Final = "mas.error"  # a reply of this type is an error reply
# Envelopes are encoded by this server with msgspec (no spaces), so a request carries this.
_REQUEST_MARK: Final = b'"expects_reply":true'
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


class _Ingress(NamedTuple):
    """One message as it arrived, for routing and for its audit record."""

    kind: Kind
    sender_id: str
    sender_instance_id: str
    target_id: str
    message_type: str
    started: float  # Trio time of arrival, for the decision latency
    now: float  # wall-clock time of arrival

    def draft(self, decision: Decision, **fields: Any) -> AuditDraft:
        latency_ms = (trio.current_time() - self.started) * 1000.0
        return AuditDraft(
            time=self.now,
            decision=decision,
            sender_id=self.sender_id,
            sender_instance_id=self.sender_instance_id,
            target_id=self.target_id,
            message_type=self.message_type,
            latency_ms=latency_ms,
            **fields,
        )


class Router:
    """Routes messages into the store and from the store to sessions."""

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        gateway: Callable[[], Gateway],
        audit: AuditLog,
        limits: LimitsConfig,
        clock: TrioWallClock,
    ) -> None:
        self.store = store
        self.registry = registry
        self._gateway = gateway
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._retry_scheduled = trio.Event()
        self.delivered = 0
        self.dead_lettered = 0

    # -- ingress -------------------------------------------------------------------

    def _arrival(
        self, kind: Kind, sender_id: str, sender_instance_id: str, target_id: str, message_type: str
    ) -> _Ingress:
        return _Ingress(
            kind,
            sender_id,
            sender_instance_id,
            target_id,
            message_type[:MAX_MESSAGE_TYPE_LENGTH],
            trio.current_time(),
            self._clock.now(),
        )

    def _check_message(self, message_type: str, data_json: str) -> dict[str, Any]:
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

    async def _admit(
        self, ingress: _Ingress, message_type: str, data_json: str, *, message_id: str = ""
    ) -> Admitted:
        """Validate the message and run the gateway; audit and raise ``Rejection`` if refused."""
        try:
            data = self._check_message(message_type, data_json)
            return self._gateway().admit(
                ingress.kind,
                ingress.sender_id,
                ingress.target_id,
                message_type,
                data,
                ingress.now,
            )
        except Rejection as exc:
            await self._audit.record(
                ingress.draft("INVALID", reason=exc.reason, message_id=message_id)
            )
            raise
        except Denied as exc:
            await self._audit.record(
                ingress.draft(
                    exc.decision,
                    reason=exc.reason,
                    message_id=message_id,
                    violations=exc.violations,
                )
            )
            raise Rejection(exc.code, exc.reason, retry_after=exc.retry_after) from exc

    async def _enqueue(
        self, ingress: _Ingress, envelope: Envelope, instance_id: str | None, admitted: Admitted
    ) -> None:
        envelope_json = encode_envelope(envelope)
        message = QueuedMessage(
            message_id=envelope.message_id,
            target_id=envelope.target_id,
            instance_id=instance_id,
            envelope_json=envelope_json,
            enqueued_at=envelope.timestamp,
        )
        draft = ingress.draft(
            admitted.decision,
            message_id=envelope.message_id,
            correlation_id=envelope.meta.correlation_id or "",
            violations=admitted.violations,
            payload_sha256=payload_digest(encode_data(envelope.data)),
        )
        try:
            record = await self.store.enqueue(message, draft)
        except QueueFullError as exc:
            if ingress.kind != "reply":
                self._gateway().breakers.release(envelope.target_id, ingress.now)
            await self._audit.record(
                ingress.draft("INVALID", reason="queue_full", message_id=envelope.message_id)
            )
            raise Rejection("RESOURCE_EXHAUSTED", "queue_full") from exc
        if record is not None:
            self._audit.committed(record)
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
        ingress = self._arrival("send", sender_id, sender_instance_id, target_id, message_type)
        admitted = await self._admit(ingress, message_type, data_json)
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=sender_id,
            target_id=target_id,
            message_type=message_type,
            data=admitted.data,
            meta=Meta(sender_instance_id=sender_instance_id or None),
            timestamp=ingress.now,
        )
        await self._enqueue(ingress, envelope, None, admitted)
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
        ingress = self._arrival("request", sender_id, sender_instance_id, target_id, message_type)
        if timeout_ms < 0:
            await self._audit.record(ingress.draft("INVALID", reason="invalid_timeout"))
            raise Rejection("INVALID_ARGUMENT", "invalid_timeout")
        timeout = timeout_ms / 1000 if timeout_ms else DEFAULT_REQUEST_TIMEOUT
        timeout = min(timeout, self._limits.max_request_timeout)
        admitted = await self._admit(ingress, message_type, data_json)
        correlation_id = new_correlation_id()
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=sender_id,
            target_id=target_id,
            message_type=message_type,
            data=admitted.data,
            meta=Meta(
                correlation_id=correlation_id,
                expects_reply=True,
                sender_instance_id=sender_instance_id,
            ),
            timestamp=ingress.now,
        )
        # The correlation exists before the target can see the request.
        await self.store.put_correlation(
            Correlation(
                correlation_id=correlation_id,
                requester_id=sender_id,
                requester_instance_id=sender_instance_id,
                target_id=target_id,
                request_message_id=envelope.message_id,
                expires_at=ingress.now + timeout,
            )
        )
        await self._enqueue(ingress, envelope, None, admitted)
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
        ingress = self._arrival("reply", replier_id, replier_instance_id, "", message_type)
        try:
            correlation = await self.store.take_correlation(correlation_id, replier_id, ingress.now)
        except CorrelationRefused as exc:
            code = "PERMISSION_DENIED" if exc.reason == "not_authorized" else "NOT_FOUND"
            decision: Decision = "AUTHZ_DENIED" if exc.reason == "not_authorized" else "INVALID"
            await self._audit.record(
                ingress.draft(decision, reason=exc.reason, correlation_id=correlation_id)
            )
            raise Rejection(code, exc.reason) from exc
        ingress = ingress._replace(target_id=correlation.requester_id)
        try:
            admitted = await self._admit(ingress, message_type, data_json)
            error = _error_info(message_type, admitted.data)
        except Rejection:
            await self.store.put_correlation(correlation)  # the reply may be tried again
            raise
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=replier_id,
            target_id=correlation.requester_id,
            message_type=message_type,
            data=admitted.data,
            meta=Meta(
                correlation_id=correlation_id,
                is_reply=True,
                sender_instance_id=replier_instance_id or None,
                reply_to_instance_id=correlation.requester_instance_id,
                error=error,
            ),
            timestamp=ingress.now,
        )
        try:
            await self._enqueue(ingress, envelope, correlation.requester_instance_id, admitted)
        except Rejection:
            await self.store.put_correlation(correlation)
            raise
        # The request's outcome decides the replier's breaker (its ack does not).
        if error is None:
            self._gateway().delivery_succeeded(replier_id, ingress.now)
        else:
            self._gateway().delivery_failed(replier_id, ingress.now)
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
                    session.track(
                        delivery.delivery_id,
                        deadline,
                        delivery.message.attempt,
                        is_request=_REQUEST_MARK in delivery.message.envelope_json,
                    )
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
        tracked = session.untrack(delivery_id)
        if tracked is None:
            return
        delivery = await self.store.ack(delivery_id)
        if delivery is None:
            return
        now = self._clock.now()
        if not tracked.is_request:  # a request's outcome is its reply, not its ack
            self._gateway().delivery_succeeded(session.agent_id, now)
        await self._audit.record(_delivery_draft("DELIVERED", session, delivery, now))

    async def nack(
        self, session: Session, delivery_id: str, reason: str, *, retryable: bool
    ) -> None:
        """The session's agent could not handle a delivery: retry later, or dead-letter."""
        tracked = session.untrack(delivery_id)
        if tracked is None:
            return
        now = self._clock.now()
        self._gateway().delivery_failed(session.agent_id, now)
        attempt = tracked.attempt
        if retryable and attempt < self._limits.max_attempts:
            backoff = min(
                self._limits.redelivery_backoff * 2 ** (attempt - 1),
                self._limits.max_redelivery_backoff,
            )
            retried = await self.store.retry(delivery_id, now + backoff)
            self._retry_scheduled.set()
            if retried is not None:
                await self._audit.record(
                    _delivery_draft("NACKED", session, retried, now, reason=reason or "nacked")
                )
            return
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
            await self._audit.record(
                _delivery_draft("DLQ", session, dead, now, reason=reason or "nacked")
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


def _delivery_draft(
    decision: Decision, session: Session, delivery: InFlight, now: float, *, reason: str = ""
) -> AuditDraft:
    message = delivery.message
    return AuditDraft(
        time=now,
        decision=decision,
        reason=reason,
        message_id=message.message_id,
        target_id=session.agent_id,
        sender_instance_id=session.instance_id,
        latency_ms=max(0.0, (now - message.enqueued_at) * 1000.0),
    )


def _error_info(message_type: str, data: dict[str, Any]) -> ErrorInfo | None:
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
