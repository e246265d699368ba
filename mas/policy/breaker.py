"""A circuit breaker per target agent, as a pure state machine.

Pure: no Trio, no I/O; ``now`` is float seconds passed in. Every operation takes the
stored :class:`BreakerState` and returns the new one to store (the same object when
nothing changed, so a caller may skip the write on ``new is old``).

::

                failure_threshold failures within window_seconds
    +--------+ --------------------------------------------------> +------+
    | CLOSED |                                                      | OPEN |
    +--------+ <------+                        +------------------> +------+
                      | success_threshold      | any failure            |  admit, once
                      | successes              |                        |  timeout_seconds
                      |                 +-------------+                 |  have passed
                      +---------------- |  HALF_OPEN  | <---------------+  since opening
                                        +-------------+

Transition table (``_TABLE`` below is this table, row by row):

=========  ===============================  ======================  ======================
state      admit                            success                 failure
=========  ===============================  ======================  ======================
closed     allow                            forget failures         remember it; the
                                                                    threshold within the
                                                                    window -> open
open       timeout passed -> half_open and  ignored (outcome of a   ignored (likewise)
           admit there; else refuse with    message sent before it
           retry_after = time left          opened)
half_open  a trial slot free -> allow,      trials - 1, successes   -> open,
           trials + 1; all taken by trials  + 1; success_threshold  opened_at = now
           older than trial_timeout -> free -> closed
           them and allow; else refuse with
           retry_after = timeout_seconds
=========  ===============================  ======================  ======================

:func:`release` gives back a trial slot without an outcome, for a message the breaker
admitted that a later pipeline step refused; in other states it does nothing.

Notes: failures are *consecutive* (a success clears them) and count while ``now - t <=
window_seconds``. Outcomes are not tied to admissions, so an outcome arriving in half-open
counts there even if its message was sent while closed (it is still evidence about the
target); ``trials_in_flight`` never goes below 0. If the clock goes backwards, an open
breaker re-anchors ``opened_at`` to ``now``: it stays open ``timeout_seconds`` from the
current reading, never longer. A refused half-open admission answers ``timeout_seconds``:
the breaker cannot know when a trial ends, and a failing one reopens it for that long.

A trial that never reports an outcome (a request nobody answers, a message that expired
or was dead-lettered without an ack) would hold its slot for ever; so every trial has a
deadline: once the newest trial is ``trial_timeout_seconds`` old (``timeout_seconds``
unless set) and the slots are still taken, they are taken to be lost and freed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final, Literal, NamedTuple

import msgspec

from mas.config import CircuitBreakerConfig

StateName = Literal["closed", "open", "half_open"]
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
DEFAULT_HALF_OPEN_MAX_TRIALS: Final = 1  # trial messages in flight while half-open


class BreakerState(msgspec.Struct, frozen=True, kw_only=True):
    """What is stored per target. ``failures``: times of recent consecutive failures."""

    state: StateName = CLOSED
    failures: tuple[float, ...] = ()
    opened_at: float = 0.0
    trials_in_flight: int = 0
    successes: int = 0
    trial_at: float = 0.0  # when the newest half-open trial was admitted


class BreakerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Thresholds (counts >= 1) and durations (seconds > 0) of every breaker."""

    failure_threshold: int
    success_threshold: int
    timeout_seconds: float
    window_seconds: float
    half_open_max_trials: int = DEFAULT_HALF_OPEN_MAX_TRIALS
    trial_timeout_seconds: float | None = None  # a trial's deadline; None: timeout_seconds

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "success_threshold", "half_open_max_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        names = ["timeout_seconds", "window_seconds"]
        if self.trial_timeout_seconds is not None:
            names.append("trial_timeout_seconds")
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")

    @classmethod
    def from_config(
        cls,
        config: CircuitBreakerConfig,
    ) -> BreakerSettings:
        """Settings from ``gateway.circuit_breaker``."""
        return cls(
            failure_threshold=config.failure_threshold,
            success_threshold=config.success_threshold,
            timeout_seconds=config.timeout_seconds,
            window_seconds=config.window_seconds,
            half_open_max_trials=config.half_open_max_trials,
            trial_timeout_seconds=config.trial_timeout_seconds,
        )

    @property
    def trial_deadline(self) -> float:
        """Seconds after which unanswered half-open trials count as lost."""
        if self.trial_timeout_seconds is None:
            return self.timeout_seconds
        return self.trial_timeout_seconds


class Admission(msgspec.Struct, frozen=True):
    """The verdict of :func:`admit`: store ``state`` whatever ``allowed`` says."""

    allowed: bool
    state: BreakerState
    retry_after: float  # 0 when allowed


_FRESH: Final = BreakerState()
_Admit = Callable[[BreakerSettings, BreakerState, float], Admission]
_Record = Callable[[BreakerSettings, BreakerState, float], BreakerState]


def _wait_until(deadline: float, now: float) -> float:
    """A wait ``d >= 0`` with ``now + d >= deadline`` in float arithmetic, within an ulp."""
    wait = max(deadline - now, 0.0)
    while now + wait < deadline:  # deadline - now rounded down: step up an ulp
        wait = math.nextafter(wait, math.inf)
    return wait


