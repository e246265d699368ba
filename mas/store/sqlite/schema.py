"""The SQLite store's file: connection settings, schema versions, errors (synchronous).

Used only by the store's writer thread. ``connect`` opens a file, sets the
pragmas every connection needs (WAL, ``synchronous=FULL``, foreign keys, busy
timeout) and brings the schema up to ``SCHEMA_VERSION``.

Versions
    ``PRAGMA user_version`` is the schema version and ``PRAGMA application_id``
    marks the file as a mas store. ``MIGRATIONS[v]`` takes a file from version
    ``v`` to ``v + 1``; all pending steps run in one transaction, so a file is
    always at a version this code knows. Version 2 is added by appending a tuple
    of statements, never by editing an earlier one. A file from a newer version,
    or a database that is not a mas store, is refused.

Errors::

    MasError
    └── StoreError                 the store failed: I/O error, full disk, closed
        └── StoreUnusableError     (also a ConfigError) the file cannot be used:
                                   newer schema, not a mas store, in use elsewhere
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Final

from ...errors import ConfigError
from ...errors import StoreError as StoreError

APPLICATION_ID: Final = 0x6D617331  # "mas1": PRAGMA application_id of a mas store file
BUSY_TIMEOUT_MS: Final = 5_000  # ms a statement waits for another connection's lock
JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024  # bytes the WAL file shrinks to after a checkpoint


class StoreUnusableError(StoreError, ConfigError):
    """The file cannot be this server's store: newer schema, not a mas store, or busy."""


