"""Agent state end to end: no write lost, versions, conflicts, renamed fields, every store.

Real servers on loopback mTLS; the stores are the real ones (memory, an SQLite file, a
``redis-server`` of this module), and two servers share one Redis where the test says so.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from redis_server import RedisServer, running_redis

from mas import Agent, StateConflictError, StateError
from mas.server import MasServer
from mas.store import MemoryStore, Store, StoreLimits
from mas.store.base import StateVersionConflict
from mas.store.redis import open_redis_store
from mas.store.sqlite import open_sqlite_store
from mas.testing import TestPKI, make_config, open_test_server

INSTANCES = 3
EDITS_PER_INSTANCE = 200


class Counter(msgspec.Struct):
    n: int = 0
    note: str = ""


class Tally(Agent[Counter]):
    """An agent whose state the tests drive directly."""


class Renamed(msgspec.Struct):
    total: int = 0  # was `n`


class RenamedTally(Agent[Renamed]):
    pass


def _count(state: Counter) -> None:
    state.n += 1


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@asynccontextmanager
async def _stores(
    backend: str, tmp_path: Path, redis_url: str | None, count: int
) -> AsyncIterator[list[Store]]:
    """``count`` stores sharing their data: one store (memory, sqlite) or Redis clients."""
    async with AsyncExitStack() as stack:
        if backend == "memory":
            yield [MemoryStore(StoreLimits())] * count
        elif backend == "sqlite":
            store = await stack.enter_async_context(
                open_sqlite_store(tmp_path / "mas.sqlite3", StoreLimits())
            )
            yield [store] * count
        else:
            assert redis_url is not None
            namespace = f"t{secrets.token_hex(6)}"
            yield [
                await stack.enter_async_context(
                    open_redis_store(redis_url, StoreLimits(), namespace=namespace)
                )
                for _ in range(count)
            ]


@asynccontextmanager
async def _servers(pki: TestPKI, stores: Sequence[Store]) -> AsyncIterator[list[MasServer]]:
    config = make_config(["tally"])
    async with AsyncExitStack() as stack:
        yield [  # one server per distinct store
            await stack.enter_async_context(open_test_server(config, pki, store))
            for store in dict.fromkeys(stores)
        ]


@asynccontextmanager
async def _instances(
    pki: TestPKI, servers: Sequence[MasServer], count: int, cls: type[Agent[Any]] = Tally
) -> AsyncIterator[list[Any]]:
    """``count`` instances of agent "tally", spread over the servers in turn."""
    async with AsyncExitStack() as stack:
        agents = []
        for i in range(count):
            address = servers[i % len(servers)].address
            assert address is not None
            agent = cls(
                "tally",
                server_addr=f"127.0.0.1:{address.port}",
                tls=pki.client_ssl_context("tally"),
            )
            agents.append(await stack.enter_async_context(agent))
        yield agents


async def test_an_update_after_mutating_self_state_is_stored(pki: TestPKI) -> None:
    with trio.fail_after(30):
        async with _servers(pki, [MemoryStore()]) as servers:
            async with _instances(pki, servers, 1) as [first]:
                first.state.n += 1  # as the seed's users write it
                await first.update_state({"n": first.state.n})
                first.state.note = "set"
                await first.update_state({"note": first.state.note})
            async with _instances(pki, servers, 1) as [later]:
                assert later.state == Counter(n=1, note="set")


class _CountingConflicts:
    """A store that counts the conditional updates it refused (to see the race was real)."""

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


@pytest.mark.parametrize("workers", [EDITS_PER_INSTANCE, 32])
@pytest.mark.parametrize(
    ("backend", "servers"), [("memory", 1), ("sqlite", 1), ("redis", 1), ("redis", 2)]
)
async def test_concurrent_edits_from_several_instances_lose_no_increment(
    pki: TestPKI,
    tmp_path: Path,
    redis_server: RedisServer,
    backend: str,
    servers: int,
    workers: int,
) -> None:
    """600 increments: all at once, or by 32 handler-like tasks per instance one after another."""
    with trio.fail_after(240):
        async with _stores(backend, tmp_path, redis_server.url, servers) as stores:
            counting = [_CountingConflicts(store) for store in dict.fromkeys(stores)]
            async with (
                _servers(pki, counting) as running,  # type: ignore[arg-type]
                _instances(pki, running, INSTANCES) as agents,
            ):

                async def work(agent: Tally, edits: int) -> None:
                    for _ in range(edits):
                        await agent.edit_state(_count)

                async with trio.open_nursery() as nursery:
                    for agent in agents:
                        for w in range(workers):
                            share = EDITS_PER_INSTANCE // workers + (
                                w < EDITS_PER_INSTANCE % workers
                            )
                            nursery.start_soon(work, agent, share)
                for agent in agents:
                    await agent.refresh_state()
                    assert agent.state.n == INSTANCES * EDITS_PER_INSTANCE
                snapshot = await stores[0].read_state("tally")
                assert snapshot.values == {"n": str(INSTANCES * EDITS_PER_INSTANCE)}
                assert sum(c.conflicts for c in counting) > 0  # the instances did race


async def test_the_handlers_of_one_instance_never_conflict_with_each_other(
    pki: TestPKI,
) -> None:
    counting = _CountingConflicts(MemoryStore())
    with trio.fail_after(60):
        async with (
            _servers(pki, [counting]) as servers,  # type: ignore[list-item]
            _instances(pki, servers, 1) as [agent],
        ):

            async def work() -> None:
                for _ in range(5):
                    await agent.edit_state(_count)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(work)
            assert agent.state.n == 200
            assert counting.conflicts == 0
            version = (await counting.read_state("tally")).version
            assert version < 200  # edits waiting together were stored together


async def test_an_edit_that_keeps_losing_raises_state_conflict_and_writes_nothing(
    pki: TestPKI,
) -> None:
    with trio.fail_after(30):
        async with (
            _servers(pki, [MemoryStore()]) as servers,
            _instances(pki, servers, 2) as [mine, other],
        ):

            async def change_while_another_writes(state: Counter) -> None:
                state.note = "mine"
                await other.update_state({"n": other.state.n + 1})  # the race, every time

            with pytest.raises(StateConflictError) as caught:
                await mine.edit_state(change_while_another_writes, attempts=3)
            assert (caught.value.code, caught.value.reason, caught.value.attempts) == (
                "ABORTED",
                "state_conflict",
                3,
            )
            assert "3 attempts" in str(caught.value)
            await mine.refresh_state()
            assert mine.state == Counter(n=3, note="")  # the other's three writes, not mine


async def test_an_edit_that_wins_on_a_later_attempt_sees_the_other_write(pki: TestPKI) -> None:
    with trio.fail_after(30):
        async with (
            _servers(pki, [MemoryStore()]) as servers,
            _instances(pki, servers, 2) as [mine, other],
        ):
            seen: list[int] = []

            async def change(state: Counter) -> None:
                seen.append(state.n)
                if len(seen) == 1:
                    await other.update_state({"n": 10})  # lose the first attempt
                state.n += 1

            assert await mine.edit_state(change) == Counter(n=11)
            bump = await mine.edit_state(lambda s: msgspec.structs.replace(s, n=s.n + 1))
            assert bump == Counter(n=12)
            assert seen == [0, 10]
            assert mine.state == Counter(n=12)
            await other.refresh_state()
            assert other.state == Counter(n=12)


async def test_an_edit_that_changes_nothing_or_raises_stores_nothing(pki: TestPKI) -> None:
    with trio.fail_after(30):
        async with (
            _servers(pki, [MemoryStore()]) as servers,
            _instances(pki, servers, 1) as [agent],
        ):
            store = servers[0].store
            await agent.edit_state(lambda state: None)
            assert (await store.read_state("tally")).version == 0

            def boom(state: Counter) -> None:
                state.n = 5
                raise RuntimeError("changed my mind")

            with pytest.raises(RuntimeError, match="changed my mind"):
                await agent.edit_state(boom)

            with pytest.raises(StateError, match="must be a Counter"):
                await agent.edit_state(lambda state: {"n": 1})  # type: ignore[arg-type,return-value]

            def misfit(state: Counter) -> None:
                state.n = "five"  # type: ignore[assignment]

            with pytest.raises(StateError, match="Counter"):
                await agent.edit_state(misfit)
            assert await store.read_state("tally") == (await store.read_state("nobody"))
            assert agent.state == Counter()


async def test_a_cancelled_edit_is_not_stored_and_the_edits_behind_it_are(pki: TestPKI) -> None:
    with trio.fail_after(30):
        async with (
            _servers(pki, [MemoryStore()]) as servers,
            _instances(pki, servers, 1) as [agent],
        ):
            entered = trio.Event()

            async def slow(state: Counter) -> None:
                state.note = "cancelled"
                entered.set()
                await trio.sleep_forever()

            async def edit_slowly(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    await agent.edit_state(slow)

            async with trio.open_nursery() as nursery:
                scope = await nursery.start(edit_slowly)
                await entered.wait()  # it holds the lock, inside its change
                nursery.start_soon(agent.edit_state, _count)  # waits for the lock
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
            await agent.refresh_state()
            assert agent.state == Counter(n=1, note="")


class _AnswerNever:
    """A store whose state updates are written but never answered, while ``hang`` is set."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.hang = False
        self.written = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def update_state(self, *args: Any, **kwargs: Any) -> int:
        version = await self._store.update_state(*args, **kwargs)
        if self.hang:
            self.written.set()
            await trio.sleep_forever()
        return version


