"""The ``RuntimeService`` RPCs: identity checks, sessions, and calls into the router.

The connection's identity is checked once at the door (``admit``, right after the
TLS handshake; a refusal is audited once per connection). Every RPC then checks it
again against the allowlist and revocations, which may change on reload. The
state and discovery RPCs, which route nothing, have a rate limit of their own
(``limits.control_rpcs_per_minute`` per agent id). ``Transport`` binds one agent
instance to the connection that said ``Hello``; the unary ``Send``, ``Request``
and ``Reply`` RPCs may name only an instance bound on their own connection, so no
connection can act for another agent or another instance. Every refusal is a
``refusal.Refusal``: raised, the dispatcher ends the RPC with its status (the one
table, ``refusal.STATUS``); one of a stream's routed frames becomes a ``Result`` frame.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Final

import msgspec
import trio

from .._proto import runtime_pb2 as pb
from ..audit.record import AuditDraft
from ..config import MasConfig
from ..errors import IdentityError, Reason
from ..identity import PeerIdentity, identity_from_certificate
from ..store import Store
from ..store.base import StateTooLargeError, StateVersionConflict
from .audit_log import AuditLog
from .gateway import Gateway
from .grpc import Method, PeerConnection
from .guard import TokenBucket
from .refusal import Refusal
from .router import Handover, Outbound, Router
from .sessions import Session, SessionRegistry
from .state_wire import stored_from_text, texts_from_stored
from .transport import RpcStream

log = logging.getLogger("mas.server")

INSTANCE_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_STATE_KEY_LENGTH: Final = 256  # characters
_RELEASE_TIMEOUT: Final = 5.0  # seconds allowed to requeue a closed session's deliveries
FRAME_BATCH: Final = 256  # frames of one session handled together at most
_ROUTED: Final = frozenset({"send", "request", "reply"})
_json_decoder: Final = msgspec.json.Decoder()
AGENT_ACTIVE: Final = "ACTIVE"  # Discover status: an instance is connected (the seed's spelling)
AGENT_INACTIVE: Final = "INACTIVE"  # none is


class RuntimeServicer:
    """Implements the RPCs of ``mas.runtime.v1.RuntimeService``."""

    def __init__(
        self,
        *,
        router: Router,
        registry: SessionRegistry,
        store: Store,
        audit: AuditLog,
        config: Callable[[], MasConfig],
        gateway: Callable[[], Gateway],
    ) -> None:
        self._router = router
        self._gateway = gateway
        self._registry = registry
        self._store = store
        self._audit = audit
        self._config = config
        self._revoked: tuple[MasConfig | None, frozenset[int], frozenset[str]] = (
            None,
            frozenset(),
            frozenset(),
        )
        self.refused_identities = 0
        # Per agent id (allowlisted ones only, so bounded): the non-routing RPCs' budget.
        self._control_budgets: dict[str, TokenBucket] = {}
        self.methods: dict[str, Method] = {
            "Transport": Method(pb.ClientEvent, stream=self.transport),
            "Send": Method(pb.SendRequest, unary=self.send),
            "Request": Method(pb.RequestRequest, unary=self.request),
            "Reply": Method(pb.ReplyRequest, unary=self.reply),
            "Discover": Method(pb.DiscoverRequest, unary=self.discover),
            "GetState": Method(pb.GetStateRequest, unary=self.get_state),
            "UpdateState": Method(pb.UpdateStateRequest, unary=self.update_state),
            "ResetState": Method(pb.ResetStateRequest, unary=self.reset_state),
        }

    # -- identity ----------------------------------------------------------------------

    async def admit(self, peer: PeerConnection) -> str | Refusal:
        """At the door, right after the TLS handshake: the agent id, or the refusal.

        A refused connection is audited here, once; its RPCs get the refusal without
        another record. The per-RPC check (``_identity``) stays, for reloads.
        """
        try:
            return self._check_identity(peer).agent_id
        except Refusal as exc:
            await self._audit_refusal(peer, exc)
            return exc

    async def _identity(self, peer: PeerConnection) -> PeerIdentity:
        """The caller's verified, allowlisted, unrevoked identity; refusals are audited."""
        try:
            return self._check_identity(peer)
        except Refusal as exc:
            await self._audit_refusal(peer, exc)
            raise

    async def _audit_refusal(self, peer: PeerConnection, refusal: Refusal) -> None:
        identity: PeerIdentity | None = peer.state.get("identity")
        await self._audit.record(
            AuditDraft(
                time=time.time(),
                decision="AUTHN_DENIED",
                reason=refusal.reason.value,
                sender_id=identity.agent_id if identity else "",
                message_type=peer.address,
            )
        )

    def _revocations(self, config: MasConfig) -> tuple[frozenset[int], frozenset[str]]:
        cached_for, serials, fingerprints = self._revoked
        if cached_for is not config:
            serials = config.revoked.serial_numbers()
            fingerprints = config.revoked.sha256_fingerprints()
            self._revoked = (config, serials, fingerprints)
        return serials, fingerprints

    def _check_identity(self, peer: PeerConnection) -> PeerIdentity:
        config = self._config()
        identity: PeerIdentity | None = peer.state.get("identity")
        if identity is None:
            refusal = peer.state.get("refusal")
            if refusal is None:
                refusal = self._verify(peer, config.trust_domain)
                if isinstance(refusal, PeerIdentity):
                    identity = peer.state["identity"] = refusal
                    refusal = None
                else:
                    peer.state["refusal"] = refusal
            if refusal is not None:
                raise Refusal(refusal)
        assert identity is not None
        if identity.agent_id not in config.agent_ids:
            self.refused_identities += 1
            log.warning("refused %s from %s: not_allowlisted", identity.spiffe_id, peer.address)
            raise Refusal(Reason.NOT_ALLOWLISTED)
        serials, fingerprints = self._revocations(config)
        if identity.serial_number in serials or identity.fingerprint_sha256 in fingerprints:
            self.refused_identities += 1
            log.warning("refused %s from %s: certificate_revoked", identity.spiffe_id, peer.address)
            raise Refusal(Reason.CERTIFICATE_REVOKED)
        return identity

    def _verify(self, peer: PeerConnection, trust_domain: str) -> PeerIdentity | Reason:
        self.refused_identities += 1
        if peer.certificate_der is None:
            log.warning("refused connection from %s: no client certificate", peer.address)
            return Reason.NO_CLIENT_CERTIFICATE
        try:
            identity = identity_from_certificate(peer.certificate_der, trust_domain)
        except IdentityError as exc:
            log.warning("refused connection from %s: %s", peer.address, exc)
            return Reason(exc.reason)  # mas.identity.REASONS are all members
        self.refused_identities -= 1
        return identity

    async def _control_call(self, peer: PeerConnection) -> PeerIdentity:
        """The identity of a state or discovery call, within its agent's own rate limit.

        These RPCs route nothing, so the gateway's rate limit never sees them; they get
        ``limits.control_rpcs_per_minute`` per agent id (a burst of that many).
        """
        identity = await self._identity(peer)
        per_minute = self._config().limits.control_rpcs_per_minute
        now = trio.current_time()
        budget = self._control_budgets.get(identity.agent_id)
        if budget is None:
            budget = TokenBucket(per_minute / 60.0, now, burst=per_minute)
            self._control_budgets[identity.agent_id] = budget
        if not budget.take(1, now):
            await self._audit.record(
                AuditDraft(
                    time=time.time(),
                    decision="RATE_LIMITED",
                    reason=Reason.RATE_LIMITED.value,
                    sender_id=identity.agent_id,
                )
            )
            raise Refusal(Reason.RATE_LIMITED, retry_after=budget.retry_after())
        return identity

    def _bound_instance(
        self, peer: PeerConnection, identity: PeerIdentity, instance_id: str, *, required: bool
    ) -> str:
        """The sender instance of a unary call, which must be bound on this connection."""
        if not instance_id:
            if required:
                raise Refusal(Reason.SESSION_REQUIRED)
            return ""
        # Bound means: its live session is on this very connection (another connection
        # that said Hello for the same instance took it over).
        session = self._registry.instance(identity.agent_id, instance_id)
        if session is None or session.connection_id != peer.connection_id:
            raise Refusal(Reason.INSTANCE_NOT_BOUND)
        return instance_id

    # -- Transport ---------------------------------------------------------------------

    async def transport(self, peer: PeerConnection, rpc: RpcStream) -> None:
        """One agent instance's session: Hello, then deliveries out and frames in."""
        identity = await self._identity(peer)
        limits = self._config().limits
        first: pb.ClientEvent | None = None
        with trio.move_on_after(limits.hello_timeout) as waited:
            first = await rpc.receive()
        if waited.cancelled_caught:
            raise Refusal(Reason.HELLO_TIMEOUT)
        await self._run_session(peer, rpc, identity, first)

    async def _run_session(
        self,
        peer: PeerConnection,
        rpc: RpcStream,
        identity: PeerIdentity,
        first: pb.ClientEvent | None,
    ) -> None:
        if first is None or first.WhichOneof("event") != "hello":
            raise Refusal(Reason.HELLO_REQUIRED)
        limits = self._config().limits
        hello = first.hello
        instance_id = hello.instance_id or secrets.token_hex(8)
        if not INSTANCE_ID_RE.match(instance_id):
            raise Refusal(Reason.INVALID_INSTANCE_ID)
        agent_id = identity.agent_id
        replacing = self._registry.instance(agent_id, instance_id)
        if replacing is None and self._registry.count(agent_id) >= limits.max_sessions_per_agent:
            raise Refusal(Reason.TOO_MANY_SESSIONS)
        prefetch = min(hello.prefetch, limits.prefetch) if hello.prefetch else limits.prefetch
        session = Session(
            session_id=secrets.token_hex(8),
            agent_id=agent_id,
            instance_id=instance_id,
            serial_number=identity.serial_number,
            fingerprint=identity.fingerprint_sha256,
            connection_id=peer.connection_id,
            rpc=rpc,
            batching=hello.batching,
            prefetch=prefetch,
            ack_timeout=limits.ack_timeout,
            reply_acks=hello.reply_acks,
            late_results=hello.late_results,
        )
        previous = self._registry.add(session)
        if previous is not None:
            # The same agent reconnected before its old connection was seen to die.
            log.debug("session %s/%s replaced by a new connection", agent_id, instance_id)
            previous.end(Refusal(Reason.REPLACED_BY_NEW_SESSION))
        log.debug("session opened: %s/%s from %s", agent_id, instance_id, peer.address)
        try:
            with session.cancel_scope:
                await rpc.send(
                    pb.ServerEvent(
                        welcome=pb.Welcome(
                            agent_id=agent_id,
                            instance_id=instance_id,
                            batching=hello.batching,
                            prefetch=prefetch,
                            stream_messages=True,  # the SDK's fast path (else unary RPCs)
                            reply_acks=hello.reply_acks,  # only if asked: else base acks
                            late_results=hello.late_results,  # likewise
                        )
                    )
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._router.serve_session, session)
                    if session.late_results:
                        nursery.start_soon(rpc.run_late_writer)
                    await self._read_frames(session, rpc)
                    nursery.cancel_scope.cancel()
        finally:
            self._registry.remove(session)
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + _RELEASE_TIMEOUT
                await self._router.release(session)
            log.debug("session closed: %s/%s", agent_id, instance_id)
        if session.ended is not None:
            raise session.ended

    async def _read_frames(self, session: Session, rpc: RpcStream) -> None:
        """Handle the session's frames, a batch at a time, until the client half-closes.

        Every frame already received is handled together: the routed messages in their
        order, their ``Result`` frames back in one write, then the acks and the nacks.
        """
        while (frames := await rpc.receive_batch(FRAME_BATCH)) is not None:
            acks: list[str] = []
            nacks: list[pb.Nack] = []
            routed: list[pb.ClientEvent] = []
            refusal: Refusal | None = None
            for frame in frames:
                kind = frame.WhichOneof("event")
                if kind in _ROUTED:
                    routed.append(frame)
                elif kind == "ack":
                    acks.append(frame.ack.delivery_id)
                elif kind == "acks":
                    acks.extend(frame.acks.delivery_ids)
                elif kind == "nack":
                    nacks.append(frame.nack)
                elif kind == "hello":
                    refusal = Refusal(Reason.DUPLICATE_HELLO)
                    break
                # Heartbeats, and frames of a newer protocol revision, need no answer.
            if routed:  # first, so their results go out before the store work of acks
                handover = Handover()
                try:
                    results, late = await self._route_frames(session, routed, handover)
                    if late:  # accepted requests' Results: with their replies, usually
                        rpc.send_late(late)
                    if results and not await rpc.send_now(results):
                        # This write may wait on the sender's client: the targets' pumps
                        # must not, so what was claimed for them is left to them.
                        self._router.abandon(handover)
                        await rpc.send_many(results)
                except BaseException:
                    self._router.abandon(handover)
                    raise
                # Then to their targets, from this task where they can take them.
                await self._router.hand_over(handover)
            if acks:
                await self._router.ack_many(session, acks)
            for nack in nacks:
                await self._router.nack(
                    session, nack.delivery_id, nack.reason[:200], retryable=nack.retryable
                )
            if refusal is not None:
                raise refusal

    async def _route_frames(
        self, session: Session, frames: list[pb.ClientEvent], handover: Handover
    ) -> tuple[list[pb.ServerEvent], list[pb.ServerEvent]]:
        """Route the stream's send/request/reply frames as one batch; their Result frames:
        those to write now, and those that may come late (``Session.late_results``: the
        accepted requests', which then usually travel with their replies)."""
        seqs: list[int] = []
        batch: list[Outbound] = []
        for frame in frames:
            kind = frame.WhichOneof("event")
            if kind == "send":
                m = frame.send
                seqs.append(m.seq)
                batch.append(Outbound("send", m.target_id, m.message_type, m.data_json))
            elif kind == "request":
                r = frame.request
                seqs.append(r.seq)
                batch.append(
                    Outbound("request", r.target_id, r.message_type, r.data_json, r.timeout_ms)
                )
            else:
                p = frame.reply
                seqs.append(p.seq)
                # Only a request in flight on this session; any other id acks nothing.
                answering = session.reply_acks and session.answerable(p.delivery_id)
                acks = p.delivery_id if answering else ""
                batch.append(
                    Outbound("reply", "", p.message_type, p.data_json, 0, p.correlation_id, acks)
                )
        outcomes = await self._router.route_many(
            session.agent_id, session.instance_id, batch, session=session, handover=handover
        )
        results: list[pb.ServerEvent] = []
        late: list[pb.ServerEvent] = []
        for seq, outbound, outcome in zip(seqs, batch, outcomes, strict=True):
            if isinstance(outcome, Refusal):
                result = pb.Result(
                    seq=seq,
                    error=pb.ServerError(code=outcome.code, message=outcome.message),
                    retry_after_seconds=outcome.retry_after or 0.0,
                )
                results.append(pb.ServerEvent(result=result))
                continue
            result = pb.Result(
                seq=seq, message_id=outcome.message_id, correlation_id=outcome.correlation_id
            )
            held = session.late_results and outbound.kind == "request"
            (late if held else results).append(pb.ServerEvent(result=result))
        return results, late

    # -- unary messaging -------------------------------------------------------------------

    async def send(self, peer: PeerConnection, request: pb.SendRequest) -> pb.SendResponse:
        identity = await self._identity(peer)
        instance_id = self._bound_instance(peer, identity, request.instance_id, required=False)
        outbound = Outbound("send", request.target_id, request.message_type, request.data_json)
        accepted = await self._router.route(identity.agent_id, instance_id, outbound)
        return pb.SendResponse(message_id=accepted.message_id)

    async def request(self, peer: PeerConnection, request: pb.RequestRequest) -> pb.RequestResponse:
        identity = await self._identity(peer)
        instance_id = self._bound_instance(peer, identity, request.instance_id, required=True)
        outbound = Outbound(
            "request",
            request.target_id,
            request.message_type,
            request.data_json,
            request.timeout_ms,
        )
        accepted = await self._router.route(identity.agent_id, instance_id, outbound)
        return pb.RequestResponse(
            message_id=accepted.message_id, correlation_id=accepted.correlation_id
        )

    async def reply(self, peer: PeerConnection, request: pb.ReplyRequest) -> pb.ReplyResponse:
        identity = await self._identity(peer)
        instance_id = self._bound_instance(peer, identity, request.instance_id, required=False)
        outbound = Outbound(
            "reply", "", request.message_type, request.data_json, 0, request.correlation_id
        )
        accepted = await self._router.route(identity.agent_id, instance_id, outbound)
        return pb.ReplyResponse(message_id=accepted.message_id)

    # -- discovery and state -------------------------------------------------------------

    async def discover(
        self, peer: PeerConnection, request: pb.DiscoverRequest
    ) -> pb.DiscoverResponse:
        """The agents the caller may send to (by its permissions) having every capability
        asked for; an agent learns nothing of the agents it may not reach."""
        identity = await self._control_call(peer)
        wanted = set(request.capabilities)
        reachable = self._gateway().access.targets_of(identity.agent_id)
        records = []
        for spec in self._config().agents:
            if spec.agent_id not in reachable or not wanted <= set(spec.capabilities):
                continue
            count = self._registry.count(spec.agent_id)
            records.append(
                pb.AgentRecord(
                    agent_id=spec.agent_id,
                    capabilities=spec.capabilities,
                    metadata_json=msgspec.json.encode(spec.metadata).decode(),
                    status=AGENT_ACTIVE if count else AGENT_INACTIVE,
                    instance_count=count,
                )
            )
        return pb.DiscoverResponse(agents=records)

    async def get_state(
        self, peer: PeerConnection, request: pb.GetStateRequest
    ) -> pb.GetStateResponse:
        identity = await self._control_call(peer)
        snapshot = await self._store.read_state(identity.agent_id)
        values = snapshot.values if request.json_values else texts_from_stored(snapshot.values)
        return pb.GetStateResponse(state=values, version=snapshot.version)

    async def update_state(
        self, peer: PeerConnection, request: pb.UpdateStateRequest
    ) -> pb.UpdateStateResponse:
        """Store the given keys: JSON text from a ``json_values`` client, any text otherwise.

        Refusals: ``INVALID_ARGUMENT invalid_state_key`` / ``invalid_state_value`` (a
        ``json_values`` value that is not JSON), ``RESOURCE_EXHAUSTED
        state_too_large``, and, for a conditional update whose ``expected_version``
        is not the state's version, ``ABORTED state_conflict`` (gRPC's status for a
        failed test-and-set: read again and redo the change). Each writes nothing.
        """
        identity = await self._control_call(peer)
        updates = dict(request.updates)
        for key, value in updates.items():
            if not key or len(key) > MAX_STATE_KEY_LENGTH:
                raise Refusal(Reason.INVALID_STATE_KEY)
            if request.json_values:
                try:
                    _json_decoder.decode(value)
                except msgspec.DecodeError as exc:
                    raise Refusal(Reason.INVALID_STATE_VALUE) from exc
            else:
                updates[key] = stored_from_text(value)
        expected = request.expected_version if request.HasField("expected_version") else None
        try:
            version = await self._store.update_state(
                identity.agent_id, updates, expected_version=expected
            )
        except StateTooLargeError as exc:
            raise Refusal(Reason.STATE_TOO_LARGE) from exc
        except StateVersionConflict as exc:
            raise Refusal(Reason.STATE_CONFLICT) from exc
        return pb.UpdateStateResponse(version=version)

    async def reset_state(
        self, peer: PeerConnection, request: pb.ResetStateRequest
    ) -> pb.ResetStateResponse:
        identity = await self._control_call(peer)
        version = await self._store.reset_state(identity.agent_id)
        return pb.ResetStateResponse(version=version)
