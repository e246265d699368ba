"""The SQLite store's writer: the connection lives on the event loop, flushes are grouped.

Each call runs its operation (a plain function of the connection) on the Trio
thread, in a transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so each is atomic:
one that raises changes nothing. Calls made in the same scheduler pass share one
transaction (see "Shared transactions"). Reads go the same way and see every
committed write.

Why not a worker thread
    A hand-off to a thread and back costs about 90 µs of CPU on our machines
    (futex wake-ups, the GIL, Trio's wake-up socket), while a small SQLite
    transaction costs about 17 µs without fsync. A request/reply makes nine store
    calls in sequence, so the hops were half of the server's CPU per request. What
    must not run on the event loop is the waiting on the disk, so only that
    leaves it:

    - ``sync="full"`` (the default): a durable call (``call(..., durable=True)``:
      the operations a client is told of, such as an accepted message) returns
      only once the WAL is flushed with ``fdatasync`` past its commit, in the
      writer's flush thread (one for the store's lifetime, ``_Flusher``), so it
      survives a power loss, as with SQLite's ``synchronous=FULL`` but without
      stopping the event loop; or, when no other task is ready to run and the
      disk has been quick, on the event loop itself (see "Inline flushes"). This
      is the group commit: one flush
      covers every commit made before it started, and the calls that commit
      while a flush is under way share the next one. The WAL is written in
      commit order, so a flush also covers the claims and acks committed before
      it; those that no flush covered yet may be undone by a power loss, which
      only redelivers their messages.
    - ``sync="normal"``: every call returns after COMMIT. A killed server still
      loses nothing (the WAL is in the operating system's page cache); a power
      loss may undo about the last second of commits.

    In both modes a background task flushes the WAL within ``FLUSH_INTERVAL``
    of any commit that no call flushed (as Redis's ``appendfsync everysec``).

    Checkpoints (copying the WAL into the database file, with their fsyncs) run
    in a worker thread after every ``checkpoint_every`` commits, never on the
    event loop (``wal_autocheckpoint`` is off); calls wait meanwhile, a few ms.

Inline flushes
    The flush thread's two wake-ups (the loop wakes the thread, the thread wakes
    the loop) cost more than the fdatasync itself: measured with
    ``benchmarks.store_cycle``, a request/reply's store work took 2.55 ms of CPU
    and 4.1 ms of wall time with both flushes in the thread, 1.53 ms and 2.5 ms
    with them on the loop. A flush gains from the thread only when the loop has
    other work meanwhile. So a flush runs on the event loop when no other task is
    ready to run (``tasks_runnable`` is 0: a lone sender, one message at a time)
    and, in the last ``INLINE_BACKOFF`` seconds, no inline flush took longer than
    ``INLINE_FLUSH_MAX`` nor did their running mean exceed ``INLINE_FLUSH_MEAN_MAX``;
    otherwise in the thread, where the commits made meanwhile share the next
    flush. A disk that turns slow thus stops the loop for one flush at most before
    the thread takes over again for a while.

Shared transactions
    A transaction's fixed cost (``BEGIN IMMEDIATE`` and ``COMMIT`` with their locks,
    the WAL pages a commit writes, which neighbouring rows share) was a quarter of
    the store's time on the loop when eight senders each had a message in flight.
    So a call made while other tasks are ready to run (the sessions whose frames
    arrived together) waits one scheduler pass first, and the calls those tasks
    make meanwhile join its transaction, up to ``MAX_CALLS_PER_TRANSACTION`` (the
    next one starts another); the operations of one transaction run in the order
    their calls were made, each seeing the ones before. With no other task ready
    (one sender, one message at a time) a call runs at once, as before. If one
    operation of a shared transaction raises, or its commit fails, the whole is
    rolled back and each runs again in a transaction of its own, so each gets the
    outcome it would have had alone. The durable ones share the flush that
    follows, made on the loop before the others are woken when nothing else is
    ready to run.

Reads that may touch cold pages
    A transaction on the event loop that misses the page cache waits for the disk
    with every connection and timer stopped. Reads that may touch pages no recent
    call did (the audit follower's reads of old records, the rows a claim promotes
    from the retry schedule, the in-flight rows released at start) go to ``read``:
    a second, read-only connection used by one worker thread at a time (a
    ``trio.CapacityLimiter`` of one), which sees every committed write (WAL). A
    write that follows such a read then finds its pages in the operating system's
    cache.

Error handling
    An operation that raises is rolled back and its caller gets the exception
    (``sqlite3.Error`` becomes ``StoreError``). A failed COMMIT raises
    ``StoreError``. A failed flush breaks the store: after a failed fsync the
    kernel may have dropped the pages it could not write, so no later flush
    can vouch for them; every call raises ``StoreError`` from then on, saying
    to restart the server.

Cancellation
    A caller cancelled before its operation ran gets ``Cancelled`` and changed
    nothing. Once the operation ran, the caller waits for its flush (shielded:
    one flush away) and returns its result as usual; the cancellation is
    delivered at its next checkpoint. So a cancelled call either raised
    ``Cancelled`` and changed nothing, or returned. A call that joined another's
    transaction waits for it shielded (one pass, plus a checkpoint or another
    process's lock, bounded as below), and the first call of a shared transaction
    is not cancelled once others wait for it: neither is left half done.

Bounds
    A statement waits at most ``LOOP_BUSY_TIMEOUT_MS`` for a lock another process
    holds (the file lock makes this process the file's only mas writer, but an
    operator's sqlite3 shell or a backup may hold one): then the call sleeps and
    tries again, so every other connection and timer keeps running, and gives up
    with ``StoreError`` after ``LOCK_WAIT`` seconds. An operation runs on the event
    loop, so operations are small by construction (a batch, a claim of at most
    a prefetch); the large ones (listing or replaying dead letters) belong to
    the command line, not to a serving server. Opening waits at most
    ``shutdown_timeout`` seconds (real time). Closing waits for the calls under
    way, each at most one flush away: what waits on the disk itself (a flush,
    a checkpoint, the final checkpoint) takes as long as the disk does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, TypeVarTuple

import outcome
import trio

from ..._sched import others_ready
from .schema import StoreError, connect, lock_store, release_store

log = logging.getLogger("mas.store.sqlite")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# fdatasync where the platform has it (Linux); fsync elsewhere (macOS).
_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

Sync = Literal["full", "normal"]
CHECKPOINT_EVERY: Final = 128  # commits between two checkpoints (a commit adds a few pages)
# A statement on the event loop waits this long for another process's lock (an operator's
# sqlite3 shell, a backup tool) before giving the loop back; the call then sleeps and
# tries again, for LOCK_WAIT in all, and fails with StoreError (UNAVAILABLE) after that.
LOOP_BUSY_TIMEOUT_MS: Final = 2
LOCK_WAIT: Final = 5.0  # seconds
LOCK_RETRY_MAX: Final = 0.05  # seconds, the longest sleep between two tries
FLUSH_INTERVAL: Final = 1.0  # seconds from a commit to the latest flush that covers it
# Inline flushes (see the module docstring): one that takes longer than INLINE_FLUSH_MAX,
# or a running mean of them over INLINE_FLUSH_MEAN_MAX, sends every flush to the thread
# for INLINE_BACKOFF seconds. The maximum leaves room for a healthy disk's tail (a
# virtual machine's fdatasync of about 0.9 ms took 5 ms now and then).
INLINE_FLUSH_MAX: Final = 0.02  # seconds
INLINE_FLUSH_MEAN_MAX: Final = 0.002  # seconds
INLINE_BACKOFF: Final = 10.0  # seconds

# Calls that share one transaction at most (see "Shared transactions"): bounds the time one
# transaction holds the event loop; a call past it runs in a transaction of its own.
MAX_CALLS_PER_TRANSACTION: Final = 32

_LOCKED_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


class _LockedError(Exception):
    """Another process holds the database lock: try again shortly (see ``SqliteWriter.call``)."""


@dataclass(frozen=True, slots=True)
class SqliteStoreStatistics:
    """Counters of the writer since the store was opened."""

    operations: int  # operations completed (successfully or not)
    transactions: int  # transactions begun; operations made together share one
    commits: int  # transactions that changed the file
    flushes: int  # fdatasync calls of the WAL; each covers every commit made before it
    inline_flushes: int  # of those, made on the event loop (nothing else was ready to run)
    largest_flush: int  # most commits one flush made durable
    pending: int  # operations that ran and wait for their flush
    checkpoints: int  # WAL checkpoints run


@dataclass(eq=False, slots=True)
class _Call:
    """One ``SqliteWriter.call``: its operation, and what became of it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    durable: bool
    outcome: outcome.Outcome[Any] | None = None
    flush_to: int = 0  # the commit its caller waits to be flushed (0: none)
    ran: trio.Event | None = None  # set once it ran, for a call that joined another's

    def value(self) -> Any:
        """What its operation returned; raises what it raised."""
        assert self.outcome is not None, "it has not run"
        return self.outcome.unwrap()


