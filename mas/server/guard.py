"""What one connection may make the server do: pure budgets fed with events and ``now``.

A client can make the server work without sending any RPC: every PING and SETTINGS frame
gets an answer, every new stream a task, and a stream reset at once (the 2023 "rapid
reset" attack) costs the server that task for nothing. ``ConnectionGuard`` counts these
per connection in token buckets (a burst of one second's allowance, refilled
continuously) and says when the client went past a limit, as a ``Reason``; the
transport then sends GOAWAY (``ENHANCE_YOUR_CALM``) and closes the connection, with one
log line. Header blocks are bounded in size and count (``check_headers``, and the
transport's frame buffer for the raw block), the same way.

A message whose first bytes arrived must be finished within ``unfinished_message_timeout``
(``UnfinishedMessages``): past it, that stream's message is refused and its buffer freed,
so a client cannot hold server memory for ever by never finishing what it began (the
byte budget, ``max_buffered_bytes``, bounds how much; this bounds for how long).
No Trio here: ``now`` is any monotonic float, passed in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..errors import Reason


class GuardLimits(NamedTuple):
    """Per-connection allowances: rates per second (each also the largest burst), sizes."""

    streams_per_second: int
    pings_per_second: int
    settings_per_second: int
    max_buffered_bytes: int
    # One header block (HEADERS + CONTINUATION, or trailers): its size, both as sent (the
    # HPACK-compressed frames, 9 bytes counted per frame) and decoded (RFC 9113 6.5.2:
    # name + value + 32 per field), and its number of fields.
    max_header_bytes: int = 16_384
    max_headers: int = 100
    unfinished_message_timeout: float = 30.0  # seconds a begun message may stay unfinished


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` (default: ``rate``) held; starts full."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self._rate = rate
        self._burst = rate if burst is None else burst
        self._tokens = self._burst
        self._last = now

    def take(self, count: int, now: float) -> bool:
        """Spend ``count`` tokens if there are that many (a refusal spends nothing)."""
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
        if count > self._tokens:
            return False
        self._tokens -= count
        return True

    def retry_after(self, count: int = 1) -> float:
        """Seconds until ``count`` tokens are there (as of the last ``take``)."""
        return max(0.0, (count - self._tokens) / self._rate)


class ConnectionGuard:
    """The budgets of one connection; each ``on_*`` returns None or the reason to close."""

    __slots__ = ("_limits", "_pings", "_settings", "_streams")

    def __init__(self, limits: GuardLimits, now: float) -> None:
        self._limits = limits
        self._streams = TokenBucket(limits.streams_per_second, now)
        self._pings = TokenBucket(limits.pings_per_second, now)
        self._settings = TokenBucket(limits.settings_per_second, now)

    def on_frames(self, streams: int, pings: int, settings: int, now: float) -> Reason | None:
        """Streams opened, PINGs and SETTINGS received by one read of the socket."""
        if streams and not self._streams.take(streams, now):
            return Reason.TOO_MANY_STREAMS
        if pings and not self._pings.take(pings, now):
            return Reason.TOO_MANY_PINGS
        if settings and not self._settings.take(settings, now):
            return Reason.TOO_MANY_SETTINGS
        return None

    def on_buffered(self, buffered_bytes: int) -> Reason | None:
        """The bytes of messages the connection's streams have begun and not finished."""
        if buffered_bytes > self._limits.max_buffered_bytes:
            return Reason.TOO_MUCH_BUFFERED
        return None


def check_headers(count: int, limits: GuardLimits) -> Reason | None:
    """None, or the reason a decoded header block of ``count`` fields is refused.

    (Its decoded size is bounded while it is decoded: HPACK stops at ``max_header_bytes``.)
    """
    return Reason.TOO_MANY_HEADERS if count > limits.max_headers else None


class UnfinishedMessages:
    """When the unfinished message of each stream began; which ones are overdue.

    The transport reports each stream after each read of its data (``update``): whether
    bytes of a message not yet complete are held, and whether a message was completed
    by that read (then what is held is the start of the next message, and its clock
    starts now). ``next_deadline`` is when the oldest is overdue; ``overdue`` takes them.
    """

    __slots__ = ("_began", "_timeout")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._began: dict[int, float] = {}  # stream id -> when its unfinished message began

    def update(self, stream_id: int, held: bool, completed: bool, now: float) -> None:
        """After a read of ``stream_id``'s data: ``held`` bytes of an unfinished message?"""
        if not held:
            if self._began:
                self._began.pop(stream_id, None)
        elif completed or stream_id not in self._began:
            self._began[stream_id] = now

    def forget(self, stream_id: int) -> None:
        """The stream's buffer is gone (ended, reset, refused)."""
        if self._began:
            self._began.pop(stream_id, None)

    def next_deadline(self) -> float:
        """When the oldest unfinished message is overdue (``inf`` when there is none)."""
        if not self._began:
            return math.inf
        return min(self._began.values()) + self._timeout

    def overdue(self, now: float) -> list[int]:
        """The streams whose message is unfinished ``timeout`` after it began (forgotten)."""
        late = [s for s, began in self._began.items() if began + self._timeout <= now]
        for stream_id in late:
            del self._began[stream_id]
        return late