# Queue rows: ``state`` 0 = waiting (ready), 1 = delayed by a retry until
# ``not_before``, 2 = in flight to ``session_id`` as ``delivery_id``. A queue
# is (target_id, instance_id); NULL instance_id is the agent's shared queue.
# Order within a queue is (position, id): new rows get position 0 and a growing
# id; a row put back in front gets a position below the queue's current head.
# ``queues`` counts waiting rows per queue (kept by triggers; '' is the shared
# queue) so the length bound and ``pending_agents`` never scan a queue.
# ``audit`` holds the one hash chain: record ``seq`` (from 1, or from after the
# anchor that retention keeps in ``meta`` as 'audit_anchor'; no gaps) as JSON.
_V1: Final = (
    """CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        target_id TEXT NOT NULL,
        instance_id TEXT,
        envelope BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        attempt INTEGER NOT NULL,
        not_before REAL NOT NULL,
        state INTEGER NOT NULL CHECK (state IN (0, 1, 2)),
        position INTEGER NOT NULL,
        session_id TEXT,
        delivery_id TEXT,
        CHECK ((state = 2) = (delivery_id IS NOT NULL AND session_id IS NOT NULL))
    )""",
    "CREATE INDEX messages_ready ON messages (target_id, instance_id, position) WHERE state = 0",
    "CREATE INDEX messages_delayed ON messages (not_before) WHERE state = 1",
    "CREATE UNIQUE INDEX messages_delivery ON messages (delivery_id) WHERE state = 2",
    "CREATE INDEX messages_session ON messages (session_id) WHERE state = 2",
    """CREATE TABLE queues (
        target_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        ready INTEGER NOT NULL,
        PRIMARY KEY (target_id, instance_id)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER messages_ready_insert AFTER INSERT ON messages WHEN new.state = 0
    BEGIN
        INSERT INTO queues VALUES (new.target_id, ifnull(new.instance_id, ''), 1)
            ON CONFLICT DO UPDATE SET ready = ready + 1;
    END""",
    """CREATE TRIGGER messages_ready_return AFTER UPDATE OF state ON messages
    WHEN old.state <> 0 AND new.state = 0
    BEGIN
        INSERT INTO queues VALUES (new.target_id, ifnull(new.instance_id, ''), 1)
            ON CONFLICT DO UPDATE SET ready = ready + 1;
    END""",
    """CREATE TRIGGER messages_ready_take AFTER UPDATE OF state ON messages
    WHEN old.state = 0 AND new.state <> 0
    BEGIN
        UPDATE queues SET ready = ready - 1
            WHERE target_id = old.target_id AND instance_id = ifnull(old.instance_id, '');
        DELETE FROM queues
            WHERE target_id = old.target_id AND instance_id = ifnull(old.instance_id, '')
            AND ready = 0;
    END""",
    """CREATE TRIGGER messages_ready_delete AFTER DELETE ON messages WHEN old.state = 0
    BEGIN
        UPDATE queues SET ready = ready - 1
            WHERE target_id = old.target_id AND instance_id = ifnull(old.instance_id, '');
        DELETE FROM queues
            WHERE target_id = old.target_id AND instance_id = ifnull(old.instance_id, '')
            AND ready = 0;
    END""",
    """CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        target_id TEXT NOT NULL,
        instance_id TEXT,
        envelope BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        attempt INTEGER NOT NULL,
        not_before REAL NOT NULL,
        reason TEXT NOT NULL,
        dead_lettered_at REAL NOT NULL
    )""",
    "CREATE INDEX dead_letters_target ON dead_letters (target_id)",
    """CREATE TABLE correlations (
        correlation_id TEXT PRIMARY KEY,
        requester_id TEXT NOT NULL,
        requester_instance_id TEXT NOT NULL,
        target_id TEXT NOT NULL,
        request_message_id TEXT NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX correlations_expiry ON correlations (expires_at)",
    """CREATE TABLE state (
        agent_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (agent_id, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        record BLOB NOT NULL
    )""",
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    "INSERT INTO meta VALUES ('created_at_version', '1')",
)

# Version 2: each agent state's version (see ``store.base``). A row is kept on
# reset, so a version never goes back; an agent without a row is at version 0.
_V2: Final = (
    """CREATE TABLE state_versions (
        agent_id TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1, _V2)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``path`` (created if missing) as a mas store at ``SCHEMA_VERSION``.

    Raises ``StoreUnusableError`` when the file cannot be used, with the reason.
    The connection is in autocommit mode: the caller issues BEGIN and COMMIT.
    ``check_same_thread=False`` lets a thread other than the opener use it (the
    caller then makes sure that only one thread at a time does).
    """
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise StoreUnusableError(f"cannot open the SQLite store {path}: {exc}") from exc
    try:
        _configure(conn, path)
        _migrate(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise StoreUnusableError(f"cannot use {path} as the SQLite store: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def lock_store(path: Path) -> int | None:
    """Take the store's lock file (``<path>.lock``) so one process at a time serves it.

    Returns the file descriptor to ``release_store`` later, or None where file
    locks are not available (Windows). The lock goes when the process does, so
    a killed server never leaves its file locked.
    """
    if sys.platform == "win32":
        return None
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreUnusableError(f"cannot create the store lock file {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StoreUnusableError(
            f"{path} is in use by another mas process (lock file {lock_path}); "
            "stop it or name another file"
        ) from exc
    return fd


def release_store(fd: int | None) -> None:
    """Give back the lock ``lock_store`` took."""
    if fd is not None:
        os.close(fd)


def _pragma(conn: sqlite3.Connection, name: str) -> int | str:
    row = conn.execute(f"PRAGMA {name}").fetchone()
    value: int | str = row[0]
    return value


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = _pragma(conn, "journal_mode = WAL")
    if mode != "wal":
        raise StoreUnusableError(
            f"{path}: SQLite cannot use write-ahead logging here (journal mode {mode!r}); "
            "put the store on a local file system"
        )
    # FULL for any user of a bare connection; the store's writer lowers it to NORMAL
    # and flushes the WAL itself, off the event loop (see writer).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _pragma(conn, "user_version")
        application_id = _pragma(conn, "application_id")
        assert isinstance(version, int)
        if application_id not in (0, APPLICATION_ID) or (application_id == 0 and _has_tables(conn)):
            raise StoreUnusableError(
                f"{path} is an SQLite database but not a mas store; name another file"
            )
        if version > SCHEMA_VERSION:
            raise StoreUnusableError(
                f"{path} has store schema version {version}, newer than this version of mas "
                f"supports ({SCHEMA_VERSION}); upgrade mas or name another file"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _has_tables(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
    ).fetchone()
    return bool(row[0])
