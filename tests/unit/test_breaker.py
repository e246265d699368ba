"""The per-target circuit breaker: every transition, and invariants under random use."""

from __future__ import annotations

import math

import pytest
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mas.config import CircuitBreakerConfig
from mas.policy.breaker import (
    Admission,
    BreakerBook,
    BreakerSettings,
    BreakerState,
    admit,
    record_failure,
    record_success,
    release,
)

SETTINGS = BreakerSettings(
    failure_threshold=3, success_threshold=2, timeout_seconds=60.0, window_seconds=100.0
)
T0 = 1_000.0


def fail(state: BreakerState, *times: float) -> BreakerState:
    for now in times:
        state = record_failure(SETTINGS, state, now)
    return state


def opened(now: float = T0) -> BreakerState:
    state = fail(BreakerState(), now, now, now)
    assert state.state == "open"
    return state


def half_opened(settings: BreakerSettings = SETTINGS) -> BreakerState:
    """A half-open breaker with its first trial in flight."""
    admission = admit(settings, opened(), T0 + settings.timeout_seconds)
    assert admission.allowed
    assert admission.state.state == "half_open"
    return admission.state


# --- settings ---------------------------------------------------------------------------


def test_settings_from_config() -> None:
    s = BreakerSettings.from_config(CircuitBreakerConfig())
    assert (s.failure_threshold, s.success_threshold) == (5, 2)
    assert (s.timeout_seconds, s.window_seconds, s.half_open_max_trials) == (60.0, 300.0, 1)
    assert BreakerSettings.from_config(CircuitBreakerConfig(half_open_max_trials=3)) == (
        BreakerSettings(
            failure_threshold=5,
            success_threshold=2,
            timeout_seconds=60.0,
            window_seconds=300.0,
            half_open_max_trials=3,
        )
    )


@pytest.mark.parametrize(
    "change",
    [
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"half_open_max_trials": 0},
        {"timeout_seconds": 0.0},
        {"window_seconds": -1.0},
        {"timeout_seconds": math.nan},
    ],
)
def test_invalid_settings_are_refused(change: dict[str, float]) -> None:
    fields: dict[str, float] = {
        "failure_threshold": 1,
        "success_threshold": 1,
        "timeout_seconds": 1.0,
        "window_seconds": 1.0,
    }
    with pytest.raises(ValueError, match="must be"):
        BreakerSettings(**(fields | change))  # type: ignore[arg-type]


# --- closed -----------------------------------------------------------------------------


def test_closed_admits_and_stores_nothing_new() -> None:
    state = BreakerState()
    admission = admit(SETTINGS, state, T0)
    assert admission == Admission(True, state, 0.0)
    assert admission.state is state


def test_closed_stays_closed_under_the_threshold() -> None:
    state = fail(BreakerState(), T0, T0 + 1)
    assert state.state == "closed"
    assert state.failures == (T0, T0 + 1)
    assert admit(SETTINGS, state, T0 + 2).allowed


def test_threshold_consecutive_failures_within_the_window_open() -> None:
    state = fail(BreakerState(), T0, T0 + 50, T0 + 100)  # the first is exactly 100 s old
    assert state == BreakerState(state="open", opened_at=T0 + 100)


def test_failures_outside_the_window_do_not_count() -> None:
    state = fail(BreakerState(), T0, T0 + 50, T0 + 100.5)
    assert state.state == "closed"
    assert state.failures == (T0 + 50, T0 + 100.5)
    assert fail(state, T0 + 150).state == "open"


def test_a_success_resets_consecutive_failures() -> None:
    state = fail(BreakerState(), T0, T0 + 1)
    state = record_success(SETTINGS, state, T0 + 2)
    assert state == BreakerState()
    assert fail(state, T0 + 3, T0 + 4).state == "closed"
    assert record_success(SETTINGS, BreakerState(), T0) == BreakerState()


# --- open -------------------------------------------------------------------------------


def test_open_refuses_with_the_time_until_half_open() -> None:
    state = opened()
    admission = admit(SETTINGS, state, T0 + 15)
    assert not admission.allowed
    assert admission.state is state
    assert admission.retry_after == 45.0


