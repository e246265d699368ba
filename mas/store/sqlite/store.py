"""The embedded durable store: one SQLite file, group commit, flushes off the event loop.

``open_sqlite_store(path, limits)`` opens (creating and migrating) the file and
yields a ``SqliteStore`` that keeps the ``Store`` contract exactly as
``MemoryStore`` does, but on disk: queued messages, in-flight deliveries,
dead letters, correlations and state survive the process. Every operation is
one transaction of the writer (``writer``) and returns once committed:
whatever returned survives a killed process. With ``sync="full"`` (the
default) the operations a client is told of (enqueues with their audit
records, state updates, dead letters) also return only once flushed to disk, so
an accepted message survives a power loss too. A power loss can only undo what
was committed since the last flush and told to no one: claims and acks (their
messages are redelivered, at least once) and the audit records of deliveries
and refusals (the chain stays whole; the JSONL file copies only flushed records,
so it never holds a record the store lost).
An enqueue writes each message and its audit record in the same
transaction: neither exists alone. ``enqueue_many`` and ``ack_many``
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
    back together keep their order. See ``schema`` for the tables. A claim
    made in its enqueue's transaction (``route_batch``) that would take the
    batch's new rows takes them on arrival: they are written in flight at once
    (``_taken_on_arrival``), in the order the claim would have taken them.

Transactions
    Each operation is a function of a connection, run by the writer on the
    event loop in a transaction of its own (its flush, if it needs one, shared
    with concurrent callers), so each is atomic: one that raises changes
    nothing. A method of ``SqliteStore`` holds
    its own transaction (``transaction``, defined in it) and adds what the
    transaction cannot know: the durability the call needs, the server id its
    audit records carry, which records a flush covers. The transactions that
    several callers share (the opener, another transaction, the tools) are the
    functions above the class; ``dead_letters``, ``append_audit`` and
    ``trim_audit`` are also run on a bare connection by tools that read a store
    no server holds.

Audit chain in memory
    One process writes the file, so the store keeps the chain's end and its
    last ``RECENT_AUDIT`` records (``AuditHead``, kept by the writer's commit
    and rollback hooks): an append links after the end without reading and
    decoding the last row, and the JSONL copy reads this server's flushed
    records from memory, without a worker thread.

One server per file: a lock file (``<path>.lock``) refuses a second process
(``StoreUnusableError``, a ``ConfigError``). Failures of SQLite itself raise
``StoreError``. Cancellation follows ``writer``: a cancelled call either
raised ``Cancelled`` and changed nothing, or completed.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from itertools import groupby
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from ...audit.chain import link_many
from ...audit.record import AuditDraft, AuditRecord
from ...audit.retention import ANCHOR_KEY, Retention, format_anchor, parse_anchor, trim_cut
from ...envelope import new_delivery_id
from ..base import (
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
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .schema import StoreError as StoreError
from .schema import StoreUnusableError as StoreUnusableError
from .writer import SqliteStoreStatistics as SqliteStoreStatistics
from .writer import SqliteWriter, Sync, open_writer

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


# -- transactions: functions of a connection, run by the writer ----------------------

# Queries name the state as a literal so SQLite can use the partial indexes.
_SELECT_READY: Final = (
    "SELECT id, message_id, target_id, instance_id, envelope, enqueued_at, attempt, not_before "
    "FROM messages WHERE target_id = ? AND instance_id IS ? AND state = 0 "
    "ORDER BY position, id LIMIT ?"
)
_SELECT_DELIVERY: Final = (
    "SELECT id, message_id, target_id, instance_id, envelope, enqueued_at, attempt, not_before, "
    "session_id FROM messages WHERE delivery_id = ? AND state = 2"
)
_SELECT_DEAD: Final = (
    "SELECT id, message_id, target_id, instance_id, envelope, enqueued_at, attempt, not_before, "
    "reason, dead_lettered_at FROM dead_letters"
)
_TO_DEAD_LETTERS: Final = (
    "INSERT INTO dead_letters (message_id, target_id, instance_id, envelope, enqueued_at, "
    "attempt, not_before, reason, dead_lettered_at) SELECT message_id, target_id, "
    "instance_id, envelope, enqueued_at, attempt, not_before, ?, ? FROM messages WHERE id = ?"
)
_RELEASE_TO: Final = (
    "UPDATE messages SET state = 0, position = ?, attempt = attempt + 1, session_id = NULL, "
    "delivery_id = NULL WHERE id = ?"
)
# A new row, waiting (state 0, session and delivery NULL) or taken on arrival by a claim
# of the same transaction (state 2 with its session and delivery: see _taken_on_arrival).
_INSERT_MESSAGE: Final = (
    "INSERT INTO messages (message_id, target_id, instance_id, envelope, enqueued_at, "
    "attempt, not_before, state, position, session_id, delivery_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
)
_READY_COUNT: Final = "SELECT ready FROM queues WHERE target_id = ? AND instance_id = ?"
_SELECT_DELIVERIES: Final = (  # + "(?, ?, ...)"
    "SELECT id, message_id, target_id, instance_id, envelope, enqueued_at, attempt, not_before, "
    "session_id, delivery_id FROM messages WHERE state = 2 AND delivery_id IN "
)
_INSERT_CORRELATION: Final = (
    "INSERT OR REPLACE INTO correlations (correlation_id, requester_id, "
    "requester_instance_id, target_id, request_message_id, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_DELETE_CORRELATION: Final = "DELETE FROM correlations WHERE correlation_id = ?"
_CORRELATION_EXPIRY: Final = "SELECT expires_at FROM correlations WHERE correlation_id = ?"
_MAX_PARAMETERS: Final = 500  # host parameters per statement (SQLite allows 999 or more)
# Audit records kept in memory for the JSONL copy (AuditHead): it reads every 50 ms, so this
# covers well over 10,000 records a second; a copy further behind reads the file.
RECENT_AUDIT: Final = 1024
_Row = tuple[Any, ...]
_AUDIT_DECODER: Final = msgspec.json.Decoder(AuditRecord)


def _message(row: _Row) -> QueuedMessage:
    return QueuedMessage(
        message_id=row[1],
        target_id=row[2],
        instance_id=row[3],
        envelope_json=row[4],
        enqueued_at=row[5],
        attempt=row[6],
        not_before=row[7],
    )


def _message_row(message: QueuedMessage) -> tuple[Any, ...]:
    return (
        message.message_id,
        message.target_id,
        message.instance_id,
        message.envelope_json,
        message.enqueued_at,
        message.attempt,
        message.not_before,
    )


def _correlation_row(c: Correlation) -> tuple[Any, ...]:
    return (
        c.correlation_id,
        c.requester_id,
        c.requester_instance_id,
        c.target_id,
        c.request_message_id,
        c.expires_at,
    )


def _ready(conn: sqlite3.Connection, target_id: str, instance_id: str | None) -> int:
    row = conn.execute(_READY_COUNT, (target_id, instance_id or "")).fetchone()
    return 0 if row is None else int(row[0])


_Queue = tuple[str, str | None]  # (target_id, instance_id): None is the shared queue


def _enqueue_many(
    conn: sqlite3.Connection,
    items: Sequence[EnqueueItem],
    max_length: int,
    audit_key: bytes | None,
    server_id: str,
    head: AuditHead | None = None,
    claims: Sequence[Claim] = (),
    now: float = 0.0,
    max_age: float = math.inf,
) -> tuple[list[AuditRecord | str | None], list[list[InFlight] | None]]:
    """Enqueue the items whose queue has room (see ``Store.enqueue_many``).

    An item that answers a correlation no longer open gets its refusal reason instead.
    Returns the results and, for each of ``claims``, what it took of the new rows on
    their arrival (None: the caller runs that claim as ``_claim``, see
    ``_taken_on_arrival``).
    """
    waiting: dict[_Queue, int] = {}  # rows waiting in each queue before this batch

    def waiting_in(queue: _Queue) -> int:
        count = waiting.get(queue)
        if count is None:
            count = waiting[queue] = _ready(conn, *queue)
        return count

    room: dict[_Queue, int] = {}
    accepted: list[EnqueueItem] = []
    taken: list[bool | str] = []
    answered: list[str] = []
    for item in items:
        if item.answers:
            refused = _unanswerable(conn, item.answers, answered, item.message.enqueued_at)
            if refused:
                taken.append(refused)
                continue
        message = item.message
        key = (message.target_id, message.instance_id)
        left = room.get(key)
        if left is None:
            left = max_length - waiting_in(key)
        fits = left > 0
        taken.append(fits)
        if fits:
            accepted.append(item)
            left -= 1
            if item.answers:
                answered.append(item.answers)
        room[key] = left
    if not accepted:
        return [fits if isinstance(fits, str) else None for fits in taken], [None] * len(claims)
    claimed, deliveries = _taken_on_arrival(claims, accepted, waiting_in, now, max_age)
    rows = []
    for n, item in enumerate(accepted):
        delivery = deliveries.get(n)
        if delivery is None:
            rows.append((*_message_row(item.message), 0, None, None))
        else:
            rows.append((*_message_row(item.message), 2, delivery.session_id, delivery.delivery_id))
    conn.executemany(_INSERT_MESSAGE, rows)
    correlations = [_correlation_row(i.correlation) for i in accepted if i.correlation]
    if correlations:
        conn.executemany(_INSERT_CORRELATION, correlations)
    if answered:
        conn.executemany(_DELETE_CORRELATION, [(cid,) for cid in answered])
    drafts = [item.audit for item in accepted]
    records = iter(append_audit(conn, drafts, audit_key, server_id, head))
    results = [
        next(records) if fits is True else (fits if isinstance(fits, str) else None)
        for fits in taken
    ]
    return results, claimed


def _taken_on_arrival(
    claims: Sequence[Claim],
    accepted: Sequence[EnqueueItem],
    waiting_in: Callable[[_Queue], int],
    now: float,
    max_age: float,
) -> tuple[list[list[InFlight] | None], dict[int, InFlight]]:
    """What each claim takes of the accepted items before they are written.

    A claim of an agent whose queues it reads (its instance's reply queue and the shared
    queue) held nothing before this batch, and whose new messages are not past
    ``max_age``, would take exactly the batch's new messages for it: its reply queue's
    first, then the shared queue's, in order, up to its limit (the claims of one agent in
    turn). Those rows are written in flight at once, so their arrival and their claim
    cost one row write instead of an insert, a read and an update, each with the ready
    count's trigger and the waiting-row index. Any other claim (something waited, or a
    message would be dead-lettered as expired) is left to ``_claim``, for its whole agent,
    so that the claims of one agent keep their order. The caller promotes no retry here:
    with one due, it passes no claims.

    Returns, per claim, its deliveries or None, and the deliveries by accepted index.
    """
    claimed: list[list[InFlight] | None] = [None] * len(claims)
    deliveries: dict[int, InFlight] = {}
    by_agent: dict[str, list[int]] = {}
    for n, claim in enumerate(claims):
        by_agent.setdefault(claim.agent_id, []).append(n)
    for agent_id, claim_indexes in by_agent.items():
        arrivals = [n for n, item in enumerate(accepted) if item.message.target_id == agent_id]
        if not arrivals:
            continue
        # The shared queue first: the batch has read it when it holds arrivals, and a
        # backlog there (fan-in) ends the check without reading the reply queues.
        queues = dict.fromkeys([None, *(claims[n].instance_id for n in claim_indexes)])
        if any(waiting_in((agent_id, queue)) for queue in queues):
            continue
        if any(now - accepted[n].message.enqueued_at > max_age for n in arrivals):
            continue
        for n in claim_indexes:
            claim = claims[n]
            left = [k for k in arrivals if k not in deliveries]
            mine = [k for k in left if accepted[k].message.instance_id == claim.instance_id]
            shared = [k for k in left if accepted[k].message.instance_id is None]
            taken = []
            for k in (mine + shared)[: claim.limit]:
                delivery = InFlight(
                    delivery_id=new_delivery_id(),
                    session_id=claim.session_id,
                    message=accepted[k].message,
                )
                deliveries[k] = delivery
                taken.append(delivery)
            claimed[n] = taken
    return claimed, deliveries


def _unanswerable(
    conn: sqlite3.Connection, correlation_id: str, answered: list[str], now: float
) -> str:
    """Why a reply can no longer consume ``correlation_id`` ("" if it can)."""
    row = conn.execute(_CORRELATION_EXPIRY, (correlation_id,)).fetchone()
    if row is None or correlation_id in answered:
        return UNKNOWN_CORRELATION
    return CORRELATION_EXPIRED if row[0] <= now else ""


class AuditHead:
    """The audit chain's end as committed, kept by the one process that writes the file.

    ``append_audit`` links after the last record instead of reading and decoding the
    last row, and stages what it wrote; the writer's hooks make that the chain's end
    once the transaction commits (``committed``), or forget it when it is rolled back
    (``rolled_back``: the next append reads the file again). ``recent`` holds the
    last ``RECENT_AUDIT`` records committed, in seq order without gaps, so that the
    JSONL copy reads them from memory (``SqliteStore.audit_records``), not the file.
    """

    __slots__ = ("known", "recent", "staged")

    def __init__(self) -> None:
        self.known = False  # recent[-1] is the file's last record
        self.recent: deque[AuditRecord] = deque(maxlen=RECENT_AUDIT)
        self.staged: list[AuditRecord] = []  # written by the transaction under way

    @property
    def last(self) -> AuditRecord | None:
        """The record to link after (the file's last one), if known."""
        if self.staged:
            return self.staged[-1]
        return self.recent[-1] if self.known and self.recent else None

    def committed(self) -> None:
        if self.staged:
            self.recent.extend(self.staged)
            self.known, self.staged = True, []

    def rolled_back(self) -> None:
        self.known, self.staged = False, []
        self.recent.clear()  # the next append reads the file again, and starts it over

    def records(self, after_seq: int, limit: int) -> list[AuditRecord] | None:
        """Up to ``limit`` records after ``after_seq`` from ``recent`` (None: not all held)."""
        recent = self.recent
        if not recent or not recent[0].seq <= after_seq + 1 <= recent[-1].seq + 1:
            return None
        start = after_seq + 1 - recent[0].seq
        # Indexing a deque walks from its nearer end: the follower reads near the newest.
        return [recent[i] for i in range(start, min(start + limit, len(recent)))]


def append_audit(
    conn: sqlite3.Connection,
    drafts: Sequence[AuditDraft],
    audit_key: bytes | None,
    server_id: str = "",
    head: AuditHead | None = None,
) -> list[AuditRecord]:
    """Link ``drafts`` after the chain's last record (``link_many``) and write them.

    ``head``: the last record as the writing process knows it (read from the file
    when it does not).
    """
    last = None if head is None else head.last
    if last is None:
        row = conn.execute("SELECT record FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        last = None if row is None else _AUDIT_DECODER.decode(row[0])
    records = link_many(last, drafts, audit_key, server_id)
    conn.executemany(
        "INSERT INTO audit (seq, record) VALUES (?, ?)",
        [(record.seq, msgspec.json.encode(record)) for record in records],
    )
    if head is not None:
        head.staged.extend(records)
    return records


def _audit_newest_seq(conn: sqlite3.Connection) -> int:
    """The seq of the newest audit record kept (0 when none is, or all were trimmed)."""
    row = conn.execute("SELECT MAX(seq) FROM audit").fetchone()
    return int(row[0] or 0)


def trim_audit(conn: sqlite3.Connection, rule: Retention) -> int:
    lo, hi = conn.execute("SELECT min(seq), max(seq) FROM audit").fetchone()
    if lo is None:
        return 0

    def times() -> Iterator[tuple[int, float]]:
        rows = conn.execute(
            "SELECT seq, record FROM audit WHERE seq >= ? ORDER BY seq LIMIT ?", (lo, rule.limit)
        )
        for seq, raw in rows:
            yield seq, _AUDIT_DECODER.decode(raw).time

    cut = trim_cut(lo, hi, times() if rule.before is not None else (), rule)
    if cut < lo:
        return 0
    [raw] = conn.execute("SELECT record FROM audit WHERE seq = ?", (cut,)).fetchone()
    last = _AUDIT_DECODER.decode(raw)
    conn.execute("DELETE FROM audit WHERE seq <= ?", (cut,))
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (ANCHOR_KEY, format_anchor(last.seq, last.hash)),
    )
    return int(cut - lo + 1)


def _claim(
    conn: sqlite3.Connection,
    agent_id: str,
    instance_id: str,
    session_id: str,
    limit: int,
    now: float,
    max_age: float,
    promote: bool = True,
) -> list[InFlight]:
    """Take up to ``limit`` ready messages, the reply queue's first.

    ``promote``: first move the retries due at ``now`` to the front of their queues
    (False when the caller knows none is due: one statement less).
    """
    if promote:
        _promote_due(conn, now)
    taken: list[InFlight] = []
    for queue_instance in (instance_id, None):  # the reply queue first
        while (wanted := limit - len(taken)) > 0:
            rows = conn.execute(_SELECT_READY, (agent_id, queue_instance, wanted)).fetchall()
            updates = []
            for row in rows:
                message = _message(row)
                if now - message.enqueued_at > max_age:
                    _to_dead_letters(conn, row[0], "expired", now)
                    continue
                delivery = InFlight(
                    delivery_id=new_delivery_id(), session_id=session_id, message=message
                )
                updates.append((session_id, delivery.delivery_id, row[0]))
                taken.append(delivery)
            if updates:
                conn.executemany(
                    "UPDATE messages SET state = 2, session_id = ?, delivery_id = ? WHERE id = ?",
                    updates,
                )
            if len(rows) < wanted:
                break  # this queue is empty
    return taken


def _warm_retries(conn: sqlite3.Connection, now: float) -> int:
    """Read what promoting the retries due at ``now`` reads (on a reader, to cache it)."""
    # The same statements as _promote_due and _to_front, so the same pages; plus the
    # envelopes, which the claim that follows reads.
    rows = conn.execute(_DUE_RETRIES.format(extra=", envelope"), (now,)).fetchall()
    for queue, _ in _by_queue(rows):
        conn.execute(_QUEUE_HEAD, queue).fetchone()
    return len(rows)


def _in_flight_rows(conn: sqlite3.Connection) -> int:
    """Read every in-flight row, as ``release`` of every session does (to cache them)."""
    rows = conn.execute(
        "SELECT id, target_id, instance_id, attempt, envelope FROM messages "
        "WHERE state = 2 ORDER BY position, id"
    ).fetchall()
    return len(rows)


# Retries due at ? (oldest first), and the position at the head of one queue.
_DUE_RETRIES: Final = (
    "SELECT id, target_id, instance_id{extra} FROM messages "
    "WHERE state = 1 AND not_before <= ? ORDER BY not_before, id"
)
_QUEUE_HEAD: Final = (
    "SELECT position FROM messages WHERE target_id = ? AND instance_id IS ? AND state = 0 "
    "ORDER BY position, id LIMIT 1"
)


def _to_dead_letters(conn: sqlite3.Connection, row_id: int, reason: str, now: float) -> None:
    conn.execute(_TO_DEAD_LETTERS, (reason, now, row_id))
    conn.execute("DELETE FROM messages WHERE id = ?", (row_id,))


def _to_front(
    conn: sqlite3.Connection,
    target_id: str,
    instance_id: str | None,
    row_ids: list[int],
    *,
    released: bool = False,
) -> None:
    """Put rows of one queue back at its head, in the given order.

    ``released``: they were in flight; the release counts as an attempt.
    """
    head = conn.execute(_QUEUE_HEAD, (target_id, instance_id)).fetchone()
    first = min(head[0] if head is not None else 0, 0) - len(row_ids)
    conn.executemany(
        _RELEASE_TO if released else "UPDATE messages SET state = 0, position = ? WHERE id = ?",
        [(first + i, row_id) for i, row_id in enumerate(row_ids)],
    )


def _by_queue(rows: list[_Row]) -> Iterable[tuple[tuple[str, str | None], list[_Row]]]:
    """Rows (id, target_id, instance_id, ...) grouped by queue, keeping their order in each."""
    rows.sort(key=lambda row: (row[1], row[2] is not None, row[2] or ""))  # stable
    for queue, group in groupby(rows, key=lambda row: (row[1], row[2])):
        yield queue, list(group)


def _promote_due(conn: sqlite3.Connection, now: float) -> None:
    """Retried messages whose time has come go to the front of their queues."""
    rows = conn.execute(_DUE_RETRIES.format(extra=""), (now,)).fetchall()
    for (target_id, instance_id), group in _by_queue(rows):
        _to_front(conn, target_id, instance_id, [row[0] for row in group])


def _take_delivery(conn: sqlite3.Connection, delivery_id: str) -> tuple[int, InFlight] | None:
    row = conn.execute(_SELECT_DELIVERY, (delivery_id,)).fetchone()
    if row is None:
        return None
    return row[0], InFlight(delivery_id=delivery_id, session_id=row[8], message=_message(row))


def _ack_many(conn: sqlite3.Connection, delivery_ids: Sequence[str]) -> list[InFlight | None]:
    """Each id's delivery (None: not in flight), acked in turn, in two statements per 500 ids."""
    unique = list(dict.fromkeys(delivery_ids))
    found: dict[str, tuple[int, InFlight]] = {}
    for start in range(0, len(unique), _MAX_PARAMETERS):
        chunk = unique[start : start + _MAX_PARAMETERS]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"{_SELECT_DELIVERIES}({marks})", chunk):
            delivery = InFlight(delivery_id=row[9], session_id=row[8], message=_message(row))
            found[row[9]] = (row[0], delivery)
    conn.executemany("DELETE FROM messages WHERE id = ?", [(f[0],) for f in found.values()])
    acked: list[InFlight | None] = []
    for delivery_id in delivery_ids:
        # An id given twice is acked by its first occurrence: the second finds nothing.
        row_delivery = found.pop(delivery_id, None)
        acked.append(None if row_delivery is None else row_delivery[1])
    return acked


