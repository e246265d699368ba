"""Redis commands a server runs per message, counted from ``INFO commandstats``.

A real server (in-process, loopback mTLS) on a Redis store, two SDK agents, and
``count`` messages: one-way sends (``"send"``: sent, delivered, acked) or
request/replies (``"request"``: the request and its reply, each delivered and
acked). ``in_flight`` messages are outstanding at once (1: one at a time, no
batching; 32: the server batches). Commands of every kind are counted, those run
inside Lua scripts included (``EVALSHA`` counts as one more), as Redis counts them;
this helper's own ``INFO`` and ``XLEN`` calls are subtracted.

Run as a script to print the figures::

    python tests/redis_commands.py [count]
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
import trio

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: redis_server beside it

from mas import Agent, AgentMessage
from mas.runtime import store_limits
from mas.store.redis import RedisStore, open_redis_store
from mas.testing import TestPKI, make_config, open_test_server

WARM_UP = 8  # messages before counting: scripts loaded, sessions claiming
SETTLE_TIMEOUT = 30.0  # seconds for the last acks to reach Redis


class _Receiver(Agent[dict[str, Any]]):
    def __init__(self, agent_id: str, **kwargs: Any) -> None:
        super().__init__(agent_id, **kwargs)
        self.handled = 0
        self._changed = trio.Event()

    async def wait_handled(self, count: int) -> None:
        while self.handled < count:
            self._changed = trio.Event()
            await self._changed.wait()

    @Agent.on("note")
    async def note(self, message: AgentMessage) -> None:
        self.handled += 1
        self._changed.set()

    @Agent.on("ask")
    async def ask(self, message: AgentMessage) -> None:
        await message.reply("answer", {"n": message.data["n"]})
        self.handled += 1
        self._changed.set()


class _Counter:
    """Total command calls on a Redis, less the ones this counter made."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._own = 0

    def total(self) -> int:
        return sum(self.by_command().values()) - self._own

    def by_command(self) -> dict[str, int]:
        """Calls per command name (this counter's own included)."""
        stats = self._client.info("commandstats")
        self._own += 1
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def holds(self, key: str) -> bool:
        """Whether the stream ``key`` holds entries (acked ones are deleted)."""
        self._own += 1
        return bool(self._client.xlen(key))

    def close(self) -> None:
        self._client.close()


@asynccontextmanager
async def _running(
    pki: TestPKI, url: str
) -> AsyncIterator[tuple[Agent[Any], _Receiver, str, RedisStore]]:
    config = make_config(
        ["a", "b"],
        [{"type": "allow_bidirectional", "agents": ["a", "b"]}],
        gateway={"rate_limit": {"per_minute": 10**9, "per_hour": 10**9}},
    )
    namespace = f"c{secrets.token_hex(6)}"
    # A long lease: no renewal runs while counting (it is per server, not per message).
    async with (
        open_redis_store(
            url, store_limits(config), namespace=namespace, lease_seconds=600
        ) as store,
        open_test_server(config, pki, store) as server,
    ):
        assert server.address is not None
        addr = f"127.0.0.1:{server.address.port}"
        async with (
            Agent("a", server_addr=addr, tls=pki.client_ssl_context("a")) as a,
            _Receiver("b", server_addr=addr, tls=pki.client_ssl_context("b")) as b,
        ):
            yield a, b, namespace, store


async def commands_per_message(
    pki: TestPKI,
    url: str,
    kind: str,
    count: int,
    in_flight: int,
    breakdown: dict[str, int] | None = None,
    round_trips: list[float] | None = None,
) -> float:
    """Redis commands per message of ``kind`` (``send`` or ``request``), all included.

    ``breakdown`` gets the calls of each command over the ``count`` messages (this
    helper's own ``INFO`` and ``XLEN`` included); ``round_trips`` the server's round
    trips to Redis per message (its pipelines on the lane).
    """
    counter = _Counter(url)
    try:
        async with _running(pki, url) as (a, b, namespace, store):

            async def one(n: int) -> None:
                if kind == "send":
                    await a.send("b", "note", {"n": n})
                else:
                    await a.request("b", "ask", {"n": n}, timeout=30)

            async def run(first: int, total: int) -> None:
                lanes = min(in_flight, total)

                async def lane(k: int) -> None:
                    for n in range(first + k, first + total, lanes):
                        await one(n)

                async with trio.open_nursery() as nursery:
                    for k in range(lanes):
                        nursery.start_soon(lane, k)
                await _settled(counter, namespace, b, first + total, a.instance_id)

            await run(0, WARM_UP)
            own, start = counter._own, await trio.to_thread.run_sync(counter.by_command)
            trips = store.statistics()["round_trips"]
            await run(WARM_UP, count)
            trips = store.statistics()["round_trips"] - trips
            end = await trio.to_thread.run_sync(counter.by_command)
            own = counter._own - own - 1  # this helper's calls meanwhile (the last INFO not run)
    finally:
        counter.close()
    spent = {name: calls - start.get(name, 0) for name, calls in end.items()}
    spent = {name: calls for name, calls in spent.items() if calls}
    if breakdown is not None:
        breakdown.update(spent)
    if round_trips is not None:
        round_trips.append(trips / count)
    return (sum(spent.values()) - own) / count


async def _settled(
    counter: _Counter, namespace: str, b: _Receiver, handled: int, a_instance: str
) -> None:
    """Every message handled, and every ack in Redis (acked entries are deleted)."""
    with trio.fail_after(SETTLE_TIMEOUT):
        await b.wait_handled(handled)
        for key in (f"{namespace}:queue:b", f"{namespace}:queue:a/{a_instance}"):
            while True:  # Redis's state, read from outside: polled
                if not await trio.to_thread.run_sync(counter.holds, key):
                    break
                await trio.sleep(0.01)


async def _main(count: int) -> None:
    from redis_server import running_redis

    pki = TestPKI()
    with running_redis() as server:
        for kind in ("request", "send"):
            for in_flight in (1, 32):
                calls: dict[str, int] = {}
                trips: list[float] = []
                per = await commands_per_message(
                    pki, server.url, kind, count, in_flight, calls, trips
                )
                print(
                    f"{kind:8} in flight {in_flight:2}: {per:6.1f} Redis commands and"
                    f" {trips[0]:5.2f} round trips per message"
                )
                if "-v" in sys.argv:
                    for name, n in sorted(calls.items(), key=lambda kv: -kv[1]):
                        print(f"    {name:24} {n / count:6.2f}")


if __name__ == "__main__":
    numbers = [int(arg) for arg in sys.argv[1:] if arg.isdigit()]
    trio.run(_main, numbers[0] if numbers else 200)
