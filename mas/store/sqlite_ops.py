"""The SQLite store's operations: plain functions of a connection (synchronous).

Each one is run by the writer thread (``sqlite_writer``) inside its own
savepoint of a group-committed transaction, so each is atomic: one that raises
changes nothing. Tables and their meaning are in ``sqlite_schema``; queue order
is (position, id), and a message put back in front of its queue gets a
position below the queue's head (``_to_front``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby
from typing import Any, Final

import msgspec

from ..audit.chain import link
from ..audit.record import AuditDraft, AuditRecord
from ..audit.retention import ANCHOR_KEY, Retention, format_anchor, parse_anchor, trim_cut
from ..envelope import new_delivery_id
from .base import (
    CORRELATION_EXPIRED,
    CORRELATION_GRACE,
    NOT_THE_TARGET,
    UNKNOWN_CORRELATION,
    Correlation,
    DeadLetter,
    EnqueueItem,
    InFlight,
    QueuedMessage,
    QueueFullError,
    StateSnapshot,
    StateTooLargeError,
    StateVersionConflict,
)

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
_INSERT_MESSAGE: Final = (
    "INSERT INTO messages (message_id, target_id, instance_id, envelope, enqueued_at, "
    "attempt, not_before, state, position) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)"
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


def enqueue(
    conn: sqlite3.Connection,
    message: QueuedMessage,
    max_length: int,
    audit: AuditDraft | None,
    audit_key: bytes | None,
) -> AuditRecord | None:
    if _ready(conn, message.target_id, message.instance_id) >= max_length:
        raise QueueFullError(message.target_id)
    conn.execute(_INSERT_MESSAGE, _message_row(message))
    # In the same savepoint: the message and its record exist together or not at all.
    return None if audit is None else append_audit(conn, (audit,), audit_key)[0]


def enqueue_many(
    conn: sqlite3.Connection,
    items: Sequence[EnqueueItem],
    max_length: int,
    audit_key: bytes | None,
) -> list[AuditRecord | str | None]:
    """Enqueue the items whose queue has room (see ``Store.enqueue_many``), in one savepoint.

    An item that answers a correlation no longer open gets its refusal reason instead.
    """
    room: dict[tuple[str, str | None], int] = {}
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
            left = max_length - _ready(conn, *key)
        fits = left > 0
        taken.append(fits)
        if fits:
            accepted.append(item)
            left -= 1
            if item.answers:
                answered.append(item.answers)
        room[key] = left
    if not accepted:
        return [fits if isinstance(fits, str) else None for fits in taken]
    conn.executemany(_INSERT_MESSAGE, [_message_row(item.message) for item in accepted])
    correlations = [_correlation_row(i.correlation) for i in accepted if i.correlation]
    if correlations:
        conn.executemany(_INSERT_CORRELATION, correlations)
    if answered:
        conn.executemany(_DELETE_CORRELATION, [(cid,) for cid in answered])
    records = iter(append_audit(conn, [item.audit for item in accepted], audit_key))
    return [
        next(records) if fits is True else (fits if isinstance(fits, str) else None)
        for fits in taken
    ]


def enqueue_acking(
    conn: sqlite3.Connection,
    items: Sequence[EnqueueItem],
    max_length: int,
    audit_key: bytes | None,
    draft: Callable[[InFlight], AuditDraft],
) -> tuple[list[AuditRecord | str | None], list[InFlight], list[AuditRecord]]:
    """``enqueue_many``, then the acks of the written items and their records, in one go."""
    written = enqueue_many(conn, items, max_length, audit_key)
    ids = [
        item.acks
        for item, record in zip(items, written, strict=True)
        if item.acks and isinstance(record, AuditRecord)
    ]
    if not ids:
        return written, [], []
    acked, records = ack_recorded(conn, ids, draft, audit_key)
    return written, [d for d in acked if d is not None], records


def _unanswerable(
    conn: sqlite3.Connection, correlation_id: str, answered: list[str], now: float
) -> str:
    """Why a reply can no longer consume ``correlation_id`` ("" if it can)."""
    row = conn.execute(_CORRELATION_EXPIRY, (correlation_id,)).fetchone()
    if row is None or correlation_id in answered:
        return UNKNOWN_CORRELATION
    return CORRELATION_EXPIRED if row[0] <= now else ""


def append_audit(
    conn: sqlite3.Connection, drafts: Sequence[AuditDraft], audit_key: bytes | None
) -> list[AuditRecord]:
    row = conn.execute("SELECT record FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev = None if row is None else _AUDIT_DECODER.decode(row[0])
    records: list[AuditRecord] = []
    for draft in drafts:
        prev = link(prev, draft, audit_key)
        records.append(prev)
    conn.executemany(
        "INSERT INTO audit (seq, record) VALUES (?, ?)",
        [(record.seq, msgspec.json.encode(record)) for record in records],
    )
    return records


def audit_records(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[AuditRecord]:
    if limit <= 0:
        return []
    rows = conn.execute(
        "SELECT record FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
    )
    return [_AUDIT_DECODER.decode(row[0]) for row in rows]


def audit_newest_seq(conn: sqlite3.Connection) -> int:
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


def audit_anchor(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (ANCHOR_KEY,)).fetchone()
    return parse_anchor(None if row is None else row[0])


def claim(
    conn: sqlite3.Connection,
    agent_id: str,
    instance_id: str,
    session_id: str,
    limit: int,
    now: float,
    max_age: float,
) -> list[InFlight]:
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
            conn.executemany(
                "UPDATE messages SET state = 2, session_id = ?, delivery_id = ? WHERE id = ?",
                updates,
            )
            if len(rows) < wanted:
                break  # this queue is empty
    return taken


def claim_promoting(
    conn: sqlite3.Connection,
    agent_id: str,
    instance_id: str,
    session_id: str,
    limit: int,
    now: float,
    max_age: float,
) -> tuple[list[InFlight], float | None]:
    """``claim``, and the earliest retry still scheduled after it (None: none is)."""
    taken = claim(conn, agent_id, instance_id, session_id, limit, now, max_age)
    return taken, next_due(conn)


def warm_promotion(conn: sqlite3.Connection, now: float) -> int:
    """Read what promoting the retries due at ``now`` reads (on a reader, to cache it)."""
    # The same statements as _promote_due and _to_front, so the same pages; plus the
    # envelopes, which the claim that follows reads.
    rows = conn.execute(_DUE_RETRIES.format(extra=", envelope"), (now,)).fetchall()
    for queue, _ in _by_queue(rows):
        conn.execute(_QUEUE_HEAD, queue).fetchone()
    return len(rows)


def in_flight_rows(conn: sqlite3.Connection) -> int:
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


def ack(conn: sqlite3.Connection, delivery_id: str) -> InFlight | None:
    found = _take_delivery(conn, delivery_id)
    if found is not None:
        conn.execute("DELETE FROM messages WHERE id = ?", (found[0],))
        return found[1]
    return None


def ack_many(conn: sqlite3.Connection, delivery_ids: Sequence[str]) -> list[InFlight | None]:
    """What ``ack`` of each id in turn would give, in two statements per 500 ids."""
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


def ack_recorded(
    conn: sqlite3.Connection,
    delivery_ids: Sequence[str],
    draft: Callable[[InFlight], AuditDraft],
    audit_key: bytes | None,
) -> tuple[list[InFlight | None], list[AuditRecord]]:
    """``ack_many`` and the acked deliveries' audit records, in one transaction."""
    acked = ack_many(conn, delivery_ids)
    drafts = [draft(d) for d in acked if d is not None]
    return acked, append_audit(conn, drafts, audit_key) if drafts else []


