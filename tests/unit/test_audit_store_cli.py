"""``mas audit verify | tail | export`` on the chain in a SQLite store file, read-only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgspec
import pytest

from mas.audit import AuditDraft, AuditRecord
from mas.audit.retention import Retention
from mas.audit.store_trail import SqliteTrail
from mas.cli.audit.store import export_store, tail_store, verify_store
from mas.store.sqlite import store as ops
from mas.store.sqlite.schema import connect

KEY = b"an audit key of 32 bytes, really"


def _store(path: Path, n: int, start: int = 0) -> list[AuditRecord]:
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        drafts = [
            AuditDraft(time=1000.0 + i, decision="AUTHZ_DENIED", sender_id=f"s{i}")
            for i in range(start, start + n)
        ]
        records = ops.append_audit(conn, drafts, KEY)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return records


def test_tail_follows_the_store_and_export_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "mas.sqlite3"
    first = _store(db, 3)
    later = iter([3, 0, 2])
    written = list(first)

    def sleep(seconds: float) -> None:
        written.extend(_store(db, next(later), len(written)))

    monkeypatch.setattr("mas.cli.audit.store.time.sleep", sleep)
    out = io.StringIO()
    trail = SqliteTrail(db)
    status, _ = tail_store(
        trail, follow=True, as_json=True, decision=None, agent=None, out=out, max_polls=3
    )
    assert status == 0
    shown = [msgspec.json.decode(line, type=AuditRecord) for line in out.getvalue().splitlines()]
    assert shown == written and len(shown) == 8
    out = io.StringIO()
    status, message = export_store(trail, "json", 1003.0, None, out)
    assert status == 0 and message.startswith("exported 5 record(s) from the SQLite store")
    assert [r["seq"] for r in json.loads(out.getvalue())] == [4, 5, 6, 7, 8]
    trail.close()


def test_verify_store_reads_the_anchor_and_names_an_unreadable_row(tmp_path: Path) -> None:
    db = tmp_path / "mas.sqlite3"
    _store(db, 6)
    conn = connect(db)
    conn.execute("BEGIN")
    assert ops.trim_audit(conn, Retention(keep=4)) == 2
    conn.execute("COMMIT")
    conn.close()
    trail = SqliteTrail(db)
    status, message = verify_store(trail, KEY)
    assert status == 0, message
    assert "4 records, seq 3 to 6, in the SQLite store" in message
    assert "records 1 to 2 were rotated away or trimmed" in message
    status, message = verify_store(trail, None)
    assert status == 1 and "TAMPERED (edited) at seq 3" in message
    conn = connect(db)
    conn.execute("UPDATE audit SET record = ? WHERE seq = 5", (b"{not json",))
    conn.close()
    status, message = verify_store(trail, KEY)
    assert status == 1 and "audit row seq 5" in message
    trail.close()
