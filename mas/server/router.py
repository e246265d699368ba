"""Ingress and delivery: every message a client sends passes through here.

``Router.route_many`` takes the messages one client sent together (a batch of
``Outbound``; the unary RPCs are batches of one, through ``route``), checks each
(size, payload), runs the gateway pipeline on it (authorization, rate limit,
circuit breaker, DLP) and stores the admitted ones with one ``enqueue_many``,
each with its audit record; a refusal is audited and returned (``route`` raises
it) as a ``refusal.Refusal``, which the servicer turns into a gRPC status or a
``Result`` frame. ``Arrival`` is one message as it arrived (sender, target, times)
and makes its audit drafts; ``Prepared`` is an admitted message ready for the store;
``Accepted`` and ``Refusal`` are the two outcomes.

A stored message is then handed to its target (``Handover``): where the target has
a session on this server whose pump is idle and whose window has room, that session
is reserved before the store call, the message is claimed for it in the transaction
that stores it (``Store.route_batch``), and the sender's task writes it to that
session once the sender is answered (without waiting on that client: what cannot be
written now is left to the session's pump); other targets' pumps are rung.

The session side (``serve_session``, ``ack``, ``nack``) drives the delivery core
(``delivery.DeliveryWindow``, ``delivery.RetryPolicy``): it moves messages from the
store to connected agents with at-least-once delivery, feeds the circuit breakers,
and audits ``DELIVERED``, ``NACKED`` and ``DLQ``. Only the ``Store`` interface is
used, so every backend behaves alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import trio

from ..audit.record import AuditDraft, AuditRecord, Decision, payload_digest
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
    error_info,
    new_correlation_id,
    new_message_id,
    routing_of,
)
from ..errors import Reason, StoreError
from ..store import Correlation, EnqueueItem, InFlight, QueuedMessage, Store
from ..store.base import (
    CORRELATION_GRACE,
    STORE_UNAVAILABLE,
    Claim,
    CorrelationRefused,
    Enqueued,
    Routed,
)
from .audit_log import AuditLog
from .correlations import RecentCorrelations, refused
from .delivery import RetryPolicy, past_deadline
from .gateway import Admitted, Deny, Gateway, Kind
from .refusal import Refusal
from .resilience import Outage, persist
from .sessions import Session, SessionRegistry, delivery_frames

log = logging.getLogger("mas.server.router")

SWEEP_INTERVAL: Final = 60.0  # seconds between sweeps of expired correlations and replies
APPLY_TIMEOUT: Final = 10.0  # seconds an ack read from a client may take to apply, shielded
DEFAULT_REQUEST_TIMEOUT: Final = 60.0  # seconds, when a request names none
MAX_MESSAGE_TYPE_LENGTH: Final = 256  # characters


class Outbound(NamedTuple):
    """One message a client asked the server to route."""

    kind: Kind
    target_id: str  # the target agent (send, request); "" for a reply
    message_type: str
    data_json: str
    timeout_ms: int = 0  # a request's reply deadline; 0: the default
    correlation_id: str = ""  # the request a reply answers
    acks: str = ""  # a reply's: the delivery of its request, acked with it (``reply_acks``)


class Accepted(NamedTuple):
    """A routed message: its id, and the correlation id for a request."""

    message_id: str
    correlation_id: str = ""


def _as_is(text: str) -> str:
    return text


class Arrival(NamedTuple):
    """One message as it arrived, for routing and for its audit record."""

    kind: Kind
    sender_id: str
    sender_instance_id: str
    target_id: str
    message_type: str
    started: float  # Trio time of arrival, for the decision latency
    now: float  # wall-clock time of arrival
    # How a client-chosen field appears in the record: the gateway's DLP masks what its
    # rules match there (Gateway.shown), so no record holds a secret a client put in one.
    shown: Callable[[str], str] = _as_is

    def draft(self, decision: Decision, **fields: Any) -> AuditDraft:
        latency_ms = (trio.current_time() - self.started) * 1000.0
        shown = self.shown
        if fields.get("correlation_id") and "message_id" not in fields:
            # A refused message's correlation id is whatever the client sent; a routed one's
            # was made by this server.
            fields["correlation_id"] = shown(fields["correlation_id"])
        return AuditDraft(
            time=self.now,
            decision=decision,
            sender_id=self.sender_id,
            sender_instance_id=self.sender_instance_id,
            target_id=shown(self.target_id),
            message_type=shown(self.message_type),
            latency_ms=latency_ms,
            **fields,
        )

    def refusal(self, reason: Reason, decision: Decision = "INVALID", **fields: Any) -> Refusal:
        """The refusal of this message, with its audit draft."""
        return Refusal(reason, draft=self.draft(decision, reason=reason.value, **fields))

    def store_refusal(self, correlation_id: str, reason: str) -> Refusal:
        """The refusal of this message by the store (``correlations.refused``)."""
        known, decision = refused(reason)
        return self.refusal(known, decision, correlation_id=correlation_id)


class Prepared(NamedTuple):
    """An admitted message, ready for the store."""

    position: int  # its place in the batch
    arrival: Arrival
    item: EnqueueItem
    taken: Correlation | None  # a reply's correlation, given back if it is not routed
    error: ErrorInfo | None  # set for an error reply


@dataclass
class _Claimed:
    """What a store call claimed for one reserved session."""

    session: Session
    live: list[InFlight]  # tracked, to be written
    late: list[InFlight]  # past their deadline: to be forgotten, not written
    more: bool  # the claim took all the window allowed, or nothing: ring the pumps


@dataclass
class Handover:
    """One routing batch's stored messages on their way to their targets' sessions.

    ``Router.route_many`` reserves each target's idle session on this server (takes its
    ``delivering`` lock, so its pump stays out) before the store call, which claims for
    it in the same transaction (``Store.route_batch``). Then ``Router.hand_over`` writes
    those deliveries without waiting on their clients and rings the other targets'
    pumps; or ``Router.abandon`` leaves everything to the pumps (when the sender's own
    task must wait, or failed). Either releases the reserved sessions; both are safe to
    call again.
    """

    reserved: list[Session] = field(default_factory=list)
    claimed: list[_Claimed] = field(default_factory=list)
    stored: list[QueuedMessage] = field(default_factory=list)  # every message written

    def unclaimed_targets(self) -> dict[tuple[str, str | None], None]:
        """The queues of stored messages no reserved session's claim covered."""
        # A session's claim takes its reply queue's messages, then its agent's shared
        # queue's, and took every due one unless it took all the window allowed (then
        # its ``more`` rings the agent's pumps).
        covered: set[tuple[str, str | None]] = {(s.agent_id, s.instance_id) for s in self.reserved}
        covered.update((s.agent_id, None) for s in self.reserved)
        return {
            key: None for m in self.stored if (key := (m.target_id, m.instance_id)) not in covered
        }


