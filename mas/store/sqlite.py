"""The embedded durable store: one SQLite file, group commit, flushes off the event loop.

``open_sqlite_store(path, limits)`` opens (creating and migrating) the file and
yields a ``SqliteStore`` that keeps the ``Store`` contract exactly as
``MemoryStore`` does, but on disk: queued messages, in-flight deliveries,
dead letters, correlations and state survive the process. Every operation is
one transaction of the writer (``sqlite_writer``) and returns once committed:
whatever returned survives a killed process. With ``sync="full"`` (the
default) the operations a client is told of (enqueues with their audit
records, state updates, dead letters) also return only once flushed to disk, so
an accepted message survives a power loss too. A power loss can only undo what
was committed since the last flush and told to no one: claims and acks (their
messages are redelivered, at least once) and the audit records of deliveries
and refusals (the chain stays whole; the JSONL file copies only flushed records,
so it never holds a record the store lost).
An enqueue given an audit draft writes the message and its audit record in
the same transaction: neither exists alone. ``enqueue_many`` and ``ack_many``
are one transaction each, whatever the batch's size, and concurrent callers
share one flush.

Restart
    Sessions die with their process, so opening the store returns every
    delivery a previous process left in flight to the front of its queue, as
    ``release_session`` does (the attempt counts; past ``release_max_attempts``
    it is dead-lettered with reason ``session_lost``). Correlations live until
    they expire; state and dead letters stay.

Queue order
    Rows are ordered by (position, id): a new message gets position 0 and the
    next id; a message put back (released, or a retry falling due) gets a
    position below its queue's head, so it goes to the front and messages put
    back together keep their order. See ``sqlite_schema`` for the tables.

One server per file: a lock file (``<path>.lock``) refuses a second process
(``StoreUnusableError``, a ``ConfigError``). Failures of SQLite itself raise
``StoreError``. Cancellation follows ``sqlite_writer``: a cancelled call either
raised ``Cancelled`` and changed nothing, or completed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from ..audit.record import AuditDraft, AuditRecord
from ..audit.retention import Retention
from . import sqlite_ops as ops
from .base import (
    Correlation,
    CorrelationRefused,
    DeadLetter,
    Enqueued,
    EnqueueItem,
    InFlight,
    QueuedMessage,
    StateSnapshot,
    StoreLimits,
    default_server_id,
)
from .sqlite_schema import SCHEMA_VERSION as SCHEMA_VERSION
from .sqlite_schema import StoreError as StoreError
from .sqlite_schema import StoreUnusableError as StoreUnusableError
from .sqlite_writer import SqliteStoreStatistics as SqliteStoreStatistics
from .sqlite_writer import Sync, Writer, open_writer

__all__ = [
    "SCHEMA_VERSION",
    "SqliteStore",
    "SqliteStoreStatistics",
    "StoreError",
    "StoreUnusableError",
    "open_sqlite_store",
]

DEFAULT_FILENAME: Final = "mas.sqlite3"  # the store's file name next to mas.yaml
SHUTDOWN_TIMEOUT: Final = 10.0  # seconds opening or closing may take before giving up


class SqliteStore:
    """A ``Store`` in one SQLite file; get one from ``open_sqlite_store``."""

    def __init__(
        self,
        writer: Writer,
        limits: StoreLimits,
        *,
        audit_key: bytes | None = None,
        server_id: str | None = None,
        durable_seq: int = 0,
        next_due: float | None = None,
    ) -> None:
        self.limits = limits
        # The earliest retry this store scheduled (or found at open): a claim at or after
        # it promotes retries. One server per file, so no other process schedules any.
        self._next_due = next_due
        self._writer = writer
        self._audit_key = audit_key
        self.audit_key = audit_key
        self.server_id = server_id or default_server_id()
        # The audit records not yet flushed: (commit number, highest seq it wrote), in
        # commit order. ``audit_records`` reads up to ``_durable_seq`` only.
        self._unflushed: deque[tuple[int, int]] = deque()
        self._durable_seq = durable_seq

    def _stamp(self, draft: AuditDraft) -> AuditDraft:
        """``draft`` naming this server (a record is linked in the writer thread)."""
        if draft.server_id:
            return draft
        return msgspec.structs.replace(draft, server_id=self.server_id)

    def statistics(self) -> SqliteStoreStatistics:
        """Operations, transactions and durable commits since opening."""
        return self._writer.statistics()

    def _wrote_audit(self, records: Sequence[AuditRecord | str | None]) -> None:
        """Note the audit records a call just committed (they become readable once flushed).

        The commit number read now may be a later call's (others may have committed
        since): that only makes the records wait for a later flush, never an earlier one.
        """
        seqs = [r.seq for r in records if isinstance(r, AuditRecord)]
        if seqs:
            self._unflushed.append((self._writer.commits, max(seqs)))

    def durable_audit_seq(self) -> int:
        """The highest audit seq a power loss cannot take back (as ``sync`` promises)."""
        durable = self._writer.durable_commits
        while self._unflushed and self._unflushed[0][0] <= durable:
            self._durable_seq = max(self._durable_seq, self._unflushed.popleft()[1])
        return self._durable_seq

    # -- queues ------------------------------------------------------------------------

    async def enqueue(
        self, message: QueuedMessage, audit: AuditDraft | None = None
    ) -> AuditRecord | None:
        if message.instance_id == "":
            raise ValueError("an instance id is never empty (None names the shared queue)")
        if audit is not None:
            audit = self._stamp(audit)
        record = await self._writer.call(
            ops.enqueue, message, self.limits.max_queue_length, audit, self._audit_key, durable=True
        )
        self._wrote_audit([record])
        return record

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[Enqueued]:
        if not items:
            return []
        if any(item.message.instance_id == "" for item in items):
            raise ValueError("an instance id is never empty (None names the shared queue)")
        # One transaction for the batch; its flush is shared with concurrent callers.
        stamped = tuple(msgspec.structs.replace(i, audit=self._stamp(i.audit)) for i in items)
        written = await self._writer.call(
            ops.enqueue_many,
            stamped,
            self.limits.max_queue_length,
            self._audit_key,
            durable=True,
        )
        self._wrote_audit(written)
        return [CorrelationRefused(w) if isinstance(w, str) else w for w in written]

    async def enqueue_acking(
        self, items: Sequence[EnqueueItem], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[Enqueued], list[InFlight], list[AuditRecord] | None]:
        if any(item.message.instance_id == "" for item in items):
            raise ValueError("an instance id is never empty (None names the shared queue)")

        def stamped_draft(delivery: InFlight) -> AuditDraft:
            return self._stamp(draft(delivery))

        # One transaction and one flush: the replies, and the acks of what they answer.
        stamped = tuple(msgspec.structs.replace(i, audit=self._stamp(i.audit)) for i in items)
        written, acked, records = await self._writer.call(
            ops.enqueue_acking,
            stamped,
            self.limits.max_queue_length,
            self._audit_key,
            stamped_draft,
            durable=True,
        )
        self._wrote_audit(written)
        self._wrote_audit(records)
        results = [CorrelationRefused(w) if isinstance(w, str) else w for w in written]
        return results, acked, records

    # -- audit -----------------------------------------------------------------------------

    async def append_audit(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        # Not durable: no client waits for these records (a message's own record is
        # written with its enqueue), and the JSONL file copies only flushed records.
        stamped = tuple(self._stamp(draft) for draft in drafts)
        records = await self._writer.call(ops.append_audit, stamped, self._audit_key)
        self._wrote_audit(records)
        return records

    async def audit_records(
        self, after_seq: int = 0, limit: int = 1000, *, flushed_only: bool = False
    ) -> list[AuditRecord]:
        # Durable either way: what this returns may be copied (the JSONL file), so it
        # must never be a record that a power loss could take back from the store.
        if not flushed_only:  # flush what was committed so far, then read it
            return await self._writer.call(ops.audit_records, after_seq, limit, durable=True)
        # Read only what a flush already covers, waiting for none of its own; later
        # records appear once a flush (an accepted message's, or the background one
        # within a second) covers them. Seqs have no gaps, so the count bounds the read.
        # Old records may be cold pages: read in a worker thread (``Writer.read``).
        up_to = self.durable_audit_seq()
        if up_to <= after_seq:
            return []
        return await self._writer.read(ops.audit_records, after_seq, min(limit, up_to - after_seq))

    async def trim_audit(self, rule: Retention) -> int:
        return await self._writer.call(ops.trim_audit, rule)

    async def audit_anchor(self) -> tuple[int, str]:
        return await self._writer.call(ops.audit_anchor)

    async def claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        max_age = self.limits.max_message_age
        if self._next_due is None or now < self._next_due:
            return await self._writer.call(
                ops.claim, agent_id, instance_id, session_id, limit, now, max_age
            )
        # Retries fall due: promoting them reads rows no recent call touched. Read them in
        # a worker thread first, so that the claim on the event loop finds them cached.
        await self._writer.read(ops.warm_promotion, now)
        taken, self._next_due = await self._writer.call(
            ops.claim_promoting, agent_id, instance_id, session_id, limit, now, max_age
        )
        return taken

    async def ack(self, delivery_id: str) -> InFlight | None:
        return await self._writer.call(ops.ack, delivery_id)

    async def ack_many(self, delivery_ids: Sequence[str]) -> list[InFlight | None]:
        if not delivery_ids:
            return []
        return await self._writer.call(ops.ack_many, tuple(delivery_ids))

    async def ack_recorded(
        self, delivery_ids: Sequence[str], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[InFlight | None], list[AuditRecord] | None]:
        # Not durable, like an ack and a delivery's record: a power loss that undoes
        # them redelivers the message, which is then recorded again.
        def stamped(delivery: InFlight) -> AuditDraft:
            return self._stamp(draft(delivery))

        acked, records = await self._writer.call(
            ops.ack_recorded, tuple(delivery_ids), stamped, self._audit_key
        )
        self._wrote_audit(records)
        return acked, records

    async def retry(self, delivery_id: str, not_before: float) -> InFlight | None:
        retried = await self._writer.call(ops.retry, delivery_id, not_before)
        if retried is not None:
            due = self._next_due
            self._next_due = not_before if due is None else min(due, not_before)
        return retried

    async def dead_letter(self, delivery_id: str, reason: str, now: float) -> InFlight | None:
        return await self._writer.call(ops.dead_letter, delivery_id, reason, now, durable=True)

    async def release_session(self, session_id: str, max_attempts: int, now: float) -> int:
        return await self._writer.call(ops.release, session_id, max_attempts, now)

    async def watch(self, wake: Callable[[str, str | None], None], *, task_status: Any) -> None:
        # One server per file: the router already rings its own sessions.
        task_status.started()
        await trio.sleep_forever()

    async def next_due(self) -> float | None:
        return await self._writer.call(ops.next_due)

    async def pending_agents(self, now: float) -> set[str]:
        return await self._writer.call(ops.pending_agents, now)

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        return await self._writer.call(ops.dead_letters, agent_id)

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, now: float
    ) -> list[DeadLetter]:
        ids = None if message_ids is None else tuple(message_ids)
        return await self._writer.call(ops.replay_dead_letters, ids, now, durable=True)

    async def queue_depth(self, agent_id: str) -> int:
        return await self._writer.call(ops.queue_depth, agent_id)

    # -- correlations --------------------------------------------------------------------

    async def put_correlation(self, correlation: Correlation) -> None:
        await self._writer.call(ops.put_correlation, correlation, durable=True)

    async def take_correlation(
        self, correlation_id: str, replier_id: str, now: float
    ) -> Correlation:
        taken = await self._writer.call(ops.take_correlation, correlation_id, replier_id, now)
        if isinstance(taken, str):
            raise CorrelationRefused(taken)
        return taken

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        if not finds:
            return []
        found = await self._writer.call(ops.find_correlations, tuple(finds), now)
        return [CorrelationRefused(f) if isinstance(f, str) else f for f in found]

    async def sweep(self, now: float, reply_max_age: float) -> int:
        return await self._writer.call(ops.sweep, now, reply_max_age)

    # -- state -----------------------------------------------------------------------------

    async def get_state(self, agent_id: str) -> dict[str, str]:
        return await self._writer.call(ops.get_state, agent_id)

    async def read_state(self, agent_id: str) -> StateSnapshot:
        # Durable: a version handed out is one a power loss cannot take back.
        return await self._writer.call(ops.read_state, agent_id, durable=True)

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        return await self._writer.call(
            ops.update_state,
            agent_id,
            dict(updates),
            self.limits.max_state_bytes,
            expected_version,
            durable=True,
        )

    async def reset_state(self, agent_id: str) -> int:
        return await self._writer.call(ops.reset_state, agent_id, durable=True)


@asynccontextmanager
async def open_sqlite_store(
    path: Path,
    limits: StoreLimits,
    *,
    audit_key: bytes | None = None,
    release_max_attempts: int | None = None,
    sync: Sync = "full",
    shutdown_timeout: float = SHUTDOWN_TIMEOUT,
) -> AsyncIterator[SqliteStore]:
    """Open the store in ``path`` (created if missing) for the body of the ``async with``.

    ``audit_key`` keys the audit chain's hashes (HMAC-SHA256; None: plain SHA-256).
    Deliveries left in flight by a previous process are released first (see the
    module docstring); pass the router's ``max_attempts`` as
    ``release_max_attempts`` to dead-letter those past it (None: requeue all).
    ``sync`` is ``"full"`` (an accepted write is flushed to disk before it
    returns) or ``"normal"`` (it survives a killed process; a power loss may undo
    about the last second); see ``sqlite_writer``. On
    exit the calls under way finish and the file is closed, within
    ``shutdown_timeout``.

    Raises ``StoreUnusableError`` if the file is from a newer mas, is not a mas
    store, or is in use by another process.
    """
    async with open_writer(path, sync=sync, shutdown_timeout=shutdown_timeout) as writer:
        # The only clock reading of the store: no caller can pass `now` to a restart.
        # What a previous process left in flight may be anywhere in a large file: read
        # it in a worker thread first, so that the release on the event loop finds it cached.
        await writer.read(ops.in_flight_rows)
        await writer.call(ops.release, None, release_max_attempts, time.time())
        # Durable: the records a previous process left are copied to the JSONL file.
        newest = await writer.call(ops.audit_newest_seq, durable=True)
        due = await writer.call(ops.next_due)
        yield SqliteStore(writer, limits, audit_key=audit_key, durable_seq=newest, next_due=due)
