"""Jittered exponential backoff for reconnecting (pure).

Full jitter: the n-th delay is drawn uniformly from ``[0, min(maximum, initial * factor**n)]``,
so a crowd of agents that lost the same server does not come back in lockstep. The random
source is injectable, so a test can fix the schedule with a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from typing import Final

INITIAL_DELAY: Final = 0.1  # seconds: the first retry comes almost at once
BACKOFF_FACTOR: Final = 2.0  # the ceiling doubles after each failed attempt
MAX_DELAY: Final = 5.0  # seconds: a restarted server is found within this long


class Backoff:
    """A reconnect schedule; ``next_delay()`` for each failed attempt, ``reset()`` on success."""

    def __init__(
        self,
        *,
        initial: float = INITIAL_DELAY,
        factor: float = BACKOFF_FACTOR,
        maximum: float = MAX_DELAY,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or factor < 1:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and factor >= 1, "
                f"got initial={initial}, maximum={maximum}, factor={factor}"
            )
        self._initial = initial
        self._factor = factor
        self._maximum = maximum
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """How many delays have been handed out since the last reset."""
        return self._attempt

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay for the given attempt number (0-based)."""
        ceiling = self._initial
        for _ in range(attempt):
            ceiling *= self._factor
            if ceiling >= self._maximum:
                return self._maximum
        return min(ceiling, self._maximum)

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds, in ``[0, ceiling(attempt)]``."""
        delay = self._rng.uniform(0.0, self.ceiling(self._attempt))
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start over from the initial delay (after a connection that held)."""
        self._attempt = 0
