"""Live Transport sessions of this server and the delivery pump of each.

A session is one agent instance's open ``Transport`` stream. It owns an
in-flight window (``delivery.DeliveryWindow``, pure): the pump claims at most
``window.room()`` messages from the store whenever its doorbell rings (new
message for the agent, an ack freed a slot, a delayed retry fell due), and
sends them as ``Delivery`` frames, or as one ``DeliveryBatch`` when the client
asked for batching. A new message for a session whose pump is idle and whose
window has room is claimed and written by the router from the sender's task
instead (``can_take_over``, under the session's ``delivering`` lock, which the
pump holds too), so it costs no wake-up of the pump. A delivery not acked within
``ack_timeout`` is redelivered; the session's remaining deliveries go back to the
queue when it ends. This module only drives the window: it wakes the pump and
sleeps until the window's next deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import trio

from .._proto import runtime_pb2 as pb
from ..envelope import decode_envelope, encode_envelope, with_attempt
from ..store import InFlight
from .delivery import DeliveryWindow, Tracked

if TYPE_CHECKING:
    from .refusal import Refusal
    from .transport import RpcStream

log = logging.getLogger("mas.server.sessions")

MAX_BATCH: Final = 64  # deliveries per DeliveryBatch frame


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
        ack_timeout: float,
        reply_acks: bool = False,
        late_results: bool = False,
    ) -> None:
        self.session_id = session_id
        self.agent_id = agent_id
        self.instance_id = instance_id
        self.serial_number = serial_number  # of the client certificate, for revocation
        self.fingerprint = fingerprint
        self.connection_id = connection_id
        self.rpc = rpc
        self.batching = batching
        # Negotiated (Hello and Welcome): an accepted reply acks the delivery it names.
        self.reply_acks = reply_acks
        # Negotiated too: an accepted request's Result may wait to ride with its reply.
        self.late_results = late_results
        self.window = DeliveryWindow(prefetch, ack_timeout)
        self.cancel_scope = trio.CancelScope()
        self.ended: Refusal | None = None  # set when the server ends it
        self._doorbell = trio.Event()
        self._acks_changed = trio.Event()
        # Set by the pump when it stopped claiming because the window was full (more may
        # wait in the store): only then does an ack's free slot ring the doorbell. Otherwise
        # the store held nothing more when it last looked, and a new message rings anyway.
        self.starved = False
        # Held by whoever claims and sends this session's deliveries: its pump, or the
        # router handing a new message over from the sender's task (``Router.hand_over``).
        self.delivering = trio.Lock()
        self.unsent: list[pb.ServerEvent] = []  # claimed by a hand-over, left to the pump

    def ring(self) -> None:
        """Tell the pump there may be work (new message, free slot, due retry)."""
        self._doorbell.set()

    async def wait_for_doorbell(self) -> None:
        await self._doorbell.wait()
        self._doorbell = trio.Event()

    def can_take_over(self) -> bool:
        """True if its deliveries may be claimed and sent from another task now: its pump
        is idle (not rung, not claiming), nothing is left unsent, and its window has room."""
        return (
            not self.delivering.locked()
            and not self._doorbell.is_set()
            and not self.unsent
            and self.window.room() > 0
        )

    @property
    def prefetch(self) -> int:
        return self.window.prefetch

    def track(self, delivery_id: str, attempt: int, *, is_request: bool) -> None:
        """A delivery goes out now; its ack deadline starts."""
        self.window.deliver(delivery_id, attempt, trio.current_time(), is_request=is_request)
        if len(self.window) == 1:
            self._acks_changed.set()

    def untrack(self, delivery_id: str) -> Tracked | None:
        """Forget a delivery; what was tracked, or None if it was not this session's."""
        tracked = self.window.settle(delivery_id)
        if tracked is not None and self.starved:
            self.ring()  # a slot in the window is free, and messages may be waiting
        return tracked

    def answerable(self, delivery_id: str) -> bool:
        """True for a request delivered on this session and still in flight."""
        return delivery_id in self.window and self.window[delivery_id].is_request

    def end(self, refusal: Refusal) -> None:
        """Stop this session from the server side; its stream ends with ``refusal``."""
        if self.ended is None:
            self.ended = refusal
        self.cancel_scope.cancel()

    def expired(self, now: float) -> Iterator[str]:
        """Delivery ids whose ack deadline has passed (oldest first)."""
        return self.window.overdue(now)

    async def wait_for_first_deadline(self) -> None:
        """Sleep until the oldest in-flight delivery's ack deadline (or one appears)."""
        while (deadline := self.window.next_deadline()) is None:
            await self._acks_changed.wait()
            self._acks_changed = trio.Event()
        await trio.sleep_until(deadline)


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
