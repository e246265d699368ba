"""State on the SQLite store: durable before it returns, and versions added to older files."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import trio
import trio.testing
from store_contract import LIMITS

from mas.store.base import StateSnapshot, StateVersionConflict
from mas.store.sqlite import SCHEMA_VERSION, open_sqlite_store
from mas.store.sqlite import schema as sqlite_schema


async def test_state_writes_are_on_disk_before_they_return(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:  # the clock stands still: no background flush could be what made them durable
    with trio.fail_after(10):
        async with open_sqlite_store(tmp_path / "mas.sqlite3", LIMITS) as store:
            flushes = store.statistics().flushes
            writes = [
                lambda: store.update_state("b", {"n": "1"}),
                lambda: store.update_state("b", {"n": "2"}, expected_version=1),
                lambda: store.reset_state("b"),
            ]
            for write in writes:
                await write()
                assert store.statistics().flushes == flushes + 1
                flushes += 1
            with pytest.raises(StateVersionConflict):
                await store.update_state("b", {"n": "3"}, expected_version=1)
            # A read waits only for a flush of what it saw; everything it saw is flushed.
            assert await store.read_state("b") == StateSnapshot(version=3, values={})
            assert store.statistics().flushes == flushes


async def test_a_file_from_before_state_versions_keeps_its_state_at_version_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mas.sqlite3"
    with trio.fail_after(10):
        with monkeypatch.context() as old:  # the schema as it was at version 1
            old.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:1])
            old.setattr(sqlite_schema, "SCHEMA_VERSION", 1)
            async with open_sqlite_store(path, LIMITS) as store:
                with closing(sqlite3.connect(path)) as conn:
                    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
                assert await store.queue_depth("b") == 0  # usable at version 1
            with closing(sqlite3.connect(path)) as conn, conn:
                conn.execute("INSERT INTO state VALUES ('b', 'n', '41', 3)")
        async with open_sqlite_store(path, LIMITS) as store:
            assert await store.read_state("b") == StateSnapshot(version=0, values={"n": "41"})
            assert await store.update_state("b", {"n": "42"}, expected_version=0) == 1
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
