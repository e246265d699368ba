"""The store contract: queues with in-flight tracking, correlations, state (pure types).

Queues
    Each agent id has one shared queue (its instances compete for it) and each
    instance a private reply queue. ``claim`` hands a session up to ``limit``
    messages, reply queue first, and records them as in flight for that
    session; ``ack_many`` forgets deliveries, ``retry`` puts one back after a
    delay, ``dead_letter`` moves one to the dead-letter queue with its full
    envelope, and ``release_session`` returns every in-flight delivery of an
    ended session to the front of its queue at once. ``enqueue_many`` routes
    messages and ``ack_many`` acks deliveries a batch at a time, in one
    transaction (one round trip on Redis). ``route_batch`` is the server's step:
    it enqueues a batch, acks the deliveries its replies answer, and claims for
    the idle sessions of the batch's targets, in one transaction (SQLite, memory),
    so a message sent to an idle agent is in flight to it when the sender is told
    it was accepted, with no claim of its own.

Correlations
    A request's correlation id maps to the requesting (agent, instance) and the
    one agent allowed to answer. A reply looks its correlation up with
    ``find_correlations`` (which checks the replier), then consumes it in the
    same transaction that stores the reply (``EnqueueItem.answers``), so a reply
    can neither be replayed nor come from a third agent, and a reply that is not
    stored (cancelled, refused, a store error) leaves its correlation intact.
    A correlation is recorded with its request (``EnqueueItem.correlation``). An
    expired correlation is kept for ``CORRELATION_GRACE`` seconds, so that a late
    reply is told ``correlation_id_expired`` rather than ``unknown_correlation_id``;
    then ``sweep`` removes it.

Audit
    One hash chain per store, linked by one function every backend calls:
    ``mas.audit.chain.link_many(head, drafts, audit_key, server_id)`` gives the
    records that follow the chain's last record ``head`` (the last of them is the
    new head); the backend only reads its head and writes the records in the
    transaction that needs them. Records are linked in commit order, so several
    servers sharing a store keep one consistent chain. Retention trims the oldest
    records and keeps an anchor, the seq and hash of the last one trimmed. Each
    record names the server that linked it (``server_id``: the host name, or the
    Redis server id).

State
    One JSON object per agent id, stored key by key as JSON text so partial
    updates touch only the keys they name. Each agent's state has a version
    that every write (update or reset) makes larger and that never goes back,
    not even on reset, so a version read once is never seen again after a
    write (no ABA). ``update_state`` with ``expected_version`` is a
    compare-and-set: checked and written in one atomic step (one transaction,
    one script), so of several writers that read the same version exactly one
    wins, whichever server each is on.

Every method is ``async`` so that I/O backends fit the same contract; ``now``
is passed in by the caller (wall-clock seconds), never read by the store.

Wake-ups
    The router rings local sessions itself after an enqueue; ``watch`` lets a
    shared store (Redis) report enqueues made by other servers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import msgspec

from ..audit.record import AuditDraft, AuditRecord
from ..audit.retention import Retention
from ..errors import Reason


class StoreLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds a store enforces on queues and state."""

    max_queue_length: int = 10_000  # messages waiting per agent (shared queue) or instance
    max_message_age: float = 86_400.0  # seconds a message may wait before it is dead-lettered
    max_state_bytes: int = 1_048_576  # JSON bytes of one agent's state


class QueuedMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A routed message waiting in (or taken from) a queue."""

    message_id: str
    target_id: str
    instance_id: str | None  # set: the target instance's reply queue; None: the shared queue
    envelope_json: bytes  # the envelope as routed (attempt 1); attempts are stamped on delivery
    enqueued_at: float
    attempt: int = 1  # the attempt this message will be delivered as
    not_before: float = 0.0  # earliest time of the next delivery (retry backoff)


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery of a message to one session."""

    delivery_id: str
    session_id: str
    message: QueuedMessage


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message that will not be delivered again unless replayed."""

    message: QueuedMessage
    reason: str
    dead_lettered_at: float


class Correlation(msgspec.Struct, frozen=True, kw_only=True):
    """An open request: who asked, who may answer, until when."""

    correlation_id: str
    requester_id: str
    requester_instance_id: str
    target_id: str
    request_message_id: str
    expires_at: float


class EnqueueItem(msgspec.Struct, frozen=True, kw_only=True):
    """One message to route: its audit record, and for a request its correlation.

    ``answers`` (a reply's) names the correlation the message consumes: the item is
    written only if that correlation is still open, and the correlation is deleted in
    the same transaction.

    ``acks`` (a reply's, with ``enqueue_acking``) names the delivery of the request the
    reply answers: when the item is written, that delivery is acked with it.
    """

    message: QueuedMessage
    audit: AuditDraft
    correlation: Correlation | None = None
    answers: str = ""
    acks: str = ""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A claim made in the same step as an enqueue (``Store.route_batch``): see ``claim``."""

    agent_id: str
    instance_id: str
    session_id: str
    limit: int


class QueueFullError(Exception):
    """The target queue holds ``max_queue_length`` messages already."""


UNKNOWN_CORRELATION: Final = Reason.UNKNOWN_CORRELATION  # never issued, used, or long gone
CORRELATION_EXPIRED: Final = Reason.CORRELATION_EXPIRED  # its request's deadline has passed
NOT_THE_TARGET: Final = Reason.NOT_AUTHORIZED  # only the request's target may answer it
CORRELATION_GRACE: Final = 300.0  # seconds an expired correlation is kept, to say so
STORE_UNAVAILABLE: Final = Reason.STORE_UNAVAILABLE  # the store could not be reached or written
# Written, but not acknowledged as the store's accept setting asks (Redis WAIT/WAITAOF):
# it may still be delivered, so a retry may duplicate it.
STORE_NOT_DURABLE: Final = Reason.STORE_NOT_DURABLE


class CorrelationRefused(Exception):
    """A reply's correlation id is unknown, used, expired, or not the replier's.

    ``reason`` is ``UNKNOWN_CORRELATION``, ``CORRELATION_EXPIRED`` or ``NOT_THE_TARGET``
    (the seed system's reason strings).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


Enqueued = AuditRecord | None | CorrelationRefused
"""What ``enqueue_many`` made of one item: its record, None (queue full), or a refusal."""


class Routed(msgspec.Struct, kw_only=True):
    """What ``Store.route_batch`` made of a batch.

    ``results[i]`` is item i's, as from ``enqueue_many``. ``acked`` are the deliveries the
    written items ``acks`` (those still in flight); ``ack_records`` the records the draft
    made of them, linked after the items' (SQLite and memory in the same transaction,
    Redis in the acks' round trip), or None where they could not be written (Redis, when
    another server kept the chain's turn): the caller writes the drafts then.
    ``claimed[j]`` are the deliveries ``claims[j]`` took, after the items were written.
    """

    results: list[Enqueued]
    acked: list[InFlight]
    ack_records: list[AuditRecord] | None
    claimed: list[list[InFlight]]


def default_server_id() -> str:
    """The name a server's audit records carry when none is configured: its host name."""
    return socket.gethostname() or "mas"


class Store(Protocol):
    """What the router and servicer need from a backend."""

    limits: StoreLimits
    audit_key: bytes | None  # the HMAC key the audit chain is linked with (None: SHA-256)
    server_id: str  # stamped on every audit record this store links (``server_id``)

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[Enqueued]:
        """Append several messages in order, in one transaction.

        One transaction (SQLite) or a constant number of round trips (Redis) for
        the whole batch, whatever its size. Result i is item i's audit record as
        stored, None when its target queue was full, or ``CorrelationRefused`` when
        the correlation it ``answers`` is no longer open (taken by another reply,
        expired: checked at the message's ``enqueued_at``); then none of that item
        (message, correlation, audit record) is written and the other items are
        unaffected. An item that is written consumes the correlation it answers.
        A later item to the same queue sees the queue as the earlier items left
        it. Audit records are linked into the chain in item order (the ones
        written only). The correlation of an item is recorded in the same
        transaction as its message, so it exists before the target can claim the
        request.

        Raises ``ValueError`` (writing nothing) when an item is invalid, e.g. an
        empty instance id or an audit time that is not finite.
        """

    async def route_batch(
        self,
        items: Sequence[EnqueueItem],
        *,
        acked: Callable[[InFlight], AuditDraft] | None = None,
        claims: Sequence[Claim] = (),
        now: float = 0.0,
    ) -> Routed:
        """``enqueue_many``, then the acks the written items carry, then ``claims``: one step.

        The written items ``acks`` are acked (an item that is not written, queue full or
        correlation refused, acks nothing: its delivery stays in flight), with the record
        ``acked`` makes of each delivery acked. Then each claim takes, as ``claim`` at
        ``now`` would, up to its ``limit`` due messages for its session, reply queue first:
        a message just written to an idle session's queue is in flight to it when this
        returns, with no claim of its own. SQLite and memory do all of it in one
        transaction (one flush); Redis in one pipeline for the enqueue and the claims,
        and one more for the acks with their records (an ack waits for its reply's
        outcome).
        """

    async def append_audit(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        """Link records into the store's one audit chain and write them, in order."""

    async def audit_records(
        self, after_seq: int = 0, limit: int = 1000, *, flushed_only: bool = False
    ) -> list[AuditRecord]:
        """Stored audit records with ``seq > after_seq``, oldest first, at most ``limit``.

        Never a record a power loss could take back (SQLite ``sync: full`` flushes first).
        ``flushed_only``: do not flush for this read; return only records already durable
        (on SQLite, those a flush covered; fewer or none while one is due), for a reader
        that polls, such as the JSONL follower.
        """

    async def trim_audit(self, rule: Retention) -> int:
        """Remove the oldest audit records ``rule`` allows (``mas.audit.retention``).

        The anchor (seq and hash of the last record removed) is written in the
        same step; the newest record always stays. Returns how many went.
        """

    async def audit_anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last audit record trimmed; (0, GENESIS) when none was."""

    async def claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        """Take up to ``limit`` due messages for one session (reply queue first)."""

    async def ack_many(self, delivery_ids: Sequence[str]) -> list[InFlight | None]:
        """Forget several deliveries at once (one transaction / round trip).

        Result i is the delivery ``delivery_ids[i]`` named, or None if it was not in
        flight; the ids are taken in order: an id given twice is forgotten by its
        first occurrence (None after).
        """

    async def ack_recorded(
        self, delivery_ids: Sequence[str], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[InFlight | None], list[AuditRecord] | None]:
        """``ack_many``, with the audit record ``draft`` makes of each delivery it acked.

        Where the store can (SQLite, memory), the records are linked into the chain and
        written in the acks' transaction: a delivery is forgotten together with its
        record, in one store call. Then the second value is those records, in the order
        of the acked deliveries. Redis sends the acks and then the records in one
        pipeline, not one transaction: when the records could not be written (another
        server kept the chain's turn), the acks stand and it returns None, and the caller
        writes the drafts itself (``append_audit``).
        """

    async def retry(self, delivery_id: str, not_before: float) -> InFlight | None:
        """Put an in-flight message back, delivered again not before ``not_before``.

        Once due, it goes to the front of its queue (a claim promotes it first); retries
        that fall due together go there in the order they fell due.
        """

    async def dead_letter(self, delivery_id: str, reason: str, now: float) -> InFlight | None:
        """Move an in-flight message to the dead-letter queue."""

    async def release_session(self, session_id: str, max_attempts: int, now: float) -> int:
        """Return a closed session's deliveries to the front of their queues.

        They keep the order they had in their queues (messages enqueued in one batch
        too). Each counts as a failed attempt; one past ``max_attempts`` is
        dead-lettered instead. Returns how many were requeued.
        """

    async def watch(self, wake: Callable[[str, str | None], None], *, task_status: Any) -> None:
        """Report messages enqueued by other servers sharing this store; runs until cancelled.

        Calls ``wake(agent_id, instance_id)`` (``instance_id`` None for the shared
        queue) so local sessions claim them. ``task_status.started()`` once watching.
        A store that only one server uses reports nothing.
        """

    async def next_due(self) -> float | None:
        """The earliest ``not_before`` of any delayed message, if any."""

    async def pending_agents(self, now: float) -> set[str]:
        """Agent ids with a message due now (to wake their sessions)."""

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        """Dead-lettered messages, oldest first."""

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, now: float
    ) -> list[DeadLetter]:
        """Put dead letters (all, or those with these message ids) back in their queues.

        Each goes to the back of its queue as a fresh first attempt enqueued at
        ``now`` (a replayed message must not expire at once); the queue's length
        bound does not apply to a replay. Returns what was replayed.
        """

    async def queue_depth(self, agent_id: str) -> int:
        """Messages waiting in an agent's shared queue (not counting in flight)."""

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        """Look up several ``(correlation_id, replier_id)`` without consuming them.

        One transaction (SQLite) or one round trip (Redis); result i is the open
        correlation, or a ``CorrelationRefused``: ``UNKNOWN_CORRELATION`` when the id
        is unknown or used, ``CORRELATION_EXPIRED`` when its request expired (within
        ``CORRELATION_GRACE``; later it is unknown), ``NOT_THE_TARGET`` when the
        replier is not the request's target.
        """

    async def sweep(self, now: float, reply_max_age: float) -> int:
        """Delete what no one can use any more; return how many records went.

        Correlations expired more than ``CORRELATION_GRACE`` ago, and replies that
        waited in an instance's reply queue longer than ``reply_max_age`` (the
        longest request deadline plus the grace: their requester gave up, and an
        instance that never comes back would keep them for ever). Redis expires its
        correlations itself; replies there are bounded by the queue's length and age.
        """

    async def read_state(self, agent_id: str) -> StateSnapshot:
        """The agent's state and its version, read together (0: never written)."""

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        """Set the given keys (JSON text values) and return the state's new version.

        Raises ``StateTooLargeError`` over the limit and, when ``expected_version``
        is given and is not the state's version, ``StateVersionConflict``; either
        way nothing is written. An empty update writes nothing (the version stays)
        and returns the current version, after the same check. Durable before it
        returns where the store is (SQLite ``sync: full``).
        """

    async def reset_state(self, agent_id: str) -> int:
        """Delete every key of the agent's state; return its new version (a reset is a write)."""


class StateSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's state as stored (key -> JSON text) and the version it has."""

    version: int
    values: dict[str, str]


class StateTooLargeError(Exception):
    """An update would make an agent's state larger than ``max_state_bytes``."""


class StateVersionConflict(Exception):
    """A conditional update expected a version the state no longer has; nothing was written."""

    def __init__(self, agent_id: str, expected: int, actual: int) -> None:
        self.agent_id = agent_id
        self.expected = expected
        self.actual = actual
        super().__init__(f"state of {agent_id!r} is at version {actual}, not {expected}")
