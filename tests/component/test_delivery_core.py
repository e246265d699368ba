"""The pure delivery core (``mas.server.delivery``), alone and driven with a real store.

The stateful test plays the router's part by hand, with the window and the retry policy
deciding every step and the memory store holding the messages, against a model that
only counts: every accepted message is eventually acked or dead-lettered, never both,
never neither, however sends, claims, acks, nacks, ack timeouts and lost sessions
interleave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_contract import ack_one, enqueue_one

from mas.server.delivery import DeliveryWindow, RetryPolicy, past_deadline
from mas.store import MemoryStore, QueuedMessage, StoreLimits

T = TypeVar("T")


def test_window_bounds_what_may_be_claimed() -> None:
    window = DeliveryWindow(prefetch=2, ack_timeout=10.0)
    assert window.room() == 2
    window.deliver("d1", 1, 0.0, is_request=False)
    window.deliver("d2", 1, 1.0, is_request=True)
    assert window.room() == 0
    assert window["d2"].is_request
    with pytest.raises(ValueError, match="in flight already"):
        window.deliver("d1", 1, 2.0, is_request=False)


def test_each_delivery_settles_once() -> None:
    window = DeliveryWindow(prefetch=4, ack_timeout=10.0)
    window.deliver("d1", 3, 0.0, is_request=False)
    settled = window.settle("d1")
    assert settled is not None and settled.attempt == 3
    assert window.settle("d1") is None  # a second ack, or an ack after a timeout
    assert window.settle("never") is None
    assert window.room() == 4


def test_overdue_deliveries_come_oldest_first_at_their_deadline() -> None:
    window = DeliveryWindow(prefetch=4, ack_timeout=10.0)
    for n in range(3):
        window.deliver(f"d{n}", 1, float(n), is_request=False)
    assert window.next_deadline() == 10.0
    assert list(window.overdue(9.9)) == []
    assert list(window.overdue(11.0)) == ["d0", "d1"]
    assert window.close() == ["d0", "d1", "d2"]
    assert window.next_deadline() is None and len(window) == 0


def test_retry_policy_backs_off_exponentially_then_dead_letters() -> None:
    policy = RetryPolicy(max_attempts=4, backoff=1.0, max_backoff=3.0)
    assert [policy.after_failure(a, retryable=True) for a in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, None]
    assert policy.after_failure(1, retryable=False) is None


def test_past_deadline() -> None:
    assert not past_deadline(None, 1e12)
    assert not past_deadline(10.0, 9.0)
    assert past_deadline(10.0, 10.0)


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


POLICY = RetryPolicy(max_attempts=3, backoff=1.0, max_backoff=4.0)
ACK_TIMEOUT = 5.0
SESSIONS = ("s1", "s2")


class DeliveryLifecycle(RuleBasedStateMachine):
    """The router's delivery steps, chosen by hypothesis, over the memory store."""

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryStore(StoreLimits(max_queue_length=1000))
        self.now = 1_000.0
        self.windows = {s: DeliveryWindow(prefetch=3, ack_timeout=ACK_TIMEOUT) for s in SESSIONS}
        self.message_of: dict[str, str] = {}  # delivery id -> message id
        self.accepted: set[str] = set()
        self.acked: list[str] = []
        self.dead: list[str] = []
        self.sent = 0

    # -- steps ----------------------------------------------------------------------------

    @rule()
    def send(self) -> None:
        message_id = f"m{self.sent}"
        self.sent += 1
        message = QueuedMessage(
            message_id=message_id,
            target_id="b",
            instance_id=None,
            envelope_json=b"{}",
            enqueued_at=self.now,
        )
        _run(lambda: enqueue_one(self.store, message))
        self.accepted.add(message_id)

    @rule(session=st.sampled_from(SESSIONS))
    def claim(self, session: str) -> None:
        window = self.windows[session]
        room = window.room()
        if not room:
            return
        deliveries = _run(lambda: self.store.claim("b", f"i-{session}", session, room, self.now))
        for d in deliveries:
            window.deliver(d.delivery_id, d.message.attempt, self.now, is_request=False)
            self.message_of[d.delivery_id] = d.message.message_id

    def _in_flight(self, session: str) -> list[str]:
        return list(self.windows[session].overdue(float("inf")))

    @rule(session=st.sampled_from(SESSIONS), pick=st.integers(0, 10))
    def ack(self, session: str, pick: int) -> None:
        ids = self._in_flight(session)
        if not ids:
            return
        delivery_id = ids[pick % len(ids)]
        assert self.windows[session].settle(delivery_id) is not None
        acked = _run(lambda: ack_one(self.store, delivery_id))
        assert acked is not None
        self.acked.append(acked.message.message_id)

    def _fail(self, session: str, delivery_id: str, *, retryable: bool) -> None:
        tracked = self.windows[session].settle(delivery_id)
        assert tracked is not None
        backoff = POLICY.after_failure(tracked.attempt, retryable=retryable)
        if backoff is not None:
            assert _run(lambda: self.store.retry(delivery_id, self.now + backoff)) is not None
        else:
            dead = _run(lambda: self.store.dead_letter(delivery_id, "nacked", self.now))
            assert dead is not None
            self.dead.append(dead.message.message_id)

    @rule(session=st.sampled_from(SESSIONS), pick=st.integers(0, 10), retryable=st.booleans())
    def nack(self, session: str, pick: int, retryable: bool) -> None:
        ids = self._in_flight(session)
        if ids:
            self._fail(session, ids[pick % len(ids)], retryable=retryable)

    @rule(seconds=st.floats(0.1, 8.0))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        for session, window in self.windows.items():
            for delivery_id in list(window.overdue(self.now)):  # the ack watchdog
                self._fail(session, delivery_id, retryable=True)

    @rule(session=st.sampled_from(SESSIONS))
    def session_lost(self, session: str) -> None:
        self.windows[session].close()
        before = len(_run(lambda: self.store.dead_letters()))
        _run(lambda: self.store.release_session(session, POLICY.max_attempts, self.now))
        dead = _run(lambda: self.store.dead_letters())
        self.dead += [d.message.message_id for d in dead[before:]]

    # -- what must always hold ------------------------------------------------------------

    @invariant()
    def windows_are_bounded(self) -> None:
        for window in self.windows.values():
            assert len(window) <= window.prefetch

    @invariant()
    def nothing_ends_twice(self) -> None:
        ended = self.acked + self.dead
        assert len(ended) == len(set(ended)), "a message was acked or dead-lettered twice"
        assert set(ended) <= self.accepted

    @precondition(lambda self: self.sent > 0)
    @rule()
    def everything_ends(self) -> None:
        """Drain: claim and ack until nothing is left; every message ended exactly once."""
        for _ in range(100):
            self.now += 10.0  # past every backoff and ack deadline
            for session, window in self.windows.items():
                for delivery_id in list(window.overdue(float("inf"))):
                    window.settle(delivery_id)
                    acked = _run(lambda d=delivery_id: ack_one(self.store, d))  # type: ignore[misc]
                    assert acked is not None
                    self.acked.append(acked.message.message_id)
                self.claim(session)
            if set(self.acked) | set(self.dead) == self.accepted:
                break
        self.nothing_ends_twice()
        assert set(self.acked) | set(self.dead) == self.accepted, "a message was lost"
        pending: Any = _run(lambda: self.store.pending_agents(self.now))
        assert not pending


TestDeliveryLifecycle = DeliveryLifecycle.TestCase
TestDeliveryLifecycle.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
