"""The per-connection budgets (pure): token buckets, and the reasons they give."""

from __future__ import annotations

import math

from mas.server.guard import (
    ConnectionGuard,
    GuardLimits,
    TokenBucket,
    UnfinishedMessages,
    check_headers,
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
    assert guard.on_frames(1, 0, 0, 0.0) == "too_many_streams"
    assert guard.on_frames(0, 1, 0, 0.0) == "too_many_pings"
    assert guard.on_frames(0, 0, 1, 0.0) == "too_many_settings"
    assert guard.on_frames(50, 5, 2, 0.5) is None  # refilled at the rate


def test_guard_bounds_unfinished_messages() -> None:
    guard = ConnectionGuard(LIMITS, now=0.0)
    assert guard.on_buffered(1000) is None
    assert guard.on_buffered(1001) == "unfinished_messages_too_large"


def test_header_count_past_the_limit_is_refused() -> None:
    limits = LIMITS._replace(max_headers=10)
    assert check_headers(10, limits) is None
    assert check_headers(11, limits) == "too_many_headers"


def test_unfinished_message_is_overdue_a_timeout_after_its_first_bytes() -> None:
    unfinished = UnfinishedMessages(timeout=5.0)
    assert unfinished.next_deadline() == math.inf
    unfinished.update(1, held=True, completed=False, now=10.0)
    unfinished.update(1, held=True, completed=False, now=12.0)  # more of the same message
    assert unfinished.next_deadline() == 15.0
    assert unfinished.overdue(14.9) == []
    assert unfinished.overdue(15.0) == [1]
    assert unfinished.next_deadline() == math.inf  # taken once


def test_a_completed_message_stops_its_clock_and_the_next_starts_its_own() -> None:
    unfinished = UnfinishedMessages(timeout=5.0)
    unfinished.update(1, held=True, completed=False, now=0.0)
    unfinished.update(1, held=True, completed=True, now=4.0)  # done, and the next begun
    assert unfinished.next_deadline() == 9.0
    unfinished.update(1, held=False, completed=True, now=6.0)  # that one done too
    assert unfinished.next_deadline() == math.inf


def test_the_oldest_unfinished_message_sets_the_deadline() -> None:
    unfinished = UnfinishedMessages(timeout=5.0)
    unfinished.update(3, held=True, completed=False, now=2.0)
    unfinished.update(1, held=True, completed=False, now=1.0)
    assert unfinished.next_deadline() == 6.0
    unfinished.forget(1)  # its stream ended or was reset
    assert unfinished.next_deadline() == 7.0
    assert unfinished.overdue(100.0) == [3]