def _ack_recorded(
    conn: sqlite3.Connection,
    delivery_ids: Sequence[str],
    draft: Callable[[InFlight], AuditDraft],
    audit_key: bytes | None,
    server_id: str,
    head: AuditHead | None = None,
) -> tuple[list[InFlight | None], list[AuditRecord]]:
    """``ack_many`` and the acked deliveries' audit records, in one transaction."""
    acked = _ack_many(conn, delivery_ids)
    drafts = [draft(d) for d in acked if d is not None]
    return acked, append_audit(conn, drafts, audit_key, server_id, head) if drafts else []


def _release(
    conn: sqlite3.Connection, session_id: str | None, max_attempts: int | None, now: float
) -> int:
    """Return a session's deliveries (every session's, when None) to the front of their queues."""
    select = "SELECT id, target_id, instance_id, attempt FROM messages"
    if session_id is None:
        rows = conn.execute(select + " WHERE state = 2 ORDER BY position, id").fetchall()
    else:
        rows = conn.execute(
            select + " WHERE session_id = ? AND state = 2 ORDER BY position, id", (session_id,)
        ).fetchall()
    requeued = 0
    for (target_id, instance_id), group in _by_queue(rows):  # in the order they were taken
        keep: list[int] = []
        for row_id, _, _, attempt in group:
            if max_attempts is not None and attempt >= max_attempts:
                _to_dead_letters(conn, row_id, "session_lost", now)
            else:
                keep.append(row_id)
        _to_front(conn, target_id, instance_id, keep, released=True)
        requeued += len(keep)
    return requeued


