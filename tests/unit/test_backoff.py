"""The reconnect backoff schedule (pure): bounded, jittered, reproducible with a seed."""

from __future__ import annotations

import random

import pytest

from mas.agent.backoff import BACKOFF_FACTOR, INITIAL_DELAY, MAX_DELAY, Backoff


def test_ceilings_double_from_the_initial_delay_up_to_the_cap() -> None:
    backoff = Backoff()
    ceilings = [backoff.ceiling(n) for n in range(10)]
    assert ceilings[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert ceilings[6:] == [MAX_DELAY] * 4
    assert (INITIAL_DELAY, BACKOFF_FACTOR, MAX_DELAY) == (0.1, 2.0, 5.0)


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert Backoff().ceiling(10_000) == MAX_DELAY


def test_every_delay_is_within_zero_and_its_ceiling() -> None:
    backoff = Backoff(rng=random.Random(1234))
    for attempt in range(200):
        delay = backoff.next_delay()
        assert 0.0 <= delay <= backoff.ceiling(attempt) <= MAX_DELAY
    assert backoff.attempt == 200


def test_delays_are_jittered_not_a_fixed_sequence() -> None:
    backoff = Backoff(rng=random.Random(7))
    capped = [backoff.next_delay() for _ in range(40)][10:]  # all with ceiling MAX_DELAY
    assert len(set(capped)) == len(capped)
    assert min(capped) < MAX_DELAY / 2 < max(capped)


def test_the_same_seed_gives_the_same_schedule() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    assert [first.next_delay() for _ in range(20)] == [second.next_delay() for _ in range(20)]


def test_reset_starts_over_from_the_initial_ceiling() -> None:
    backoff = Backoff(rng=random.Random(3))
    for _ in range(8):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert backoff.next_delay() <= INITIAL_DELAY


def test_custom_parameters_are_respected() -> None:
    backoff = Backoff(initial=1.0, factor=3.0, maximum=10.0, rng=random.Random(0))
    assert [backoff.ceiling(n) for n in range(4)] == [1.0, 3.0, 9.0, 10.0]
    assert Backoff(initial=0.5, factor=1.0, maximum=0.5).ceiling(50) == 0.5


@pytest.mark.parametrize(
    ("initial", "factor", "maximum"),
    [(0.0, 2.0, 5.0), (-1.0, 2.0, 5.0), (1.0, 0.5, 5.0), (6.0, 2.0, 5.0)],
)
def test_nonsense_parameters_are_refused(initial: float, factor: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, factor=factor, maximum=maximum)
