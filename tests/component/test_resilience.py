"""Background loops wait out a store that fails for a while, and lose nothing they held."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
import trio
import trio.testing

from mas.audit.record import AuditDraft
from mas.config import AuditConfig
from mas.errors import StoreError
from mas.server.audit_log import AuditLog
from mas.server.resilience import Outage, persist
from mas.store import MemoryStore
from mas.store.sqlite.schema import StoreUnusableError


class FailingFor:
    """A memory store whose ``append_audit`` fails ``times`` times first."""

    def __init__(self, times: int) -> None:
        self.store = MemoryStore()
        self.left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append_audit(self, drafts: Any) -> Any:
        if self.left:
            self.left -= 1
            raise StoreError("Redis at redis://127.0.0.1:1/0 is unavailable")
        return await self.store.append_audit(drafts)


async def test_the_audit_writer_keeps_its_drafts_through_an_outage(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailingFor(times=8)  # about 15 s of backoff
    audit = AuditLog(store, AuditConfig())  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        await audit.record_many(
            [AuditDraft(time=1.0, decision="AUTHZ_DENIED", reason=f"r{n}") for n in range(3)]
        )
        await trio.sleep(60)  # 8 failures back off about 15 s in all
        nursery.cancel_scope.cancel()
    assert [r.reason for r in await store.store.audit_records()] == ["r0", "r1", "r2"]
    said = [r.getMessage() for r in caplog.records if r.name == "mas.audit"]
    assert len(said) == 2, said  # once down, once back: never once per retry
    assert "paused" in said[0] and "resumed" in said[1]


async def test_persist_backs_off_and_gives_up_only_on_a_broken_store(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outage = Outage("test loop", logging.getLogger("mas.test"))
    calls: list[float] = []

    async def flaky() -> str:
        calls.append(trio.current_time())
        if len(calls) < 6:
            raise OSError(28, "No space left on device")
        return "done"

    assert await persist(outage, flaky) == "done"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap > 0 for gap in gaps) and gaps[-1] > gaps[0]  # jittered, growing
    assert not outage.down

    async def broken() -> None:
        raise StoreUnusableError("fsync failed: the store is unusable until restart")

    with pytest.raises(StoreUnusableError):
        await persist(outage, broken)
