"""``RedisStore``: the ``Store`` contract on Redis Streams, hashes and Lua.

Opened by ``mas.store.redis.open_redis_store``, which documents the key layout,
leases and wake-ups. Every method is one operation on the client's lane
(``mas.store.redis.client``): a script or a few plain commands, sent in one
pipeline with whatever else is queued at the time.

This server's deliveries are tracked in memory too (delivery id -> stream entry
and message), so ``ack_many``, ``retry`` and ``dead_letter`` need not read the entry
back, and a session's deliveries are known when it is released; the pending
entries in Redis remain the truth that ``release_session`` and reclaims act on.
A claim that failed after it may have reached Redis (its reply lost) may have left
entries pending under the session's consumer that nothing here tracks: the session's
next claim first delivers those (``_recover``), so they do not wait for its end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import trio

from ...audit.record import AuditDraft, AuditRecord
from ...audit.retention import Retention
from ...envelope import new_delivery_id
from ...errors import StoreError
from ..base import (
    Claim,
    Correlation,
    CorrelationRefused,
    DeadLetter,
    Enqueued,
    EnqueueItem,
    InFlight,
    QueuedMessage,
    Routed,
    StateSnapshot,
    StoreLimits,
)
from . import scripts as lua
from .audit import AuditChain
from .batch import EnqueueBatch, ack_command
from .client import Arg, Operation, RedisClient, StoreUnavailableError
from .dlq import dead_letter_entries, replay
from .keys import Keys, queue_name, split_queue_name
from .lease import Lease
from .records import Records
from .scripts import MAX_DEAD_LETTERS
from .watch import watch_queues

MAX_FULL_QUEUES_KNOWN: Final = 1024  # queues remembered as full (checked before linking)

log = logging.getLogger("mas.store.redis")


@dataclass(frozen=True)
class _Tracked:
    delivery: InFlight
    q: str
    entry_id: bytes


@dataclass
class _Session:
    agent_id: str
    instance_id: str
    deliveries: set[str] = field(default_factory=set)
    # A claim for it failed after it may have reached Redis: entries may be pending under
    # its consumer that nothing tracks. Its next claim looks for them first (``_recover``).
    suspect: bool = False


class _Release(NamedTuple):
    """What ``release_session`` sends for one ended session (kept until Redis confirms)."""

    session: _Session
    max_attempts: int
    not_before: tuple[str | bytes, ...]


class RedisStore:
    """A ``Store`` in Redis, shared by every server opened on the same URL and namespace."""

    def __init__(
        self,
        client: RedisClient,
        limits: StoreLimits,
        *,
        server_id: str,
        namespace: str,
        lease_seconds: float,
        audit_key: bytes | None = None,
        release_max_attempts: int | None = None,
    ) -> None:
        self.limits = limits
        self.server_id = server_id
        self.audit_key = audit_key
        self._client = client
        self._keys = Keys(namespace)
        chain_keys = [self._keys.audit, self._keys.audit_head, self._keys.audit_turn]
        self._audit = AuditChain(
            client, chain_keys, server_id, audit_key, anchor_key=self._keys.audit_anchor
        )
        self._lease = Lease(client, self._keys, server_id, lease_seconds, release_max_attempts)
        self._records = Records(client, self._keys, limits.max_state_bytes)
        self._full: dict[str, None] = {}  # queues that refused an enqueue lately (insertion order)
        self._deliveries: dict[str, _Tracked] = {}
        self._sessions: dict[str, _Session] = {}
        self._unreleased: dict[str, _Release] = {}  # ended sessions Redis did not release yet
        self._wake: Callable[[str, str | None], None] | None = None  # set by ``watch``
        self._counts = {"sent": 0, "delivered": 0, "wakeups": 0}

    # -- queues -------------------------------------------------------------------------

    def _refused(self, q: str) -> None:
        self._full[q] = None
        if len(self._full) > MAX_FULL_QUEUES_KNOWN:
            del self._full[next(iter(self._full))]

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[Enqueued]:
        records, _ = await self._enqueue(items)
        return records

    async def _enqueue(
        self, items: Sequence[EnqueueItem], along: Sequence[Operation] = ()
    ) -> tuple[list[Enqueued], bool]:
        """``enqueue_many``, with ``along`` in its pipeline, after it (see the client).

        Also returns whether ``along`` ran before the write (a retried batch: see
        ``EnqueueBatch.along_ran_early``), so it did not see what was written.
        """
        if not items:
            await self._client.call_many(along)
            return [], False
        batch = EnqueueBatch(
            self._client,
            self._keys,
            self._audit,
            self.server_id,
            self.limits.max_queue_length,
            items,
        )
        # Queues that refused lately are predicted to refuse again (see batch).
        records = await batch.write([q in self._full for q in batch.queues], along)
        for q, record in zip(batch.queues, records, strict=True):
            if record is None:
                self._refused(q)
            elif isinstance(record, AuditRecord):
                self._full.pop(q, None)
                self._counts["sent"] += 1
        return records, batch.along_ran_early

    async def _queue_length(self, q: str) -> int:
        [length] = await self._client.call("queue_depth", ("HGET", self._keys.waiting, q))
        return int(length or 0)

    async def append_audit(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        return await self._audit.append(drafts)

    async def audit_records(
        self, after_seq: int = 0, limit: int = 1000, *, flushed_only: bool = False
    ) -> list[AuditRecord]:
        return await self._audit.records(after_seq, limit)

    async def trim_audit(self, rule: Retention) -> int:
        return await self._audit.trim(rule)

    async def audit_anchor(self) -> tuple[int, str]:
        return await self._audit.anchor()

    async def claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        if limit <= 0:
            return []
        recovered: list[InFlight] = []
        known = self._sessions.get(session_id)
        if known is not None and known.suspect:
            recovered = await self._recover(agent_id, instance_id, session_id, known, limit, now)
            limit -= len(recovered)
            known.suspect = limit <= 0  # a full recovery may have left more behind
            if limit <= 0:
                return recovered
        wanted = Claim(
            agent_id=agent_id, instance_id=instance_id, session_id=session_id, limit=limit
        )
        op, session = self._claim_operation(wanted, now)
        try:
            [entries] = await self._client.submit(op)
        except BaseException:
            session.suspect = True  # it may have run: its next claim looks
            raise
        return recovered + self._claimed(wanted, session, entries)

    async def _recover(
        self,
        agent_id: str,
        instance_id: str,
        session_id: str,
        session: _Session,
        limit: int,
        now: float,
    ) -> list[InFlight]:
        """The entries pending under the session's consumer that it does not track.

        A claim whose reply was lost (Redis ran it, the answer never came) left them
        there: without this they would wait, pending, until the session ended. They are
        delivered now, as claimed, with their delivery count as their attempt; those
        past ``max_message_age`` are dead-lettered instead, as a claim does.
        """
        reply_q, shared_q = queue_name(agent_id, instance_id), queue_name(agent_id, None)
        tracked: list[Arg] = []
        for delivery_id in session.deliveries:
            entry = self._deliveries[delivery_id]
            tracked += [b"1" if entry.q == reply_q else b"2", entry.entry_id]
        keys = self._keys
        entries = await self._client.evalsha(
            "recover",
            lua.RECOVER,
            [keys.queue(reply_q), keys.queue(shared_q), keys.dlq(agent_id), keys.dlq_agents],
            [
                self._consumer(session_id),
                limit,
                repr(now),
                repr(self.limits.max_message_age),
                agent_id,
                instance_id,
                MAX_DEAD_LETTERS,
                *tracked,
            ],
        )
        wanted = Claim(
            agent_id=agent_id, instance_id=instance_id, session_id=session_id, limit=limit
        )
        if entries:
            log.info(
                "delivering %d message(s) a lost claim left pending for session %s of %s",
                len(entries),
                session_id,
                agent_id,
            )
        return self._claimed(wanted, session, entries)

    def _claim_operation(self, claim: Claim, now: float) -> tuple[Operation, _Session]:
        """The ``CLAIM`` script call for ``claim`` (``claim.limit`` > 0), and its session."""
        keys, ns = self._keys, self._keys.ns
        agent_id, instance_id = claim.agent_id, claim.instance_id
        session = self._sessions.get(claim.session_id)
        if session is None:  # known before its deliveries can be
            session = self._sessions[claim.session_id] = _Session(agent_id, instance_id)
        reply_q, shared_q = queue_name(agent_id, instance_id), queue_name(agent_id, None)
        script_keys = [
            keys.queue(reply_q),
            keys.front(reply_q),
            keys.queue(shared_q),
            keys.front(shared_q),
            keys.waiting,
            keys.delayed,
            keys.dlq(agent_id),
            keys.dlq_agents,
            keys.claims(self.server_id),
        ]
        args: list[Arg] = [
            self._consumer(claim.session_id),
            claim.limit,
            repr(now),
            repr(self.limits.max_message_age),
            reply_q,
            shared_q,
            agent_id,
            instance_id,
            ns,
            self._keys.wake_channel,
            MAX_DEAD_LETTERS,
        ]
        command = ("EVALSHA", lua.CLAIM.sha, len(script_keys), *script_keys, *args)
        return self._client.operation("claim", command), session

    def _claimed(self, claim: Claim, session: _Session, entries: list[Any]) -> list[InFlight]:
        """Track the entries a ``CLAIM`` took for ``session``; their deliveries."""
        agent_id, instance_id, session_id = claim.agent_id, claim.instance_id, claim.session_id
        reply_q, shared_q = queue_name(agent_id, instance_id), queue_name(agent_id, None)
        taken: list[InFlight] = []
        for which, entry_id, attempt, not_before, message_id, enqueued_at, envelope in entries:
            message = QueuedMessage(
                message_id=message_id.decode(),
                target_id=agent_id,
                instance_id=instance_id if which == 1 else None,
                envelope_json=envelope,
                enqueued_at=float(enqueued_at),
                attempt=attempt,
                not_before=float(not_before),
            )
            delivery = InFlight(
                delivery_id=new_delivery_id(), session_id=session_id, message=message
            )
            q = reply_q if which == 1 else shared_q
            self._deliveries[delivery.delivery_id] = _Tracked(delivery, q, entry_id)
            session.deliveries.add(delivery.delivery_id)
            taken.append(delivery)
        self._counts["delivered"] += len(taken)
        return taken

    def _consumer(self, session_id: str) -> str:
        return f"{self.server_id}:{session_id}"

    def _forget(self, delivery_id: str) -> _Tracked | None:
        tracked = self._deliveries.pop(delivery_id, None)
        if tracked is not None:
            session = self._sessions.get(tracked.delivery.session_id)
            if session is not None:
                session.deliveries.discard(delivery_id)
        return tracked

    async def ack_many(self, delivery_ids: Sequence[str]) -> list[InFlight | None]:
        acked, ack = self._ack_operation(delivery_ids)
        if ack is not None:
            await self._client.submit(ack)
        return acked

    def _ack_operation(
        self, delivery_ids: Sequence[str]
    ) -> tuple[list[InFlight | None], Operation | None]:
        """Forget the deliveries; (each one, or None if unknown), and the ack to send."""
        acked = [self._forget(delivery_id) for delivery_id in delivery_ids]
        entries: dict[str, list[tuple[bytes, str]]] = {}
        for tracked in acked:
            if tracked is not None:
                consumer = self._consumer(tracked.delivery.session_id)
                entries.setdefault(self._keys.queue(tracked.q), []).append(
                    (tracked.entry_id, consumer)
                )
        # Forgotten here already: the acks go out even if the caller is cancelled.
        ack = (
            self._client.operation("ack", ack_command(entries), abandonable=False)
            if entries
            else None
        )
        return [None if tracked is None else tracked.delivery for tracked in acked], ack

    async def route_batch(
        self,
        items: Sequence[EnqueueItem],
        *,
        acked: Callable[[InFlight], AuditDraft] | None = None,
        claims: Sequence[Claim] = (),
        now: float = 0.0,
    ) -> Routed:
        # Two round trips as a rule: the enqueue with the claims in its pipeline (after it:
        # they see what it wrote), then the acks of what the written replies answer, with
        # their records (an ack waits for its reply's outcome, so it cannot ride along).
        # A batch written on a second try (a queue predicted wrong, the chain's turn
        # taken) had its claims run before the write: they claim again after it.
        made = [self._claim_operation(c, now) if c.limit > 0 else None for c in claims]
        try:
            records, early = await self._enqueue(items, [m[0] for m in made if m is not None])
        except BaseException:
            for m in made:  # their claims may have run: the sessions' next claims look
                if m is not None:
                    m[1].suspect = True
            raise
        claimed: list[list[InFlight]] = []
        for c, m in zip(claims, made, strict=True):
            if m is None:
                claimed.append([])
                continue
            op, session = m
            # The items are stored: a claim that fails takes nothing, and leaves the
            # messages to the session's pump (the router rings it for an empty claim).
            try:
                [entries] = await self._client.outcome(op)
            except StoreError as exc:
                log.debug("claim for %s after an enqueue failed: %s", c.agent_id, exc)
                session.suspect = True  # it may have run: the session's next claim looks
                claimed.append([])
            else:
                claimed.append(self._claimed(c, session, entries))
        if early:  # rare: the claims ran before the write; claim again, after it
            for n, (c, early_taken) in enumerate(zip(claims, claimed, strict=True)):
                if c.limit > len(early_taken):
                    try:
                        more = await self.claim(
                            c.agent_id, c.instance_id, c.session_id, c.limit - len(early_taken), now
                        )
                    except StoreError as exc:  # the router rings the pump, as for a failure
                        log.debug("claim for %s after a retry failed: %s", c.agent_id, exc)
                        more = []
                    claimed[n] = [*early_taken, *more]
        ids = [
            item.acks
            for item, record in zip(items, records, strict=True)
            if item.acks and isinstance(record, AuditRecord)
        ]
        taken: list[InFlight] = []
        ack_records: list[AuditRecord] | None = None
        try:
            if ids and acked is not None:
                done, ack_records = await self.ack_recorded(ids, acked)
                taken = [d for d in done if d is not None]
            elif ids:
                taken = [d for d in await self.ack_many(ids) if d is not None]
        except StoreError as exc:
            # The items are stored (and claimed): they must not be reported unstored. The
            # requests stay in flight to their sessions, as after a refused reply, and
            # go back with them at the latest (Redis still holds them pending).
            log.warning("the acks of %d stored replies failed: %s", len(ids), exc)
            taken, ack_records = [], None
        return Routed(results=records, acked=taken, ack_records=ack_records, claimed=claimed)

    async def ack_recorded(
        self, delivery_ids: Sequence[str], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[InFlight | None], list[AuditRecord] | None]:
        # One round trip: the ack, then its records in the same pipeline. Not one
        # transaction: if the records fail (the chain's turn, a refusal), the ack stands
        # and the caller writes the drafts (None), as the contract allows.
        acked, ack = self._ack_operation(delivery_ids)
        if ack is None:
            return acked, []
        drafts = [draft(delivery) for delivery in acked if delivery is not None]
        records: list[AuditRecord] | None = None
        try:
            records = await self._audit.append(drafts, ahead=[ack])
        except (StoreError, ValueError) as exc:
            log.debug("the records of %d acks are left to the audit writer: %s", len(drafts), exc)
        await self._client.outcome(ack)  # raises if the ack itself failed
        return acked, records

    async def retry(self, delivery_id: str, not_before: float) -> InFlight | None:
        tracked = self._forget(delivery_id)
        if tracked is None:
            return None
        delivery = tracked.delivery
        await self._client.evalsha(
            "retry",
            lua.RETRY,
            [self._keys.queue(tracked.q), self._keys.delayed],
            [
                tracked.entry_id,
                self._consumer(delivery.session_id),
                delivery.message.attempt + 1,
                repr(not_before),
                tracked.q,
            ],
        )
        return delivery

    async def dead_letter(self, delivery_id: str, reason: str, now: float) -> InFlight | None:
        tracked = self._forget(delivery_id)
        if tracked is None:
            return None
        message = tracked.delivery.message
        written = await self._client.evalsha(
            "dead_letter",
            lua.DEAD_LETTER,
            [
                self._keys.queue(tracked.q),
                self._keys.dlq(message.target_id),
                self._keys.dlq_agents,
            ],
            [
                tracked.entry_id,
                MAX_DEAD_LETTERS,
                message.target_id,
                message.instance_id or "",
                message.message_id,
                repr(message.enqueued_at),
                message.attempt,
                repr(message.not_before),
                message.envelope_json,
                reason,
                repr(now),
                self._consumer(tracked.delivery.session_id),
            ],
        )
        # 0: another server reclaimed the entry (this one's lease had expired) and is
        # delivering it; it is that server's to dead-letter or not.
        return tracked.delivery if written else None

    async def release_session(self, session_id: str, max_attempts: int, now: float) -> int:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return 0  # never claimed: no consumer exists
        not_before: list[str | bytes] = []
        for delivery_id in session.deliveries:
            tracked = self._deliveries.pop(delivery_id)
            if tracked.delivery.message.not_before:
                not_before += [
                    tracked.q,
                    tracked.entry_id,
                    repr(tracked.delivery.message.not_before),
                ]
        release = _Release(session, max_attempts, tuple(not_before))
        # Until Redis confirms the hand-back, the consumer's entries would stay pending
        # under a consumer nobody owns: remember it, and ``hand_back_orphans`` retries.
        self._unreleased[session_id] = release
        handed_back = await self._release(session_id, release, now)
        self._unreleased.pop(session_id, None)
        return handed_back

    async def hand_back_orphans(self, interval: float) -> None:
        """Retry, every ``interval`` seconds, the releases that Redis did not confirm.

        A session that ended while Redis was unreachable (or whose release was
        cancelled on its way) left its deliveries pending under its consumer; this
        live server hands them back as soon as Redis answers again. A release is
        idempotent (what was handed back is no longer pending), so one that did reach
        Redis is harmless to send again. Runs until cancelled.
        """
        while True:
            await trio.sleep(interval)
            for session_id, release in list(self._unreleased.items()):
                try:
                    await self._release(session_id, release, time.time())
                except StoreUnavailableError:
                    break  # still away: the next round tries again
                self._unreleased.pop(session_id, None)
                log.info("handed back the deliveries of session %s after an outage", session_id)
                # This server's own notifications are not read back: ring its sessions.
                if self._wake is not None:
                    self._wake(release.session.agent_id, None)
                    self._wake(release.session.agent_id, release.session.instance_id)

    async def _release(self, session_id: str, release: _Release, now: float) -> int:
        session, keys = release.session, self._keys
        handed_back: int = await self._client.evalsha(
            "release",
            lua.RELEASE,
            [
                keys.waiting,
                keys.dlq(session.agent_id),
                keys.dlq_agents,
                keys.claims(self.server_id),
            ],
            [
                self._consumer(session_id),
                release.max_attempts,
                repr(now),
                session.agent_id,
                session.instance_id,
                keys.ns,
                keys.wake_channel,
                self.server_id,
                MAX_DEAD_LETTERS,
                f"{self.server_id}:",
                *release.not_before,
            ],
        )
        return handed_back

    async def watch(
        self,
        wake: Callable[[str, str | None], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Wake local sessions for queues other servers filled: one subscriber per server."""
        self._wake = wake  # also for what this server hands back by itself
        await watch_queues(
            self._client,
            self._keys,
            self.server_id,
            wake,
            on_wakes=self._count_wakes,
            task_status=task_status,
        )

    def _count_wakes(self, n: int) -> None:
        self._counts["wakeups"] += n

    async def next_due(self) -> float | None:
        [first] = await self._client.call(
            "next_due", ("ZRANGE", self._keys.delayed, 0, 0, "WITHSCORES")
        )
        return float(first[1]) if first else None

    async def pending_agents(self, now: float) -> set[str]:
        keys, ns = self._keys, self._keys.ns
        queues = await self._client.evalsha(
            "pending",
            lua.PENDING,
            [keys.delayed, keys.waiting],
            [repr(now), ns, self._keys.wake_channel],
        )
        return {split_queue_name(q)[0] for q in queues}

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        return [
            dead for _, _, dead in await dead_letter_entries(self._client, self._keys, agent_id)
        ]

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, now: float
    ) -> list[DeadLetter]:
        return await replay(self._client, self._keys, message_ids, now)

    async def queue_depth(self, agent_id: str) -> int:
        return await self._queue_length(queue_name(agent_id, None))

    # -- correlations and state (records) ---------------------------------------

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        return await self._records.find_correlations(finds, now)

    async def sweep(self, now: float, reply_max_age: float) -> int:
        # Correlations carry a Redis expiry (PEXPIREAT, with the grace): Redis sweeps
        # them. Reply streams are bounded by max_queue_length and dead-lettered past
        # max_message_age when claimed.
        return 0

    async def read_state(self, agent_id: str) -> StateSnapshot:
        return await self._records.read_state(agent_id)

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        return await self._records.update_state(
            agent_id, updates, expected_version=expected_version
        )

    async def reset_state(self, agent_id: str) -> int:
        return await self._records.reset_state(agent_id)

    def _simulate_crash(self) -> None:
        """Stop renewing the lease and skip the hand-back on close (failover tests)."""
        self._lease.simulate_crash()

    def statistics(self) -> dict[str, Any]:
        """Counters: Redis round trips and commands, per operation kind and per message.

        ``round_trips_per_sent`` counts the enqueue batches' round trips per
        message sent; ``round_trips_per_delivered`` the claim and ack batches'
        per message delivered (a round trip shared by a batch is split among its
        operations).
        """
        stats = self._client.stats
        sent, delivered = self._counts["sent"], self._counts["delivered"]
        rt, cmds = stats.op_round_trips, stats.op_commands
        return {
            "server_id": self.server_id,
            "round_trips": stats.round_trips,
            "commands": stats.commands,
            "batches": stats.batches,
            "ops": dict(stats.ops),
            "op_commands": dict(cmds),
            "op_round_trips": dict(rt),
            "reconnect_waits": stats.reconnect_waits,
            "accept_waits": stats.accept_waits,
            "accept_refusals": stats.accept_refusals,
            "script_reloads": stats.script_reloads,
            **self._counts,
            "handed_back": self._lease.handed_back,
            "in_flight": len(self._deliveries),
            "round_trips_per_sent": rt.get("enqueue", 0.0) / sent if sent else 0.0,
            "commands_per_sent": cmds.get("enqueue", 0) / sent if sent else 0.0,
            "round_trips_per_delivered": (
                (rt.get("claim", 0.0) + rt.get("ack", 0.0)) / delivered if delivered else 0.0
            ),
            "commands_per_delivered": (
                (cmds.get("claim", 0) + cmds.get("ack", 0)) / delivered if delivered else 0.0
            ),
        }