async def test_edits_whose_update_was_cancelled_on_its_way_fail_and_are_not_applied_twice(
    pki: TestPKI,
) -> None:
    store = _AnswerNever(MemoryStore())
    with trio.fail_after(30):
        async with (
            _servers(pki, [store]) as servers,  # type: ignore[list-item]
            _instances(pki, servers, 1) as [agent],
        ):
            store.hang = True
            outcome: list[BaseException] = []

            async def edit_behind() -> None:
                try:
                    await agent.edit_state(_count)
                except StateError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                holder = trio.CancelScope()

                async def edit_first() -> None:
                    with holder:
                        await agent.edit_state(_count)

                # Hold the state lock so that both edits queue, first then behind (the
                # lock is FIFO), and the first takes both into one update.
                async with agent._state_lock:
                    nursery.start_soon(edit_first)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.start_soon(edit_behind)
                    await trio.testing.wait_all_tasks_blocked()
                await store.written.wait()  # both stored by one update, never answered
                holder.cancel()
            store.hang = False
            [error] = outcome
            assert "may or may not have been stored" in str(error)
            await agent.edit_state(_count)  # the version is read again, nothing is re-applied
            assert agent.state.n == 3


async def test_a_renamed_field_names_the_stored_key_it_no_longer_loads(
    pki: TestPKI, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        async with _servers(pki, [MemoryStore()]) as servers:
            async with _instances(pki, servers, 1) as [old]:
                await old.update_state({"n": 41})
            with caplog.at_level(logging.WARNING, logger="mas.agent"):
                async with _instances(pki, servers, 1, RenamedTally) as [new]:
                    assert new.state == Renamed()
                    await new.refresh_state()  # said once, not at every load
    warnings = [r.getMessage() for r in caplog.records if "'n'" in r.getMessage()]
    assert len(warnings) == 1
    assert "Renamed" in warnings[0] and "stays on the server" in warnings[0]
    assert (await servers[0].store.read_state("tally")).values == {"n": "41"}