def _next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT not_before FROM messages WHERE state = 1 ORDER BY not_before LIMIT 1"
    ).fetchone()
    return None if row is None else float(row[0])


def dead_letters(conn: sqlite3.Connection, agent_id: str | None) -> list[DeadLetter]:
    if agent_id is None:
        rows = conn.execute(_SELECT_DEAD + " ORDER BY id")
    else:
        rows = conn.execute(_SELECT_DEAD + " WHERE target_id = ? ORDER BY id", (agent_id,))
    return [
        DeadLetter(message=_message(row), reason=row[8], dead_lettered_at=row[9]) for row in rows
    ]


def _find_correlation(
    conn: sqlite3.Connection, correlation_id: str, replier_id: str, now: float
) -> Correlation | str:
    """The open correlation, or the refusal reason (see ``Store.find_correlations``)."""
    row = conn.execute(
        "SELECT correlation_id, requester_id, requester_instance_id, target_id, "
        "request_message_id, expires_at FROM correlations WHERE correlation_id = ?",
        (correlation_id,),
    ).fetchone()
    if row is None:
        return UNKNOWN_CORRELATION
    correlation = Correlation(
        correlation_id=row[0],
        requester_id=row[1],
        requester_instance_id=row[2],
        target_id=row[3],
        request_message_id=row[4],
        expires_at=row[5],
    )
    if correlation.target_id != replier_id:
        return NOT_THE_TARGET
    if correlation.expires_at <= now:
        return CORRELATION_EXPIRED
    return correlation