class _LockWait:
    """The pauses of a call while another process holds the database's lock."""

    __slots__ = ("_path", "_pause", "_waited")

    def __init__(self, path: Path) -> None:
        self._path = path
        self._waited, self._pause = 0.0, 0.001

    async def pause(self, exc: _LockedError) -> None:
        """Sleep before the next try (the loop is free meanwhile); past ``LOCK_WAIT``,
        raise ``StoreError``."""
        if self._waited >= LOCK_WAIT:
            raise StoreError(
                f"the SQLite store {self._path} has been locked by another process "
                f"for over {LOCK_WAIT:g} s (an sqlite3 shell or a backup holding a "
                f"write lock?): {exc.__cause__}"
            ) from exc
        await trio.sleep(self._pause)
        self._waited += self._pause
        self._pause = min(self._pause * 2, LOCK_RETRY_MAX)


def _run_each(conn: sqlite3.Connection, calls: list[_Call]) -> list[Any]:
    """The calls' operations in order, in the transaction under way."""
    return [call.fn(conn, *call.args) for call in calls]


class _Opening:
    """Opening a store file in a thread of its own, which its opener may give up on."""

    def __init__(self, open_file: Callable[[], tuple[sqlite3.Connection, int | None, int]]) -> None:
        self.opened: tuple[sqlite3.Connection, int | None, int] | None = None
        self.error: BaseException | None = None
        self._open_file = open_file
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False
        threading.Thread(target=self._run, name="mas-sqlite-open", daemon=True).start()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def abandon(self) -> None:
        """The opener gave up: close the file now, or once the thread opened it."""
        with self._lock:
            self._abandoned = True
            opened, self.opened = self.opened, None
        if opened is not None:
            _close_opened(opened)

    def _run(self) -> None:
        try:
            opened = self._open_file()
        except BaseException as exc:  # noqa: BLE001 - handed to the opener
            self.error = exc
        else:
            with self._lock:
                abandoned = self._abandoned
                if not abandoned:
                    self.opened = opened
            if abandoned:
                _close_opened(opened)
        finally:
            self._done.set()


