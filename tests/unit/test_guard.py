"""The per-connection budgets (pure): token buckets, and the reasons they give."""

from __future__ import annotations

from mas.server.guard import (
    TOO_MANY_PINGS,
    TOO_MANY_SETTINGS,
    TOO_MANY_STREAMS,
    TOO_MUCH_BUFFERED,
    ConnectionGuard,
    GuardLimits,
    TokenBucket,
)

LIMITS = GuardLimits(
    streams_per_second=100, pings_per_second=10, settings_per_second=5, max_buffered_bytes=1000
)


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(10.0, now=0.0)
    assert bucket.take(10, 0.0)
    assert not bucket.take(1, 0.0)
    assert bucket.retry_after() == 0.1
    assert bucket.take(1, 0.1)
    assert not bucket.take(1, 0.1)


def test_a_refused_take_spends_nothing() -> None:
    bucket = TokenBucket(10.0, now=0.0)
    assert not bucket.take(11, 0.0)
    assert bucket.take(10, 0.0)


def test_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(1.0, now=0.0, burst=5)
    assert bucket.take(5, 1000.0)
    assert not bucket.take(1, 1000.0)


def test_guard_names_the_budget_that_ran_out() -> None:
    guard = ConnectionGuard(LIMITS, now=0.0)
    assert guard.on_frames(100, 10, 5, 0.0) is None
    assert guard.on_frames(1, 0, 0, 0.0) == TOO_MANY_STREAMS
    assert guard.on_frames(0, 1, 0, 0.0) == TOO_MANY_PINGS
    assert guard.on_frames(0, 0, 1, 0.0) == TOO_MANY_SETTINGS
    assert guard.on_frames(50, 5, 2, 0.5) is None  # refilled at the rate


def test_guard_bounds_unfinished_messages() -> None:
    guard = ConnectionGuard(LIMITS, now=0.0)
    assert guard.on_buffered(1000) is None
    assert guard.on_buffered(1001) == TOO_MUCH_BUFFERED
