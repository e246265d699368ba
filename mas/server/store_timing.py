"""A store wrapper that times every call into ``ServerMetrics`` (``mas_store_operation_seconds``).

Used only when the Prometheus endpoint is on: it adds a coroutine frame and two
clock reads to each store call, which nobody should pay for a histogram no one
scrapes. Attributes that are not coroutine methods (``limits``, ``server_id``) and
``watch`` (which runs for the server's lifetime) pass through untimed.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

from ..store import Store
from .metrics import ServerMetrics

_UNTIMED: Final = frozenset({"watch"})  # long-running: its duration is the server's


class _TimedStore:
    def __init__(self, store: Store, metrics: ServerMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name in _UNTIMED or not inspect.iscoroutinefunction(attribute):
            return attribute
        timed = _timed(name, attribute, self._metrics.observe_store)
        setattr(self, name, timed)  # found directly from now on: one wrapper per method
        return timed


def _timed(
    name: str,
    method: Callable[..., Awaitable[Any]],
    observe: Callable[[str, float], None],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            observe(name, time.perf_counter() - started)

    return call


def timed_store(store: Store, metrics: ServerMetrics) -> Store:
    """``store``, with every coroutine method's duration observed in ``metrics``."""
    return cast(Store, _TimedStore(store, metrics))