@pytest.mark.parametrize("opened_at", [0.0, T0, 1_234.567, 1_750_000_000.1])
def test_waiting_exactly_retry_after_reaches_half_open(opened_at: float) -> None:
    state = opened(opened_at)
    now = opened_at + 0.3
    retry = admit(SETTINGS, state, now).retry_after
    assert not admit(SETTINGS, state, math.nextafter(now + retry, -math.inf)).allowed
    admission = admit(SETTINGS, state, now + retry)
    assert admission.allowed
    assert admission.state.state == "half_open"


def test_outcomes_while_open_are_ignored() -> None:
    state = opened()
    assert record_success(SETTINGS, state, T0 + 1) is state
    assert record_failure(SETTINGS, state, T0 + 59) is state
    assert release(SETTINGS, state, T0 + 1) is state
    assert admit(SETTINGS, state, T0 + 60).allowed  # the timeout still runs from T0


def test_clock_going_backwards_while_open_reanchors_the_timeout() -> None:
    state = opened(T0)
    admission = admit(SETTINGS, state, T0 - 500)
    assert not admission.allowed
    assert admission.retry_after == 60.0
    assert admission.state.opened_at == T0 - 500
    assert admit(SETTINGS, admission.state, T0 - 440).allowed


# --- half-open --------------------------------------------------------------------------


def test_timeout_moves_to_half_open_and_admits_one_trial() -> None:
    state = half_opened()
    assert state == BreakerState(
        state="half_open", opened_at=T0, trials_in_flight=1, trial_at=T0 + 60
    )


def test_half_open_trial_limit_is_enforced() -> None:
    state = half_opened()
    refused = admit(SETTINGS, state, T0 + 61)
    assert not refused.allowed
    assert refused.state is state
    assert refused.retry_after == SETTINGS.timeout_seconds


def test_several_trials_when_allowed() -> None:
    s3 = BreakerSettings(
        failure_threshold=3,
        success_threshold=2,
        timeout_seconds=60.0,
        window_seconds=100.0,
        half_open_max_trials=3,
    )
    state = half_opened(s3)
    for expected in (2, 3):
        admission = admit(s3, state, T0 + 61)
        assert admission.allowed
        state = admission.state
        assert state.trials_in_flight == expected
    assert not admit(s3, state, T0 + 61).allowed
    state = record_success(s3, state, T0 + 62)
    assert (state.trials_in_flight, state.successes) == (2, 1)
    assert admit(s3, state, T0 + 62).allowed


def test_success_threshold_closes() -> None:
    state = record_success(SETTINGS, half_opened(), T0 + 61)
    assert state == BreakerState(state="half_open", opened_at=T0, successes=1, trial_at=T0 + 60)
    admission = admit(SETTINGS, state, T0 + 62)
    assert admission.allowed
    assert record_success(SETTINGS, admission.state, T0 + 63) == BreakerState()


def test_a_failure_in_half_open_reopens() -> None:
    state = record_success(SETTINGS, half_opened(), T0 + 61)
    state = admit(SETTINGS, state, T0 + 62).state
    state = record_failure(SETTINGS, state, T0 + 70)
    assert state == BreakerState(state="open", opened_at=T0 + 70)
    assert admit(SETTINGS, state, T0 + 129).retry_after == pytest.approx(1.0)


def test_release_gives_back_a_trial_slot_without_an_outcome() -> None:
    state = release(SETTINGS, half_opened(), T0 + 61)
    assert state == BreakerState(state="half_open", opened_at=T0, trial_at=T0 + 60)
    assert release(SETTINGS, state, T0 + 61) is state  # never below zero
    assert admit(SETTINGS, state, T0 + 61).allowed
    assert release(SETTINGS, BreakerState(), T0) == BreakerState()


def test_stale_outcomes_never_drive_trials_negative() -> None:
    state = release(SETTINGS, half_opened(), T0 + 61)
    state = record_success(SETTINGS, state, T0 + 61)  # from a message sent while closed
    assert (state.trials_in_flight, state.successes) == (0, 1)