def _close_opened(opened: tuple[sqlite3.Connection, int | None, int]) -> None:
    conn, lock, wal_fd = opened
    conn.close()
    os.close(wal_fd)
    release_store(lock)


class _Flusher:
    """One thread, for the store's lifetime, that flushes the WAL when asked.

    ``trio.to_thread.run_sync`` costs a thread-cache hand-off, a capacity limiter and
    a wake-up task per call; this thread waits on a lock and answers with one
    ``run_sync_soon``, about 50 µs of CPU less per flush (two per request/reply).
    One flush at a time (``SqliteWriter._flush`` sees to it); not cancellable, like
    ``to_thread.run_sync``: a flush is bounded by the disk.
    """

    def __init__(self, fdatasync: Callable[[], None], name: str) -> None:
        self._fdatasync = fdatasync
        self._token = trio.lowlevel.current_trio_token()
        self._asked = threading.Lock()  # released once per flush asked (or to stop)
        self._asked.acquire()
        self._waiter: trio.lowlevel.Task | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def flush(self) -> None:
        """Run ``fdatasync`` in the thread; raise what it raised."""
        assert self._waiter is None, "one flush at a time"
        self._waiter = trio.lowlevel.current_task()
        self._asked.release()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)

    def stop(self) -> None:
        """End the thread (no flush may be under way)."""
        self._waiter = None
        self._asked.release()

    def _run(self) -> None:
        while True:
            self._asked.acquire()
            waiter = self._waiter
            if waiter is None:
                return
            result = outcome.capture(self._fdatasync)
            self._waiter = None  # before the wake-up: the waiter may ask again at once
            try:
                self._token.run_sync_soon(trio.lowlevel.reschedule, waiter, result)
            except trio.RunFinishedError:  # the event loop is gone: nobody waits
                return


