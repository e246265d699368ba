"""The delivery rules of one session, as pure values (no Trio, no I/O; time is an argument).

A session's window is a state machine with one row per delivery id::

    (not tracked) --deliver--> in flight --ack / nack / ack deadline passed--> (not tracked)

``DeliveryWindow`` holds the rows and answers the questions the session's driver asks:
how many more may be claimed (``room``), which deliveries outlived their ack deadline
(``overdue``), when the next deadline falls (``next_deadline``), and what to give back when
the session ends (``close``). An id is settled at most once: a second ack, a nack after an
ack, a late ack after a timeout all find nothing and change nothing, so the driver may
pass anything a client sends.

``RetryPolicy`` decides what a failed delivery becomes: redelivered after an exponential
backoff, or dead-lettered once ``max_attempts`` deliveries failed (or at once, when the
failure is not retryable). ``past_deadline`` tells a claimed message whose requester
already gave up (a request, or a reply, past its deadline): it is not delivered at all.

The Trio side (``sessions.Session``, ``router.Router``) only stores these values, sleeps
until the times they name, and performs the store calls they imply. The property tests in
``tests/unit/test_delivery_core.py`` drive this core together with the memory store
against a model: every accepted message ends acked or dead-lettered, exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class Tracked(NamedTuple):
    """An in-flight delivery as its session sees it."""

    deadline: float  # Trio time by which it must be acked
    attempt: int
    is_request: bool  # its outcome is the reply, not the ack


class DeliveryWindow:
    """The in-flight deliveries of one session, oldest ack deadline first."""

    __slots__ = ("_rows", "ack_timeout", "prefetch")

    def __init__(self, prefetch: int, ack_timeout: float) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.prefetch = prefetch
        self.ack_timeout = ack_timeout
        # delivery id -> Tracked; insertion order is ack-deadline order (one timeout).
        self._rows: dict[str, Tracked] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._rows

    def __getitem__(self, delivery_id: str) -> Tracked:
        return self._rows[delivery_id]

    def retrying(self) -> int:
        """How many of the deliveries in flight are a second or later attempt."""
        return sum(1 for tracked in self._rows.values() if tracked.attempt > 1)

    def room(self) -> int:
        """How many more deliveries may be claimed now."""
        return max(self.prefetch - len(self._rows), 0)

    def deliver(self, delivery_id: str, attempt: int, now: float, *, is_request: bool) -> None:
        """A claimed delivery goes out at ``now``: it must be acked by ``now + ack_timeout``."""
        if delivery_id in self._rows:
            raise ValueError(f"delivery {delivery_id} is in flight already")
        self._rows[delivery_id] = Tracked(now + self.ack_timeout, attempt, is_request)

    def settle(self, delivery_id: str) -> Tracked | None:
        """The client answered (ack or nack) or the deadline passed: the row, once."""
        return self._rows.pop(delivery_id, None)

    def overdue(self, now: float) -> Iterator[str]:
        """Delivery ids whose ack deadline is at or before ``now``, oldest first."""
        for delivery_id, tracked in self._rows.items():
            if tracked.deadline > now:
                return
            yield delivery_id

    def next_deadline(self) -> float | None:
        """The earliest ack deadline in flight, if any."""
        return next(iter(self._rows.values())).deadline if self._rows else None

    def close(self) -> list[str]:
        """The session ended: every delivery still in flight, to give back to the store."""
        ids = list(self._rows)
        self._rows.clear()
        return ids


class RetryPolicy(NamedTuple):
    """What a failed delivery becomes (``limits.max_attempts`` and the backoff)."""

    max_attempts: int
    backoff: float  # seconds before the second attempt; doubles per attempt
    max_backoff: float

    def after_failure(self, attempt: int, *, retryable: bool) -> float | None:
        """Seconds before attempt ``attempt + 1``, or None to dead-letter the message."""
        if not retryable or attempt >= self.max_attempts:
            return None
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


def past_deadline(deadline: float | None, now: float) -> bool:
    """Whether a message with this reply deadline must not be delivered at ``now``."""
    return deadline is not None and deadline <= now