# --- the book ---------------------------------------------------------------------------


def test_book_keeps_one_breaker_per_target_and_forgets_fresh_ones() -> None:
    book = BreakerBook(SETTINGS)
    for now in (T0, T0, T0):
        book.record_failure("b", now)
    assert book.state("b").state == "open"
    assert book.admit("c", T0).allowed
    assert not book.admit("b", T0 + 1).allowed
    assert len(book) == 1  # "c" is fresh: nothing stored
    assert book.admit("b", T0 + 60).allowed
    assert book.release("b", T0 + 60).trials_in_flight == 0
    assert book.admit("b", T0 + 60).allowed
    book.record_success("b", T0 + 61)
    assert book.admit("b", T0 + 61).allowed
    assert book.record_success("b", T0 + 62) == BreakerState()
    assert len(book) == 0


# --- invariants under random sequences --------------------------------------------------


class BreakerMachine(RuleBasedStateMachine):
    """Random admits, outcomes, releases and clock moves (including backwards)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = BreakerSettings(
            failure_threshold=3,
            success_threshold=2,
            timeout_seconds=10.0,
            window_seconds=20.0,
            half_open_max_trials=2,
        )
        self.book = BreakerBook(self.settings)
        self.now = 0.0

    @rule(dt=st.floats(-5.0, 30.0))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def admit(self) -> None:
        before = self.book.state("t")
        admission = self.book.admit("t", self.now)
        if before.state == "open" and self.now < before.opened_at + 10.0:
            assert not admission.allowed
            assert admission.retry_after > 0
            assert admission.state.state == "open"
        if before.state == "closed":
            assert admission.allowed
        if admission.allowed:
            assert admission.retry_after == 0.0
        else:
            assert admission.state.state in ("open", "half_open")

    @rule()
    def success(self) -> None:
        before = self.book.state("t")
        after = self.book.record_success("t", self.now)
        if before.state == "closed":
            assert after == BreakerState()

    @rule()
    def failure(self) -> None:
        before = self.book.state("t")
        after = self.book.record_failure("t", self.now)
        if before.state == "half_open":
            assert after == BreakerState(state="open", opened_at=self.now)

    @rule()
    def release(self) -> None:
        self.book.release("t", self.now)

    @invariant()
    def state_is_consistent(self) -> None:
        state = self.book.state("t")
        assert 0 <= state.trials_in_flight <= self.settings.half_open_max_trials
        assert 0 <= state.successes < self.settings.success_threshold
        assert len(state.failures) < self.settings.failure_threshold
        if state.state != "half_open":
            assert state.trials_in_flight == 0
            assert state.successes == 0
        if state.state != "closed":
            assert state.failures == ()


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = hyp_settings(max_examples=200, stateful_step_count=60)


def test_a_trial_that_never_reports_frees_its_slot_after_its_deadline() -> None:
    # A request nobody answers (or a message that expired) gives no outcome: the
    # half-open breaker must not hold its only trial slot for ever.
    state = half_opened()  # trial admitted at T0 + 60
    assert not admit(SETTINGS, state, T0 + 60 + 59).allowed
    later = admit(SETTINGS, state, T0 + 60 + 60)
    assert later.allowed
    assert later.state.trials_in_flight == 1
    assert later.state.trial_at == T0 + 120


def test_the_trial_deadline_can_be_set_apart_from_the_open_timeout() -> None:
    settings = BreakerSettings(
        failure_threshold=3,
        success_threshold=2,
        timeout_seconds=60.0,
        window_seconds=100.0,
        trial_timeout_seconds=5.0,
    )
    state = half_opened(settings)
    assert not admit(settings, state, T0 + 64).allowed
    assert admit(settings, state, T0 + 65).allowed
    with pytest.raises(ValueError, match="trial_timeout_seconds"):
        BreakerSettings(
            failure_threshold=1,
            success_threshold=1,
            timeout_seconds=1.0,
            window_seconds=1.0,
            trial_timeout_seconds=0.0,
        )
