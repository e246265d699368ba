"""GCRA rate limits: bursts, steady rate, window edges, retry-after, clocks, bounds."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mas.config import RateLimitConfig
from mas.policy.ratelimit import (
    HOUR,
    MINUTE,
    MemoryRateLimiter,
    RateDecision,
    Window,
    _wait_until,
    check,
    windows_for,
)

T0 = 1_000.0
EPS = 1e-9
MIN10 = (Window("minute", 10, 60.0),)  # one message every 6 s, burst 10


def burst(limiter: MemoryRateLimiter, windows: tuple[Window, ...], now: float, n: int) -> int:
    """How many of ``n`` attempts at ``now`` are allowed."""
    return sum(limiter.take("a", windows, now).allowed for _ in range(n))


class Override(msgspec.Struct, frozen=True):
    per_minute: int | None = None
    per_hour: int | None = None


# --- windows ----------------------------------------------------------------------------


def test_windows_follow_config() -> None:
    assert windows_for(RateLimitConfig()) == (
        Window(MINUTE, 100, 60.0),
        Window(HOUR, 1000, 3600.0),
    )


def test_full_override_replaces_both_limits() -> None:
    windows = windows_for(RateLimitConfig(), RateLimitConfig(per_minute=5, per_hour=50))
    assert [(w.limit, w.period) for w in windows] == [(5, 60.0), (50, 3600.0)]


def test_partial_override_inherits_the_rest() -> None:
    windows = windows_for(RateLimitConfig(per_minute=7, per_hour=70), Override(per_hour=9))
    assert [w.limit for w in windows] == [7, 9]


def test_override_config_is_enforced() -> None:
    limiter = MemoryRateLimiter()
    windows = windows_for(RateLimitConfig(), RateLimitConfig(per_minute=3, per_hour=1000))
    assert burst(limiter, windows, T0, 10) == 3


@pytest.mark.parametrize(("limit", "period"), [(0, 60.0), (-1, 60.0), (1, 0.0), (1, math.inf)])
def test_zero_or_invalid_windows_are_refused(limit: int, period: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Window("w", limit, period)


# --- burst and steady rate --------------------------------------------------------------


def test_burst_of_limit_then_one_per_interval() -> None:
    limiter = MemoryRateLimiter()
    assert burst(limiter, MIN10, T0, 15) == 10
    for k in range(1, 20):  # steady: exactly one every 6 s
        assert limiter.take("a", MIN10, T0 + 6 * k).allowed
        assert not limiter.take("a", MIN10, T0 + 6 * k).allowed


def test_keys_are_independent() -> None:
    limiter = MemoryRateLimiter()
    assert burst(limiter, MIN10, T0, 10) == 10
    assert limiter.take("b", MIN10, T0).allowed


@given(
    limit=st.integers(1, 2000),
    period=st.sampled_from([1.0, 60.0, 3600.0, 7.3]),
    start=st.one_of(st.floats(-1e6, 1e6), st.floats(1.6e9, 2.1e9)),
)
def test_a_full_burst_from_idle_is_always_allowed_and_no_more(
    limit: int, period: float, start: float
) -> None:
    assume(limit * limit * math.ulp(abs(start) + period) < period / 8)  # floats resolve it
    windows = (Window("w", limit, period),)
    tats: list[float | None] = [None]
    for _ in range(limit):
        decision = check(windows, tats, start)
        assert decision.allowed
        tats = list(decision.tats)
    denied = check(windows, tats, start)
    assert not denied.allowed
    drift = 4 * limit * math.ulp(abs(start) + 2 * period)  # rounding, and the slack for it
    assert abs(denied.retry_after - period / limit) <= drift


def test_burst_at_wall_clock_times() -> None:
    limiter = MemoryRateLimiter()
    now = 1_750_000_000.123
    windows = windows_for(RateLimitConfig())
    assert burst(limiter, windows, now, 150) == 100
    retry = limiter.take("a", windows, now).retry_after
    assert retry == pytest.approx(0.6, abs=1e-4)
    assert limiter.take("a", windows, now + retry).allowed


# --- window edges and retry-after -------------------------------------------------------


def test_exactly_at_the_boundary_is_allowed_epsilon_before_is_not() -> None:
    limiter = MemoryRateLimiter()
    burst(limiter, MIN10, T0, 10)
    assert not limiter.take("a", MIN10, T0 + 6 - EPS).allowed
    assert limiter.take("a", MIN10, T0 + 6).allowed
    assert not limiter.take("a", MIN10, T0 + 6 + EPS).allowed  # next slot is at +12
    assert limiter.take("a", MIN10, T0 + 12 + EPS).allowed


def test_a_whole_period_of_silence_restores_the_whole_burst() -> None:
    limiter = MemoryRateLimiter()
    assert burst(limiter, MIN10, T0, 10) == 10
    assert burst(limiter, MIN10, T0 + 60, 11) == 10  # exactly one period later
    assert burst(limiter, MIN10, T0 + 120 - EPS, 11) == 9  # a hair short of one


@pytest.mark.parametrize("start", [0.0, 1.0, T0, 1_234.567, 1_750_000_000.0])
def test_waiting_exactly_retry_after_succeeds_and_a_hair_less_fails(start: float) -> None:
    windows = (Window("w", 7, 60.0),)  # interval 60/7, not a float-exact number
    decision = RateDecision(True, 0.0, ())
    tats: list[float | None] = [None]
    for _ in range(7):
        decision = check(windows, tats, start)
        tats = list(decision.tats)
    denied = check(windows, tats, start)
    assert not denied.allowed
    assert denied.tats == decision.tats
    assert denied.retry_after == pytest.approx(60 / 7, rel=1e-6)
    at = start + denied.retry_after
    assert check(windows, tats, at).allowed
    assert not check(windows, tats, math.nextafter(at, -math.inf)).allowed
    assert not check(windows, tats, at - 1e-6).allowed


@given(
    limit=st.integers(1, 500),
    period=st.floats(0.5, 10_000.0),
    start=st.floats(-1e7, 2e9),
    gap=st.floats(0.0, 0.9),
)
def test_retry_after_is_exact_to_the_float(
    limit: int, period: float, start: float, gap: float
) -> None:
    windows = (Window("w", limit, period),)
    tats: list[float | None] = [None]
    now = start
    while (decision := check(windows, tats, now)).allowed:  # faster than the rate: ends
        tats = list(decision.tats)
        now += gap * period / limit
    # Waiting retry_after is enough, and one float less is not: retry_after is the
    # smallest wait that works (now + wait may skip floats, so the property is on the wait).
    assert check(windows, tats, now + decision.retry_after).allowed
    if decision.retry_after > 0.0:
        shorter = math.nextafter(decision.retry_after, 0.0)
        assert not check(windows, tats, now + shorter).allowed


def test_retry_after_is_the_smallest_wait_where_sums_skip_floats() -> None:
    # Found by hypothesis: here no float wait puts now + wait exactly on the earliest
    # conforming time, so the earliest time itself is not reachable from now.
    windows = (Window("w", 2, 2049.0),)
    tats: list[float | None] = [None]
    now = -1.1468023117412542
    while (decision := check(windows, tats, now)).allowed:
        tats = list(decision.tats)
    assert check(windows, tats, now + decision.retry_after).allowed
    shorter = math.nextafter(decision.retry_after, 0.0)
    assert not check(windows, tats, now + shorter).allowed


# --- several windows --------------------------------------------------------------------


def test_hour_limit_binds_after_many_minutes() -> None:
    limiter = MemoryRateLimiter()
    windows = windows_for(RateLimitConfig(per_minute=100, per_hour=1000))
    allowed = [burst(limiter, windows, T0 + 60 * m, 200) for m in range(20)]
    # The hour's burst of 1000 (plus 1000/h refilled meanwhile) lasts 11 minutes at the
    # minute's full rate: 1100 <= 1000 + 660 s / 3.6 s. Then 83 are left, then 1000/h.
    assert allowed[:11] == [100] * 11
    assert allowed[11] == 83
    assert set(allowed[12:]) == {16, 17}
    assert sum(allowed[12:]) == 133  # 8 minutes at one per 3.6 s
    now = T0 + 60 * 19
    denied = limiter.take("a", windows, now)
    assert not denied.allowed
    minute, hour = denied.tats
    assert check(windows[:1], [minute], now).allowed  # the minute alone would allow it
    assert denied.retry_after == check(windows[1:], [hour], now).retry_after > 0


def test_retry_after_is_the_max_over_the_denying_windows() -> None:
    windows = (Window("short", 1, 10.0), Window("long", 1, 100.0))
    first = check(windows, [None, None], 0.0)
    assert first.allowed
    denied = check(windows, first.tats, 1.0)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(99.0)
    at = 1.0 + denied.retry_after
    assert check(windows, first.tats, at).allowed
    assert not check(windows, first.tats, math.nextafter(at, -math.inf)).allowed


def test_denied_attempts_consume_nothing_in_any_window() -> None:
    windows = (Window("short", 2, 10.0), Window("long", 3, 100.0))
    tats: list[float | None] = [None, None]
    for now in (0.0, 0.0, 10.0):
        decision = check(windows, tats, now)
        assert decision.allowed
        tats = list(decision.tats)
    # The long window is spent; the short one would still allow one at t=10.
    for now in (10.0, 10.0, 20.0, 30.0):
        denied = check(windows, tats, now)
        assert not denied.allowed
        assert list(denied.tats) == tats
    assert check(windows, tats, 100.0 / 3).allowed


def test_hammering_does_not_lengthen_the_wait() -> None:
    limiter = MemoryRateLimiter()
    burst(limiter, MIN10, T0, 10)
    for i in range(1000):
        assert not limiter.take("a", MIN10, T0 + i * 0.005).allowed
    assert limiter.take("a", MIN10, T0 + 6).allowed


def test_cost_counts_several_messages() -> None:
    windows = (Window("w", 10, 10.0),)
    decision = check(windows, [None], 0.0, cost=4)
    assert decision.allowed
    assert decision.tats == (4.0,)
    decision = check(windows, decision.tats, 0.0, cost=6)
    assert decision.allowed
    denied = check(windows, decision.tats, 0.0, cost=2)
    assert denied.retry_after == pytest.approx(2.0)


def test_cost_above_the_limit_can_never_pass() -> None:
    denied = check((Window("w", 3, 10.0),), [None], 0.0, cost=4)
    assert not denied.allowed
    assert denied.retry_after == math.inf


@pytest.mark.parametrize(
    ("tats", "now", "cost"),
    [([None, None], 0.0, 1), ([None], math.nan, 1), ([None], math.inf, 1), ([None], 0.0, 0)],
)
def test_bad_arguments_are_refused(tats: list[float | None], now: float, cost: int) -> None:
    with pytest.raises(ValueError):
        check(MIN10, tats, now, cost)


# --- clocks -----------------------------------------------------------------------------


def test_clock_going_backwards_grants_nothing() -> None:
    limiter = MemoryRateLimiter()
    burst(limiter, MIN10, T0, 10)
    assert burst(limiter, MIN10, T0 - 30, 5) == 0
    assert burst(limiter, MIN10, T0 - 1000, 5) == 0
    assert limiter.take("a", MIN10, T0 + 6).allowed


def test_a_large_step_back_costs_at_most_one_period() -> None:
    windows = (Window("w", 10, 60.0),)
    tats = check(windows, [None], 10_000.0).tats
    denied = check(windows, tats, 0.0)  # the clock jumped back almost three hours
    assert not denied.allowed
    assert denied.tats == (60.0,)  # pulled back: the window is full, no more
    assert denied.retry_after == pytest.approx(6.0)
    assert check(windows, denied.tats, 6.0).allowed


def test_a_step_back_after_a_sweep_grants_nothing() -> None:
    limiter = MemoryRateLimiter()
    burst(limiter, MIN10, T0, 10)
    limiter.prune(T0 + 61)  # every entry is stale now
    assert len(limiter) == 0
    assert burst(limiter, MIN10, T0, 10) == 0  # back to T0: read as "full until T0 + 61"


# --- memory bound -----------------------------------------------------------------------


def test_stale_entries_are_pruned() -> None:
    limiter = MemoryRateLimiter()
    windows = windows_for(RateLimitConfig())
    for i in range(20_000):  # a new key every second; each is idle after an hour
        limiter.take(f"agent-{i}", windows, T0 + i)
        assert len(limiter) <= 2 * 2 * 3_600 + 1024
    limiter.prune(T0 + 20_000 + 3_600)
    assert len(limiter) == 0


def test_an_idle_key_leaves_no_entry() -> None:
    limiter = MemoryRateLimiter()
    limiter.take("a", MIN10, T0)
    assert len(limiter) == 1
    limiter.prune(T0 + 6)
    assert len(limiter) == 0
    assert burst(limiter, MIN10, T0 + 6, 11) == 10


@pytest.mark.parametrize(
    ("deadline", "now"),
    [(1e-300, -0.1), (5e-324, -1.0), (0.0, -1e-300), (1e-20, -1e6), (2e9 + 1e-6, 2e9)],
)
def test_the_wait_until_a_deadline_is_found_near_zero_and_far_from_it(
    deadline: float, now: float
) -> None:
    # Near zero the sum's ulp is far below the wait's: stepping by it alone never ended.
    wait = _wait_until(deadline, now)
    assert now + wait >= deadline
    assert wait == 0.0 or now + math.nextafter(wait, 0.0) < deadline