def retry(conn: sqlite3.Connection, delivery_id: str, not_before: float) -> InFlight | None:
    found = _take_delivery(conn, delivery_id)
    if found is not None:
        conn.execute(
            "UPDATE messages SET state = 1, attempt = attempt + 1, not_before = ?, "
            "session_id = NULL, delivery_id = NULL WHERE id = ?",
            (not_before, found[0]),
        )
        return found[1]
    return None


def dead_letter(
    conn: sqlite3.Connection, delivery_id: str, reason: str, now: float
) -> InFlight | None:
    found = _take_delivery(conn, delivery_id)
    if found is not None:
        _to_dead_letters(conn, found[0], reason, now)
        return found[1]
    return None


def release(
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


def next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT not_before FROM messages WHERE state = 1 ORDER BY not_before LIMIT 1"
    ).fetchone()
    return None if row is None else float(row[0])


def pending_agents(conn: sqlite3.Connection, now: float) -> set[str]:
    _promote_due(conn, now)
    return {row[0] for row in conn.execute("SELECT DISTINCT target_id FROM queues")}


def dead_letters(conn: sqlite3.Connection, agent_id: str | None) -> list[DeadLetter]:
    if agent_id is None:
        rows = conn.execute(_SELECT_DEAD + " ORDER BY id")
    else:
        rows = conn.execute(_SELECT_DEAD + " WHERE target_id = ? ORDER BY id", (agent_id,))
    return [
        DeadLetter(message=_message(row), reason=row[8], dead_lettered_at=row[9]) for row in rows
    ]


