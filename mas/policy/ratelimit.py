"""Per-agent rate limits: the generic cell rate algorithm (GCRA), one float per window.

Pure: no Trio, no I/O; ``now`` is wall-clock float seconds passed in by the caller, and
:func:`check` returns a :class:`RateDecision` value that says what to store.

Why GCRA. A :class:`Window` allows ``limit`` messages per ``period`` seconds with a burst
of ``limit``. GCRA keeps one number per (agent, window), the *theoretical arrival time*
(TAT): the time at which the window would be empty again if nothing more were sent.
Compared with a log of timestamps it is O(1) in memory and time and exact (no bucket
edges to game, unlike fixed windows); compared with a token bucket it needs no refill
step, so a shared store can run it as one atomic read-compare-write (a Redis script),
and a denial yields the exact time to wait.

The rule, with ``T = period / limit`` (the emission interval) and ``n`` = cost:

- ``base = max(tat, now)``, ``new_tat = base + n * T``;
- the message conforms when ``new_tat - period <= now``: the window never holds more
  than ``period`` seconds of debt. From idle that admits ``limit`` messages at once, then
  one every ``T`` seconds;
- otherwise it is refused and ``retry_after`` is ``new_tat - period - now``.

Decisions:

- A message passes only if *every* window allows it; a refused attempt consumes nothing
  in any window (its TATs are returned unchanged), so hammering does not lengthen the wait.
  ``retry_after`` is the largest wait of the refusing windows, exact to the float:
  ``check`` at ``now + retry_after`` (TATs stored as returned) allows, and that sum is
  the first float time that does (an ulp later in rare rounding ties), so any earlier
  time, even by one ulp, refuses.
- Rounding: each float addition may round a TAT by half an ulp, so the comparison
  accepts a slack of ``2 * limit`` ulps of the TAT (about 50 µs for 100 messages at
  present-day wall-clock times, nanoseconds at small test times), capped at a quarter of
  ``T``. This keeps a full burst from idle always admitted and never admits an extra
  message, as long as floats can resolve the rate: ``limit**2 * ulp(now) < period / 8``,
  i.e. up to about 5,000 per minute or 40,000 per hour with wall-clock times.
- Limits must be >= 1 (the config's ``PosInt`` already says so); :class:`Window` raises
  ValueError otherwise. To block an agent, use an authz ``deny`` rule, not a limit of 0.
  A cost above a window's limit can never conform: refused with ``retry_after = inf``.
- Clock going backwards: ``max(tat, now)`` keeps the stored debt, so a step back never
  grants budget. A TAT more than one period (plus slack) ahead of ``now`` can only come
  from such a step; it is pulled back to ``now + period`` ("window full") and returned
  for storing, so a large step costs at most one period of waiting, not the step length.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final, Protocol

import msgspec

from mas.config import RateLimitConfig

MINUTE: Final = "minute"  # window names, also the second half of a store key
HOUR: Final = "hour"
_PERIODS: Final = {MINUTE: 60.0, HOUR: 3600.0}  # seconds
_SWEEP_MIN: Final = 1024  # entries a MemoryRateLimiter holds before its first sweep


class Window(msgspec.Struct, frozen=True):
    """``limit`` messages per ``period`` seconds, with a burst of ``limit``."""

    name: str
    limit: int
    period: float

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError(f"window {self.name!r}: limit must be >= 1, got {self.limit}")
        if not (math.isfinite(self.period) and self.period > 0):
            raise ValueError(f"window {self.name!r}: period must be > 0, got {self.period}")


class RateDecision(msgspec.Struct, frozen=True):
    """The verdict of :func:`check`.

    ``tats`` holds one TAT per window, in the windows' order: store them whether or not
    the message was allowed. When refused they are the stored ones, except that a TAT
    pulled back after the clock went backwards is the new value, and a window with
    nothing stored reports ``now`` (which reads as idle, like nothing stored; a store
    may drop any TAT ``<= now``). ``retry_after`` is 0 when allowed.
    """

    allowed: bool
    retry_after: float
    tats: tuple[float, ...]


class Limits(Protocol):
    """What :func:`windows_for` reads from an override: ``None`` inherits the default."""

    @property
    def per_minute(self) -> int | None: ...

    @property
    def per_hour(self) -> int | None: ...


def windows_for(config: RateLimitConfig, override: Limits | None = None) -> tuple[Window, ...]:
    """The (minute, hour) windows for one agent.

    ``override`` is a per-agent setting: a full :class:`~mas.config.RateLimitConfig`, or
    any object with ``per_minute`` / ``per_hour`` where ``None`` keeps the default.
    """
    per_minute, per_hour = config.per_minute, config.per_hour
    if override is not None:
        if override.per_minute is not None:
            per_minute = override.per_minute
        if override.per_hour is not None:
            per_hour = override.per_hour
    return (
        Window(MINUTE, per_minute, _PERIODS[MINUTE]),
        Window(HOUR, per_hour, _PERIODS[HOUR]),
    )


def _slack(window: Window, tat: float) -> float:
    """Tolerance for float drift in a TAT built from up to ``limit`` additions."""
    drift = 2 * window.limit * math.ulp(max(abs(tat), window.period))
    return min(drift, window.period / window.limit / 4)  # never near a whole message


def _wait_until(deadline: float, now: float) -> float:
    """The smallest float ``d >= 0`` with ``now + d >= deadline`` in float arithmetic.

    (``now + d`` may still land above ``deadline``: where ``d``'s ulp is finer or coarser
    than ``now + d``'s, the sums skip floats or repeat them.) A binary search over the
    floats' bit patterns, which order non-negative floats: at most 64 steps.
    """
    if deadline == math.inf:
        return math.inf
    if now >= deadline:
        return 0.0
    enough = deadline - now
    while now + enough < deadline:  # rounded down: step up, by the coarser of the two ulps
        # (the sum's ulp alone can be below ``enough``'s, near zero: adding it would change
        # nothing, and the loop would never end)
        enough += max(math.ulp(now + enough), math.ulp(enough))
    low, high = 0, _bits(enough)  # now + float(low) < deadline <= now + float(high)
    while high - low > 1:
        middle = (low + high) // 2
        if now + _float(middle) >= deadline:
            high = middle
        else:
            low = middle
    return _float(high)


def _bits(value: float) -> int:
    bits: int = _DOUBLE_AS_INT.unpack(_DOUBLE.pack(value))[0]
    return bits


def _float(bits: int) -> float:
    value: float = _DOUBLE.unpack(_DOUBLE_AS_INT.pack(bits))[0]
    return value


_DOUBLE: Final = struct.Struct("<d")
_DOUBLE_AS_INT: Final = struct.Struct("<q")


def _step(
    window: Window, stored: float | None, now: float, cost: int
) -> tuple[float, float, float]:
    """(TAT to keep if refused, TAT to store if allowed, earliest time it conforms)."""
    increment = window.period * cost / window.limit
    if stored is None or stored <= now:  # idle: the whole burst is available
        allow_at = -math.inf if cost <= window.limit else math.inf
        return (now if stored is None else stored), now + increment, allow_at
    if stored - now > window.period + _slack(window, stored):
        stored = now + window.period  # the clock went backwards: window full, no more
    new_tat = stored + increment
    if cost > window.limit:
        return stored, new_tat, math.inf
    return stored, new_tat, new_tat - window.period - _slack(window, new_tat)


def check(
    windows: Sequence[Window], tats: Sequence[float | None], now: float, cost: int = 1
) -> RateDecision:
    """Decide one attempt of ``cost`` messages at ``now`` against every window.

    ``tats`` are the stored TATs in the windows' order (``None``: nothing stored).
    Raises ValueError for mismatched lengths, ``cost < 1`` or a non-finite ``now``.
    """
    if len(tats) != len(windows):
        raise ValueError(f"{len(windows)} windows but {len(tats)} stored TATs")
    if cost < 1:
        raise ValueError(f"cost must be >= 1, got {cost}")
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time, got {now}")
    kept: list[float] = []
    taken: list[float] = []
    latest = -math.inf
    for window, stored in zip(windows, tats, strict=True):
        keep, take, allow_at = _step(window, stored, now, cost)
        kept.append(keep)
        taken.append(take)
        latest = max(latest, allow_at)
    if now >= latest:
        return RateDecision(True, 0.0, tuple(taken))
    return RateDecision(False, _wait_until(latest, now), tuple(kept))


class MemoryRateLimiter:
    """GCRA state in a dict, for the in-memory store and tests.

    Keys are ``(key, window name)``. Bounded: a TAT at or before ``now`` means "idle",
    the same as no entry, so such entries are dropped when written and swept out once the
    dict has doubled since the last sweep (amortised O(1) per :meth:`take`). The limiter
    remembers the latest ``now`` it has seen; after the clock goes backwards, a missing
    entry is read as that time, since a swept entry may have held up to it. So a step
    back never grants budget, here either.
    """

    __slots__ = ("_latest", "_sweep_at", "_tats")

    def __init__(self) -> None:
        self._tats: dict[tuple[str, str], float] = {}
        self._latest = -math.inf
        self._sweep_at = _SWEEP_MIN

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, key: str, windows: Sequence[Window], now: float, cost: int = 1) -> RateDecision:
        """:func:`check` against the stored TATs of ``key``, then store the result."""
        missing = self._latest if now < self._latest else None
        stored = [self._tats.get((key, w.name), missing) for w in windows]
        decision = check(windows, stored, now, cost)
        for window, tat in zip(windows, decision.tats, strict=True):
            if tat > now:
                self._tats[key, window.name] = tat
            else:
                self._tats.pop((key, window.name), None)
        self._latest = max(self._latest, now)
        if len(self._tats) >= self._sweep_at:
            self.prune(now)
            self._sweep_at = max(2 * len(self._tats), _SWEEP_MIN)
        return decision

    def prune(self, now: float) -> None:
        """Drop every entry whose TAT is at or before ``now`` (it would read as idle)."""
        self._latest = max(self._latest, now)
        stale = [k for k, tat in self._tats.items() if tat <= now]
        for k in stale:
            del self._tats[k]
