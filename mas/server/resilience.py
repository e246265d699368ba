"""One failure policy for the server's background loops: ride out the store, never die of it.

The audit writer and follower, the retry scheduler and the sweeper each depend on the
store (and the follower on the audit file's disk). When a dependency fails for a while (a
Redis restart longer than the reconnect window, a full disk), such a loop must neither
end the server nor spin: ``persist`` runs one step of it again and again, with jittered
exponential backoff, until the step succeeds, logging once when the dependency goes away
and once when it is back. Whatever the step was holding (a batch of audit drafts, say)
stays in the step's closure meanwhile, so nothing queued is lost; the loop's bounded
input queue fills and slows its producers down instead of growing.

Client-facing calls are not retried here: they fail at once with ``UNAVAILABLE``
(``grpc.py`` maps ``StoreError``), and the client decides. ``StoreUnusableError`` is not
transient (a failed fsync leaves the SQLite store broken until restart, since the kernel
may have dropped the pages it failed to write) and is raised.

Cancellation: ``persist`` is a plain checkpointed wait; cancelling it abandons the step.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import trio

from ..audit.sink import AuditSinkError
from ..errors import StoreError
from ..store.sqlite.schema import StoreUnusableError

T = TypeVar("T")

INITIAL_BACKOFF: Final = 0.1  # seconds before the first retry
MAX_BACKOFF: Final = 5.0  # seconds, the longest pause between retries
TRANSIENT: Final = (StoreError, AuditSinkError, OSError)  # worth waiting out


class Outage:
    """The health of one loop's dependency: says so once when it fails and once when back."""

    __slots__ = ("_failures", "_since", "log", "what")

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self._failures = 0
        self._since = 0.0

    @property
    def down(self) -> bool:
        return self._failures > 0

    def failed(self, error: BaseException, now: float) -> float:
        """Note a failure; the seconds to wait before trying again (jittered)."""
        if self._failures == 0:
            self._since = now
            self.log.warning("%s paused: %s; retrying until it is back", self.what, error)
        self._failures += 1
        ceiling = min(INITIAL_BACKOFF * 2 ** (self._failures - 1), MAX_BACKOFF)
        return random.uniform(ceiling / 2, ceiling)

    def succeeded(self, now: float) -> None:
        """Note a success; logs the recovery if it follows failures."""
        if self._failures:
            self.log.warning(
                "%s resumed after %.1f s (%d failed attempt(s))",
                self.what,
                now - self._since,
                self._failures,
            )
            self._failures = 0


async def persist(outage: Outage, step: Callable[[], Awaitable[T]]) -> T:
    """Run ``step`` until it returns, waiting out transient failures (see the module)."""
    while True:
        try:
            result = await step()
        except StoreUnusableError:
            raise
        except TRANSIENT as exc:
            await trio.sleep(outage.failed(exc, trio.current_time()))
            continue
        outage.succeeded(trio.current_time())
        return result