def replay_dead_letters(
    conn: sqlite3.Connection, message_ids: Sequence[str] | None, now: float
) -> list[DeadLetter]:
    if message_ids is None:
        rows = conn.execute("SELECT id, " + _SELECT_DEAD.removeprefix("SELECT ") + " ORDER BY id")
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
        dead = DeadLetter(message=_message(row[1:]), reason=row[9], dead_lettered_at=row[10])
        message = dead.message
        conn.execute(
            "INSERT INTO messages (message_id, target_id, instance_id, envelope, enqueued_at, "
            "attempt, not_before, state, position) VALUES (?, ?, ?, ?, ?, 1, 0, 0, 0)",
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


def queue_depth(conn: sqlite3.Connection, agent_id: str) -> int:
    row = conn.execute(
        "SELECT ready FROM queues WHERE target_id = ? AND instance_id = ''", (agent_id,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def put_correlation(conn: sqlite3.Connection, c: Correlation) -> None:
    conn.execute(_INSERT_CORRELATION, _correlation_row(c))


def take_correlation(
    conn: sqlite3.Connection, correlation_id: str, replier_id: str, now: float
) -> Correlation | str:
    """The correlation, consumed; or the refusal reason."""
    found = find_correlation(conn, correlation_id, replier_id, now)
    if isinstance(found, Correlation):
        conn.execute(_DELETE_CORRELATION, (correlation_id,))
    return found


def find_correlation(
    conn: sqlite3.Connection, correlation_id: str, replier_id: str, now: float
) -> Correlation | str:
    """The open correlation, or the refusal reason (see ``Store.take_correlation``)."""
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


def find_correlations(
    conn: sqlite3.Connection, finds: tuple[tuple[str, str], ...], now: float
) -> list[Correlation | str]:
    """``find_correlation`` for each ``(correlation_id, replier_id)``, in one operation."""
    return [find_correlation(conn, cid, replier, now) for cid, replier in finds]


def sweep(conn: sqlite3.Connection, now: float, reply_max_age: float) -> int:
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


def get_state(conn: sqlite3.Connection, agent_id: str) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM state WHERE agent_id = ?", (agent_id,)))


def state_version(conn: sqlite3.Connection, agent_id: str) -> int:
    row = conn.execute(
        "SELECT version FROM state_versions WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def read_state(conn: sqlite3.Connection, agent_id: str) -> StateSnapshot:
    """The state and its version, read in one transaction (so they agree)."""
    return StateSnapshot(version=state_version(conn, agent_id), values=get_state(conn, agent_id))


def _bump_state_version(conn: sqlite3.Connection, agent_id: str) -> int:
    conn.execute(  # no RETURNING: it needs SQLite 3.35
        "INSERT INTO state_versions (agent_id, version) VALUES (?, 1) "
        "ON CONFLICT (agent_id) DO UPDATE SET version = version + 1",
        (agent_id,),
    )
    return state_version(conn, agent_id)


def update_state(
    conn: sqlite3.Connection,
    agent_id: str,
    updates: dict[str, str],
    max_size: int,
    expected_version: int | None = None,
) -> int:
    """Check the version, write, check the size: one savepoint, so a refusal writes nothing."""
    if expected_version is not None:
        version = state_version(conn, agent_id)
        if version != expected_version:
            raise StateVersionConflict(agent_id, expected_version, version)
    if not updates:
        return state_version(conn, agent_id)
    # Size as MemoryStore counts it: characters of every key and value.
    conn.executemany(
        "INSERT INTO state (agent_id, key, value, size) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (agent_id, key) DO UPDATE SET value = excluded.value, size = excluded.size",
        [(agent_id, key, value, len(key) + len(value)) for key, value in updates.items()],
    )
    row = conn.execute("SELECT total(size) FROM state WHERE agent_id = ?", (agent_id,)).fetchone()
    if row[0] > max_size:
        raise StateTooLargeError(agent_id)  # the writer rolls this operation back
    return _bump_state_version(conn, agent_id)


def reset_state(conn: sqlite3.Connection, agent_id: str) -> int:
    conn.execute("DELETE FROM state WHERE agent_id = ?", (agent_id,))
    return _bump_state_version(conn, agent_id)
