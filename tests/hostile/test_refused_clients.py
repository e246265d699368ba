"""Refusals cost the refused: bounded audit records, coalesced repeats, limited state RPCs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from attack_harness import scaled, under_attack
from rawclient import CallFailed, raw_client, refused_client

from mas._proto import runtime_pb2 as pb
from mas.testing import TestPKI


def _audit_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _records_of(path: Path, sender: str) -> list[bytes]:
    """The audit file's lines (all rotations) of records sent by ``sender``."""
    return [
        line
        for file in path.parent.glob(path.name + "*")
        for line in file.read_bytes().splitlines()
        if line.startswith(b"{") and json.loads(line).get("sender_id") == sender
    ]


async def test_refusals_with_huge_client_fields_grow_the_audit_trail_a_bounded_amount(
    hostile_server: Any, pki: TestPKI, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    refusals = scaled(30)
    huge = "t" * 500_000
    with hostile_server(gateway={"audit": {"file_path": str(audit)}}) as server:

        async def attack() -> None:
            async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
                session = await client.transport()
                await session.hello("mallet1")
                for n in range(refusals):
                    # Each a different huge string: nothing to gain from repetition.
                    kind, field = [("send", "target_id"), ("reply", "correlation_id")][n % 2]
                    fields = {field: huge + str(n), "message_type": huge, "data_json": "{}"}
                    result = await session.call(kind, **fields)
                    assert result.HasField("error")
                await session.close()

        with trio.fail_after(60):
            report = await under_attack("huge refused fields", server, pki, attack)
            await trio.sleep(0.5)  # the file follows the store every 50 ms
    mallet = _records_of(audit, "mallet")
    assert mallet, "the refusals were not audited"
    assert sum(len(line) for line in mallet) < 16 * 1024  # not 30 MB
    assert _audit_bytes(audit) < 1024 * 1024
    assert report.log_lines < 20


async def test_hammering_a_closed_door_writes_one_record_per_window(
    hostile_server: Any, pki: TestPKI, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    attempts = scaled(300)
    with hostile_server(gateway={"audit": {"file_path": str(audit)}}) as server:

        async def attack() -> None:
            # eve chains to the CA but is not in mas.yaml: refused at the door each time.
            for _ in range(attempts // 10):
                async with refused_client(server.port, pki.client_ssl_context("eve")) as eve:
                    with pytest.raises(CallFailed):
                        await eve.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
            async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
                session = await client.transport()
                await session.hello("mallet1")
                for _ in range(attempts):
                    result = await session.call(
                        "send", target_id="alice", message_type="t", data_json="{}"
                    )
                    assert result.error.message in ("not_authorized", "rate_limited")

        with trio.fail_after(60):
            report = await under_attack("refused sends", server, pki, attack)
            await trio.sleep(0.5)
    assert 1 <= len(_records_of(audit, "mallet")) <= 4, "each refusal was written"
    assert 1 <= len(_records_of(audit, "eve")) <= 2, "each refused connection was written"
    assert report.log_lines < 20 + attempts // 10  # one line per refused connection at most


async def test_state_rpcs_have_a_rate_limit_of_their_own(hostile_server: Any, pki: TestPKI) -> None:
    with hostile_server(limits={"control_rpcs_per_minute": 20}) as server:
        refused: list[str] = []

        async def attack() -> None:
            async with raw_client(server.port, pki.client_ssl_context("mallet")) as client:
                for _ in range(30):
                    try:
                        await client.unary("GetState", pb.GetStateRequest(), pb.GetStateResponse)
                    except CallFailed as exc:
                        refused.append(f"{exc.code} {exc.reason}")

        with trio.fail_after(60):
            await under_attack("state calls", server, pki, attack)
    assert 5 <= len(refused) <= 10
    assert set(refused) == {"RESOURCE_EXHAUSTED rate_limited"}
