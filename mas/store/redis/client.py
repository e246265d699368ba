"""The Redis store's connection layer: one pipelined lane and one subscriber per server.

Connections come from a small, bounded ``redis`` connection pool (every socket
has a connect and a read timeout), made in Trio worker threads:

* ``RedisClient.call`` queues an operation (one or more commands) on the *lane*.
  One dispatcher task takes everything queued meanwhile and sends it as one
  pipeline, so one round trip serves many operations (group commit). Batches
  go out one at a time, so operations take effect in the order they were
  called. The lane's socket is driven from the event loop (``wire``):
  a thread hop per round trip cost more CPU than the round trip itself.
* ``call_prepared`` does the same for an operation whose commands are built by
  the dispatcher right before they are sent, and which sees its replies before
  the next batch is built (so the audit chain is linked in commit order).
* ``ahead=`` and ``along=``: operations made by ``operation`` that must run right
  before or right after a call's own, in the same pipeline (an ack before its
  audit records, a claim after the enqueue it should see): one round trip for
  what would take several. Their replies are read with ``outcome``.
* ``subscribe`` / ``read_messages`` hold one Pub/Sub connection, read in a worker
  thread: the one blocking reader of a server (it wakes only for other servers'
  enqueues).

Error handling
    Every ``redis`` and socket error is translated here into
    ``StoreUnavailableError`` naming the URL (never its password). A batch that
    could not be sent because no connection could be made is retried with
    bounded exponential backoff until the oldest operation in it has waited
    ``reconnect_timeout`` (so a Redis restart delays operations instead of
    failing them); a batch that failed after it was
    sent fails at once, since it may or may not have run. Scripts missing after a
    Redis restart (``NOSCRIPT``) are loaded again and the failed commands re-sent.

Accepts
    With an ``AcceptWait`` (``mas.store.redis.accept``), a pipeline that carries
    enqueues (operations of kind ``enqueue``) ends with its ``WAIT`` or
    ``WAITAOF``, so one wait serves the whole batch; the enqueues are answered
    only after it, and fail with ``StoreNotDurableError`` when it acknowledged
    fewer than asked (their writes are in Redis's memory all the same).

Cancellation
    A cancelled caller abandons its operation if it has not been sent yet;
    otherwise the operation still runs. Closing the client fails what is queued.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

import redis
import trio
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from ...config import redact_url
from ...errors import StoreError
from .accept import NO_WAIT, AcceptWait
from .scripts import Script
from .wire import ProtocolError, WireSocket, pack

log = logging.getLogger("mas.store.redis")

Arg = str | bytes | int | float
Command = tuple[Arg, ...]

MAX_PENDING_OPS: Final = 10_000  # operations queued for the lane before callers wait
MAX_BATCH_OPS: Final = 1_000  # operations per pipeline
MAX_BATCH_BYTES: Final = 4 << 20  # argument bytes per pipeline (envelopes are up to 1 MiB)
BACKOFF_MIN: Final = 0.02  # seconds, first wait before reconnecting
BACKOFF_MAX: Final = 1.0  # seconds, longest wait between reconnection attempts
POOL_CONNECTIONS: Final = 3  # the lane, the subscriber, one spare
WAITING_KINDS: Final = frozenset({"enqueue"})  # operations an AcceptWait holds back


class Connection(Protocol):
    """The part of ``redis.connection.Connection`` used here (it is untyped)."""

    def pack_commands(self, commands: Sequence[Command]) -> list[bytes]: ...
    def send_packed_command(self, command: list[bytes]) -> None: ...
    def send_command(self, *args: Arg) -> None: ...
    def can_read(self, timeout: float = 0) -> bool: ...
    def read_response(self) -> Any: ...
    def disconnect(self) -> None: ...


class _Pool(Protocol):
    """The part of ``redis.BlockingConnectionPool`` used here (it is untyped)."""

    def get_connection(self) -> Connection: ...
    def release(self, connection: Connection) -> None: ...
    def disconnect(self) -> None: ...


class StoreUnavailableError(StoreError):
    """The Redis store could not be reached, or Redis refused an operation."""


class StoreNotDurableError(StoreUnavailableError):
    """Written to Redis's memory, but not acknowledged as the ``AcceptWait`` asks.

    ``replies`` are the operation's replies (what the writes answered): the writes
    happened and may still be delivered, so this is not "nothing was stored".
    """

    def __init__(self, message: str, replies: list[Any]) -> None:
        super().__init__(message)
        self.replies = replies


class _NotSentError(Exception):
    """No connection could be made: nothing of the batch reached Redis."""


class Prepared(Protocol):
    """An operation whose commands are built when its batch is sent."""

    def commands(self) -> Sequence[Command]:
        """Called by the dispatcher right before the batch goes out (may raise ValueError)."""

    def completed(self, replies: list[Any]) -> None:
        """Called by the dispatcher with the replies, before the next batch is built."""

    def failed(self, error: Exception) -> None:
        """Called instead of ``completed`` when the operation failed or was not sent."""


@dataclass(eq=False)
class Operation:
    """One operation on the lane: its commands, and then their replies or its error."""

    kind: str
    commands: Sequence[Command]
    size: int
    prepared: Prepared | None = None
    abandonable: bool = True
    done: trio.Event = field(default_factory=trio.Event)
    packed: bytes = b""  # the commands in RESP, made by _prepare
    replies: list[Any] = field(default_factory=list)
    error: Exception | None = None
    abandoned: bool = False
    submitted: float = field(default_factory=trio.current_time)


@dataclass
class ClientStatistics:
    """Counters of one client (read by ``RedisStore.statistics``)."""

    round_trips: int = 0  # pipelines sent and answered (including script reloads)
    commands: int = 0  # commands sent
    batches: int = 0  # lane batches (one thread hop each)
    ops: dict[str, int] = field(default_factory=dict)  # operations by kind
    op_commands: dict[str, int] = field(default_factory=dict)  # commands by kind
    op_round_trips: dict[str, float] = field(default_factory=dict)  # shared by the batch
    reconnect_waits: int = 0
    script_reloads: int = 0
    accept_waits: int = 0  # WAIT / WAITAOF sent (one per pipeline with enqueues)
    accept_refusals: int = 0  # of which acknowledged fewer than asked


class RedisClient:
    """A bounded pool, the pipelined lane and the subscriber connection."""

    def __init__(
        self,
        url: str,
        *,
        scripts: Sequence[Script],
        socket_timeout: float,
        reconnect_timeout: float,
        client_name: str,
        accept_wait: AcceptWait = NO_WAIT,
    ) -> None:
        self.safe_url = redact_url(url)
        self.accept_wait = accept_wait
        self._durable = True  # the last accept wait succeeded (logged once per change)
        self._scripts = scripts
        self._reconnect_timeout = reconnect_timeout
        try:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=POOL_CONNECTIONS,
                timeout=socket_timeout,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
                client_name=client_name,
                protocol=2,  # raw replies and Pub/Sub messages as RESP2 arrays
            )
        except ValueError as exc:
            raise StoreUnavailableError(f"invalid Redis URL {self.safe_url}: {exc}") from None
        self._pool = cast(_Pool, pool)
        self._socket_timeout = socket_timeout
        self._lane: Connection | None = None  # the lane's connection, taken from the pool
        self._wire: WireSocket | None = None  # its socket, driven from Trio
        self._send, self._receive = trio.open_memory_channel[Operation](MAX_PENDING_OPS)
        self._current: list[Operation] = []
        self._closed = False
        self.stats = ClientStatistics()

    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"Redis at {self.safe_url} is unavailable: {exc}")

    # -- the lane ---------------------------------------------------------------------

    async def call(self, kind: str, *commands: Command, abandonable: bool = True) -> list[Any]:
        """Run ``commands`` in the next pipeline; their replies, in order.

        Raises ``StoreUnavailableError`` when Redis cannot be reached or answers
        any of them with an error. Unless ``abandonable``, the commands are sent
        even if the caller is cancelled before they were.
        """
        return await self._submit(self.operation(kind, *commands, abandonable=abandonable))

    def operation(self, kind: str, *commands: Command, abandonable: bool = True) -> Operation:
        """An operation for a call's ``ahead=`` or ``along=`` (its replies: ``outcome``)."""
        size = sum(len(a) if isinstance(a, str | bytes) else 8 for c in commands for a in c)
        return Operation(kind, commands, size, abandonable=abandonable)

    async def call_prepared(
        self,
        kind: str,
        prepared: Prepared,
        size: int,
        *,
        abandonable: bool = True,
        ahead: Sequence[Operation] = (),
        along: Sequence[Operation] = (),
    ) -> list[Any]:
        """Like ``call``, with the commands built by ``prepared`` when the batch is sent.

        ``size`` estimates their argument bytes. Raises what ``commands`` raises.
        Unless ``abandonable``, the operation is sent even if the caller is
        cancelled meanwhile (others may wait for it through ``prepared``).
        ``ahead`` and ``along``: operations sent in the same pipeline, right before and
        right after this one (each ends, sent or not: ``outcome`` never waits for ever).
        """
        op = Operation(kind, (), size, prepared, abandonable)
        return await self._submit(op, ahead, along)

    async def submit(self, op: Operation) -> list[Any]:
        """Run a made ``operation`` in the next pipeline; its replies, as ``call``."""
        return await self._submit(op)

    async def call_many(self, ops: Sequence[Operation]) -> None:
        """Send made ``operation``s in one pipeline, in order; read each with ``outcome``."""
        if ops:
            await self._submit(ops[0], (), ops[1:])

    def discard(self, ops: Sequence[Operation]) -> None:
        """End made operations that will not be sent: their ``outcome`` raises."""
        for op in ops:
            if not op.done.is_set():
                _finish(op, StoreUnavailableError("not sent: its caller gave up"))

    async def outcome(self, op: Operation) -> list[Any]:
        """The replies of an operation sent ``ahead=`` or ``along=``; raises as ``call`` does."""
        if not op.done.is_set():  # usually answered with the call it went along with
            await op.done.wait()
        return self._replies(op)

    async def _submit(
        self, op: Operation, ahead: Sequence[Operation] = (), along: Sequence[Operation] = ()
    ) -> list[Any]:
        ops = (*ahead, op, *along)
        if self._closed:
            closed = StoreUnavailableError(f"Redis store at {self.safe_url} is closed")
            for each in ops:
                _finish(each, closed)
            raise closed
        queued = 0
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            # Queued back to back, with no checkpoint between them: the dispatcher
            # takes them into one pipeline (unless it is full: then in order).
            for each in ops:
                try:
                    self._send.send_nowait(each)
                except trio.WouldBlock:
                    await self._send.send(each)
                queued += 1
        except BaseException:
            not_sent = StoreUnavailableError("not sent: its caller was cancelled")
            for each in ops[queued:]:
                _finish(each, not_sent)
            raise
        try:
            await op.done.wait()
        finally:
            for each in ops:
                if not each.done.is_set() and each.abandonable:
                    each.abandoned = True
        return self._replies(op)

    def _replies(self, op: Operation) -> list[Any]:
        if op.error is not None:
            raise op.error
        for reply in op.replies:
            if isinstance(reply, ResponseError):
                raise StoreUnavailableError(f"Redis at {self.safe_url} refused {op.kind}: {reply}")
        return op.replies

    async def load_scripts(self) -> None:
        """Load every script (``EVALSHA`` also reloads them after a ``NOSCRIPT``)."""
        await self.call("start", *(("SCRIPT", "LOAD", s.source) for s in self._scripts))

    async def evalsha(
        self, kind: str, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        """Run one script on the lane; its reply."""
        [reply] = await self.call(kind, ("EVALSHA", script.sha, len(keys), *keys, *args))
        return reply

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send queued operations in batches until cancelled; then fail what is left."""
        try:
            task_status.started()
            while True:
                first = await self._receive.receive()
                batch, size = [first], first.size
                while len(batch) < MAX_BATCH_OPS and size < MAX_BATCH_BYTES:
                    try:
                        op = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(op)
                    size += op.size
                for op in batch:
                    if op.abandoned:  # ended, so that an ``outcome`` of it never waits
                        _finish(op, StoreUnavailableError("not sent: its caller was cancelled"))
                self._current = [op for op in batch if not op.abandoned and self._prepare(op)]
                if self._current:
                    await self._execute(self._current)
                self._current = []
        finally:
            self._closed = True
            closed = StoreUnavailableError(f"Redis store at {self.safe_url} is closed")
            leftovers = list(self._current)
            while True:
                try:
                    leftovers.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for op in leftovers:
                if not op.done.is_set():
                    _finish(op, closed)

    @staticmethod
    def _prepare(op: Operation) -> bool:
        """Build and encode ``op``'s commands; a bad one fails that operation alone."""
        try:
            if op.prepared is not None:
                op.commands = op.prepared.commands()
            op.packed = pack(op.commands)
        except (ValueError, TypeError) as exc:  # TypeError: an argument Redis cannot take
            _finish(op, exc)
            return False
        return True

    def _pipeline(self, batch: list[Operation]) -> tuple[list[Command], bytes, bool]:
        """The batch's commands and their RESP, and whether an accept wait ends them."""
        commands = [command for op in batch for command in op.commands]
        packed = b"".join(op.packed for op in batch)
        waits = self.accept_wait.active and any(op.kind in WAITING_KINDS for op in batch)
        if waits:
            wait = self.accept_wait.command()
            commands.append(wait)
            packed += pack([wait])
        return commands, packed, waits

    async def _execute(self, batch: list[Operation]) -> None:
        commands, packed, waits = self._pipeline(batch)
        # No operation waits for a connection longer than reconnect_timeout in all.
        deadline = min(op.submitted for op in batch) + self._reconnect_timeout
        delay = BACKOFF_MIN
        error: StoreUnavailableError | None = None
        replies: list[Any] = []
        while True:
            try:
                replies = await self._exchange(commands, packed, waits)
            except _NotSentError as exc:
                if trio.current_time() + delay > deadline:
                    error = self._unavailable(exc.__cause__ or exc)
                    break
                if self.stats.reconnect_waits == 0 or delay == BACKOFF_MIN:
                    log.warning("%s; reconnecting", self._unavailable(exc.__cause__ or exc))
                self.stats.reconnect_waits += 1
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                # Callers cancelled while Redis was away abandoned their operations:
                # they must not run when it is back (the Cancellation promise above).
                live = [op for op in batch if not op.abandoned]
                if len(live) < len(batch):
                    for op in batch:
                        if op.abandoned:
                            _finish(op, StoreUnavailableError("not sent: its caller was cancelled"))
                    batch = live
                    if not batch:
                        return
                    commands, packed, waits = self._pipeline(batch)
                continue
            except (redis.RedisError, OSError, ProtocolError) as exc:
                error = self._unavailable(exc)
            break
        self.stats.batches += 1
        shortfall = self._accept_verdict(replies.pop()) if waits and error is None else None
        stats, share, start = self.stats, 1 / len(batch), 0
        for op in batch:
            stats.ops[op.kind] = stats.ops.get(op.kind, 0) + 1
            stats.op_commands[op.kind] = stats.op_commands.get(op.kind, 0) + len(op.commands)
            stats.op_round_trips[op.kind] = stats.op_round_trips.get(op.kind, 0.0) + share
            if error is None:
                op.replies = replies[start : start + len(op.commands)]
                start += len(op.commands)
                if op.prepared is not None:
                    op.prepared.completed(op.replies)  # the writes did happen
                if shortfall is not None and op.kind in WAITING_KINDS:
                    op.error = StoreNotDurableError(
                        f"Redis at {self.safe_url} holds the message in memory only: {shortfall}",
                        op.replies,
                    )
                op.done.set()
            else:
                _finish(op, error)

    def _accept_verdict(self, reply: Any) -> str | None:
        """Count and judge an accept wait's reply; log once per change of state."""
        self.stats.accept_waits += 1
        shortfall = self.accept_wait.shortfall(reply)
        if shortfall is not None:
            self.stats.accept_refusals += 1
            if self._durable:
                log.warning(
                    "Redis at %s: accepts are refused (UNAVAILABLE store_not_durable): %s",
                    self.safe_url,
                    shortfall,
                )
        elif not self._durable:
            log.info("Redis at %s: accepts are acknowledged again", self.safe_url)
        self._durable = shortfall is None
        return shortfall

    async def _exchange(self, commands: list[Command], pipeline: bytes, waits: bool) -> list[Any]:
        """Send ``commands`` (``pipeline``: packed) on the lane's connection; every reply.

        ``waits``: the last command is the accept wait, which must follow every write
        (so it is sent again after commands re-sent for ``NOSCRIPT``).
        """
        wire = self._wire
        if wire is not None and wire.stale():
            log.info("the Redis connection at %s was closed; reconnecting", self.safe_url)
            self._drop_lane()
            wire = None
        if wire is None:
            wire = self._wire = await self._connect_lane()
        try:
            # A bound per exchange, as the socket timeout was for each read. It is Trio
            # time: under an autojumping MockClock it fires at once, so tests that mock
            # the clock use the memory or SQLite store.
            # The accept wait may take its own timeout before Redis answers it (twice
            # when commands are sent again after NOSCRIPT).
            bound = self._socket_timeout + (2 * self.accept_wait.timeout if waits else 0.0)
            with trio.fail_after(bound):
                replies = await wire.round_trip_packed(pipeline, len(commands))
                self._count_round_trip(len(commands))
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    self.stats.script_reloads += 1
                    loads: list[Command] = [("SCRIPT", "LOAD", s.source) for s in self._scripts]
                    resend = [commands[i] for i in missing] + ([commands[-1]] if waits else [])
                    again = await self._round_trip(wire, loads + resend)
                    for i, reply in zip(missing, again[len(loads) :], strict=False):
                        replies[i] = reply
                    if waits:
                        replies[-1] = again[-1]
            return replies
        except BaseException as exc:
            self._drop_lane()  # its state is unknown: a half-read reply, or none
            if isinstance(exc, trio.TooSlowError):
                raise TimeoutError(f"no reply within {self._socket_timeout} s") from None
            raise

    async def _connect_lane(self) -> WireSocket:
        """A connection from the pool (made in a worker thread), driven from Trio."""
        try:
            conn = await _abandonable_connect(self._pool)
        except (redis.RedisError, OSError) as exc:
            raise _NotSentError(str(exc)) from exc
        sock = getattr(conn, "_sock", None)
        if not isinstance(sock, socket.socket):  # not what redis-py is known to hold
            conn.disconnect()
            self._pool.release(conn)
            raise _NotSentError("the Redis connection has no socket")
        self._lane = conn
        return WireSocket(sock)

    def _drop_lane(self) -> None:
        conn, self._lane, self._wire = self._lane, None, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    async def _round_trip(self, wire: WireSocket, commands: Sequence[Command]) -> list[Any]:
        replies = await wire.round_trip(commands)
        self._count_round_trip(len(commands))
        return replies

    def _count_round_trip(self, commands: int) -> None:
        self.stats.round_trips += 1
        self.stats.commands += commands

    def close(self) -> None:
        """Close every connection of the pool."""
        self._closed = True
        self._drop_lane()
        self._pool.disconnect()

    # -- the subscriber -------------------------------------------------------------------

    async def subscribe(self, channels: Sequence[str]) -> Connection:
        """A connection subscribed to ``channels`` (give it back with ``unsubscribe``)."""
        try:
            return await trio.to_thread.run_sync(self._subscribe, channels)
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    def _subscribe(self, channels: Sequence[str]) -> Connection:
        conn = self._pool.get_connection()
        try:
            conn.send_command("SUBSCRIBE", *channels)
            for _ in channels:
                conn.read_response()
        except BaseException:
            self.unsubscribe(conn)
            raise
        return conn

    def unsubscribe(self, conn: Connection) -> None:
        """Close a subscribed connection and return it to the pool."""
        conn.disconnect()
        self._pool.release(conn)

    async def read_messages(
        self,
        conn: Connection,
        wait: float,
        limit: int,
        keep: Callable[[bytes, bytes], bool],
    ) -> list[tuple[bytes, bytes]]:
        """(channel, payload) of up to ``limit`` messages that ``keep`` accepts.

        Waits up to ``wait`` for the first; messages ``keep`` refuses are dropped
        in the worker thread, without a trip back to Trio.
        """
        try:
            return await trio.to_thread.run_sync(self._read_messages, conn, wait, limit, keep)
        except (redis.RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    @staticmethod
    def _read_messages(
        conn: Connection, wait: float, limit: int, keep: Callable[[bytes, bytes], bool]
    ) -> list[tuple[bytes, bytes]]:
        messages: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + wait
        while not messages:
            if not conn.can_read(timeout=max(0.0, deadline - time.monotonic())):
                break
            while len(messages) < limit:
                reply = conn.read_response()
                if (
                    isinstance(reply, list)
                    and len(reply) == 3
                    and reply[0] == b"message"
                    and keep(reply[1], reply[2])
                ):
                    messages.append((reply[1], reply[2]))
                if not conn.can_read(timeout=0):
                    break
        return messages


def _finish(op: Operation, error: Exception) -> None:
    """End ``op`` with ``error`` (telling its ``Prepared``, if any)."""
    op.error = error
    if op.prepared is not None:
        op.prepared.failed(error)
    op.done.set()


async def _abandonable_connect(pool: _Pool) -> Any:
    """A connection from ``pool``, made in a worker thread that a cancel abandons.

    A connect to a Redis that accepts and never answers blocks its thread for the
    socket timeout; the caller (a stop, a Ctrl-C) must not wait that long. A
    connection the abandoned thread still makes is handed back to the pool.
    """
    lock = threading.Lock()
    made: list[Any] = []
    abandoned = False

    def connect() -> Any:
        conn: Any = pool.get_connection()
        with lock:
            if not abandoned:
                made.append(conn)
                return conn
        conn.disconnect()
        pool.release(conn)
        return None

    try:
        return await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
    except BaseException:
        with lock:
            abandoned = True
            late = made.pop() if made else None  # made, but its result was discarded
        if late is not None:
            late.disconnect()
            pool.release(late)
        raise
