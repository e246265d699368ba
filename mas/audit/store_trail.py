"""Reading the authoritative audit chain in a store, read-only (blocking I/O, for the CLI).

``SqliteTrail`` opens the SQLite file with ``mode=ro``: it takes no lock and
writes nothing, so it reads alongside a running server (WAL lets readers in
while the server writes; each read sees the chain as last committed).
``RedisTrail`` reads the list ``<ns>:audit`` and its anchor with one script
per chunk, so a trim that runs between chunks cannot make records seem lost.

Both give the anchor (seq and hash of the last record trimmed by retention,
``(0, GENESIS)`` when none was) and records by seq. A stored record that does
not decode is an :class:`~mas.audit.diagnosis.Unreadable` entry. Failing to
open or read raises :class:`TrailError` with words for the user.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from mas.audit.diagnosis import Unreadable
from mas.audit.record import AuditRecord
from mas.audit.retention import ANCHOR_KEY, parse_anchor
from mas.errors import MasError

CHUNK: Final = 1000  # records read at a time

_DECODER: Final = msgspec.json.Decoder(AuditRecord)


class TrailError(MasError):
    """The store's chain cannot be read (the message says why and what to do)."""


class StoreTrail(Protocol):
    """The chain in a store, for reading."""

    where: str  # "the SQLite store /path/mas.sqlite3", for messages

    def anchor(self) -> tuple[int, str]:
        """(seq, hash) of the last record trimmed away; (0, GENESIS) when none was."""

    def records(self, after_seq: int, limit: int) -> list[AuditRecord | Unreadable]:
        """Records with seq > ``after_seq``, oldest first, at most ``limit``."""

    def close(self) -> None:
        """Release the connection."""


def _decode(raw: bytes, where: str) -> AuditRecord | Unreadable:
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        return Unreadable(where, str(exc))


def iter_trail(trail: StoreTrail, after_seq: int = 0) -> Iterator[AuditRecord | Unreadable]:
    """Every record after ``after_seq``, in chunks (constant memory)."""
    while True:
        chunk = trail.records(after_seq, CHUNK)
        yield from chunk
        if len(chunk) < CHUNK:
            return
        last = chunk[-1]
        # An unreadable entry still holds its place: continue after the count read.
        after_seq = last.seq if isinstance(last, AuditRecord) else after_seq + len(chunk)


class SqliteTrail:
    """The chain in a SQLite store file, opened read-only."""

    def __init__(self, path: Path) -> None:
        self.where = f"the SQLite store {path}"
        if not path.is_file():
            raise TrailError(f"{self.where} does not exist (has the server run yet?)")
        try:
            self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            self._conn.execute("PRAGMA query_only = ON")
            self._conn.execute("SELECT 1 FROM audit LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise TrailError(f"cannot read the audit chain in {self.where}: {exc}") from None

    def anchor(self) -> tuple[int, str]:
        try:
            has_meta = self._conn.execute(
                "SELECT 1 FROM sqlite_schema WHERE name = 'meta'"
            ).fetchone()
            row = (
                self._conn.execute("SELECT value FROM meta WHERE key = ?", (ANCHOR_KEY,)).fetchone()
                if has_meta
                else None
            )
        except sqlite3.Error as exc:
            raise TrailError(f"cannot read {self.where}: {exc}") from None
        return parse_anchor(None if row is None else row[0])

    def records(self, after_seq: int, limit: int) -> list[AuditRecord | Unreadable]:
        try:
            rows = self._conn.execute(
                "SELECT seq, record FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise TrailError(f"cannot read {self.where}: {exc}") from None
        return [_decode(bytes(raw), f"{self.where}, audit row seq {seq}") for seq, raw in rows]

    def close(self) -> None:
        self._conn.close()


class RedisTrail:
    """The chain in Redis (``<namespace>:audit`` and its anchor)."""

    def __init__(self, url: str, namespace: str, shown_url: str, timeout: float = 5.0) -> None:
        import redis

        from mas.store.redis.audit import READ_AUDIT

        self.where = f"the Redis store {shown_url}"
        self._keys = [f"{namespace}:audit", f"{namespace}:audit-anchor"]
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        try:
            self._client: Any = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._script = self._client.register_script(READ_AUDIT.source)
            self._client.ping()
        except self._errors as exc:
            raise TrailError(f"cannot reach {self.where}: {exc}") from None

    def _read(self, first: int, last: int) -> tuple[tuple[int, str], list[bytes]]:
        try:
            anchor, raw = self._script(keys=self._keys, args=[first, last])
        except self._errors as exc:
            raise TrailError(f"cannot read {self.where}: {exc}") from None
        try:
            return parse_anchor(anchor or None), list(raw)
        except ValueError as exc:
            raise TrailError(f"{self.where}: {exc}") from None

    def anchor(self) -> tuple[int, str]:
        return self._read(1, 0)[0]

    def records(self, after_seq: int, limit: int) -> list[AuditRecord | Unreadable]:
        if limit <= 0:
            return []
        (anchor_seq, _), raw = self._read(after_seq + 1, after_seq + limit)
        start = max(after_seq, anchor_seq)
        return [
            _decode(item, f"{self.where}, record {start + n}")
            for n, item in enumerate(raw, start=1)
        ]

    def close(self) -> None:
        self._client.close()
