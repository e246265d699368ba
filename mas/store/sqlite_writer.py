"""The SQLite store's writer: one thread owns the connection and commits in groups.

An async caller hands the writer an operation (a plain function of the
connection) and waits for its result. The writer thread takes what is queued,
runs it in ONE transaction, each operation inside its own SAVEPOINT, keeps
taking operations that arrive meanwhile (up to ``max_batch``, for at most
``commit_interval`` seconds), commits once, and then wakes every caller of the
batch with one callback into Trio. A burst of N operations costs about one
fsync and one thread hop; an idle store adds no delay, since a batch is only
what is already waiting. Reads go through the same thread, so they see every
committed write and nothing uncommitted.

Error handling
    An operation that raises is rolled back to its savepoint alone and its
    caller gets the exception (``sqlite3.Error`` becomes ``StoreError``); the
    rest of the batch commits. If the transaction as a whole fails (COMMIT, or
    an error after which SQLite rolled everything back), every caller of the
    batch gets ``StoreError`` and nothing of the batch is kept.

Cancellation
    A caller cancelled while its operation still waits in the queue withdraws
    it: ``Cancelled`` is raised and the operation never runs. Once the writer
    has taken it, the operation commits or fails as a whole, never half; the
    caller waits for that (shielded; it is one batch away), returns its result
    as usual, and the cancellation is delivered at its next checkpoint, as
    with ``trio.to_thread.run_sync``. So a cancelled call either raised
    ``Cancelled`` and changed nothing, or returned.

Bounds
    At most ``max_pending`` operations are outstanding (further callers wait
    for a slot: backpressure). A statement waits at most ``BUSY_TIMEOUT_MS``
    for a lock. Opening and closing wait at most ``shutdown_timeout`` seconds of
    real time (not Trio time: a Trio deadline would fire at once under an
    autojumping ``MockClock``); closing finishes the queued operations first.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import trio

from .sqlite_schema import StoreError, connect, lock_store, release_store

log = logging.getLogger("mas.store.sqlite")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True, slots=True)
class SqliteStoreStatistics:
    """Counters of the writer since the store was opened."""

    operations: int  # operations completed (successfully or not)
    batches: int  # transactions run
    commits: int  # transactions that changed the file (each one durable commit)
    largest_batch: int  # most operations in one transaction
    pending: int  # operations submitted and not yet completed


@dataclass(eq=False, slots=True)
class _Operation:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: trio.Event = field(default_factory=trio.Event)
    taken: bool = False  # the writer has it (guarded by the writer's condition)
    withdrawn: bool = False  # its caller gave up before the writer took it
    result: Any = None
    error: BaseException | None = None


class _TransactionLost(Exception):
    """SQLite rolled back the whole transaction after an operation's error."""


