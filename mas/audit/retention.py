"""Audit retention (pure): how far a trim of the oldest records may go.

A store trims a prefix of its chain: the records with ``seq <= cut``. It then
keeps the anchor, the ``(seq, hash)`` of record ``cut``, next to the chain
(in the same transaction or script), so that verification of what is left
expects the chain to start right after it (see :func:`mas.audit.chain.verify`,
``removed``). The newest record is never trimmed: new records link after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

from mas.audit.record import GENESIS

TRIM_LIMIT: Final = 10_000  # records one trim removes at most (a short transaction)
ANCHOR_KEY: Final = "audit_anchor"  # the SQLite store's meta row holding the anchor


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """What one trim may remove: beyond the newest ``keep``, older than ``before``.

    ``before`` is wall-clock seconds since the epoch; ``up_to_seq`` bounds the
    trim (records a JSONL file has not copied yet stay); None leaves a bound out.
    """

    keep: int | None = None
    before: float | None = None
    up_to_seq: int | None = None
    limit: int = TRIM_LIMIT


def trim_cut(
    first_seq: int, last_seq: int, times: Iterable[tuple[int, float]], rule: Retention
) -> int:
    """The seq of the last record to trim (``first_seq - 1``: none).

    ``times`` is (seq, time) of the oldest records in seq order, from
    ``first_seq``, read only as far as needed (at most ``rule.limit``).
    """
    none = first_seq - 1
    if last_seq < first_seq:
        return none
    cut = none
    if rule.keep is not None:
        cut = max(cut, last_seq - rule.keep)
    if rule.before is not None:
        for seq, time in times:
            if time >= rule.before or seq >= first_seq + rule.limit:
                break
            cut = max(cut, seq)
    if rule.up_to_seq is not None:
        cut = min(cut, rule.up_to_seq)
    return max(none, min(cut, last_seq - 1, none + rule.limit))


def parse_anchor(text: str | bytes | None) -> tuple[int, str]:
    """A stored anchor ``"<seq> <hash>"``; (0, GENESIS) for none. Raises ValueError."""
    if text is None:
        return (0, GENESIS)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    seq, _, hash_ = text.partition(" ")
    if not seq.isdigit() or len(hash_) != 64:
        raise ValueError(f"the stored audit anchor {text[:80]!r} is not '<seq> <hash>'")
    return (int(seq), hash_)


def format_anchor(seq: int, hash_: str) -> str:
    """The stored form of an anchor (see :func:`parse_anchor`)."""
    return f"{seq} {hash_}"