def _opened(now: float) -> BreakerState:
    return BreakerState(state=OPEN, opened_at=now)


def _unchanged(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    return state


# --- admit ------------------------------------------------------------------------------


def _admit_closed(settings: BreakerSettings, state: BreakerState, now: float) -> Admission:
    return Admission(True, state, 0.0)


def _admit_open(settings: BreakerSettings, state: BreakerState, now: float) -> Admission:
    if state.opened_at > now:  # the clock went backwards: open for a full timeout from now
        state = _opened(now)
    reopen_at = state.opened_at + settings.timeout_seconds
    if now >= reopen_at:
        half_open = BreakerState(state=HALF_OPEN, opened_at=state.opened_at)
        return _admit_half_open(settings, half_open, now)
    return Admission(False, state, _wait_until(reopen_at, now))


def _admit_half_open(settings: BreakerSettings, state: BreakerState, now: float) -> Admission:
    trials = state.trials_in_flight
    if trials >= settings.half_open_max_trials and now - state.trial_at >= settings.trial_deadline:
        trials = 0  # every trial outlived its deadline without an outcome: lost
    if trials < settings.half_open_max_trials:
        trial = msgspec.structs.replace(state, trials_in_flight=trials + 1, trial_at=now)
        return Admission(True, trial, 0.0)
    return Admission(False, state, settings.timeout_seconds)


# --- outcomes ---------------------------------------------------------------------------


def _success_closed(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    return msgspec.structs.replace(state, failures=()) if state.failures else state


def _failure_closed(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    recent = tuple(t for t in state.failures if now - t <= settings.window_seconds)
    recent += (now,)
    if len(recent) >= settings.failure_threshold:
        return _opened(now)
    return msgspec.structs.replace(state, failures=recent)


def _success_half_open(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    successes = state.successes + 1
    if successes >= settings.success_threshold:
        return _FRESH
    trials = max(state.trials_in_flight - 1, 0)
    return msgspec.structs.replace(state, trials_in_flight=trials, successes=successes)


def _failure_half_open(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    return _opened(now)


def _release_half_open(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    if state.trials_in_flight == 0:
        return state
    return msgspec.structs.replace(state, trials_in_flight=state.trials_in_flight - 1)


class _Row(NamedTuple):
    admit: _Admit
    success: _Record
    failure: _Record
    release: _Record


_TABLE: Final[Mapping[StateName, _Row]] = {  # the transition table of the module docstring
    CLOSED: _Row(_admit_closed, _success_closed, _failure_closed, _unchanged),
    OPEN: _Row(_admit_open, _unchanged, _unchanged, _unchanged),
    HALF_OPEN: _Row(_admit_half_open, _success_half_open, _failure_half_open, _release_half_open),
}


def admit(settings: BreakerSettings, state: BreakerState, now: float) -> Admission:
    """May a message be routed to the target now? Call before routing it."""
    return _TABLE[state.state].admit(settings, state, now)


def record_success(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    """The target handled a message (an ack)."""
    return _TABLE[state.state].success(settings, state, now)


def record_failure(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    """A nack, a handler error reply, or an ack that never came in time."""
    return _TABLE[state.state].failure(settings, state, now)


def release(settings: BreakerSettings, state: BreakerState, now: float) -> BreakerState:
    """An admitted message was not sent after all: give back its half-open trial slot."""
    return _TABLE[state.state].release(settings, state, now)


class BreakerBook:
    """Breaker states by target id, for the in-memory path and tests.

    Only targets whose state differs from a fresh closed breaker are kept, so the book
    holds at most the targets that failed recently or are open or half-open.
    """

    __slots__ = ("_states", "settings")

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._states: dict[str, BreakerState] = {}

    def __len__(self) -> int:
        return len(self._states)

    def items(self) -> list[tuple[str, BreakerState]]:
        """Every stored (target, state): the targets whose breaker is not fresh."""
        return list(self._states.items())

    def state(self, target: str) -> BreakerState:
        """The stored state of ``target`` (a fresh closed breaker if none)."""
        return self._states.get(target, _FRESH)

    def _store(self, target: str, state: BreakerState) -> BreakerState:
        if state == _FRESH:
            self._states.pop(target, None)
        else:
            self._states[target] = state
        return state

    def admit(self, target: str, now: float) -> Admission:
        """:func:`admit` for ``target``, storing the new state."""
        admission = admit(self.settings, self.state(target), now)
        self._store(target, admission.state)
        return admission

    def record_success(self, target: str, now: float) -> BreakerState:
        """:func:`record_success` for ``target``, storing the new state."""
        return self._store(target, record_success(self.settings, self.state(target), now))

    def record_failure(self, target: str, now: float) -> BreakerState:
        """:func:`record_failure` for ``target``, storing the new state."""
        return self._store(target, record_failure(self.settings, self.state(target), now))

    def release(self, target: str, now: float) -> BreakerState:
        """:func:`release` for ``target``, storing the new state."""
        return self._store(target, release(self.settings, self.state(target), now))
