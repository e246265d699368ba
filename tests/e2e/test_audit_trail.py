"""The audit trail end to end: a real runtime writes it, `mas audit` (a subprocess) judges it.

Tamper evidence by default (the key file made at first start), deletion of the
oldest records, a record rewritten without the key, and the chain in the store
itself, read while nothing else holds it and while a server does.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import msgspec
import trio

from mas.audit import AuditRecord, link_many, record_hash
from mas.config import load_config
from mas.runtime import Runtime

AGENTS = """
import trio
from mas import Agent, AgentMessage, PermissionDeniedError

RECEIVED = []


class Receiver(Agent[dict]):
    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        RECEIVED.append(message.data)


class Sender(Agent[dict]):
    async def on_start(self) -> None:
        for n in range(4):
            await self.send("receiver", "note", {"n": n})
        try:
            await self.send("stranger", "note", {"n": -1})
        except PermissionDeniedError:
            pass
        with trio.fail_after(20):
            while len(RECEIVED) < 4:
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # the acks reach the server, and their records the file
        self.stop_runtime()
"""

CONFIG = """
server_listen_addr: 127.0.0.1:0
GATEWAY
permissions:
  - {type: allow, sender: sender, targets: [receiver]}
agents:
  - {agent_id: receiver, class_path: "MODULE:Receiver"}
  - {agent_id: sender, class_path: "MODULE:Sender"}
  - {agent_id: stranger, class_path: "MODULE:Receiver"}