class Writer:
    """The thread that owns a store's connection; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        commit_interval: float,
        max_batch: int,
        max_pending: int,
        shutdown_timeout: float,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be positive")
        self._path = path
        self._commit_interval = commit_interval
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._shutdown_timeout = shutdown_timeout
        self._token = trio.lowlevel.current_trio_token()
        self._slots = trio.Semaphore(max_pending)
        self._thread = threading.Thread(
            target=self._serve, name=f"mas-sqlite-writer {path.name}", daemon=True
        )
        self._ready = threading.Event()  # set by the thread once opening succeeded or failed
        self._open_error: BaseException | None = None
        # Shared with the thread, guarded by _condition:
        self._condition = threading.Condition()
        self._queue: deque[_Operation] = deque()
        self._closing = False
        self._idle = False
        # Statistics, updated in Trio only:
        self._operations = 0
        self._batches = 0
        self._commits = 0
        self._largest_batch = 0

    # -- Trio side -------------------------------------------------------------------

    async def call(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(connection, *args)`` in the writer thread; its transaction is committed."""
        operation = _Operation(fn, args)
        async with self._slots:
            self._submit(operation)
            try:
                await operation.done.wait()
            except trio.Cancelled:
                if self._withdraw(operation):
                    raise
                # Taken: it commits or fails whole within its batch; wait for that.
                with trio.CancelScope(shield=True):
                    await operation.done.wait()
        if operation.error is not None:
            raise operation.error
        result: T = operation.result
        return result

    def statistics(self) -> SqliteStoreStatistics:
        """Counters since opening (read them in Trio)."""
        return SqliteStoreStatistics(
            operations=self._operations,
            batches=self._batches,
            commits=self._commits,
            largest_batch=self._largest_batch,
            pending=self._max_pending - self._slots.value,
        )

    def _submit(self, operation: _Operation) -> None:
        with self._condition:
            if self._closing:
                raise StoreError(f"the SQLite store {self._path} is closed")
            self._queue.append(operation)
            if self._idle:
                self._condition.notify()

    def _withdraw(self, operation: _Operation) -> bool:
        with self._condition:
            if operation.taken:
                return False
            operation.withdrawn = True
            return True

    def _complete(self, batch: list[_Operation], changed: bool) -> None:
        self._operations += len(batch)
        self._batches += 1
        self._commits += changed
        self._largest_batch = max(self._largest_batch, len(batch))
        for operation in batch:
            operation.done.set()

    def _to_trio(self, fn: Callable[[*Ts], object], *args: *Ts) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody is left to wake
            self._token.run_sync_soon(fn, *args)

    async def start(self) -> None:
        """Start the thread; return once the file is open and migrated."""
        self._thread.start()
        # Real-time bounds (a thread hop each, at open and close only): a Trio
        # deadline would fire at once under an autojumping MockClock.
        try:
            ready = await trio.to_thread.run_sync(self._ready.wait, self._shutdown_timeout)
        except BaseException:
            await self.stop()
            raise
        if not ready:
            await self.stop()
            raise StoreError(
                f"opening the SQLite store {self._path} took over {self._shutdown_timeout} s"
            )
        if self._open_error is not None:
            await self.stop()
            raise self._open_error

    async def stop(self) -> None:
        """Refuse new operations, finish the queued ones, close; bounded, not cancellable."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        if not self._thread.is_alive():
            return
        with trio.CancelScope(shield=True):  # bounded by the join's timeout
            await trio.to_thread.run_sync(self._thread.join, self._shutdown_timeout)
        if self._thread.is_alive():
            log.error(
                "the SQLite writer for %s did not stop within %.0f s; abandoning it",
                self._path,
                self._shutdown_timeout,
            )

    # -- writer thread -----------------------------------------------------------------

    def _serve(self) -> None:
        try:
            lock = lock_store(self._path)
            try:
                conn = connect(self._path)
            except Exception:
                release_store(lock)
                raise
        except Exception as exc:  # noqa: BLE001 - start() raises it in the opener's task
            self._open_error = exc
            return
        finally:
            self._ready.set()
        try:
            while operations := self._take(self._max_batch, wait=True):
                self._run_batch(conn, operations)
        finally:
            conn.close()
            release_store(lock)
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Should the loop ever die, fail what is queued instead of leaving callers hanging."""
        with self._condition:
            self._closing = True
            leftovers = [op for op in self._queue if not op.withdrawn]
            self._queue.clear()
        for operation in leftovers:
            operation.error = StoreError(f"the SQLite writer for {self._path} stopped")
        if leftovers:
            self._to_trio(self._complete, leftovers, False)

    def _take(self, limit: int, *, wait: bool) -> list[_Operation]:
        """Up to ``limit`` queued operations; with ``wait``, [] only once closed and empty."""
        taken: list[_Operation] = []
        with self._condition:
            while True:
                while self._queue and len(taken) < limit:
                    operation = self._queue.popleft()
                    if not operation.withdrawn:
                        operation.taken = True
                        taken.append(operation)
                if taken or not wait or self._closing:
                    return taken
                self._idle = True
                self._condition.wait()
                self._idle = False

    def _run_batch(self, conn: sqlite3.Connection, operations: list[_Operation]) -> None:
        batch: list[_Operation] = []
        started = time.monotonic()
        changes = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            while operations:
                batch.extend(operations)
                for operation in operations:
                    self._apply(conn, operation)
                room = self._max_batch - len(batch)
                if room <= 0 or time.monotonic() - started >= self._commit_interval:
                    break
                operations = self._take(room, wait=False)
            conn.execute("COMMIT")
        except Exception as exc:
            log.exception("SQLite store transaction failed; %d operation(s) lost", len(batch))
            for operation in batch:
                operation.result = None
                operation.error = StoreError(f"the SQLite store transaction failed: {exc}")
                operation.error.__cause__ = exc
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            changed = False
        else:
            changed = conn.total_changes != changes
        self._to_trio(self._complete, batch, changed)

    def _apply(self, conn: sqlite3.Connection, operation: _Operation) -> None:
        conn.execute("SAVEPOINT operation")
        try:
            operation.result = operation.fn(conn, *operation.args)
        except Exception as exc:
            if not conn.in_transaction:
                raise _TransactionLost(str(exc)) from exc
            conn.execute("ROLLBACK TO operation")
            if isinstance(exc, sqlite3.Error):
                error: Exception = StoreError(f"SQLite store operation failed: {exc}")
                error.__cause__ = exc
                exc = error
            operation.error = exc
        conn.execute("RELEASE operation")


@asynccontextmanager
async def open_writer(
    path: Path,
    *,
    commit_interval: float,
    max_batch: int,
    max_pending: int,
    shutdown_timeout: float,
) -> AsyncIterator[Writer]:
    """Open ``path`` in a writer thread for the body; close it (bounded) on exit."""
    writer = Writer(
        path,
        commit_interval=commit_interval,
        max_batch=max_batch,
        max_pending=max_pending,
        shutdown_timeout=shutdown_timeout,
    )
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
