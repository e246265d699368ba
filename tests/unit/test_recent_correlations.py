"""The router's memory of the correlations it made: a hint, never a verdict."""

from __future__ import annotations

import pytest

from mas.server.correlations import RecentCorrelations
from mas.store import Correlation


def _correlation(n: int, *, target: str = "echo", expires_at: float = 100.0) -> Correlation:
    return Correlation(
        correlation_id=f"c{n}",
        requester_id="asker",
        requester_instance_id="i1",
        target_id=target,
        request_message_id=f"m{n}",
        expires_at=expires_at,
    )


def test_a_remembered_correlation_matches_only_its_target_before_it_expires() -> None:
    recent = RecentCorrelations()
    recent.remember(_correlation(1))
    assert recent.match("c1", "echo", 99.0) == _correlation(1)
    assert recent.match("c1", "intruder", 99.0) is None  # the store refuses it, with a reason
    assert recent.match("c1", "echo", 100.0) is None  # expired: the store says so
    assert recent.match("c2", "echo", 0.0) is None  # never seen here: ask the store
    recent.forget("c1")
    assert recent.match("c1", "echo", 99.0) is None
    recent.forget("c1")  # forgetting twice is harmless


def test_it_is_bounded_and_forgets_the_oldest_first() -> None:
    recent = RecentCorrelations(limit=3)
    for n in range(5):
        recent.remember(_correlation(n))
    assert len(recent) == 3
    assert [recent.match(f"c{n}", "echo", 0.0) is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    with pytest.raises(ValueError, match="positive"):
        RecentCorrelations(limit=0)
