"""What a refusal may cost the audit trail: bounded fields, repeats coalesced (pure).

A refused client chooses much of its own audit record (the target id, message type,
correlation id it sent) and how many records it causes. Two rules keep that cheap:

* ``bound_fields``: every client-chosen string is cut to ``MAX_FIELD_CHARS``; a longer
  one keeps its first characters and is marked with the SHA-256 of the whole, so a
  record still tells such values apart (``<first 48>…[cut sha256:<16 hex>]``).
* ``RefusalCoalescer``: the first refusal of an (identity, decision, reason) is recorded
  at once and opens a window of ``interval`` seconds; the repeats inside it are only
  counted, and when the window ends one record stands for them, its reason marked with
  the count (``not_authorized;repeated=37``). So an agent that hammers a closed door
  costs one record per window, and an audit reader still sees how often it knocked.

No Trio here: ``now`` is any monotonic float, passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import msgspec

from .record import AuditDraft

MAX_FIELD_CHARS: Final = 256  # longest client-chosen string kept whole in a record
_KEPT_CHARS: Final = 48  # characters kept of a longer one
MAX_WINDOWS: Final = 10_000  # open windows before all are closed at once (bounded memory)
# Refusals that are coalesced. DLP decisions are not: each names what it found.
COALESCED: Final = frozenset(
    {"AUTHN_DENIED", "AUTHZ_DENIED", "RATE_LIMITED", "CIRCUIT_OPEN", "INVALID"}
)
_CLIENT_FIELDS: Final = (
    "reason",
    "message_id",
    "sender_instance_id",
    "target_id",
    "message_type",
    "correlation_id",
)


def bounded(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` if it has at most ``limit`` characters, else its start, cut and hashed."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:_KEPT_CHARS]}…[cut sha256:{digest}]"


def bound_fields(draft: AuditDraft) -> AuditDraft:
    """``draft`` with every client-chosen string bounded (the same object if none is long)."""
    changes = {
        name: bounded(value)
        for name in _CLIENT_FIELDS
        if len(value := getattr(draft, name)) > MAX_FIELD_CHARS
    }
    return msgspec.structs.replace(draft, **changes) if changes else draft


@dataclass
class _Window:
    ends: float
    repeated: int = 0
    last: AuditDraft | None = None


class RefusalCoalescer:
    """Per (sender, decision, reason): the first refusal now, the repeats as one record."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def admit(self, draft: AuditDraft, now: float) -> list[AuditDraft]:
        """The drafts to record now for ``draft``: itself, a summary and itself, or none."""
        if draft.decision not in COALESCED:
            return [draft]
        key = (draft.sender_id, draft.decision, draft.reason)
        window = self._windows.get(key)
        if window is not None and now < window.ends:
            window.repeated += 1
            window.last = draft
            return []
        out = []
        if window is not None:
            out.extend(_summary(window))
        elif len(self._windows) >= MAX_WINDOWS:
            out.extend(self.close_all())
        self._windows[key] = _Window(now + self._interval)
        out.append(draft)
        return out

    def due(self, now: float) -> list[AuditDraft]:
        """Summaries of the windows that have ended (those windows are closed)."""
        ended = [key for key, window in self._windows.items() if now >= window.ends]
        out: list[AuditDraft] = []
        for key in ended:
            out.extend(_summary(self._windows.pop(key)))
        return out

    def next_deadline(self) -> float | None:
        """When the earliest window with repeats ends (None: nothing to summarise)."""
        ends = [w.ends for w in self._windows.values() if w.repeated]
        return min(ends) if ends else None

    def close_all(self) -> list[AuditDraft]:
        """Summaries of every open window, which are all closed (shutdown, or too many)."""
        out: list[AuditDraft] = []
        for window in self._windows.values():
            out.extend(_summary(window))
        self._windows.clear()
        return out


def _summary(window: _Window) -> list[AuditDraft]:
    if not window.repeated or window.last is None:
        return []
    last = window.last
    return [msgspec.structs.replace(last, reason=f"{last.reason};repeated={window.repeated}")]
