"""The audit log coalesces repeated refusals and writes their count when the window ends."""

from __future__ import annotations

import trio
import trio.testing

from mas.audit.record import AuditDraft
from mas.config import AuditConfig
from mas.server.audit_log import AuditLog
from mas.store.memory import MemoryStore


def _denied(target: str = "b") -> AuditDraft:
    return AuditDraft(
        time=1.0, decision="AUTHZ_DENIED", reason="not_authorized", sender_id="a", target_id=target
    )


async def test_repeated_refusals_become_one_record_with_their_count_at_window_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = MemoryStore()
    audit = AuditLog(store, AuditConfig(), refusal_interval=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for _ in range(300):
            await audit.record(_denied())
        await trio.sleep(1)
        assert [r.reason for r in await store.audit_records()] == ["not_authorized"]
        await trio.sleep(60)  # the window ends: its summary is written without a new refusal
        reasons = [r.reason for r in await store.audit_records()]
        assert reasons == ["not_authorized", "not_authorized;repeated=299"]
        assert audit.statistics()["decisions"]["AUTHZ_DENIED"] == 300  # every one counted
        nursery.cancel_scope.cancel()


async def test_huge_client_fields_are_bounded_before_they_are_written() -> None:
    store = MemoryStore()
    audit = AuditLog(store, AuditConfig(), refusal_interval=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        await audit.record(_denied(target="t" * 500_000))
        await audit.flush()
        [record] = await store.audit_records()
        assert len(record.target_id) < 256
        nursery.cancel_scope.cancel()


async def test_flush_writes_the_counts_of_open_windows() -> None:
    store = MemoryStore()
    audit = AuditLog(store, AuditConfig(), refusal_interval=60.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.run)
        for _ in range(3):
            await audit.record(_denied())
        await audit.flush()
        reasons = sorted(r.reason for r in await store.audit_records())
        assert reasons == ["not_authorized", "not_authorized;repeated=2"]
        nursery.cancel_scope.cancel()
