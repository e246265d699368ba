"""The DLP rule model: spans and masks, detectors and their gates, and the :class:`Rule` record.

Pure, no I/O. A rule has up to two parts:

- *Detectors* over text (string values and dict keys): ``find(text, low)`` returns
  ``[(start, end, mask), ...]``, where ``low`` is ``text`` lower-cased in ASCII (same length).
  A detector may have a *gate*: a necessary condition that costs a C-level substring test
  (on the lower-cased text or on a byte "shape" of it, see :class:`Views`), so the detector's
  own expression runs only on text that could match.
- A *key-aware* part: a class of dict keys (``key_flag``, see :mod:`mas.policy.dlp_keys`) and a
  ``check(value) -> mask | None`` for the value stored under such a key.

The helpers at the end (:func:`regex_finder`, :func:`keyword_finder`...) are what the built-in
detectors (:mod:`mas.policy.dlp_detectors`, :mod:`mas.policy.dlp_cards`) are made of.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["block", "redact", "alert"]
Severity = Literal["low", "medium", "high", "critical"]
Span = tuple[int, int, str]  # start, end, and the mask that replaces text[start:end]
Finder = Callable[[str, str], list[Span]]  # (text, ascii-lower-cased text) -> spans
ValueCheck = Callable[[object], "str | None"]


def marker(kind: str) -> str:
    """The mask that replaces a whole match of ``kind``."""
    return f"[REDACTED:{kind}]"


_MARKER: Final = re.compile(r"\[REDACTED(?::[A-Za-z0-9_.-]*)?\]")
_ASCII_LOWER: Final = {c: c + 32 for c in range(0x41, 0x5B)}


def is_marker(value: str) -> bool:
    """True for a value that is exactly a redaction marker (already masked, not a secret)."""
    return _MARKER.fullmatch(value) is not None


def ascii_lower(text: str) -> str:
    """``text`` with A-Z lower-cased and nothing else changed (offsets stay valid)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


# --- Views: what the gates look at -----------------------------------------------------------


def _table(mapping: dict[int, int], default: int) -> bytes:
    return bytes(mapping.get(i, default) for i in range(256))


_DIGITS: Final = range(0x30, 0x3A)
# Shape: digit -> '9', A-Z -> 'A', a-z -> 'a', space . - -> '-', ( ) + kept, all else '_'.
_SHAPE: Final = _table(
    {
        **dict.fromkeys(_DIGITS, ord("9")),
        **dict.fromkeys(range(0x41, 0x5B), ord("A")),
        **dict.fromkeys(range(0x61, 0x7B), ord("a")),
        **dict.fromkeys(b" .-", ord("-")),
        **{c: c for c in b"()+"},
    },
    ord("_"),
)
# Flat: digit -> '9', all else '_', spaces and dashes deleted (see Views).
_FLAT: Final = _table(dict.fromkeys(_DIGITS, ord("9")), ord("_"))


class Views:
    """One text and the cheap derived forms its gates test."""

    __slots__ = ("flat", "low", "shape", "text")

    def __init__(self, text: str, low: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        self.text = text
        self.low = low
        self.shape = raw.translate(_SHAPE)
        self.flat = raw.translate(_FLAT, b" -")


Gate = Callable[[Views], bool]
Detector = tuple["Gate | None", Finder]


@dataclass(frozen=True, slots=True)
class Rule:
    """One DLP rule: text detectors, a key-aware check, or both."""

    id: str
    type: str
    action: Action
    severity: Severity
    description: str
    detectors: tuple[Detector, ...] = ()
    key_flag: int = 0
    check: ValueCheck | None = None
    per_value: bool = False  # custom pattern: run on each string alone, never on joined text

    def find(self, text: str, low: str) -> list[Span]:
        """Every match of the rule's detectors in ``text`` (gates are not consulted)."""
        if len(self.detectors) == 1:
            return self.detectors[0][1](text, low)
        return [span for _, find in self.detectors for span in find(text, low)]


# --- helpers for detectors and checks ----------------------------------------------------------


def regex_finder(pattern: re.Pattern[str], mask: str, back: int = 0) -> Finder:
    """Matches of ``pattern``; a match starting at an anchor reaches ``back`` characters left."""

    def find(text: str, low: str) -> list[Span]:
        return [(m.start() - back, m.end(), mask) for m in pattern.finditer(text)]

    return find


def keyword_finder(
    keywords: tuple[str, ...],
    tail: re.Pattern[str],
    mask: str,
    *,
    word_start: bool = True,
    accept: Callable[[str], object] | None = None,
) -> Finder:
    """Group 1 of ``tail`` matched on ``low`` right after a keyword (ASCII case-insensitive).

    ``accept`` is given the original text of the group and may veto it.
    """

    def find(text: str, low: str) -> list[Span]:
        out: list[Span] = []
        for keyword in keywords:
            pos = low.find(keyword)
            while pos >= 0:
                end = pos + len(keyword)
                if not word_start or pos == 0 or not is_word(low[pos - 1]):
                    m = tail.match(low, end)
                    if m is not None and (accept is None or accept(text[m.start(1) : m.end(1)])):
                        out.append((m.start(1), m.end(1), mask))
                pos = low.find(keyword, end)
        return out

    return find


def is_word(char: str) -> bool:
    """True for a word character (alphanumeric or ``_``)."""
    return char.isalnum() or char == "_"


def as_int(value: object) -> int | None:
    """``value`` if it is an ``int`` (and not a ``bool``), else None."""
    return value if type(value) is int else None


def fullmatches(pattern: re.Pattern[str], value: object) -> bool:
    """True if ``value`` is a string that ``pattern`` matches whole."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None
