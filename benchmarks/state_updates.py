"""What a conditional state update costs: ``python -m benchmarks.state_updates [options]``.

Per backend (memory, sqlite with ``sync: full``, redis), median of ``--runs`` runs, each on a
fresh store, in microseconds per update:

store
    ``--updates`` sequential ``update_state`` calls of one key: unconditional, conditional
    on the version (the version each call returns is the next one's expected version), and
    a ``read_state`` before each conditional update (a cold read-modify-write).
agent
    The same over loopback mTLS through a ``MasServer`` in this process, one agent
    instance: ``update_state({"n": i})`` against ``edit_state`` adding one (the SDK
    holds the version it last stored, so an uncontended edit is one RPC).
contended
    ``--instances`` instances of one agent, 32 tasks each, adding one ``--updates`` times
    in all: with ``edit_state`` (the count must come out exact; the conflicts the server
    refused are counted) and, for contrast, with ``update_state({"n": state.n + 1})``
    (how many increments were lost).

Only ratios within one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from mas import Agent, TLSFiles
from mas.config import MasConfig, check_config
from mas.pki import server_ssl_context, write_dev_pki
from mas.server import MasServer
from mas.store import MemoryStore, Store, StoreLimits
from mas.store.base import StateVersionConflict

from .deploy import redis_server

BACKENDS: Final = ("memory", "sqlite", "redis")
WORKERS: Final = 32  # concurrent tasks per instance in the contended case (max_concurrency)


class Count(msgspec.Struct):
    n: int = 0


class Counter(Agent[Count]):
    """The benchmark drives its state directly."""


def _add_one(state: Count) -> None:
    state.n += 1


class Counting:
    """A store that counts the conditional updates it refused."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.conflicts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_state(self, *args: Any, **kwargs: Any) -> int:
        try:
            return await self._store.update_state(*args, **kwargs)
        except StateVersionConflict:
            self.conflicts += 1
            raise


@asynccontextmanager
async def open_backend(backend: str, directory: Path, url: str, run: int) -> AsyncIterator[Store]:
    if backend == "memory":
        yield MemoryStore(StoreLimits())
    elif backend == "sqlite":
        from mas.store.sqlite import open_sqlite_store

        async with open_sqlite_store(directory / f"run{run}.sqlite3", StoreLimits()) as store:
            yield store
    else:
        from mas.store.redis import open_redis_store

        async with open_redis_store(url, StoreLimits(), namespace=f"bench{run}") as store:
            yield store


async def timed(step: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await step()
    return time.perf_counter() - start


async def store_run(store: Store, updates: int) -> dict[str, float]:
    async def plain() -> None:
        for i in range(updates):
            await store.update_state("plain", {"n": str(i)})

    async def conditional() -> None:
        version = 0
        for i in range(updates):
            version = await store.update_state("cas", {"n": str(i)}, expected_version=version)

    async def read_then_conditional() -> None:
        for i in range(updates):
            snapshot = await store.read_state("rmw")
            await store.update_state("rmw", {"n": str(i)}, expected_version=snapshot.version)

    return {
        "store: update_state": await timed(plain) / updates,
        "store: conditional update_state": await timed(conditional) / updates,
        "store: read_state + conditional": await timed(read_then_conditional) / updates,
    }


@asynccontextmanager
async def serving(store: Store, pki: Path) -> AsyncIterator[tuple[MasServer, TLSFiles]]:
    paths = write_dev_pki(pki, ["counter"])
    raw = {
        "server_listen_addr": "127.0.0.1:0",
        "store": {"backend": "memory"},  # not used: the store is passed in
        "agents": [{"agent_id": "counter"}],
    }
    config = msgspec.convert(raw, MasConfig)
    check_config(config)
    context = server_ssl_context(paths.ca_path, paths.server_cert_path, paths.server_key_path)
    server = MasServer(config, store, context)
    cert, key = paths.agents["counter"]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server, TLSFiles(str(paths.ca_path), str(cert), str(key))
        finally:
            nursery.cancel_scope.cancel()


async def agent_run(
    store: Store, pki: Path, updates: int, instances: int
) -> tuple[dict[str, float], dict[str, float]]:
    counting = Counting(store)
    async with serving(counting, pki) as (server, tls), AsyncExitStack() as stack:  # type: ignore[arg-type]
        assert server.address is not None
        agents = [
            await stack.enter_async_context(
                Counter("counter", server_addr=f"127.0.0.1:{server.address.port}", tls=tls)
            )
            for _ in range(instances)
        ]
        first = agents[0]

        async def plain() -> None:
            for i in range(updates):
                await first.update_state({"n": i})

        async def edited() -> None:
            for _ in range(updates):
                await first.edit_state(_add_one)

        figures = {
            "agent: update_state": await timed(plain) / updates,
            "agent: edit_state (uncontended)": await timed(edited) / updates,
        }

        async def contended(step: Callable[[Counter], Awaitable[None]]) -> None:
            per_task = updates // (instances * WORKERS)

            async def work(agent: Counter) -> None:
                for _ in range(per_task):
                    await step(agent)

            async with trio.open_nursery() as nursery:
                for agent in agents:
                    for _ in range(WORKERS):
                        nursery.start_soon(work, agent)

        total = (updates // (instances * WORKERS)) * instances * WORKERS
        await first.reset_state()
        counting.conflicts = 0
        figures["contended: edit_state"] = await timed(lambda: contended(_edit)) / total
        await first.refresh_state()
        assert first.state.n == total, (first.state.n, total)
        counts = {"edit_state conflicts per update": counting.conflicts / total}

        await first.reset_state()
        figures["contended: update_state(n + 1)"] = await timed(lambda: contended(_racy)) / total
        await first.refresh_state()
        counts["update_state(n + 1) increments lost"] = (total - first.state.n) / total
        return figures, counts


async def _edit(agent: Counter) -> None:
    await agent.edit_state(_add_one)


async def _racy(agent: Counter) -> None:
    await agent.update_state({"n": agent.state.n + 1})


async def measure(args: argparse.Namespace, directory: Path, url: str) -> None:
    print(
        f"{args.updates} updates, {args.instances} instances x {WORKERS} tasks when contended; "
        f"median of {args.runs} runs (µs per update)"
    )
    run = 0
    for backend in args.backends:
        times: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        for _ in range(args.runs):
            run += 1
            async with open_backend(backend, directory, url, run) as store:
                for name, spent in (await store_run(store, args.updates)).items():
                    times.setdefault(name, []).append(spent)
            run += 1
            async with open_backend(backend, directory, url, run) as store:
                figures, counts = await agent_run(
                    store, directory / f"pki{run}", args.updates, args.instances
                )
            for name, spent in figures.items():
                times.setdefault(name, []).append(spent)
            for name, value in counts.items():
                ratios.setdefault(name, []).append(value)
        print(f"\n{backend}")
        for name, values in times.items():
            print(f"  {name:40} {statistics.median(values) * 1e6:10,.0f}")
        for name, values in ratios.items():
            print(f"  {name:40} {statistics.median(values):10.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.state_updates", description=__doc__)
    parser.add_argument("--updates", type=int, default=960)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mas-state-bench-") as tmp:
        directory = Path(tmp)
        if "redis" in args.backends:
            with redis_server(directory) as url:
                trio.run(measure, args, directory, url)
        else:
            trio.run(measure, args, directory, "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
