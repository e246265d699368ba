"""The in-process store: everything in dicts and deques, gone when the process ends.

Suitable for tests and throwaway runs. Every operation is a Trio checkpoint (it
yields once, before it runs, as an I/O backend would), then runs as plain Python
with no further awaits, so each one is atomic with respect to other Trio tasks.
Yielding keeps the memory store honest: code that is only correct when a store
call never lets another task run fails here as it would on SQLite or Redis.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from trio.lowlevel import checkpoint

from ..audit.chain import link_many
from ..audit.record import GENESIS, AuditDraft, AuditRecord
from ..audit.retention import Retention, trim_cut
from ..envelope import new_delivery_id
from .base import (
    CORRELATION_EXPIRED,
    CORRELATION_GRACE,
    NOT_THE_TARGET,
    UNKNOWN_CORRELATION,
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
    StateTooLargeError,
    StateVersionConflict,
    StoreLimits,
    default_server_id,
)

_QueueKey = tuple[str, str | None]  # (agent id, instance id or None for the shared queue)
# A message's place in the queue order, as the SQLite store keeps it: (position, seq). A
# new message gets position 0 and the next seq; messages put back at the front together
# (released, or retries falling due) get positions below the head's, in their order,
# and keep their seq. A queue is a deque sorted by it; in flight, a message keeps it.
_Rank = tuple[int, int]
_Waiting = tuple[int, int, QueuedMessage]  # (position, seq, message)


@dataclass
class _Delayed:
    heap: list[tuple[float, int, QueuedMessage]] = field(default_factory=list)  # not_before, seq


class MemoryStore:
    """A ``Store`` held in memory."""

    def __init__(
        self,
        limits: StoreLimits | None = None,
        *,
        audit_key: bytes | None = None,
        server_id: str | None = None,
    ) -> None:
        self.limits = limits or StoreLimits()
        self._audit_key = audit_key
        self.audit_key = audit_key
        self.server_id = server_id or default_server_id()
        self._audit: list[AuditRecord] = []
        self._audit_anchor = (0, GENESIS)  # the last record trimmed (retention)
        self._queues: dict[_QueueKey, deque[_Waiting]] = {}
        self._delayed = _Delayed()
        self._in_flight: dict[str, InFlight] = {}
        self._ranks: dict[str, _Rank] = {}  # by delivery id: the message's place when taken
        self._seq = itertools.count()
        self._by_session: dict[str, set[str]] = {}
        self._dead: list[DeadLetter] = []
        self._correlations: dict[str, Correlation] = {}
        self._correlation_expiry: list[tuple[float, str]] = []
        self._state: dict[str, dict[str, str]] = {}
        self._state_versions: dict[str, int] = {}  # kept on reset: versions never go back

    # -- queues ---------------------------------------------------------------

    def _queue(self, key: _QueueKey) -> deque[_Waiting]:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        return queue

    def _to_back(self, message: QueuedMessage) -> None:
        """A new message, at the back of its queue."""
        self._queue((message.target_id, message.instance_id)).append((0, next(self._seq), message))

    def _to_front(self, key: _QueueKey, group: Sequence[tuple[int, QueuedMessage]]) -> None:
        """Put ``group`` ((seq, message), in order) back at the front of queue ``key``."""
        queue = self._queue(key)
        first = min(queue[0][0] if queue else 0, 0) - len(group)
        for offset in range(len(group) - 1, -1, -1):
            seq, message = group[offset]
            queue.appendleft((first + offset, seq, message))

    def _waiting(self, key: _QueueKey) -> int:
        queue = self._queues.get(key)
        return len(queue) if queue else 0

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[Enqueued]:
        await checkpoint()
        # Link every accepted item first: should one raise, nothing is written.
        room: dict[_QueueKey, int] = {}
        answered: set[str] = set()
        verdicts: list[CorrelationRefused | bool] = []  # True: accepted, False: queue full
        for item in items:
            if item.answers:
                refused = self._unanswerable(item.answers, answered, item.message.enqueued_at)
                if refused is not None:
                    verdicts.append(refused)
                    continue
            key = (item.message.target_id, item.message.instance_id)
            left = room.get(key, self.limits.max_queue_length - self._waiting(key))
            if left <= 0:
                verdicts.append(False)
                continue
            room[key] = left - 1
            if item.answers:
                answered.add(item.answers)
            verdicts.append(True)
        drafts = [item.audit for item, v in zip(items, verdicts, strict=True) if v is True]
        linked = iter(link_many(self._last_record(), drafts, self._audit_key, self.server_id))
        records: list[Enqueued] = [
            next(linked) if v is True else (None if v is False else v) for v in verdicts
        ]
        for item, record in zip(items, records, strict=True):
            if isinstance(record, AuditRecord):
                self._to_back(item.message)
                if item.correlation is not None:
                    self._put_correlation(item.correlation)
                if item.answers:
                    del self._correlations[item.answers]
                self._audit.append(record)
        return records

    async def route_batch(
        self,
        items: Sequence[EnqueueItem],
        *,
        acked: Callable[[InFlight], AuditDraft] | None = None,
        claims: Sequence[Claim] = (),
        now: float = 0.0,
    ) -> Routed:
        # No checkpoint after enqueue_many's: the acks and claims go with the items, as
        # one change.
        records = await self.enqueue_many(items) if items else []
        taken: list[InFlight] = []
        for item, record in zip(items, records, strict=True):
            if item.acks and isinstance(record, AuditRecord):
                delivery = self._forget(item.acks)
                if delivery is not None:
                    taken.append(delivery)
        written = self._append([acked(d) for d in taken]) if acked is not None else []
        claimed = [
            self._claim(c.agent_id, c.instance_id, c.session_id, c.limit, now) for c in claims
        ]
        return Routed(results=records, acked=taken, ack_records=written, claimed=claimed)

    def _unanswerable(
        self, correlation_id: str, answered: set[str], now: float
    ) -> CorrelationRefused | None:
        record = self._correlations.get(correlation_id)
        if record is None or correlation_id in answered:
            return CorrelationRefused(UNKNOWN_CORRELATION)
        if record.expires_at <= now:
            return CorrelationRefused(CORRELATION_EXPIRED)
        return None

    # -- audit ------------------------------------------------------------------------

    def _last_record(self) -> AuditRecord | None:
        return self._audit[-1] if self._audit else None

    def _append(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        records = link_many(self._last_record(), drafts, self._audit_key, self.server_id)
        self._audit.extend(records)
        return records

    async def append_audit(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        await checkpoint()
        return self._append(drafts)

    async def audit_records(
        self, after_seq: int = 0, limit: int = 1000, *, flushed_only: bool = False
    ) -> list[AuditRecord]:
        await checkpoint()
        # seq n is at index n - 1 - (the anchor's seq): the chain has no gaps.
        start = max(after_seq - self._audit_anchor[0], 0)
        return self._audit[start : start + max(limit, 0)]

    async def trim_audit(self, rule: Retention) -> int:
        await checkpoint()
        if not self._audit:
            return 0
        first = self._audit[0].seq
        cut = trim_cut(first, self._audit[-1].seq, ((r.seq, r.time) for r in self._audit), rule)
        count = cut - first + 1
        if count <= 0:
            return 0
        last = self._audit[count - 1]
        self._audit_anchor = (last.seq, last.hash)
        del self._audit[:count]
        return count

    async def audit_anchor(self) -> tuple[int, str]:
        await checkpoint()
        return self._audit_anchor

    def _promote_due(self, now: float) -> None:
        """Retries due at ``now`` go to the front of their queues, oldest due first."""
        heap = self._delayed.heap
        due: dict[_QueueKey, list[tuple[int, QueuedMessage]]] = {}
        while heap and heap[0][0] <= now:
            _, seq, message = heapq.heappop(heap)
            due.setdefault((message.target_id, message.instance_id), []).append((seq, message))
        for key, group in due.items():  # a retried message is older than what waits
            self._to_front(key, group)

    async def claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        await checkpoint()
        return self._claim(agent_id, instance_id, session_id, limit, now)

    def _claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        self._promote_due(now)
        taken: list[InFlight] = []
        for key in ((agent_id, instance_id), (agent_id, None)):
            queue = self._queues.get(key)
            while queue and len(taken) < limit:
                position, seq, message = queue.popleft()
                if now - message.enqueued_at > self.limits.max_message_age:
                    self._dead.append(
                        DeadLetter(message=message, reason="expired", dead_lettered_at=now)
                    )
                    continue
                delivery = InFlight(
                    delivery_id=new_delivery_id(), session_id=session_id, message=message
                )
                self._in_flight[delivery.delivery_id] = delivery
                self._ranks[delivery.delivery_id] = (position, seq)
                self._by_session.setdefault(session_id, set()).add(delivery.delivery_id)
                taken.append(delivery)
        return taken

    def _forget(self, delivery_id: str) -> InFlight | None:
        delivery = self._in_flight.pop(delivery_id, None)
        if delivery is not None:
            del self._ranks[delivery_id]
            ids = self._by_session.get(delivery.session_id)
            if ids is not None:
                ids.discard(delivery_id)
                if not ids:
                    del self._by_session[delivery.session_id]
        return delivery

    async def ack_many(self, delivery_ids: Sequence[str]) -> list[InFlight | None]:
        await checkpoint()
        return [self._forget(delivery_id) for delivery_id in delivery_ids]

    async def ack_recorded(
        self, delivery_ids: Sequence[str], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[InFlight | None], list[AuditRecord] | None]:
        await checkpoint()
        acked = [self._forget(delivery_id) for delivery_id in delivery_ids]
        return acked, self._append([draft(d) for d in acked if d is not None])

    async def retry(self, delivery_id: str, not_before: float) -> InFlight | None:
        await checkpoint()
        rank = self._ranks.get(delivery_id)  # present while in flight
        delivery = self._forget(delivery_id)
        if delivery is not None:
            assert rank is not None
            message = msgspec.structs.replace(
                delivery.message, attempt=delivery.message.attempt + 1, not_before=not_before
            )
            heapq.heappush(self._delayed.heap, (not_before, rank[1], message))  # keeps its seq
        return delivery

    async def dead_letter(self, delivery_id: str, reason: str, now: float) -> InFlight | None:
        await checkpoint()
        delivery = self._forget(delivery_id)
        if delivery is not None:
            self._dead.append(
                DeadLetter(message=delivery.message, reason=reason, dead_lettered_at=now)
            )
        return delivery

    async def release_session(self, session_id: str, max_attempts: int, now: float) -> int:
        await checkpoint()
        requeued = 0
        back: dict[_QueueKey, list[tuple[int, QueuedMessage]]] = {}
        # In queue order (the order they were taken from each queue), back to the front.
        ranks = self._ranks
        for delivery_id in sorted(self._by_session.get(session_id, ()), key=ranks.__getitem__):
            seq = ranks[delivery_id][1]
            delivery = self._forget(delivery_id)
            assert delivery is not None
            message = delivery.message
            if message.attempt >= max_attempts:
                self._dead.append(
                    DeadLetter(message=message, reason="session_lost", dead_lettered_at=now)
                )
                continue
            message = msgspec.structs.replace(message, attempt=message.attempt + 1)
            back.setdefault((message.target_id, message.instance_id), []).append((seq, message))
            requeued += 1
        for key, group in back.items():
            self._to_front(key, group)
        return requeued

    async def watch(self, wake: Callable[[str, str | None], None], *, task_status: Any) -> None:
        # One process, one server: the router already rings its own sessions.
        task_status.started()
        await trio.sleep_forever()

    async def next_due(self) -> float | None:
        await checkpoint()
        heap = self._delayed.heap
        return heap[0][0] if heap else None

    async def pending_agents(self, now: float) -> set[str]:
        await checkpoint()
        self._promote_due(now)
        return {agent for (agent, _), queue in self._queues.items() if queue}

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        await checkpoint()
        return [d for d in self._dead if agent_id is None or d.message.target_id == agent_id]

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, now: float
    ) -> list[DeadLetter]:
        await checkpoint()
        wanted = None if message_ids is None else set(message_ids)
        replayed = [d for d in self._dead if wanted is None or d.message.message_id in wanted]
        self._dead = [d for d in self._dead if d not in replayed]
        for dead in replayed:
            message = msgspec.structs.replace(
                dead.message, attempt=1, not_before=0.0, enqueued_at=now
            )
            self._to_back(message)
        return replayed

    async def queue_depth(self, agent_id: str) -> int:
        await checkpoint()
        return self._waiting((agent_id, None))

    # -- correlations ---------------------------------------------------------

    def _expire_correlations(self, now: float) -> int:
        """Forget correlations expired more than ``CORRELATION_GRACE`` ago."""
        expiry, swept = self._correlation_expiry, 0
        while expiry and expiry[0][0] + CORRELATION_GRACE <= now:
            _, correlation_id = heapq.heappop(expiry)
            record = self._correlations.get(correlation_id)
            if record is not None and record.expires_at + CORRELATION_GRACE <= now:
                del self._correlations[correlation_id]
                swept += 1
        if len(expiry) > 2 * len(self._correlations) + 64:  # answered ones linger here
            self._correlation_expiry = [(c.expires_at, k) for k, c in self._correlations.items()]
            heapq.heapify(self._correlation_expiry)
        return swept

    def _put_correlation(self, correlation: Correlation) -> None:
        self._correlations[correlation.correlation_id] = correlation
        heapq.heappush(
            self._correlation_expiry, (correlation.expires_at, correlation.correlation_id)
        )

    def _find_correlation(self, correlation_id: str, replier_id: str, now: float) -> Correlation:
        self._expire_correlations(now)
        record = self._correlations.get(correlation_id)
        if record is None:
            raise CorrelationRefused(UNKNOWN_CORRELATION)
        if record.target_id != replier_id:
            raise CorrelationRefused(NOT_THE_TARGET)
        if record.expires_at <= now:
            raise CorrelationRefused(CORRELATION_EXPIRED)
        return record

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        await checkpoint()
        found: list[Correlation | CorrelationRefused] = []
        for correlation_id, replier_id in finds:
            try:
                found.append(self._find_correlation(correlation_id, replier_id, now))
            except CorrelationRefused as refused:
                found.append(refused)
        return found

    async def sweep(self, now: float, reply_max_age: float) -> int:
        await checkpoint()
        swept = self._expire_correlations(now)
        horizon = now - reply_max_age
        for key in [k for k in self._queues if k[1] is not None]:
            queue = self._queues[key]
            kept = deque(w for w in queue if w[2].enqueued_at >= horizon)
            swept += len(queue) - len(kept)
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        return swept

    async def read_state(self, agent_id: str) -> StateSnapshot:
        await checkpoint()
        return StateSnapshot(
            version=self._state_versions.get(agent_id, 0),
            values=dict(self._state.get(agent_id, {})),
        )

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        await checkpoint()
        # No await from the check to the write: atomic with respect to other tasks.
        version = self._state_versions.get(agent_id, 0)
        if expected_version is not None and expected_version != version:
            raise StateVersionConflict(agent_id, expected_version, version)
        if not updates:
            return version
        merged = {**self._state.get(agent_id, {}), **updates}
        size = sum(len(k) + len(v) for k, v in merged.items())
        if size > self.limits.max_state_bytes:
            raise StateTooLargeError(agent_id)
        self._state[agent_id] = merged
        self._state_versions[agent_id] = version + 1
        return version + 1

    async def reset_state(self, agent_id: str) -> int:
        await checkpoint()
        self._state.pop(agent_id, None)
        version = self._state_versions.get(agent_id, 0) + 1
        self._state_versions[agent_id] = version
        return version
