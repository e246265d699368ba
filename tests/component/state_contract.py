"""The state contract: versions and conditional updates, run by every backend's test module.

Star-imported next to ``store_contract`` (same ``store`` fixture, same ``LIMITS``).
"""

from __future__ import annotations

import pytest
import trio

from mas.store import Store
from mas.store.base import StateSnapshot, StateTooLargeError, StateVersionConflict


async def test_every_write_makes_the_version_larger_and_a_read_gives_both(store: Store) -> None:
    assert await store.read_state("b") == StateSnapshot(version=0, values={})
    assert await store.update_state("b", {"x": "1"}) == 1
    assert await store.update_state("b", {"y": "[true]"}) == 2
    assert await store.read_state("b") == StateSnapshot(version=2, values={"x": "1", "y": "[true]"})
    assert await store.read_state("a") == StateSnapshot(version=0, values={})


async def test_a_conditional_update_applies_only_at_the_expected_version(store: Store) -> None:
    await store.update_state("b", {"n": "1"})
    assert await store.update_state("b", {"n": "2"}, expected_version=1) == 2
    with pytest.raises(StateVersionConflict) as conflict:
        await store.update_state("b", {"n": "99", "other": "1"}, expected_version=1)
    assert (conflict.value.expected, conflict.value.actual) == (1, 2)
    assert await store.read_state("b") == StateSnapshot(version=2, values={"n": "2"})


async def test_a_conditional_update_of_a_state_never_written_expects_version_zero(
    store: Store,
) -> None:
    with pytest.raises(StateVersionConflict):
        await store.update_state("b", {"n": "1"}, expected_version=1)
    assert await store.update_state("b", {"n": "1"}, expected_version=0) == 1


async def test_a_reset_is_a_write_and_the_version_never_goes_back(store: Store) -> None:
    await store.update_state("b", {"n": "1"})
    assert await store.reset_state("b") == 2
    assert await store.read_state("b") == StateSnapshot(version=2, values={})
    with pytest.raises(StateVersionConflict):  # a version read before the reset is stale
        await store.update_state("b", {"n": "5"}, expected_version=1)
    with pytest.raises(StateVersionConflict):
        await store.update_state("b", {"n": "5"}, expected_version=0)
    assert await store.reset_state("never-written") == 1


async def test_an_empty_update_writes_nothing_but_checks_the_version(store: Store) -> None:
    await store.update_state("b", {"n": "1"})
    assert await store.update_state("b", {}) == 1
    assert await store.update_state("b", {}, expected_version=1) == 1
    with pytest.raises(StateVersionConflict):
        await store.update_state("b", {}, expected_version=0)
    assert (await store.read_state("b")).version == 1


async def test_a_conditional_update_over_the_size_limit_writes_nothing(store: Store) -> None:
    await store.update_state("b", {"x": "1"})
    with pytest.raises(StateTooLargeError):
        await store.update_state("b", {"y": '"' + "z" * 300 + '"'}, expected_version=1)
    assert await store.read_state("b") == StateSnapshot(version=1, values={"x": "1"})


async def test_of_racing_conditional_updates_at_one_version_exactly_one_wins(
    store: Store,
) -> None:
    await store.update_state("b", {"n": "0"})
    outcomes: list[int | str] = []

    async def attempt(n: int) -> None:
        try:
            outcomes.append(await store.update_state("b", {"n": str(n)}, expected_version=1))
        except StateVersionConflict:
            outcomes.append("conflict")

    async with trio.open_nursery() as nursery:
        for n in range(1, 21):
            nursery.start_soon(attempt, n)
    assert sorted(outcomes, key=str) == [2] + ["conflict"] * 19
    snapshot = await store.read_state("b")
    assert snapshot.version == 2 and snapshot.values["n"] != "0"