class Router:
    """Routes messages into the store and from the store to sessions."""

    def __init__(
        self,
        store: Store,
        registry: SessionRegistry,
        gateway: Callable[[], Gateway],
        audit: AuditLog,
        limits: Callable[[], LimitsConfig],
        clock: TrioWallClock,
    ) -> None:
        self.store = store
        self.registry = registry
        self._gateway = gateway
        self._audit = audit
        self._current_limits = limits  # read at each use: a reload applies at once
        self._clock = clock
        self._retry_scheduled = trio.Event()
        self._recent = RecentCorrelations()  # correlations of the requests routed here
        self.delivered = 0
        self.dead_lettered = 0
        self.expired = 0  # requests and replies not delivered: their deadline had passed
        self.swept = 0
        self._turn = 0  # which of an agent's sessions a hand-over tries first

    @property
    def _limits(self) -> LimitsConfig:
        return self._current_limits()

    # -- ingress -------------------------------------------------------------------

    def _check_message(self, message_type: str, data_json: str) -> dict[str, Any]:
        """The payload of a well-formed message; raises a ``Refusal`` (without its draft)."""
        if not message_type or len(message_type) > MAX_MESSAGE_TYPE_LENGTH:
            raise Refusal(Reason.INVALID_MESSAGE_TYPE)
        limit = self._limits.max_message_bytes
        if len(data_json) > limit or (
            len(data_json) * 4 > limit and len(data_json.encode()) > limit
        ):
            raise Refusal(Reason.MESSAGE_TOO_LARGE)
        try:
            return decode_data(data_json)
        except PayloadError as exc:
            raise Refusal(Reason.INVALID_PAYLOAD) from exc

    def _admit(self, gateway: Gateway, arrival: Arrival, outbound: Outbound) -> Admitted:
        """Validate the message and run the gateway; raise a ``Refusal`` if refused."""
        try:
            data = self._check_message(outbound.message_type, outbound.data_json)
        except Refusal as exc:  # the message's own checks
            raise arrival.refusal(exc.reason) from exc
        verdict = gateway.admit(
            arrival.kind,
            arrival.sender_id,
            arrival.target_id,
            outbound.message_type,
            data,
            arrival.now,
        )
        if isinstance(verdict, Deny):  # the gateway's decision, with its violations
            draft = arrival.draft(
                verdict.decision, reason=verdict.reason, violations=verdict.violations
            )
            raise Refusal(verdict.reason, retry_after=verdict.retry_after, draft=draft)
        return verdict

    async def route(self, sender_id: str, sender_instance_id: str, outbound: Outbound) -> Accepted:
        """Route one message; raise its ``Refusal`` if it is refused."""
        [result] = await self.route_many(sender_id, sender_instance_id, (outbound,))
        if isinstance(result, Refusal):
            raise result
        return result

    async def route_many(
        self,
        sender_id: str,
        sender_instance_id: str,
        batch: Sequence[Outbound],
        *,
        session: Session | None = None,
        handover: Handover | None = None,
    ) -> list[Accepted | Refusal]:
        """Route one sender's messages, in order; each is accepted or refused on its own.

        Every message passes the gateway, then all admitted ones go to the store in one
        ``enqueue_many`` (one transaction with their audit records, and a request's
        correlation, so it exists before the target can see the request). Refusals are
        audited. The replies look their requests' correlations up first, in one store
        call (only the request's target may answer); the reply then consumes its
        correlation in the transaction that stores it, so a reply that is cancelled,
        refused or lost to a store error before that leaves the correlation open for
        its retry, and two replies to one request cannot both be stored.

        A reply whose ``acks`` names a delivery of ``session`` (the sender's, which
        negotiated ``reply_acks``) acks it in the same store call when it is written
        (``Store.route_batch``: one transaction on SQLite and memory); a refused reply acks
        nothing, and its request stays in flight (redelivered after ``ack_timeout``).

        The stored messages are then handed to their targets' sessions (``Handover``),
        claimed in the store call for those that are idle on this server; given
        ``handover``, the caller hands them over (``hand_over`` or ``abandon``) once it has
        answered the sender, so the sender's results are written first.

        Cancellation: a cancel before ``enqueue_many`` returns stores nothing, or (if
        the transaction committed) leaves the messages stored and their correlations
        consumed; the sender then retries and gets ``unknown_correlation_id`` for a
        reply, a duplicate for a send: at-least-once.
        """
        started = trio.current_time()
        now = self._clock.now()
        gateway = self._gateway()
        results: list[Accepted | Refusal | None] = [None] * len(batch)
        refusals: list[AuditDraft] = []
        prepared: list[Prepared] = []
        # The replies' correlations: those of requests routed here are known; the others
        # are looked up in one store call.
        known = [
            self._recent.match(o.correlation_id, sender_id, now) if o.kind == "reply" else None
            for o in batch
        ]
        unknown = [
            (o.correlation_id, sender_id)
            for o, hit in zip(batch, known, strict=True)
            if o.kind == "reply" and hit is None
        ]
        looked_up: Iterator[Correlation | CorrelationRefused] = iter(())
        if unknown:
            try:
                looked_up = iter(await self.store.find_correlations(unknown, now))
            except StoreError:  # the replies are refused below; sends still go on
                looked_up = iter([CorrelationRefused(STORE_UNAVAILABLE)] * len(unknown))
        for index, outbound in enumerate(batch):
            arrival = Arrival(
                outbound.kind,
                sender_id,
                sender_instance_id,
                outbound.target_id,
                outbound.message_type[:MAX_MESSAGE_TYPE_LENGTH],
                started,
                now,
                gateway.shown,
            )
            try:
                correlation: Correlation | CorrelationRefused | None = None
                if outbound.kind == "reply":
                    correlation = known[index] or next(looked_up)
                try:
                    prepared.append(
                        await self._prepare(gateway, index, arrival, outbound, correlation)
                    )
                except RecursionError as exc:  # a payload too deep to scan or encode
                    raise arrival.refusal(Reason.INVALID_PAYLOAD) from exc
            except Refusal as refusal:
                results[index] = _refused(refusal, refusals)
        if prepared:
            own = handover is None
            if handover is None:
                handover = Handover()
            try:
                records = await self._store_batch(session, [p.item for p in prepared], handover)
                for entry, record in zip(prepared, records, strict=True):
                    result = await self._settle(gateway, entry, record, refusals)
                    results[entry.position] = result
                    if isinstance(result, Accepted):
                        handover.stored.append(entry.item.message)
            except BaseException:
                if own:
                    self.abandon(handover)
                raise
            if own:
                await self.hand_over(handover)
        if refusals:
            await self._audit.record_many(refusals)
        return [result for result in results if result is not None]

    async def _store_batch(
        self, session: Session | None, items: list[EnqueueItem], handover: Handover
    ) -> list[Enqueued]:
        """Store the items, their replies acking their requests' deliveries (``session``'s),
        and claim for the targets' idle sessions, which ``handover`` reserves: one call."""
        now = self._clock.now()
        claims = self._reserve(handover, items)
        acking = session is not None and any(item.acks for item in items)
        if not claims and not acking:
            try:
                return await self.store.enqueue_many(items)
            except StoreError as exc:
                return _unstored(items, exc)

        def delivered(delivery: InFlight) -> AuditDraft:
            assert session is not None
            return _delivery_draft("DELIVERED", session, delivery, now)

        # Shielded (within ``APPLY_TIMEOUT``) when it claims: what it claims is tracked
        # here with no checkpoint between, then written or left to the pumps.
        routed: Routed | None = None
        with trio.CancelScope(shield=bool(claims), deadline=trio.current_time() + APPLY_TIMEOUT):
            try:
                routed = await self.store.route_batch(
                    items, acked=delivered if acking else None, claims=claims, now=now
                )
            except StoreError as exc:
                return _unstored(items, exc)
        if routed is None:  # the store took longer than APPLY_TIMEOUT
            return _unstored(items, StoreError(f"no answer in {APPLY_TIMEOUT:g} s"))
        for reserved, claim, deliveries in zip(
            handover.reserved, claims, routed.claimed, strict=True
        ):
            handover.claimed.append(self._track(reserved, deliveries, now, claim.limit))
        for delivery in routed.acked:  # a request's outcome is its reply: no breaker change
            assert session is not None
            session.untrack(delivery.delivery_id)
        if routed.ack_records is None:
            await self._audit.record_many([delivered(delivery) for delivery in routed.acked])
        else:
            for record in routed.ack_records:
                self._audit.committed(record)
        return routed.results

    def _reserve(self, handover: Handover, items: Sequence[EnqueueItem]) -> list[Claim]:
        """Reserve the items' targets' idle sessions on this server; a claim for each."""
        claims: list[Claim] = []
        for target_id, instance_id in dict.fromkeys(
            (item.message.target_id, item.message.instance_id) for item in items
        ):
            session = self._idle_session(target_id, instance_id)
            if session is None:  # its pump is rung once the message is stored
                continue
            session.delivering.acquire_nowait()
            handover.reserved.append(session)
            claims.append(
                Claim(
                    agent_id=session.agent_id,
                    instance_id=session.instance_id,
                    session_id=session.session_id,
                    limit=session.window.room(),
                )
            )
        return claims

    def _track(
        self, session: Session, deliveries: list[InFlight], now: float, limit: int
    ) -> _Claimed:
        """Track a session's claimed deliveries (those still in time), before any checkpoint."""
        # ``more`` also when it took nothing: the message it was made for was refused, or
        # (Redis) the claim failed; the pump then looks for itself.
        claimed = _Claimed(session, [], [], more=not deliveries or len(deliveries) >= limit)
        for delivery in deliveries:
            routing = routing_of(delivery.message.envelope_json)
            if past_deadline(routing.deadline, now):
                claimed.late.append(delivery)  # its requester gave up: deliver nothing
                continue
            claimed.live.append(delivery)
            session.track(
                delivery.delivery_id, delivery.message.attempt, is_request=routing.expects_reply
            )
        return claimed

    async def _prepare(
        self,
        gateway: Gateway,
        index: int,
        arrival: Arrival,
        outbound: Outbound,
        answered: Correlation | CorrelationRefused | None,
    ) -> Prepared:
        """The message as it will be stored, once admitted; raises a ``Refusal``.

        ``answered`` is a reply's correlation as the store found it (open, or refused).
        """
        sender_id, instance_id = arrival.sender_id, arrival.sender_instance_id
        taken: Correlation | None = None
        correlation: Correlation | None = None
        error: ErrorInfo | None = None
        if arrival.kind == "reply":
            if not isinstance(answered, Correlation):  # the store would not give it
                why = answered.reason if answered is not None else Reason.UNKNOWN_CORRELATION
                raise arrival.store_refusal(outbound.correlation_id, why)
            taken = answered
            arrival = arrival._replace(target_id=taken.requester_id)
            admitted = self._admit(gateway, arrival, outbound)
            try:
                error = error_info(outbound.message_type, admitted.data)
            except PayloadError as exc:
                raise arrival.refusal(Reason.INVALID_ERROR_REPLY) from exc
            meta = Meta(
                correlation_id=outbound.correlation_id,
                is_reply=True,
                sender_instance_id=instance_id or None,
                reply_to_instance_id=taken.requester_instance_id,
                error=error,
                deadline=taken.expires_at,
            )
        elif arrival.kind == "request":
            if outbound.timeout_ms < 0:
                raise arrival.refusal(Reason.INVALID_TIMEOUT)
            admitted = self._admit(gateway, arrival, outbound)
            timeout = outbound.timeout_ms / 1000 if outbound.timeout_ms else DEFAULT_REQUEST_TIMEOUT
            expires_at = arrival.now + min(timeout, self._limits.max_request_timeout)
            meta = Meta(
                correlation_id=new_correlation_id(),
                expects_reply=True,
                sender_instance_id=instance_id,
                deadline=expires_at,
            )
        else:
            admitted = self._admit(gateway, arrival, outbound)
            meta = Meta(sender_instance_id=instance_id or None)
        envelope = Envelope(
            message_id=new_message_id(),
            sender_id=sender_id,
            target_id=arrival.target_id,
            message_type=outbound.message_type,
            data=admitted.data,
            meta=meta,
            timestamp=arrival.now,
        )
        if arrival.kind == "request":
            correlation = Correlation(
                correlation_id=meta.correlation_id or "",
                requester_id=sender_id,
                requester_instance_id=instance_id,
                target_id=arrival.target_id,
                request_message_id=envelope.message_id,
                expires_at=expires_at,
            )
        reply_to = taken.requester_instance_id if taken is not None else None
        item = EnqueueItem(
            message=QueuedMessage(
                message_id=envelope.message_id,
                target_id=envelope.target_id,
                instance_id=reply_to,
                envelope_json=encode_envelope(envelope),
                enqueued_at=envelope.timestamp,
            ),
            audit=arrival.draft(
                admitted.decision,
                message_id=envelope.message_id,
                correlation_id=meta.correlation_id or "",
                violations=admitted.violations,
                payload_sha256=payload_digest(encode_data(envelope.data)),
            ),
            correlation=correlation,
            answers=taken.correlation_id if taken is not None else "",
            acks=outbound.acks if taken is not None else "",
        )
        return Prepared(index, arrival, item, taken, error)

    async def _settle(
        self,
        gateway: Gateway,
        entry: Prepared,
        record: Enqueued,
        refusals: list[AuditDraft],
    ) -> Accepted | Refusal:
        """What became of one message given to the store: stored, or refused there."""
        arrival, message = entry.arrival, entry.item.message
        if entry.item.answers:
            self._recent.forget(entry.item.answers)  # consumed, or refused by the store
        if isinstance(record, CorrelationRefused):  # another reply took it, or it expired
            if entry.taken is None:  # a send or request the store could not take
                gateway.breakers.release(message.target_id, arrival.now)
            return _refused(arrival.store_refusal(entry.item.answers, record.reason), refusals)
        if record is None:
            if entry.taken is None:
                gateway.breakers.release(message.target_id, arrival.now)
            refusal = arrival.refusal(Reason.QUEUE_FULL, message_id=message.message_id)
            return _refused(refusal, refusals)
        self._audit.committed(record)
        if entry.taken is not None:
            # The request's outcome decides the replier's breaker (its ack does not).
            if entry.error is None:
                gateway.delivery_succeeded(arrival.sender_id, arrival.now)
            else:
                gateway.delivery_failed(arrival.sender_id, arrival.now)
            return Accepted(message.message_id)
        correlation = entry.item.correlation
        if correlation is None:
            return Accepted(message.message_id)
        self._recent.remember(correlation)
        return Accepted(message.message_id, correlation.correlation_id)

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
            await _acquire(session.delivering)
            try:
                session.starved = False
                if session.unsent:  # claimed by a hand-over that could not send them
                    frames, session.unsent = session.unsent, []
                    await session.rpc.send_many(frames)
                while True:
                    room = session.window.room()
                    if room <= 0:
                        # More may wait in the store: the next ack that frees a slot rings.
                        session.starved = True
                        break
                    if await self._deliver(session, room) < room:
                        break  # nothing more is due; a new message rings the doorbell again
            finally:
                session.delivering.release()

    async def _deliver(self, session: Session, room: int) -> int:
        """Claim up to ``room`` deliveries for ``session`` and send them; how many it claimed."""
        now = self._clock.now()
        deliveries = await self.store.claim(
            session.agent_id, session.instance_id, session.session_id, room, now
        )
        if not deliveries:
            return 0
        claimed = self._track(session, deliveries, now, room)
        if claimed.live:
            await session.rpc.send_many(delivery_frames(session, claimed.live))
            self.delivered += len(claimed.live)
        if claimed.late:
            await self._drop_expired(session, claimed.late, now)
        return len(deliveries)

    async def hand_over(self, handover: Handover) -> None:
        """Write what a routing batch claimed to its sessions, from the routing task.

        Each write is made only if it needs no wait on that client
        (``RpcStream.send_now``); what cannot be written now is left to the session's pump.
        The targets that were not reserved have their pumps rung. Shielded (within
        ``APPLY_TIMEOUT``): what was claimed is sent or left to the pump, even if the
        sender's session ends meanwhile.
        """
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + APPLY_TIMEOUT):
                while handover.claimed:
                    claimed = handover.claimed.pop(0)
                    session = claimed.session
                    if claimed.live:
                        frames = delivery_frames(session, claimed.live)
                        if not await session.rpc.send_now(frames):
                            session.unsent.extend(frames)
                            session.ring()
                        self.delivered += len(claimed.live)
                    if claimed.late:
                        try:
                            await self._drop_expired(session, claimed.late, self._clock.now())
                        except StoreError as exc:  # they stay in flight: redelivered, then dropped
                            log.debug("expired deliveries not dropped (%s)", exc)
                    if claimed.more:  # more may wait: let the pumps go on
                        self.registry.ring(session.agent_id)
        finally:
            self.abandon(handover)

    def abandon(self, handover: Handover) -> None:
        """Leave what ``handover`` holds to the pumps, and release its reserved sessions.

        For a sender's task that must wait (or failed) before ``hand_over``; no checkpoint.
        """
        for claimed in handover.claimed:
            session = claimed.session
            if claimed.live:
                session.unsent.extend(delivery_frames(session, claimed.live))
                self.delivered += len(claimed.live)
            for delivery in claimed.late:  # tracked: redelivered after ack_timeout, dropped then
                session.track(delivery.delivery_id, delivery.message.attempt, is_request=False)
            session.ring()
        handover.claimed.clear()
        unclaimed = handover.unclaimed_targets()
        handover.stored.clear()
        for session in handover.reserved:
            session.delivering.release()
        handover.reserved.clear()
        for target_id, instance_id in unclaimed:
            self.registry.ring(target_id, instance_id)

    def _idle_session(self, agent_id: str, instance_id: str | None) -> Session | None:
        """A session of the target that can take a delivery from another task now, if any."""
        if instance_id is not None:
            session = self.registry.instance(agent_id, instance_id)
            return session if session is not None and session.can_take_over() else None
        sessions = self.registry.of_agent(agent_id)
        if not sessions:
            return None
        # Take turns among the agent's instances, so that at low load the shared queue's
        # messages spread over them instead of all going to the first one connected.
        self._turn += 1
        for step in range(len(sessions)):
            session = sessions[(self._turn + step) % len(sessions)]
            if session.can_take_over():
                return session
        return None

    async def _drop_expired(self, session: Session, late: list[InFlight], now: float) -> None:
        """Forget claimed messages whose deadline passed, audited ``EXPIRED``, counted."""
        dropped = await self.store.ack_many([d.delivery_id for d in late])
        drafts = [
            _delivery_draft("EXPIRED", session, d, now, reason=Reason.DEADLINE_EXCEEDED)
            for d in dropped
            if d is not None
        ]
        self.expired += len(drafts)
        log.debug("%d expired message(s) for %s not delivered", len(drafts), session.agent_id)
        await self._audit.record_many(drafts)

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
                await self.nack(session, delivery_id, Reason.ACK_TIMEOUT, retryable=True)

    async def ack(self, session: Session, delivery_id: str) -> None:
        """The session's agent handled a delivery."""
        await self.ack_many(session, (delivery_id,))

    async def ack_many(self, session: Session, delivery_ids: Sequence[str]) -> None:
        """The session's agent handled these deliveries (ids not in flight are ignored)."""
        ids: list[str] = []
        requests: set[str] = set()
        for delivery_id in delivery_ids:
            tracked = session.untrack(delivery_id)
            if tracked is not None:
                ids.append(delivery_id)
                if tracked.is_request:
                    requests.add(delivery_id)
        if not ids:
            return
        # Untracked above, so finish: a cancel here (the client closed right after
        # acking) would leave them in flight until release, redelivered for nothing.
        now = self._clock.now()
        acked: list[InFlight | None] = []
        records: list[AuditRecord] | None = None

        def delivered(delivery: InFlight) -> AuditDraft:
            return _delivery_draft("DELIVERED", session, delivery, now)

        with trio.CancelScope(shield=True, deadline=trio.current_time() + APPLY_TIMEOUT):
            # One store call: the acks and their DELIVERED records (where the store can).
            acked, records = await self.store.ack_recorded(ids, delivered)
        gateway = self._gateway()
        drafts = []
        for delivery in acked:
            if delivery is None:
                continue
            if delivery.delivery_id not in requests:  # a request's outcome is its reply
                gateway.delivery_succeeded(session.agent_id, now)
            if records is None:
                drafts.append(delivered(delivery))
        if records is None:
            await self._audit.record_many(drafts)
        else:
            for record in records:
                self._audit.committed(record)

    async def nack(
        self, session: Session, delivery_id: str, reason: str, *, retryable: bool
    ) -> None:
        """The session's agent could not handle a delivery: retry later, or dead-letter."""
        tracked = session.untrack(delivery_id)
        if tracked is None:
            return
        now = self._clock.now()
        self._gateway().delivery_failed(session.agent_id, now)
        policy = RetryPolicy(
            self._limits.max_attempts,
            self._limits.redelivery_backoff,
            self._limits.max_redelivery_backoff,
        )
        backoff = policy.after_failure(tracked.attempt, retryable=retryable)
        if backoff is not None:
            retried = await self.store.retry(delivery_id, now + backoff)
            self._retry_scheduled.set()
            if retried is not None:
                await self._audit.record(
                    _delivery_draft("NACKED", session, retried, now, reason=reason or Reason.NACKED)
                )
            return
        dead = await self.store.dead_letter(delivery_id, reason or Reason.NACKED, now)
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
                _delivery_draft("DLQ", session, dead, now, reason=reason or Reason.NACKED)
            )

    async def release(self, session: Session) -> None:
        """Return a closed session's unacked deliveries to their queues."""
        # After any hand-over under way: what it claims is given back with the rest.
        await _acquire(session.delivering)
        session.window.close()  # the store gives back every delivery of the session
        requeued = await self.store.release_session(
            session.session_id, self._limits.max_attempts, self._clock.now()
        )
        if requeued:
            self.registry.ring(session.agent_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wake sessions when delayed retries fall due, and sweep; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep)
            task_status.started()
            await self._schedule_retries()

    async def _sweep(self) -> None:
        """Every ``SWEEP_INTERVAL``, delete correlations and replies nobody can use."""
        outage = Outage("sweeper (store)", log)
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            self.swept += await persist(outage, self._sweep_once)

    async def _sweep_once(self) -> int:
        reply_max_age = self._limits.max_request_timeout + CORRELATION_GRACE
        return await self.store.sweep(self._clock.now(), reply_max_age)

    async def _schedule_retries(self) -> None:
        outage = Outage("retry scheduler (store)", log)
        while True:
            # A fresh event *before* the read: a retry stored while the store answers
            # sets it, so the wait below ends at once instead of missing that retry.
            self._retry_scheduled = trio.Event()
            due = await persist(outage, self.store.next_due)
            with trio.move_on_at(self._clock.to_trio(due) if due is not None else float("inf")):
                await self._retry_scheduled.wait()
                continue
            pending = await persist(outage, lambda: self.store.pending_agents(self._clock.now()))
            for agent_id in pending:
                self.registry.ring(agent_id)