def _state_values(conn: sqlite3.Connection, agent_id: str) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM state WHERE agent_id = ?", (agent_id,)))


def _state_version(conn: sqlite3.Connection, agent_id: str) -> int:
    row = conn.execute(
        "SELECT version FROM state_versions WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _bump_state_version(conn: sqlite3.Connection, agent_id: str) -> int:
    conn.execute(  # no RETURNING: it needs SQLite 3.35
        "INSERT INTO state_versions (agent_id, version) VALUES (?, 1) "
        "ON CONFLICT (agent_id) DO UPDATE SET version = version + 1",
        (agent_id,),
    )
    return _state_version(conn, agent_id)


class SqliteStore:
    """A ``Store`` in one SQLite file; get one from ``open_sqlite_store``."""

    def __init__(
        self,
        writer: SqliteWriter,
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
        if writer.on_commit is not None:
            raise ValueError("a writer serves one store (it keeps the audit chain's end)")
        self._head = AuditHead()  # the chain's end: one process writes the file
        writer.on_commit, writer.on_rollback = self._head.committed, self._head.rolled_back
        self._audit_key = audit_key
        self.audit_key = audit_key
        self.server_id = server_id or default_server_id()
        # The audit records not yet flushed: (commit number, highest seq it wrote), in
        # commit order. ``audit_records`` reads up to ``_durable_seq`` only.
        self._unflushed: deque[tuple[int, int]] = deque()
        self._durable_seq = durable_seq

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

    async def enqueue_many(self, items: Sequence[EnqueueItem]) -> list[Enqueued]:
        if not items:
            return []
        if any(item.message.instance_id == "" for item in items):
            raise ValueError("an instance id is never empty (None names the shared queue)")
        # One transaction for the batch; its flush is shared with concurrent callers.
        written, _ = await self._writer.call(
            _enqueue_many,
            tuple(items),
            self.limits.max_queue_length,
            self._audit_key,
            self.server_id,
            self._head,
            durable=True,
        )
        self._wrote_audit(written)
        return [CorrelationRefused(w) if isinstance(w, str) else w for w in written]

    async def route_batch(
        self,
        items: Sequence[EnqueueItem],
        *,
        acked: Callable[[InFlight], AuditDraft] | None = None,
        claims: Sequence[Claim] = (),
        now: float = 0.0,
    ) -> Routed:
        def transaction(
            conn: sqlite3.Connection,
            items: Sequence[EnqueueItem],
            max_length: int,
            audit_key: bytes | None,
            server_id: str,
            draft: Callable[[InFlight], AuditDraft] | None,
            head: AuditHead,
            claims: Sequence[Claim],
            now: float,
            promote: bool,
            max_age: float,
        ) -> tuple[Any, ...]:
            """``enqueue_many``, the written items' acks with their records, the claims."""
            # With a retry due, it goes first: no claim takes the new rows on arrival.
            early = () if promote else claims
            written, on_arrival = _enqueue_many(
                conn, items, max_length, audit_key, server_id, head, early, now, max_age
            )
            if promote:
                on_arrival = [None] * len(claims)
            ids = [
                item.acks
                for item, record in zip(items, written, strict=True)
                if item.acks and isinstance(record, AuditRecord)
            ]
            acks: list[InFlight] = []
            records: list[AuditRecord] = []
            if ids:
                if draft is None:
                    acks = [d for d in _ack_many(conn, ids) if d is not None]
                else:
                    taken, records = _ack_recorded(conn, ids, draft, audit_key, server_id, head)
                    acks = [d for d in taken if d is not None]
            claimed: list[list[InFlight]] = []
            promoted = promote
            for claim, taken_on_arrival in zip(claims, on_arrival, strict=True):
                if taken_on_arrival is not None:
                    claimed.append(taken_on_arrival)
                    continue
                claimed.append(  # retries due are promoted once, by the first claim
                    _claim(
                        conn,
                        claim.agent_id,
                        claim.instance_id,
                        claim.session_id,
                        claim.limit,
                        now,
                        max_age,
                        promote,
                    )
                )
                promote = False
            if promoted:  # set here, on the loop, so no later retry's time is overwritten
                self._next_due = _next_due(conn)
            return written, acks, records, claimed

        if any(item.message.instance_id == "" for item in items):
            raise ValueError("an instance id is never empty (None names the shared queue)")
        promote = bool(claims) and self._retry_due(now)
        if promote:  # see ``claim``: read the rows the promotion touches first, off the loop
            await self._writer.read(_warm_retries, now)
        # One transaction and one flush: the items, the acks of what they answer, and the
        # claims that take the new messages straight to their targets' idle sessions.
        written, acks, records, claimed = await self._writer.call(
            transaction,
            tuple(items),
            self.limits.max_queue_length,
            self._audit_key,
            self.server_id,
            acked,
            self._head,
            tuple(claims),
            now,
            promote,
            self.limits.max_message_age,
            durable=bool(items),
        )
        self._wrote_audit(written)
        self._wrote_audit(records)
        results = [CorrelationRefused(w) if isinstance(w, str) else w for w in written]
        return Routed(results=results, acked=acks, ack_records=records, claimed=claimed)

    def _retry_due(self, now: float) -> bool:
        """Whether a delayed retry may be due at ``now`` (then a claim promotes it first)."""
        return self._next_due is not None and now >= self._next_due

    # -- audit -----------------------------------------------------------------------------

    async def append_audit(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        # Not durable: no client waits for these records (a message's own record is
        # written with its enqueue), and the JSONL file copies only flushed records.
        records = await self._writer.call(
            append_audit, tuple(drafts), self._audit_key, self.server_id, self._head
        )
        self._wrote_audit(records)
        return records

    async def audit_records(
        self, after_seq: int = 0, limit: int = 1000, *, flushed_only: bool = False
    ) -> list[AuditRecord]:
        def transaction(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[AuditRecord]:
            if limit <= 0:
                return []
            rows = conn.execute(
                "SELECT record FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
            return [_AUDIT_DECODER.decode(row[0]) for row in rows]

        # Durable either way: what this returns may be copied (the JSONL file), so it
        # must never be a record that a power loss could take back from the store.
        if not flushed_only:  # flush what was committed so far, then read it
            return await self._writer.call(transaction, after_seq, limit, durable=True)
        # Read only what a flush already covers, waiting for none of its own; later
        # records appear once a flush (an accepted message's, or the background one
        # within a second) covers them. Seqs have no gaps, so the count bounds the read.
        # This server's recent records are in memory (``AuditHead``); older ones may be
        # cold pages: read in a worker thread (``SqliteWriter.read``).
        up_to = self.durable_audit_seq()
        if up_to <= after_seq:
            return []
        limit = min(limit, up_to - after_seq)
        held = self._head.records(after_seq, limit)
        if held is not None and (len(held) == limit or limit <= 0):
            await trio.lowlevel.checkpoint()
            return held
        return await self._writer.read(transaction, after_seq, limit)

    async def trim_audit(self, rule: Retention) -> int:
        return await self._writer.call(trim_audit, rule)

    async def audit_anchor(self) -> tuple[int, str]:
        def transaction(conn: sqlite3.Connection) -> tuple[int, str]:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (ANCHOR_KEY,)).fetchone()
            return parse_anchor(None if row is None else row[0])

        return await self._writer.call(transaction)

    async def claim(
        self, agent_id: str, instance_id: str, session_id: str, limit: int, now: float
    ) -> list[InFlight]:
        claim = Claim(
            agent_id=agent_id, instance_id=instance_id, session_id=session_id, limit=limit
        )
        routed = await self.route_batch((), claims=(claim,), now=now)
        return routed.claimed[0]

    async def ack_many(self, delivery_ids: Sequence[str]) -> list[InFlight | None]:
        if not delivery_ids:
            return []
        return await self._writer.call(_ack_many, tuple(delivery_ids))

    async def ack_recorded(
        self, delivery_ids: Sequence[str], draft: Callable[[InFlight], AuditDraft]
    ) -> tuple[list[InFlight | None], list[AuditRecord] | None]:
        # Not durable, like an ack and a delivery's record: a power loss that undoes
        # them redelivers the message, which is then recorded again.
        acked, records = await self._writer.call(
            _ack_recorded, tuple(delivery_ids), draft, self._audit_key, self.server_id, self._head
        )
        self._wrote_audit(records)
        return acked, records

    async def retry(self, delivery_id: str, not_before: float) -> InFlight | None:
        def transaction(
            conn: sqlite3.Connection, delivery_id: str, not_before: float
        ) -> InFlight | None:
            found = _take_delivery(conn, delivery_id)
            if found is not None:
                conn.execute(
                    "UPDATE messages SET state = 1, attempt = attempt + 1, not_before = ?, "
                    "session_id = NULL, delivery_id = NULL WHERE id = ?",
                    (not_before, found[0]),
                )
                return found[1]
            return None

        retried = await self._writer.call(transaction, delivery_id, not_before)
        if retried is not None:
            due = self._next_due
            self._next_due = not_before if due is None else min(due, not_before)
        return retried

    async def dead_letter(self, delivery_id: str, reason: str, now: float) -> InFlight | None:
        def transaction(
            conn: sqlite3.Connection, delivery_id: str, reason: str, now: float
        ) -> InFlight | None:
            found = _take_delivery(conn, delivery_id)
            if found is not None:
                _to_dead_letters(conn, found[0], reason, now)
                return found[1]
            return None

        return await self._writer.call(transaction, delivery_id, reason, now, durable=True)

    async def release_session(self, session_id: str, max_attempts: int, now: float) -> int:
        return await self._writer.call(_release, session_id, max_attempts, now)

    async def watch(self, wake: Callable[[str, str | None], None], *, task_status: Any) -> None:
        # One server per file: the router already rings its own sessions.
        task_status.started()
        await trio.sleep_forever()

    async def next_due(self) -> float | None:
        return await self._writer.call(_next_due)

    async def pending_agents(self, now: float) -> set[str]:
        def transaction(conn: sqlite3.Connection, now: float) -> set[str]:
            _promote_due(conn, now)
            return {row[0] for row in conn.execute("SELECT DISTINCT target_id FROM queues")}

        return await self._writer.call(transaction, now)

    async def dead_letters(self, agent_id: str | None = None) -> list[DeadLetter]:
        return await self._writer.call(dead_letters, agent_id)

    async def replay_dead_letters(
        self, message_ids: Sequence[str] | None, now: float
    ) -> list[DeadLetter]:
        def transaction(
            conn: sqlite3.Connection, message_ids: Sequence[str] | None, now: float
        ) -> list[DeadLetter]:
            if message_ids is None:
                rows = conn.execute(
                    "SELECT id, " + _SELECT_DEAD.removeprefix("SELECT ") + " ORDER BY id"
                )
            else:
                marks = ",".join("?" * len(message_ids))
                rows = conn.execute(
                    "SELECT id, "
                    + _SELECT_DEAD.removeprefix("SELECT ")
                    + f" WHERE message_id IN ({marks}) ORDER BY id",
                    tuple(message_ids),
                )
            replayed = []
            for row in rows.fetchall():
                dead = DeadLetter(
                    message=_message(row[1:]), reason=row[9], dead_lettered_at=row[10]
                )
                message = dead.message
                conn.execute(
                    "INSERT INTO messages (message_id, target_id, instance_id, envelope, "
                    "enqueued_at, attempt, not_before, state, position) "
                    "VALUES (?, ?, ?, ?, ?, 1, 0, 0, 0)",
                    (
                        message.message_id,
                        message.target_id,
                        message.instance_id,
                        message.envelope_json,
                        now,
                    ),
                )
                conn.execute("DELETE FROM dead_letters WHERE id = ?", (row[0],))
                replayed.append(dead)
            return replayed

        ids = None if message_ids is None else tuple(message_ids)
        return await self._writer.call(transaction, ids, now, durable=True)

    async def queue_depth(self, agent_id: str) -> int:
        def transaction(conn: sqlite3.Connection, agent_id: str) -> int:
            row = conn.execute(
                "SELECT ready FROM queues WHERE target_id = ? AND instance_id = ''", (agent_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._writer.call(transaction, agent_id)

    # -- correlations --------------------------------------------------------------------

    async def find_correlations(
        self, finds: Sequence[tuple[str, str]], now: float
    ) -> list[Correlation | CorrelationRefused]:
        def transaction(
            conn: sqlite3.Connection, finds: tuple[tuple[str, str], ...], now: float
        ) -> list[Correlation | str]:
            """``find_correlation`` for each ``(correlation_id, replier_id)``, in one operation."""
            return [_find_correlation(conn, cid, replier, now) for cid, replier in finds]

        if not finds:
            return []
        found = await self._writer.call(transaction, tuple(finds), now)
        return [CorrelationRefused(f) if isinstance(f, str) else f for f in found]

    async def sweep(self, now: float, reply_max_age: float) -> int:
        def transaction(conn: sqlite3.Connection, now: float, reply_max_age: float) -> int:
            """Delete long-expired correlations and stale replies (see ``Store.sweep``)."""
            gone = conn.execute(
                "DELETE FROM correlations WHERE expires_at <= ?", (now - CORRELATION_GRACE,)
            ).rowcount
            # Waiting (state 0) or delayed (1) replies only: one in flight is its session's.
            gone += conn.execute(
                "DELETE FROM messages WHERE instance_id IS NOT NULL AND state IN (0, 1) "
                "AND enqueued_at < ?",
                (now - reply_max_age,),
            ).rowcount
            return gone

        return await self._writer.call(transaction, now, reply_max_age)

    # -- state -----------------------------------------------------------------------------

    async def read_state(self, agent_id: str) -> StateSnapshot:
        def transaction(conn: sqlite3.Connection, agent_id: str) -> StateSnapshot:
            """The state and its version, read in one transaction (so they agree)."""
            return StateSnapshot(
                version=_state_version(conn, agent_id), values=_state_values(conn, agent_id)
            )

        # Durable: a version handed out is one a power loss cannot take back.
        return await self._writer.call(transaction, agent_id, durable=True)

    async def update_state(
        self, agent_id: str, updates: dict[str, str], *, expected_version: int | None = None
    ) -> int:
        def transaction(
            conn: sqlite3.Connection,
            agent_id: str,
            updates: dict[str, str],
            max_size: int,
            expected_version: int | None = None,
        ) -> int:
            """Check the version, write, check the size: a refusal writes nothing."""
            if expected_version is not None:
                version = _state_version(conn, agent_id)
                if version != expected_version:
                    raise StateVersionConflict(agent_id, expected_version, version)
            if not updates:
                return _state_version(conn, agent_id)
            # Size as MemoryStore counts it: characters of every key and value.
            conn.executemany(
                "INSERT INTO state (agent_id, key, value, size) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, "
                "size = excluded.size",
                [(agent_id, key, value, len(key) + len(value)) for key, value in updates.items()],
            )
            row = conn.execute(
                "SELECT total(size) FROM state WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row[0] > max_size:
                raise StateTooLargeError(agent_id)  # the writer rolls this operation back
            return _bump_state_version(conn, agent_id)

        return await self._writer.call(
            transaction,
            agent_id,
            dict(updates),
            self.limits.max_state_bytes,
            expected_version,
            durable=True,
        )

    async def reset_state(self, agent_id: str) -> int:
        def transaction(conn: sqlite3.Connection, agent_id: str) -> int:
            conn.execute("DELETE FROM state WHERE agent_id = ?", (agent_id,))
            return _bump_state_version(conn, agent_id)

        return await self._writer.call(transaction, agent_id, durable=True)


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
    about the last second); see ``writer``. On
    exit the calls under way finish and the file is closed, within
    ``shutdown_timeout``.

    Raises ``StoreUnusableError`` if the file is from a newer mas, is not a mas
    store, or is in use by another process.
    """
    async with open_writer(path, sync=sync, shutdown_timeout=shutdown_timeout) as writer:
        # The only clock reading of the store: no caller can pass `now` to a restart.
        # What a previous process left in flight may be anywhere in a large file: read
        # it in a worker thread first, so that the release on the event loop finds it cached.
        await writer.read(_in_flight_rows)
        await writer.call(_release, None, release_max_attempts, time.time())
        # Durable: the records a previous process left are copied to the JSONL file.
        newest = await writer.call(_audit_newest_seq, durable=True)
        due = await writer.call(_next_due)
        yield SqliteStore(writer, limits, audit_key=audit_key, durable_seq=newest, next_due=due)
