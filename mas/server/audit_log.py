"""The server's audit path: decisions into the store's chain, the chain into the JSONL file.

::

    AuditLog.run
    ├── writer     bounded channel of drafts (denials, delivery outcomes) -> store.append_audit
    │              in batches (routed messages write their record with the enqueue instead)
    ├── follower   copies the store's chain, in seq order, into the JSONL sink (if configured),
    │              at most every FILE_INTERVAL seconds, so the file trails the store by that much
    └── retention  trims the oldest records of the store's chain (``gateway.audit.retention``),
                   never ones the file has not copied yet

The file is an exact copy of the store's chain, so ``mas audit verify FILE``
checks the same hashes as the store (and with several servers sharing a store,
each server's file holds the records of all of them, as they appear).

Error handling: both loops wait out a store outage or a full disk
(``resilience.persist``): the writer keeps its batch (and its bounded queue
slows producers down) until the store takes it; the follower pauses the copy,
says so once, and catches up when it can write again.

Refusals cost the refused, not the trail (``mas.audit.refusals``): every draft's
client-chosen strings are bounded before it is queued, and repeated refusals of one
(identity, decision, reason) within ``refusal_interval`` seconds become one record with
their count; the writer writes those summaries when their window ends.

Every decision is also counted in ``metrics`` (``mas.server.metrics``), when given.
``AuditLog`` also keeps per-decision counters (every refusal counted, coalesced or not)
and latency histograms for ``statistics()``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ..audit.record import AuditDraft, AuditRecord
from ..audit.refusals import RefusalCoalescer, bound_fields
from ..audit.retention import Retention
from ..audit.sink import JsonlSink
from ..config import AuditConfig
from ..store import Store
from ..telemetry import Telemetry
from .metrics import ServerMetrics
from .resilience import Outage, persist

log = logging.getLogger("mas.audit")

QUEUE_SIZE: Final = 4096  # drafts waiting for the writer; a full queue slows senders down
BATCH: Final = 512  # records per store append or file write
# The file follows the store at most this often (seconds): each file write costs two fsyncs
# (records, head), so writing every small batch at once would cost more than the routing.
FILE_INTERVAL: Final = 0.05
_FLUSH_TIMEOUT: Final = 5.0  # seconds to flush pending drafts on shutdown
LATENCY_BUCKETS_MS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, math.inf)


class AuditLog:
    """Writes audit drafts to the store and follows the chain into the JSONL file."""

    def __init__(
        self,
        store: Store,
        config: AuditConfig,
        telemetry: Telemetry | None = None,
        *,
        refusal_interval: float = 60.0,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._coalescer = RefusalCoalescer(refusal_interval)
        self._waiting: trio.CancelScope | None = None  # the writer's wait for drafts
        self._appending = trio.Lock()  # held while a batch is written (writer or flush)
        self._unwritten = 0  # drafts queued (or handed to the writer) and not yet written
        self._batch_written = trio.Event()
        self._config = config
        self._telemetry = telemetry
        self._send, self._receive = trio.open_memory_channel[AuditDraft](QUEUE_SIZE)
        self._committed = trio.Event()
        self.counts: Counter[str] = Counter()
        self._latency: dict[str, list[int]] = {}
        self._head = 0  # highest seq this server committed
        self.file_seq = 0  # highest seq copied into the file
        self._file_advanced = trio.Event()
        self._following = False
        self._store_outage = Outage("audit writer (store)", log)
        self._file_outage = Outage("audit file copy", log)

    # -- producers --------------------------------------------------------------------

    async def record(self, draft: AuditDraft) -> None:
        """Queue a decision that is not written with a message (waits while the queue is full).

        Its client-chosen fields are bounded; a repeated refusal may only be counted.
        """
        await self.record_many((draft,))

    async def record_many(self, drafts: Sequence[AuditDraft]) -> None:
        """Queue several decisions; waits only while the queue is full."""
        now = trio.current_time()
        for draft in drafts:
            self._observe(draft)
            admitted_drafts = self._coalescer.admit(bound_fields(draft), now)
            if not admitted_drafts and self._waiting is not None:
                # A repeat was counted: the writer must wake when its window ends.
                due = self._coalescer.next_deadline()
                if due is not None:
                    self._waiting.deadline = min(self._waiting.deadline, due)
            for admitted in admitted_drafts:
                try:
                    self._send.send_nowait(admitted)
                except trio.WouldBlock:
                    await self._send.send(admitted)
                self._unwritten += 1

    def committed(self, record: AuditRecord) -> None:
        """A record the store wrote together with a routed message."""
        self._observe(record)
        if self._metrics is not None:
            self._metrics.audit_records += 1
        self._head = max(self._head, record.seq)
        self._committed.set()

    def _observe(self, draft: AuditDraft) -> None:
        if self._metrics is not None:
            self._metrics.observe(draft)
        if self._telemetry is not None:
            self._telemetry.record(draft)
        self.counts[draft.decision] += 1
        buckets = self._latency.setdefault(draft.decision, [0] * len(LATENCY_BUCKETS_MS))
        for index, bound in enumerate(LATENCY_BUCKETS_MS):
            if draft.latency_ms <= bound:
                buckets[index] += 1
                break

    def statistics(self) -> dict[str, Any]:
        """Decisions so far, and per decision a latency histogram (bucket bound in ms -> n)."""
        return {
            "decisions": dict(self.counts),
            "latency_ms": {
                decision: {
                    ("inf" if math.isinf(b) else str(b)): n
                    for b, n in zip(LATENCY_BUCKETS_MS, counts, strict=True)
                    if n
                }
                for decision, counts in self._latency.items()
            },
        }

    # -- tasks ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write drafts and follow the chain until cancelled; flushes what is queued first."""
        sink = self._open_sink()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_drafts)
                if sink is not None:
                    nursery.start_soon(self._follow, sink)
                retention = self._config.retention
                if retention.max_records is not None or retention.max_age is not None:
                    nursery.start_soon(self._retain)
                task_status.started()
        finally:
            if sink is not None:
                sink.close()
            if self._telemetry is not None:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + _FLUSH_TIMEOUT
                    await trio.to_thread.run_sync(self._telemetry.shutdown, abandon_on_cancel=True)

    async def flush(self) -> None:
        """Write every queued draft, and let the file catch up (bounded); used on shutdown."""
        with trio.move_on_after(_FLUSH_TIMEOUT):
            # The writer may be writing a batch: after it, in order, go the rest.
            async with self._appending:
                summaries = self._coalescer.close_all()
                batch = list(summaries)
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if batch:
                    await self._append(batch)
                    self._unwritten -= len(batch) - len(summaries)
            # Drafts already handed to the writer are written by it.
            while self._unwritten > 0:
                self._batch_written = trio.Event()
                await self._batch_written.wait()
            if self._following:
                await self.wait_for_file(self._head)

    async def wait_for_file(self, seq: int) -> None:
        """Return once the file holds every record up to ``seq``."""
        while self.file_seq < seq:
            await self._file_advanced.wait()
            self._file_advanced = trio.Event()

    async def _append(self, batch: list[AuditDraft]) -> None:
        records = await self._store.append_audit(batch)
        if self._metrics is not None:
            self._metrics.audit_records += len(records)
        if records:
            self._head = max(self._head, records[-1].seq)
        self._committed.set()

    async def _write_drafts(self) -> None:
        while True:
            due = self._coalescer.next_deadline()
            batch: list[AuditDraft] = []
            with trio.move_on_at(math.inf if due is None else due) as self._waiting:
                batch.append(await self._receive.receive())
            self._waiting = None
            # No checkpoint since the receive: a flush that holds the lock now began after
            # this draft was taken, and took only later ones (the chain keeps their order).
            if self._appending.locked():
                await self._appending.acquire()
            else:
                self._appending.acquire_nowait()
            try:
                while len(batch) < BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                received = len(batch)
                batch.extend(self._coalescer.due(trio.current_time()))
                if batch:
                    await persist(self._store_outage, functools.partial(self._append, batch))
                self._unwritten -= received
                self._batch_written.set()
            finally:
                self._appending.release()

    def _open_sink(self) -> JsonlSink | None:
        path = self._config.file_path
        if path is None:
            return None
        return JsonlSink(
            path, self._config.max_bytes, self._config.backup_count, key=self._store.audit_key
        )

    async def _follow(self, sink: JsonlSink) -> None:
        self._following = True
        written = await persist(self._file_outage, functools.partial(self._resume_point, sink))
        read = self._store.audit_records
        while True:
            while records := await persist(
                self._file_outage,
                functools.partial(read, after_seq=written, limit=BATCH, flushed_only=True),
            ):
                write = functools.partial(trio.to_thread.run_sync, sink.write, records)
                await persist(self._file_outage, write)
                written = self.file_seq = records[-1].seq
                self._file_advanced.set()
                if len(records) < BATCH:
                    break
            if written >= self._head:
                await self._committed.wait()
            # else: records this server committed are not readable yet (a store gives only
            # those a power loss cannot take back; SQLite's flush follows within a second):
            # look again after the pause.
            self._committed = trio.Event()
            await trio.sleep(FILE_INTERVAL)  # let records gather into one write

    async def _resume_point(self, sink: JsonlSink) -> int:
        """The seq after which the file continues the store's chain.

        A file that does not continue this store's chain (for example the memory
        store started a new chain) is moved aside, never appended to or deleted.
        """
        last = await trio.to_thread.run_sync(sink.last_record)
        if last is None:
            return 0
        same = await self._store.audit_records(after_seq=last.seq - 1, limit=1)
        if same and same[0].hash == last.hash:
            return last.seq
        aside = Path(f"{sink.path}.superseded-{int(time.time())}")
        log.warning(
            "audit file %s holds a different chain than the store (its last record is seq %d); "
            "moved it to %s and starting a new file",
            sink.path,
            last.seq,
            aside,
        )
        await trio.to_thread.run_sync(_move_aside, Path(sink.path), aside)
        return 0

    async def _retain(self) -> None:
        """Trim the store's chain as ``gateway.audit.retention`` says, every ``interval``."""
        config = self._config.retention
        outage = Outage("audit retention (store)", log)
        while True:
            rule = Retention(
                keep=config.max_records,
                before=None if config.max_age is None else time.time() - config.max_age,
                # Records the file has not copied yet stay in the store until it has.
                up_to_seq=self.file_seq if self._following else None,
            )
            trim = functools.partial(self._store.trim_audit, rule)
            while await persist(outage, trim) >= rule.limit:
                pass  # a long backlog goes in bounded steps, each its own transaction
            await trio.sleep(config.interval)


def _move_aside(path: Path, aside: Path) -> None:
    for file in sorted(path.parent.glob(path.name + "*")):
        if ".superseded-" in file.name:
            continue
        os.replace(file, aside.with_name(aside.name + file.name[len(path.name) :]))
