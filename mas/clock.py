"""Wall-clock seconds that follow Trio's clock (pure apart from one reading).

Stored timestamps (enqueue times, expiries, retry times) must be wall-clock so
they survive a restart, yet tests drive time with ``trio.testing.MockClock``.
``TrioWallClock`` reads the wall clock once and then advances with
``trio.current_time()``, so a MockClock jump moves it too.
"""

from __future__ import annotations

import time

import trio


class TrioWallClock:
    """Wall-clock seconds derived from the running Trio clock."""

    __slots__ = ("_offset",)

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        """Current wall-clock time in seconds."""
        return self._offset + trio.current_time()

    def to_trio(self, wall: float) -> float:
        """The Trio time at which the wall clock will read ``wall``."""
        return wall - self._offset
