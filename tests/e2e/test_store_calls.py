"""What one request/reply costs the default store: store calls and WAL flushes, counted.

A sequential request/reply through a real server over loopback mTLS, with the SDK and
the SQLite store (``sync: full``, the default), counts every store call and every
``fdatasync`` of the WAL it makes: a change that adds a call or a flush per message
fails here, not months later in a benchmark. The counts are per request with its
reply, once the acks settled (warm-up excluded).
"""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from sdk_agents import Echo, Plain, settled

from mas.store import Store, StoreLimits
from mas.store.sqlite import SqliteStore, open_sqlite_store
from mas.store.sqlite import writer as sqlite_writer
from mas.testing import TestPKI, make_config, open_test_server

WARMUP = 5
REQUESTS = 30
# What durability needs on `sync: full`: the request's accept and the reply's accept each
# wait for one flush; claims, acks and delivery records ride on those flushes.
MAX_FLUSHES_PER_REQUEST = 2
MAX_STORE_CALLS_PER_REQUEST = 3  # 2 route_batch (each claiming for its idle target), 1 ack
# SQL statements the writer's connection runs per request/reply, as SQLite's trace callback
# counts them (BEGIN and COMMIT, and each trigger's statement, included): 27 (was 51: the
# audit chain's end is kept in memory, not read back per append; a claim promotes retries
# only when one is due; a claim rides in its message's enqueue transaction, without a
# BEGIN and COMMIT of its own; 41 -> 27: a message its target's idle session claims in
# that transaction is written in flight, not written waiting, read back and updated, each
# with the ready count's trigger); one more for a checkpoint.
MAX_STATEMENTS_PER_REQUEST = 28
# The JSONL follower's reads come with time (it polls every 50 ms while behind), not with
# messages: they are not counted per message, and they may make no flush of their own.
POLLED: frozenset[str] = frozenset({"audit_records"})


class CountingStore:
    """A store that counts its coroutine calls by name (and otherwise is the store)."""

    def __init__(self, store: SqliteStore) -> None:
        self.inner = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attribute) or name == "watch":
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return await attribute(*args, **kwargs)

        return call


async def test_a_request_with_its_reply_costs_two_flushes_and_few_store_calls(
    pki: TestPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No background flush in the window (it would cover the acks within a second): every
    # flush counted is one a call waited for.
    monkeypatch.setattr(sqlite_writer, "FLUSH_INTERVAL", 3600.0)
    rules = [{"type": "allow", "sender": "asker", "targets": ["echo"]}]
    config = make_config(
        ["asker", "echo"], rules, gateway={"audit": {"file_path": str(tmp_path / "audit.jsonl")}}
    )
    async with open_sqlite_store(tmp_path / "mas.sqlite3", StoreLimits()) as sqlite:
        counting = CountingStore(sqlite)
        with trio.fail_after(30):
            async with open_test_server(config, pki, store=cast(Store, counting)) as server:
                assert server.address is not None
                addr = f"127.0.0.1:{server.address.port}"
                echo = Echo("echo", server_addr=addr, tls=pki.client_ssl_context("echo"))
                asker = Plain("asker", server_addr=addr, tls=pki.client_ssl_context("asker"))
                async with echo, asker:
                    for i in range(WARMUP):
                        await asker.request("echo", "ping", {"i": i}, timeout=10)
                    await settled(server, 2 * WARMUP)
                    calls0, flushes0 = counting.calls.copy(), sqlite.statistics().flushes
                    statements: list[str] = []
                    connection = sqlite._writer._conn
                    assert connection is not None
                    connection.set_trace_callback(statements.append)
                    for i in range(REQUESTS):
                        reply = await asker.request("echo", "ping", {"i": i}, timeout=10)
                        assert reply.data == {"i": i}
                    await settled(server, 2 * (WARMUP + REQUESTS))
                    connection.set_trace_callback(None)
                    calls = counting.calls - calls0
                    flushes = sqlite.statistics().flushes - flushes0
    per_request = {name: n / REQUESTS for name, n in sorted(calls.items())}
    total = sum(n for name, n in calls.items() if name not in POLLED) / REQUESTS
    print(f"store calls per request/reply: {total:.2f} {per_request}")
    print(f"WAL flushes per request/reply: {flushes / REQUESTS:.2f}")
    # The JSONL follower's reads (POLLED) run on the reader connection, not this one.
    by_kind = Counter(statement.split()[0] for statement in statements)
    print(f"SQL statements per request/reply: {len(statements) / REQUESTS:.2f} {dict(by_kind)}")
    assert flushes <= MAX_FLUSHES_PER_REQUEST * REQUESTS, (flushes, per_request)
    assert total <= MAX_STORE_CALLS_PER_REQUEST, per_request
    assert len(statements) <= MAX_STATEMENTS_PER_REQUEST * REQUESTS, by_kind