class SqliteWriter:
    """Owns a store's connection on the event loop; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        sync: Sync = "full",
        checkpoint_every: int = CHECKPOINT_EVERY,
        shutdown_timeout: float,
    ) -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', not {sync!r}")
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be positive")
        self._path = path
        self._sync = sync
        self._checkpoint_every = checkpoint_every
        self._shutdown_timeout = shutdown_timeout
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None  # read-only, used in a worker thread
        self._read_limiter = trio.CapacityLimiter(1)  # one thread at a time on the reader
        self._lock: int | None = None
        self._wal_fd: int | None = None
        self._flusher: _Flusher | None = None  # the thread that flushes the WAL
        self._closing = False
        self._drained = trio.Event()  # set whenever no call waits for a flush
        # Flushes: commits are numbered; `_flushed` is the highest one on disk.
        self._committed = 0
        self._flushed = 0
        self._flushing = False
        self._flush_done = trio.Event()
        self._broken: str | None = None  # why a flush failed: the store is unusable since
        # Checkpoints, in a worker thread.
        self._checkpoint_due = trio.Event()
        self._since_checkpoint = 0
        self._dirty = trio.Event()  # a commit since the background flusher last looked
        self._checkpointing: trio.Event | None = None  # set while a checkpoint runs
        self._gathering: list[_Call] | None = None  # calls waiting one pass for company
        # Statistics:
        self._operations = 0
        self._transactions = 0
        self._flushes = 0
        self._inline_flushes = 0
        self._inline_after = 0.0  # Trio time before which flushes stay in the thread
        self._inline_mean = 0.0  # running mean of inline flush times, seconds
        self._largest_flush = 0
        self._pending = 0
        self._checkpoints = 0
        # Told of each transaction's end, on the event loop, before any other transaction
        # runs: ``on_commit`` after its COMMIT, ``on_rollback`` after it was rolled back
        # (the store keeps the audit chain's head in memory with them).
        self.on_commit: Callable[[], None] | None = None
        self.on_rollback: Callable[[], None] | None = None

    # -- calls -------------------------------------------------------------------------

    async def call(
        self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, durable: bool = False
    ) -> T:
        """Run ``fn(connection, *args)`` in a transaction; return once it is committed.

        ``durable``: with ``sync="full"``, also wait until the WAL is flushed up to
        this commit (or, for a read, up to the last commit it saw). Operations whose
        effect a client is told of (an accepted message, a state update) or that is
        copied elsewhere (the audit records read for the JSONL file) are durable; the
        others (claims, acks, taking a correlation, appending delivery records) may
        be undone by a power loss, which only redelivers a message.

        Calls made while other tasks are ready to run share one transaction (see
        "Shared transactions" in the module docstring); each still sees the effects of
        the calls before it, and one that raises changes nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._operations += 1
        if self._gathering is not None or others_ready():
            return await self._call_shared(_Call(fn, args, durable))  # type: ignore[no-any-return]
        # Alone (no other task is ready to run): at once, in a transaction of its own.
        while self._checkpointing is not None:  # the connection is a worker thread's
            await self._checkpointing.wait()
        flushes = durable and self._sync == "full"
        locked = _LockWait(self._path)
        while True:
            try:
                result = self._transaction(self._connection(), fn, args, flushes=flushes)
                break
            except _LockedError as exc:
                await locked.pause(exc)
        return await self._flushed_result(result, self._committed if flushes else 0)

    async def _call_shared(self, op: _Call) -> Any:
        """``call`` with company: join the transaction gathering, or gather one."""
        gathering = self._gathering
        if gathering is not None and len(gathering) < MAX_CALLS_PER_TRANSACTION:
            op.ran = trio.Event()
            gathering.append(op)
            # Shielded: it runs in the first call's transaction (bounded: see "Cancellation").
            with trio.CancelScope(shield=True):
                await op.ran.wait()
            return await self._flushed_result(op.value(), op.flush_to, checkpointed=True)
        # Let the tasks that are ready run first: the calls they make join this one.
        calls = self._gathering = [op]  # past a full one, the next (the full one still runs)
        try:
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            if self._gathering is calls:
                self._gathering = None
        if len(calls) == 1:
            # Nobody came: flushed in the thread, as before (the loop has other work).
            await self._run(calls)  # cancellable until its transaction begins
            return await self._flushed_result(op.value(), op.flush_to, True, inline=False)
        try:
            with trio.CancelScope(shield=True):  # the others wait for this task
                await self._run(calls)
            # Before the others are woken: with nothing else ready, on the loop.
            if any(call.flush_to > self._flushed for call in calls):
                self._try_flush_inline()
        finally:
            for other in calls[1:]:
                if other.outcome is None:  # only if this task was interrupted
                    other.outcome = outcome.Error(
                        StoreError("the SQLite store's transaction was interrupted")
                    )
                assert other.ran is not None
                other.ran.set()
        return await self._flushed_result(op.value(), op.flush_to, checkpointed=True)

    async def _run(self, calls: list[_Call]) -> None:
        """Run ``calls`` in one transaction, giving each its outcome (``_Call.outcome``).

        If one raises or the commit fails, the transaction is rolled back and each call
        runs again in a transaction of its own, so each gets the outcome it would have
        had alone (a version conflict, a full disk) and the others are not lost.
        """
        while self._checkpointing is not None:  # the connection is a worker thread's
            await self._checkpointing.wait()
        units = deque([calls])
        locked = _LockWait(self._path)
        while units:
            unit = units[0]
            flushes = self._sync == "full" and any(c.durable for c in unit)
            try:
                values = self._transaction(self._connection(), _run_each, (unit,), flushes=flushes)
            except _LockedError as exc:
                try:
                    await locked.pause(exc)
                except StoreError as error:
                    for call in (call for unit in units for call in unit):
                        call.outcome = outcome.Error(error)
                    return
                continue
            except Exception as exc:  # noqa: BLE001 - the call's outcome, raised by its caller
                units.popleft()
                if len(unit) > 1:
                    units.extendleft([call] for call in reversed(unit))
                else:
                    unit[0].outcome = outcome.Error(exc)
                continue
            units.popleft()
            committed = self._committed
            for call, value in zip(unit, values, strict=True):
                call.outcome = outcome.Value(value)
                if call.durable and self._sync == "full":
                    call.flush_to = committed

    async def _flushed_result(
        self, value: T, flush_to: int, checkpointed: bool = False, *, inline: bool = True
    ) -> T:
        """``value``, once commit ``flush_to`` is flushed (0: none to wait for); ``inline``:
        on the loop if nothing else is ready to run (see "Inline flushes")."""
        if self._flushed >= flush_to:
            if not checkpointed:
                await trio.lowlevel.cancel_shielded_checkpoint()  # a call's one pass
            return value
        self._pending += 1
        try:
            with trio.CancelScope(shield=True):  # it is committed: wait for it to be durable
                await self._flush(flush_to, inline=inline)
        finally:
            self._pending -= 1
            if not self._pending:
                self._drained.set()
        if self._flushed < flush_to:
            raise self._broken_error()
        return value

    async def read(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """Run ``fn(reader, *args)`` in a worker thread, in a read transaction of its own.

        ``reader`` is a read-only connection to the same file: ``fn`` sees every commit
        made before it began, and may take as long as the disk does without stopping
        the event loop. Reads are serialised (one reader connection). ``sqlite3.Error``
        becomes ``StoreError``. Not abandoned on cancellation: the thread is bounded by
        the disk, and the connection is not given to another until it is done.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        async with self._read_limiter:
            reader = self._reader
            if reader is None or self._closing:
                raise StoreError(f"the SQLite store {self._path} is closed")
            if self._broken is not None:
                raise self._broken_error()
            return await trio.to_thread.run_sync(self._read_transaction, reader, fn, args)

    def _read_transaction(
        self, reader: sqlite3.Connection, fn: Callable[..., T], args: tuple[Any, ...]
    ) -> T:
        try:
            reader.execute("BEGIN")
            try:
                return fn(reader, *args)
            finally:
                reader.execute("COMMIT")  # ends the snapshot, so checkpoints can finish
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if reader.in_transaction:
                    reader.execute("ROLLBACK")
            raise StoreError(f"SQLite store read failed: {exc}") from exc

    @property
    def commits(self) -> int:
        """How many transactions changed the file since opening (the last commit's number)."""
        return self._committed

    @property
    def durable_commits(self) -> int:
        """The number of the last commit a power loss cannot undo (as ``sync`` promises).

        With ``sync="full"`` the last one flushed; with ``"normal"`` every commit counts
        (that mode promises only to survive a killed process).
        """
        return self._flushed if self._sync == "full" else self._committed

    def statistics(self) -> SqliteStoreStatistics:
        """Counters since opening."""
        return SqliteStoreStatistics(
            operations=self._operations,
            transactions=self._transactions,
            commits=self._committed,
            flushes=self._flushes,
            inline_flushes=self._inline_flushes,
            largest_flush=self._largest_flush,
            pending=self._pending,
            checkpoints=self._checkpoints,
        )

    def _connection(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise self._broken_error()
        if self._closing or self._conn is None:
            raise StoreError(f"the SQLite store {self._path} is closed")
        return self._conn

    def _broken_error(self) -> StoreError:
        return StoreError(
            f"the SQLite store {self._path} could not flush its WAL to disk ({self._broken}); "
            "what was committed since the last flush may be lost: restart the server "
            "once the disk is sound"
        )

    def _transaction(
        self,
        conn: sqlite3.Connection,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        *,
        flushes: bool,
    ) -> T:
        """Run ``fn`` in a transaction of its own and commit it.

        ``flushes``: the caller flushes past this commit itself, so the background
        flusher is not woken for it (it would be one more task ready to run, and keep
        the caller's flush off the event loop: see "Inline flushes").
        """
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) in _LOCKED_CODES:
                raise _LockedError from exc
            raise StoreError(f"the SQLite store cannot begin a transaction: {exc}") from exc
        self._transactions += 1
        changes = conn.total_changes
        try:
            result = fn(conn, *args)
            changed = conn.total_changes != changes
            conn.execute("COMMIT")
        except BaseException as exc:  # KeyboardInterrupt too: never leave it open
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if self.on_rollback is not None:
                self.on_rollback()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"SQLite store operation failed: {exc}") from exc
            raise
        if self.on_commit is not None:
            self.on_commit()
        if changed:
            self._committed += 1
            if not flushes:
                self._dirty.set()
            self._since_checkpoint += 1
            if self._since_checkpoint >= self._checkpoint_every:
                self._checkpoint_due.set()
        return result

    async def _flush(self, commit: int, *, inline: bool = True) -> None:
        """Return once the WAL holds commit number ``commit`` on disk, or a flush failed.

        A failed fsync is final: the kernel may have dropped the dirty pages and
        marked them clean, so a later fsync that succeeds proves nothing about
        them. The store then refuses every call (``_broken``) until restarted.
        """
        while self._flushed < commit and self._broken is None:
            if self._flushing:
                await self._flush_done.wait()
            elif inline and self._try_flush_inline():
                await trio.lowlevel.cancel_shielded_checkpoint()  # a call's one pass
            else:
                await self._flush_in_thread()

    def _try_flush_inline(self) -> bool:
        """Flush on the event loop now, if it may (see "Inline flushes"); whether it did."""
        if self._flushing or self._broken is not None or not self._may_flush_inline():
            return False
        with self._one_flush():
            self._flush_inline()
        return True

    async def _flush_in_thread(self) -> None:
        with self._one_flush():
            assert self._flusher is not None  # checked by _one_flush
            await self._flusher.flush()

    @contextlib.contextmanager
    def _one_flush(self) -> Iterator[None]:
        """One ``fdatasync`` of the WAL, made in the body: on success every commit made
        before it is durable; a failure (an ``OSError``, not raised on) breaks the store."""
        self._flushing = True
        target = self._committed  # one flush covers every commit made so far
        try:
            if self._flusher is None:
                raise OSError(f"the WAL of {self._path} is not open")
            yield
        except OSError as exc:
            log.critical(
                "flushing the SQLite store's WAL failed: %s; the store refuses every call "
                "from now on",
                exc,
            )
            self._broken = str(exc)
        else:
            self._largest_flush = max(self._largest_flush, target - self._flushed)
            self._flushed = target
            self._flushes += 1
        finally:
            self._flushing = False
            self._flush_done.set()
            self._flush_done = trio.Event()

    def _may_flush_inline(self) -> bool:
        """Whether a flush may stop the event loop now (see "Inline flushes")."""
        if trio.current_time() < self._inline_after:
            return False
        return not others_ready()

    def _flush_inline(self) -> None:
        """``fdatasync`` on the event loop; a slow one sends the next flushes to the thread."""
        started = time.perf_counter()
        try:
            self._fdatasync()
        finally:
            self._inline_flushes += 1
            took = time.perf_counter() - started
            self._inline_mean += (took - self._inline_mean) / 16
            if took > INLINE_FLUSH_MAX or self._inline_mean > INLINE_FLUSH_MEAN_MAX:
                log.info(
                    "WAL flushes take %.1f ms (%.1f ms on average): flushing in a thread for %g s",
                    took * 1000,
                    self._inline_mean * 1000,
                    INLINE_BACKOFF,
                )
                self._inline_after = trio.current_time() + INLINE_BACKOFF
                self._inline_mean = 0.0

    def _fdatasync(self) -> None:
        if self._wal_fd is None:
            raise OSError(f"the WAL of {self._path} is not open")
        _fdatasync(self._wal_fd)

    # -- checkpoints -----------------------------------------------------------------------

    async def run_flushes(self) -> None:
        """Flush the WAL within ``FLUSH_INTERVAL`` of any commit no call flushed."""
        while True:
            await self._dirty.wait()  # no wake-ups while nothing is written
            await trio.sleep(FLUSH_INTERVAL)
            self._dirty = trio.Event()
            await self._flush(self._committed)  # a failure breaks the store (see _flush)

    async def run_checkpoints(self) -> None:
        """Checkpoint the WAL in a worker thread whenever enough commits piled up.

        The checkpoint runs on the store's own connection while calls wait for it
        (asynchronously: the event loop goes on). On a second connection it would
        race the commits made meanwhile, never finish the WAL, and the WAL would
        grow without end; this way it copies the whole WAL, and the next commit
        starts the WAL over.
        """
        while True:
            await self._checkpoint_due.wait()
            self._checkpoint_due = trio.Event()
            self._since_checkpoint = 0
            conn = self._conn
            if conn is None:
                return
            done = self._checkpointing = trio.Event()
            try:
                with trio.CancelScope(shield=True):  # the connection is the thread's until done
                    await trio.to_thread.run_sync(self._checkpoint_and_restart, conn)
            finally:
                self._checkpointing = None
                done.set()
            self._checkpoints += 1

    @classmethod
    def _checkpoint_and_restart(cls, conn: sqlite3.Connection) -> None:
        """Checkpoint, then commit a tiny write, all in the worker thread.

        The first commit after a complete checkpoint starts the WAL over and
        syncs its header: that write makes it happen here, off the event loop.
        """
        cls._checkpoint(conn, "PASSIVE")
        cls._touch(conn)

    @staticmethod
    def _touch(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('wal_restarted_at', ?)", (str(time.time()),)
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            log.warning("SQLite WAL restart failed: %s", exc)

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:  # the next one will catch up; nothing is lost
            log.warning("SQLite WAL checkpoint (%s) failed: %s", mode, exc)

    # -- opening and closing ---------------------------------------------------------------

    async def start(self) -> None:
        """Open the file and take the store's lock, within ``shutdown_timeout`` seconds.

        Opening may migrate the file, so it runs in a thread of its own. The bound is
        real time (a ``threading.Event``), not Trio time: a Trio deadline would fire
        at once under an autojumping ``MockClock``. An opener that gives up leaves
        the thread to close what it opens, whenever it finishes.
        """
        opening = _Opening(self._open_file)
        try:
            with trio.CancelScope(shield=True):  # bounded by the wait's timeout
                done = await trio.to_thread.run_sync(opening.wait, self._shutdown_timeout)
        except BaseException:
            self._closing = True
            opening.abandon()
            raise
        if not done:
            self._closing = True
            opening.abandon()
            raise StoreError(
                f"opening the SQLite store {self._path} took over {self._shutdown_timeout:g} s; "
                "is its disk or directory responding?"
            )
        if opening.error is not None:
            self._closing = True
            raise opening.error
        assert opening.opened is not None
        self._conn, self._lock, self._wal_fd = opening.opened
        try:
            self._reader = await trio.to_thread.run_sync(self._open_reader)
        except BaseException:
            self._closing = True
            conn, self._conn = self._conn, None
            _close_opened((conn, self._lock, self._wal_fd))
            self._wal_fd = None
            raise
        self._flusher = _Flusher(self._fdatasync, f"mas-sqlite-flush-{self._path.name}")

    def _open_reader(self) -> sqlite3.Connection:
        """The read-only connection ``read`` uses (the file exists and is migrated now)."""
        try:
            reader = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                # In its worker thread a lock wait stops nothing else: wait as long as a
                # writer's transaction on the loop may take.
                reader.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")
                reader.execute("PRAGMA query_only = 1")
            except BaseException:
                reader.close()
                raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open a reader on the SQLite store {self._path}: {exc}"
            ) from exc
        return reader

    def _open_file(self) -> tuple[sqlite3.Connection, int | None, int]:
        lock = lock_store(self._path)
        try:
            conn = connect(self._path, check_same_thread=False)
        except BaseException:
            release_store(lock)
            raise
        try:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints: run_checkpoints
            conn.execute(f"PRAGMA busy_timeout = {LOOP_BUSY_TIMEOUT_MS}")  # see ``call``
            conn.execute("PRAGMA synchronous = NORMAL")  # full: the writer flushes the WAL
            self._touch(conn)  # the first commit syncs the directory: here, not on the loop
            wal = self._path.with_name(self._path.name + "-wal")
            wal_fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
        except BaseException as exc:
            conn.close()
            release_store(lock)
            if isinstance(exc, OSError | sqlite3.Error):
                raise StoreError(f"cannot open the SQLite store {self._path}: {exc}") from exc
            raise
        return conn, lock, wal_fd

    async def stop(self) -> None:
        """Refuse new calls, let those under way finish, checkpoint and close; not cancellable."""
        if self._closing:
            return
        self._closing = True
        conn = self._conn
        self._conn = None
        if conn is None:
            return
        with trio.CancelScope(shield=True):
            # Calls that already committed wait for their flush, which is bounded by
            # the disk alone; the WAL's fd must outlive it.
            while self._pending or self._flushing:
                if self._flushing:
                    await self._flush_done.wait()
                else:
                    self._drained = trio.Event()
                    await self._drained.wait()
            if self._flusher is not None:  # no flush is under way, nor can start
                self._flusher.stop()
                self._flusher = None
            async with self._read_limiter:  # a read under way finishes first
                reader, self._reader = self._reader, None
                if reader is not None:
                    reader.close()
            await trio.to_thread.run_sync(self._close_file, conn)

    def _close_file(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:  # a transaction lost mid-way: nothing of it returned
                conn.execute("ROLLBACK")
            self._checkpoint(conn, "TRUNCATE")
        except sqlite3.Error as exc:
            log.warning("closing the SQLite store %s: %s", self._path, exc)
        finally:
            conn.close()
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            release_store(self._lock)


@asynccontextmanager
async def open_writer(
    path: Path,
    *,
    sync: Sync = "full",
    checkpoint_every: int = CHECKPOINT_EVERY,
    shutdown_timeout: float,
) -> AsyncIterator[SqliteWriter]:
    """Open ``path`` for the body, with its background tasks; close it (bounded) on exit."""
    writer = SqliteWriter(
        path, sync=sync, checkpoint_every=checkpoint_every, shutdown_timeout=shutdown_timeout
    )
    await writer.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run_checkpoints)
            nursery.start_soon(writer.run_flushes)
            try:
                yield writer
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await writer.stop()
