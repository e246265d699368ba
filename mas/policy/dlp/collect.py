"""Phase 1 of a DLP scan: collect every key and string, run the detectors on joined chunks.

Pure, no I/O. :meth:`Collector.collect` walks the payload without paths, collects every key
and string normalised (:mod:`mas.policy.dlp.text`) and the digits of every integer (and of a
float with no fraction), tries the key-aware rules and records which slice of the collected
texts lies under each container;
:meth:`Collector.fire` joins the strings with NUL into chunks of about one window and runs
each detector once per chunk, behind its gate, then each custom rule on each string alone.
A clean payload ends here; otherwise phase 2 (:mod:`mas.policy.dlp.walk`) revisits only the
strings in which a rule fired.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from itertools import accumulate
from typing import Any, Final

from mas.policy.dlp.bounds import (
    CONTAINER_UNITS,
    ITEM_UNITS,
    MAX_DEPTH,
    SCALARS,
    SCAN_WINDOW_CHARS,
    Budget,
    ScanStop,
    find,
    windows,
)
from mas.policy.dlp.keys import KeyRules
from mas.policy.dlp.rule import Rule, Views
from mas.policy.dlp.text import changes, normalise

Ranges = dict[int, tuple[int, int, bool]]  # id(container) -> (first, end, key-aware match)
NORMALISE_UNITS: Final = 4  # what normalising a changed character costs, in units of work
_BIG_FLOAT: Final = 1e19  # floats below this with no fraction are scanned as their digits


def number_text(value: object) -> str | None:
    """The digits a text rule sees for a number: an int's, or a float's with no fraction."""
    if type(value) is int:
        return str(value)
    if type(value) is float and value.is_integer() and abs(value) < _BIG_FLOAT:
        return str(int(value))
    return None


def normalised(text: str, budget: Budget) -> str:
    """:func:`mas.policy.dlp.text.normalise`, charged to ``budget``, a window at a time."""
    if not changes(text):
        return text
    if len(text) <= SCAN_WINDOW_CHARS:
        out = normalise(text)
        if budget.spent(NORMALISE_UNITS * len(text)):
            raise ScanStop("scan_budget", "$")
        return out
    parts = []
    for start in range(0, len(text), SCAN_WINDOW_CHARS):
        part = text[start : start + SCAN_WINDOW_CHARS]
        parts.append(normalise(part))
        if budget.spent(NORMALISE_UNITS * len(part)):
            raise ScanStop("scan_budget", "$")
    return "".join(parts)


class Collector:
    """Phase 1 over one scanner's rules; holds no state of its own between scans."""

    __slots__ = ("all_at_once", "chunk_rules", "keys", "rule_by_rule", "text_rules", "value_rules")

    def __init__(self, rules: tuple[Rule, ...], keys: KeyRules) -> None:
        self.keys = keys
        self.text_rules = tuple(r for r in rules if r.detectors)
        self.chunk_rules = tuple(r for r in self.text_rules if not r.per_value)
        self.value_rules = tuple(r for r in self.text_rules if r.per_value)
        self.all_at_once = (self.chunk_rules,)
        self.rule_by_rule = tuple((r,) for r in self.chunk_rules)

    def collect(
        self, obj: Any, depth: int, texts: list[str], ranges: Ranges, budget: Budget
    ) -> bool:
        """Append every key, string and number under ``obj`` to ``texts`` (a number as its
        digits; :meth:`fire` normalises them); True on a key-aware match.

        ``ranges`` maps each container (by id) to the slice of ``texts`` under it and
        whether a key-aware rule matched under it, so that phase 2 can skip clean subtrees.
        """
        if depth > MAX_DEPTH:
            raise ScanStop("scan_depth", "$")
        if budget.spent(CONTAINER_UNITS + ITEM_UNITS * len(obj)):
            raise ScanStop("scan_budget", "$")
        first = len(texts)
        hit = False
        append = texts.append
        if isinstance(obj, dict):
            keys = self.keys
            cache = keys.cache
            for key, value in obj.items():
                if type(key) is str:
                    append(key)
                    flags = cache.get(key)
                    if flags is None:
                        flags = keys.flags(key)
                    if flags and keys.hit(flags, value):
                        hit = True
                else:
                    hit = self.other(key, depth, texts, ranges, budget) or hit
                kind = type(value)
                if kind is str:
                    append(value)
                elif kind is dict or kind is list:
                    hit = self.collect(value, depth + 1, texts, ranges, budget) or hit
                elif kind is int:
                    append(str(value))
                elif kind is float:
                    if value.is_integer() and -_BIG_FLOAT < value < _BIG_FLOAT:
                        append(str(int(value)))
                elif not (kind is bool or value is None):
                    hit = self.other(value, depth, texts, ranges, budget) or hit
        else:
            for value in obj:
                kind = type(value)
                if kind is str:
                    append(value)
                elif kind is dict or kind is list:
                    hit = self.collect(value, depth + 1, texts, ranges, budget) or hit
                elif kind is int:
                    append(str(value))
                elif kind is float:
                    if value.is_integer() and -_BIG_FLOAT < value < _BIG_FLOAT:
                        append(str(int(value)))
                elif not (kind is bool or value is None):
                    hit = self.other(value, depth, texts, ranges, budget) or hit
        ranges[id(obj)] = (first, len(texts), hit)
        return hit

    def other(
        self, value: object, depth: int, texts: list[str], ranges: Ranges, budget: Budget
    ) -> bool:
        """:meth:`collect` for a value of a less usual type (a str or dict subclass...)."""
        if isinstance(value, str):
            texts.append(str(value))
            return False
        if isinstance(value, (dict, list, tuple)):
            return self.collect(value, depth + 1, texts, ranges, budget)
        if isinstance(value, SCALARS):
            if isinstance(value, int) and not isinstance(value, bool):
                texts.append(str(int(value)))
            elif isinstance(value, float) and (digits := number_text(float(value))) is not None:
                texts.append(digits)
            return False
        raise ScanStop("scan_unsupported", "$")

    def fire(
        self, texts: list[str], budget: Budget
    ) -> tuple[tuple[Rule, ...], set[str], list[int]]:
        """The text rules that match somewhere; the strings they match in, and where.

        Normalises ``texts`` in place first (when any is not ASCII, checked at once).
        """
        joined = "\x00".join(texts)
        if not joined.isascii():
            for index, text in enumerate(texts):
                if not text.isascii():
                    texts[index] = normalised(text, budget)
            joined = "\x00".join(texts)
        fired: set[str] = set()
        hot: set[str] = set()
        hot_at: set[int] = set()  # indexes into texts
        for chunk, batch, base in chunks(texts, joined) if self.chunk_rules else ():
            views = Views(chunk)
            starts: list[int] | None = None
            # A chunk longer than CLOCK_EVERY is charged rule by rule, a shorter one at once.
            groups = self.rule_by_rule if len(chunk) > budget.every else self.all_at_once
            share = len(chunk) // len(groups) + 1
            for group in groups:
                for rule in group:
                    for gate, detect in rule.detectors:
                        spans = detect(views) if gate is None or gate(views) else None
                        if not spans:
                            continue
                        fired.add(rule.id)
                        if len(batch) == 1:
                            hot.add(batch[0])
                            hot_at.add(base)
                            continue
                        if starts is None:
                            starts = list(accumulate((len(t) + 1 for t in batch), initial=0))
                        for start, end, _ in spans:  # every string the match touches
                            first = bisect_right(starts, start) - 1
                            last = bisect_right(starts, end - 1, first)
                            hot.update(batch[first:last])
                            hot_at.update(range(base + first, base + last))
                budget.credit -= share  # budget.spent(share), inlined
                if budget.credit <= 0 and budget.over():
                    raise ScanStop("scan_budget", "$")
        for index, text in enumerate(texts) if self.value_rules else ():
            views = Views(text)
            for rule in self.value_rules:
                if find(rule, views, budget):
                    fired.add(rule.id)
                    hot.add(text)
                    hot_at.add(index)
        return tuple(r for r in self.text_rules if r.id in fired), hot, sorted(hot_at)


def chunks(texts: list[str], joined: str | None = None) -> Iterator[tuple[str, list[str], int]]:
    """``texts`` joined by NUL into chunks of about one window: (chunk, strings, index).

    No built-in rule matches a NUL or across one (it is not a word, digit, separator or
    space character to any of them), so a rule matches a chunk where it matches one of
    the chunk's strings. A string longer than a window is its own chunks, one per window.
    ``joined`` is the texts already joined, when the caller has it.
    """
    if joined is None:
        joined = "\x00".join(texts)
    if len(joined) <= SCAN_WINDOW_CHARS:
        yield joined, texts, 0
        return
    batch: list[str] = []
    size = base = 0
    for index, text in enumerate(texts):
        if len(text) > SCAN_WINDOW_CHARS:
            if batch:
                yield "\x00".join(batch), batch, base
                batch, size = [], 0
            for start, end, _ in windows(len(text)):
                yield text[start:end], [text], index
            continue
        if batch and size + len(text) > SCAN_WINDOW_CHARS:
            yield "\x00".join(batch), batch, base
            batch, size = [], 0
        if not batch:
            base = index
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield "\x00".join(batch), batch, base
