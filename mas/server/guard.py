"""What one connection may make the server do: pure budgets fed with events and ``now``.

A client can make the server work without sending any RPC: every PING and SETTINGS frame
gets an answer, every new stream a task, and a stream reset at once (the 2023 "rapid
reset" attack) costs the server that task for nothing. ``ConnectionGuard`` counts these
per connection in token buckets (a burst of one second's allowance, refilled
continuously) and says when the client went past a limit, as a reason string; the
transport then sends GOAWAY (``ENHANCE_YOUR_CALM``) and closes the connection, with one
log line. No Trio here: ``now`` is any monotonic float, passed in.
"""

from __future__ import annotations

from typing import Final, NamedTuple

TOO_MANY_STREAMS: Final = "too_many_streams"
TOO_MANY_PINGS: Final = "too_many_pings"
TOO_MANY_SETTINGS: Final = "too_many_settings"
TOO_MUCH_BUFFERED: Final = "unfinished_messages_too_large"


class GuardLimits(NamedTuple):
    """Per-connection allowances, per second (each also the largest burst)."""

    streams_per_second: int
    pings_per_second: int
    settings_per_second: int
    max_buffered_bytes: int


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

    def on_frames(self, streams: int, pings: int, settings: int, now: float) -> str | None:
        """Streams opened, PINGs and SETTINGS received by one read of the socket."""
        if streams and not self._streams.take(streams, now):
            return TOO_MANY_STREAMS
        if pings and not self._pings.take(pings, now):
            return TOO_MANY_PINGS
        if settings and not self._settings.take(settings, now):
            return TOO_MANY_SETTINGS
        return None

    def on_buffered(self, buffered_bytes: int) -> str | None:
        """The bytes of messages the connection's streams have begun and not finished."""
        if buffered_bytes > self._limits.max_buffered_bytes:
            return TOO_MUCH_BUFFERED
        return None