async def _acquire(lock: trio.Lock) -> None:
    """Take ``lock``; without a scheduler pass when it is free (the usual case)."""
    if lock.locked():
        await lock.acquire()
    else:
        lock.acquire_nowait()


def _unstored(items: Sequence[EnqueueItem], exc: StoreError) -> list[Enqueued]:
    """The results of a batch the store could not take: each is refused on its own."""
    # Down or full: nothing of the batch is stored (SQLite rolled it back; on Redis it may
    # have been, so a sender's retry can make a duplicate, never a loss). The session
    # goes on.
    log.debug("store refused a batch of %d: %s", len(items), exc)
    return [CorrelationRefused(STORE_UNAVAILABLE)] * len(items)


def _refused(refusal: Refusal, refusals: list[AuditDraft]) -> Refusal:
    """``refusal``, its audit draft added to ``refusals``."""
    if refusal.draft is not None:
        refusals.append(refusal.draft)
    return refusal


def _delivery_draft(
    decision: Decision, session: Session, delivery: InFlight, now: float, *, reason: str = ""
) -> AuditDraft:
    message = delivery.message
    return AuditDraft(
        time=now,
        decision=decision,
        reason=str(reason),  # a plain str in the record, a Reason member or a client's text
        message_id=message.message_id,
        target_id=session.agent_id,
        sender_instance_id=session.instance_id,
        latency_ms=max(0.0, (now - message.enqueued_at) * 1000.0),
    )
