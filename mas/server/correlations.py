"""The correlations of requests this server routed, remembered for their replies.

A reply must name an open correlation whose target is the replier. The store is the
authority (the reply's ``enqueue_many`` consumes the correlation in its transaction and
refuses one that is gone), but looking it up first costs a store call per reply. The request
usually went through this server, which made the correlation: ``RecentCorrelations``
remembers those (bounded, oldest forgotten first), so a reply that matches one needs no
lookup. A miss (the request came through another server, or was forgotten) or an entry that
no longer fits (expired, another replier) falls back to the store's lookup, which gives the
refusal's exact reason.


``refused`` says how a message the store refused is answered and audited (a reply whose
correlation is gone, or any message when the store is down or full).
"""

from __future__ import annotations

from typing import Final

from ..audit.record import Decision
from ..errors import Reason
from ..store import Correlation

MAX_REMEMBERED: Final = 16_384  # correlations kept; about 200 bytes each


class RecentCorrelations:
    """Correlations of requests routed here, by id, at most ``limit`` of them."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self._limit = limit
        self._by_id: dict[str, Correlation] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def remember(self, correlation: Correlation) -> None:
        """A request was stored with this correlation."""
        self._by_id[correlation.correlation_id] = correlation
        if len(self._by_id) > self._limit:
            del self._by_id[next(iter(self._by_id))]  # the oldest (dicts keep order)

    def match(self, correlation_id: str, replier_id: str, now: float) -> Correlation | None:
        """The open correlation ``replier_id`` may answer, if known here; else None.

        None means "ask the store", never "refused": the store tells why.
        """
        found = self._by_id.get(correlation_id)
        if found is None or found.target_id != replier_id or found.expires_at <= now:
            return None
        return found

    def forget(self, correlation_id: str) -> None:
        """A reply consumed the correlation (or the store refused it)."""
        self._by_id.pop(correlation_id, None)


def refused(reason: str) -> tuple[Reason, Decision]:
    """The refusal's reason, and its audit decision, of a message the store refused.

    ``reason`` is a ``CorrelationRefused``'s: ``unknown_correlation_id``,
    ``correlation_id_expired``, ``not_authorized`` (the replier is not the request's
    target), or, for any message, ``store_unavailable`` (nothing was stored, try again) and
    ``store_not_durable`` (stored, not acknowledged as durable: it may be delivered).

    A late reply (``correlation_id_expired``) is routine, not an attack: it is audited
    as ``EXPIRED``, where a reply from the wrong agent is ``AUTHZ_DENIED``.
    """
    known = Reason(reason)
    if known is Reason.NOT_AUTHORIZED:
        return known, "AUTHZ_DENIED"
    if known is Reason.CORRELATION_EXPIRED:
        return known, "EXPIRED"
    return known, "INVALID"
