"""A store wrapper that lets other tasks run before and after every call.

``YieldingStore(store)`` behaves exactly like ``store`` but yields to the Trio
scheduler (a checkpoint) before and after each of its coroutine methods, and
optionally holds chosen calls at a gate. Run the router and end-to-end tests
over it: code that is only correct when a store call never lets another task
run (a wake-up set between a read and the wait that should see it, a record
taken in one call and written in the next) then fails in the suite instead of
in production, where SQLite's flushes and Redis round trips yield all the time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio

from ..store import Store


class YieldingStore:
    """``store`` with a checkpoint before and after every coroutine method.

    ``hold(name)`` makes the next calls of method ``name`` wait, after they read
    or wrote the wrapped store, until ``release(name)``: a test can then act
    while a caller is between the store's answer and its next step.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._gates: dict[str, trio.Event] = {}
        self.calls: dict[str, int] = {}  # completed calls by method name
        self.held = trio.Event()  # set whenever a call reaches a closed gate
        self._called = trio.Event()

    async def wait_calls(self, name: str, count: int) -> None:
        """Return once ``count`` calls of ``name`` have completed in all."""
        while self.calls.get(name, 0) < count:
            await self._called.wait()

    def hold(self, name: str) -> None:
        """Hold later calls of ``name`` after the wrapped call returns."""
        self._gates[name] = trio.Event()
        self.held = trio.Event()

    def release(self, name: str) -> None:
        """Let held and later calls of ``name`` go on."""
        gate = self._gates.pop(name, None)
        if gate is not None:
            gate.set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute) or name == "watch":
            return attribute
        return self._yielding(name, attribute)

    def _yielding(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            await trio.lowlevel.checkpoint()
            result = await method(*args, **kwargs)
            gate = self._gates.get(name)
            self.calls[name] = self.calls.get(name, 0) + 1
            self._called.set()
            self._called = trio.Event()
            if gate is not None:
                self.held.set()
                await gate.wait()
            await trio.lowlevel.checkpoint()
            return result

        return call


def yielding(store: Store) -> Store:
    """``YieldingStore(store)``, typed as the store it wraps."""
    return cast(Store, YieldingStore(store))