"""


def _mas(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAS_RUNNER_CONFIG_FILE"}
    return subprocess.run(
        [sys.executable, "-m", "mas", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _run(tmp_path: Path, gateway: str) -> Path:
    module_name = f"audit_agents_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(AGENTS)
    config = tmp_path / "mas.yaml"
    text = textwrap.dedent(CONFIG).replace("MODULE", module_name).replace("GATEWAY", gateway)
    config.write_text(text)
    try:
        with trio.fail_after(40):
            await Runtime(load_config(config, env={}), handle_signals=False).run()
    finally:
        sys.modules.pop(module_name, None)
    return config


def _records(path: Path) -> list[AuditRecord]:
    return [msgspec.json.decode(line, type=AuditRecord) for line in path.read_bytes().splitlines()]


def _write(path: Path, records: list[AuditRecord]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in records))


async def test_the_trail_is_keyed_by_default_and_a_keyless_rewrite_is_caught(
    tmp_path: Path,
) -> None:
    config = await _run(tmp_path, "gateway: {audit: {file_path: audit.jsonl}}")
    key_file = tmp_path / ".mas-keys" / "audit.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    ok = _mas("audit", "verify", "--config", str(config), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "HMAC-SHA256 keyed)" in ok.stdout
    # Named as a FILE from elsewhere, the trail is checked with the key of the mas.yaml above it.
    elsewhere = _mas("audit", "verify", str(tmp_path / "audit.jsonl"), cwd=tmp_path.parent)
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "HMAC-SHA256 keyed)" in elsewhere.stdout

    audit_file = tmp_path / "audit.jsonl"
    records = _records(audit_file)
    assert {r.decision for r in records} >= {"ALLOWED", "AUTHZ_DENIED", "DELIVERED"}
    # Each record names the server that decided (the host name by default).
    assert all(r.server_id for r in records)
    # Rewrite record 2 as a denial and recompute every later hash, without the key.
    forged = msgspec.structs.replace(records[1], decision="AUTHZ_DENIED", reason="forged")
    _write(audit_file, records[:1] + link_many(records[0], [forged, *records[2:]], None))
    caught = _mas("audit", "verify", "--config", str(config), cwd=tmp_path)
    assert caught.returncode == 1, caught.stdout
    assert "TAMPERED (edited) at seq 2" in caught.stderr
    assert "recomputed without the key" in caught.stderr

    # Every hash recomputed, the head too: still no keyed record, so not proven.
    _write(audit_file, link_many(None, records, None))
    head = tmp_path / "audit.jsonl.head"
    head.write_text(json.dumps({"seq": records[-1].seq, "hash": _records(audit_file)[-1].hash}))
    caught = _mas("audit", "verify", "--config", str(config), cwd=tmp_path)
    assert caught.returncode == 1, caught.stdout
    assert "NOT PROVEN" in caught.stderr


async def test_deleting_the_oldest_records_fails_verify_on_the_file(tmp_path: Path) -> None:
    config = await _run(tmp_path, "gateway: {audit: {file_path: audit.jsonl, backup_count: 0}}")
    audit_file = tmp_path / "audit.jsonl"
    records = _records(audit_file)
    _write(audit_file, records[2:])
    result = _mas("audit", "verify", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "TAMPERED (deleted) at seq 1" in result.stderr
    assert "records 1 to 2 are missing (deleted, not rotated)" in result.stderr


async def test_the_store_chain_is_verified_and_read_without_a_file_sink(tmp_path: Path) -> None:
    config = await _run(tmp_path, "")
    assert not (tmp_path / "audit.jsonl").exists()
    verified = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "in the SQLite store" in verified.stdout and "HMAC-SHA256 keyed" in verified.stdout
    # Without a file sink, tail and export read the store: the refusal is visible.
    denied = _mas("audit", "tail", "--decision", "AUTHZ_DENIED", "--json", cwd=tmp_path)
    assert denied.returncode == 0, denied.stderr
    [record] = [json.loads(line) for line in denied.stdout.splitlines()]
    assert (record["sender_id"], record["target_id"]) == ("sender", "stranger")
    exported = _mas("audit", "export", "--format", "csv", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "AUTHZ_DENIED" in exported.stdout

    # An edited row in the store, its hash recomputed without the key, is caught.
    db = sqlite3.connect(tmp_path / "mas.sqlite3")
    rows = db.execute("SELECT seq, record FROM audit ORDER BY seq").fetchall()
    stored = [msgspec.json.decode(raw, type=AuditRecord) for _, raw in rows]
    forged = msgspec.structs.replace(stored[2], decision="ALLOWED", reason="")
    rewritten = link_many(stored[1], [forged, *stored[3:]], None)
    with db:
        db.executemany(
            "UPDATE audit SET record = ? WHERE seq = ?",
            [(msgspec.json.encode(r), r.seq) for r in rewritten],
        )
    caught = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
    assert caught.returncode == 1, caught.stdout
    assert "TAMPERED (edited) at seq 3 in the SQLite store" in caught.stderr

    # And the first rows deleted: the store's anchor says nothing was trimmed.
    with db:
        db.execute("DELETE FROM audit WHERE seq <= 2")
    db.close()
    caught = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
    assert caught.returncode == 1, caught.stdout
    assert "TAMPERED (deleted) at seq 1" in caught.stderr


async def test_the_sqlite_chain_is_read_while_a_server_holds_the_store(tmp_path: Path) -> None:
    from mas.audit import AuditDraft
    from mas.runtime import open_store

    config = tmp_path / "mas.yaml"
    config.write_text("server_listen_addr: 127.0.0.1:0\nagents: [{agent_id: a}]\n")
    loaded = load_config(config, env={})
    with trio.fail_after(30):
        async with open_store(loaded.config, tmp_path) as store:
            drafts = [AuditDraft(time=1.0 + i, decision="AUTHZ_DENIED") for i in range(3)]
            await store.append_audit(drafts)
            await store.audit_records()  # durable: flushed to the file
            verified = await trio.to_thread.run_sync(
                lambda: _mas("audit", "verify", "--store", cwd=tmp_path)
            )
            assert verified.returncode == 0, verified.stderr
            assert "3 records, seq 1 to 3" in verified.stdout
            # The reader left the store usable: the server goes on writing.
            await store.append_audit(drafts)
            tail = await trio.to_thread.run_sync(
                lambda: _mas("audit", "tail", "--store", "--json", cwd=tmp_path)
            )
            assert tail.returncode == 0, tail.stderr
            assert len(tail.stdout.splitlines()) == 6


async def test_retention_trims_the_store_and_verify_tells_a_trim_from_a_deletion(
    tmp_path: Path,
) -> None:
    config = await _run(
        tmp_path,
        "gateway: {audit: {file_path: audit.jsonl, backup_count: 0,"
        " retention: {max_records: 3, interval: 0.05}}}",
    )
    db = sqlite3.connect(tmp_path / "mas.sqlite3")
    seqs = [seq for (seq,) in db.execute("SELECT seq FROM audit ORDER BY seq")]
    copied = _records(tmp_path / "audit.jsonl")
    assert seqs[0] > 1 and seqs[-1] == copied[-1].seq  # trimmed while it ran; the last stays
    verified = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert f"records 1 to {seqs[0] - 1} were rotated away or trimmed" in verified.stdout
    # The file is not the store: it keeps every record it copied.
    assert copied[0].seq == 1
    assert _mas("audit", "verify", "--config", str(config), cwd=tmp_path).returncode == 0
    # Deleting the oldest kept record is not a trim.
    with db:
        db.execute("DELETE FROM audit WHERE seq = ?", (seqs[0],))
    db.close()
    caught = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
    assert caught.returncode == 1, caught.stdout
    assert f"TAMPERED (deleted) at seq {seqs[0]}" in caught.stderr
    assert "(deleted, not rotated)" in caught.stderr


async def test_the_redis_chain_is_verified_from_the_command_line(tmp_path: Path) -> None:
    import redis
    from redis_server import running_redis

    from mas.audit import AuditDraft
    from mas.audit.retention import Retention
    from mas.runtime import open_store

    with running_redis() as server:
        config = tmp_path / "mas.yaml"
        config.write_text(
            "server_listen_addr: 127.0.0.1:0\n"
            f"store: {{backend: redis, url: '{server.url}'}}\n"
            "agents: [{agent_id: a}]\n"
        )
        loaded = load_config(config, env={})
        with trio.fail_after(30):
            async with open_store(loaded.config, tmp_path) as store:
                drafts = [AuditDraft(time=1.0 + i, decision="AUTHZ_DENIED") for i in range(6)]
                await store.append_audit(drafts)
                assert await store.trim_audit(Retention(keep=4)) == 2
                assert store.server_id
        verified = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
        assert "4 records, seq 3 to 6, in the Redis store" in verified.stdout
        assert "HMAC-SHA256 keyed" in verified.stdout
        client = redis.Redis.from_url(server.url)
        try:
            raw = client.lindex("mas:audit", 1)
            assert isinstance(raw, bytes)
            record = msgspec.json.decode(raw, type=AuditRecord)
            forged = msgspec.structs.replace(record, decision="ALLOWED")
            forged = msgspec.structs.replace(forged, hash=record_hash(forged, None))
            client.lset("mas:audit", 1, msgspec.json.encode(forged))
        finally:
            client.close()
        caught = _mas("audit", "verify", "--store", "--config", str(config), cwd=tmp_path)
        assert caught.returncode == 1, caught.stdout
        assert "TAMPERED (edited) at seq 4 in the Redis store" in caught.stderr


def test_store_reads_that_cannot_be_made_say_why(tmp_path: Path) -> None:
    config = tmp_path / "mas.yaml"
    config.write_text(
        "server_listen_addr: 127.0.0.1:0\nstore: {backend: memory}\nagents: [{agent_id: a}]\n"
    )
    memory = _mas("audit", "verify", "--store", cwd=tmp_path)
    assert memory.returncode != 0 and "Traceback" not in memory.stderr
    assert "memory store keeps its audit chain only inside its server process" in memory.stderr
    both = _mas("audit", "tail", "--store", "x.jsonl", "--config", str(config), cwd=tmp_path)
    assert both.returncode != 0 and "not both" in both.stderr
    config.write_text("server_listen_addr: 127.0.0.1:0\nagents: [{agent_id: a}]\n")
    missing = _mas("audit", "verify", "--store", cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "does not exist (has the server run yet?)" in missing.stderr
