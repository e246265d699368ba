"""Live Transport sessions of this server and the delivery pump of each.

A session is one agent instance's open ``Transport`` stream. It owns an
in-flight window: the pump claims at most ``prefetch - len(in_flight)``
messages from the store whenever its doorbell rings (new message for the
agent, an ack freed a slot, a delayed retry fell due), and sends them as
``Delivery`` frames, or as one ``DeliveryBatch`` when the client asked for
batching. A delivery not acked within ``ack_timeout`` is redelivered; the
session's remaining deliveries go back to the queue when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

import trio

from .._proto import runtime_pb2 as pb
from ..envelope import decode_envelope, encode_envelope, with_attempt
from ..store import InFlight

if TYPE_CHECKING:
    from .transport import RpcStream

log = logging.getLogger("mas.server.sessions")

MAX_BATCH: Final = 64  # deliveries per DeliveryBatch frame


class Tracked(NamedTuple):
    """An in-flight delivery as its session sees it."""

    deadline: float  # Trio time by which it must be acked
    attempt: int
    is_request: bool  # its outcome is the reply, not the ack


class Session:
    """One agent instance connected over one Transport stream."""

    def __init__(
        self,
        *,
        session_id: str,
        agent_id: str,
        instance_id: str,
        serial_number: int = 0,
        fingerprint: str = "",
        connection_id: int,
        rpc: RpcStream,
        batching: bool,
        prefetch: int,
    ) -> None:
        self.session_id = session_id
        self.agent_id = agent_id
        self.instance_id = instance_id
        self.serial_number = serial_number  # of the client certificate, for revocation
        self.fingerprint = fingerprint
        self.connection_id = connection_id
        self.rpc = rpc
        self.batching = batching
        self.prefetch = prefetch
        # delivery id -> Tracked; insertion order is ack-deadline order.
        self.in_flight: dict[str, Tracked] = {}
        self.cancel_scope = trio.CancelScope()
        self.end_status: tuple[str, str] | None = None  # set when the server ends it
        self._doorbell = trio.Event()
        self._acks_changed = trio.Event()

    def ring(self) -> None:
        """Tell the pump there may be work (new message, free slot, due retry)."""
        self._doorbell.set()

    async def wait_for_doorbell(self) -> None:
        await self._doorbell.wait()
        self._doorbell = trio.Event()

    def track(self, delivery_id: str, deadline: float, attempt: int, *, is_request: bool) -> None:
        self.in_flight[delivery_id] = Tracked(deadline, attempt, is_request)
        if len(self.in_flight) == 1:
            self._acks_changed.set()

    def untrack(self, delivery_id: str) -> Tracked | None:
        """Forget a delivery; what was tracked, or None if it was not this session's."""
        tracked = self.in_flight.pop(delivery_id, None)
        if tracked is not None:
            self.ring()  # a slot in the window is free
        return tracked

    def end(self, code: str, reason: str) -> None:
        """Stop this session from the server side with a status."""
        if self.end_status is None:
            self.end_status = (code, reason)
        self.cancel_scope.cancel()

    def expired(self, now: float) -> Iterator[str]:
        """Delivery ids whose ack deadline has passed (oldest first)."""
        for delivery_id, tracked in self.in_flight.items():
            deadline = tracked.deadline
            if deadline > now:
                return
            yield delivery_id

    async def wait_for_first_deadline(self) -> None:
        """Sleep until the oldest in-flight delivery's ack deadline (or one appears)."""
        while not self.in_flight:
            await self._acks_changed.wait()
            self._acks_changed = trio.Event()
        await trio.sleep_until(next(iter(self.in_flight.values())).deadline)


def delivery_frames(session: Session, deliveries: list[InFlight]) -> list[pb.ServerEvent]:
    """The frames that carry ``deliveries`` to the client, batched if it asked."""
    items = [
        pb.Delivery(delivery_id=d.delivery_id, envelope_json=_envelope_text(d)) for d in deliveries
    ]
    if session.batching and len(items) > 1:
        return [
            pb.ServerEvent(deliveries=pb.DeliveryBatch(deliveries=items[i : i + MAX_BATCH]))
            for i in range(0, len(items), MAX_BATCH)
        ]
    return [pb.ServerEvent(delivery=item) for item in items]


def _envelope_text(delivery: InFlight) -> str:
    message = delivery.message
    if message.attempt == 1:
        return message.envelope_json.decode()
    # Redeliveries carry their attempt number so handlers can see them.
    envelope = with_attempt(decode_envelope(message.envelope_json), message.attempt)
    return encode_envelope(envelope).decode()


class SessionRegistry:
    """The sessions connected to this server, by agent and instance."""

    def __init__(self) -> None:
        self._by_agent: dict[str, dict[str, Session]] = {}
        self._by_id: dict[str, Session] = {}
        self._emptied = trio.Event()

    async def wait_empty(self) -> None:
        """Return once no session is registered."""
        while self._by_id:
            await self._emptied.wait()
            self._emptied = trio.Event()

    def add(self, session: Session) -> Session | None:
        """Register a session; return the one it replaces (same agent and instance)."""
        instances = self._by_agent.setdefault(session.agent_id, {})
        previous = instances.get(session.instance_id)
        if previous is not None:
            self._by_id.pop(previous.session_id, None)
        instances[session.instance_id] = session
        self._by_id[session.session_id] = session
        return previous

    def remove(self, session: Session) -> None:
        self._by_id.pop(session.session_id, None)
        instances = self._by_agent.get(session.agent_id)
        if instances is not None and instances.get(session.instance_id) is session:
            del instances[session.instance_id]
            if not instances:
                del self._by_agent[session.agent_id]
        if not self._by_id:
            self._emptied.set()

    def of_agent(self, agent_id: str) -> list[Session]:
        return list(self._by_agent.get(agent_id, {}).values())

    def instance(self, agent_id: str, instance_id: str) -> Session | None:
        return self._by_agent.get(agent_id, {}).get(instance_id)

    def count(self, agent_id: str) -> int:
        return len(self._by_agent.get(agent_id, ()))

    def all(self) -> list[Session]:
        return list(self._by_id.values())

    def ring(self, agent_id: str, instance_id: str | None = None) -> None:
        """Wake the sessions that may take a message for this agent (or instance)."""
        instances = self._by_agent.get(agent_id)
        if not instances:
            return
        if instance_id is not None:
            session = instances.get(instance_id)
            if session is not None:
                session.ring()
            return
        for session in instances.values():
            session.ring()
