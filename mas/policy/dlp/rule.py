"""The DLP rule model: spans and masks, detectors and their gates, and the :class:`Rule` record.

Pure, no I/O. A rule has up to two parts:

- *Detectors* over text (string values, dict keys, the message type, an integer's digits,
  all normalised by :mod:`mas.policy.dlp.text`): ``find(views)`` returns
  ``[(start, end, mask), ...]`` for the text of ``views`` (a :class:`Views`: the text, its
  ASCII lower-case ``low``, and byte forms of the same length for the expressions).
  A detector may have a *gate*: a necessary condition that costs a C-level substring test
  (on the lower-cased text or on a byte "shape" of it, see :class:`Views`), so the detector's
  own expression runs only on text that could match.

Every expression, built-in or custom, runs on RE2 (``google-re2``), whose matching time is
linear in the text whatever the pattern: no input can make a match backtrack. RE2 has no
lookaround, so the built-in expressions consume the character around a match that the edge
condition needs and report the span of a group; their detectors search again from the end
of that group, never from the end of the match, so two matches one separator apart are both
found.
- A *key-aware* part: a class of dict keys (``key_flag``, see :mod:`mas.policy.dlp.keys`) and a
  ``check(value) -> mask | None`` for the value stored under such a key.

The helpers at the end (:func:`regex_finder`, :func:`keyword_finder`...) are what the built-in
detectors (:mod:`mas.policy.dlp.detectors`, :mod:`mas.policy.dlp.cards`) are made of.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import re2

from mas.policy.dlp.text import normalise

Action = Literal["block", "redact", "alert"]
Severity = Literal["low", "medium", "high", "critical"]
Span = tuple[int, int, str]  # start, end, and the mask that replaces text[start:end]
Finder = Callable[["Views"], list[Span]]  # the views of a text -> spans
ValueCheck = Callable[[object], "str | None"]
Pattern = Any  # a compiled RE2 expression (google-re2 has no type information)


def re2_options(*, case_insensitive: bool = False) -> re2.Options:
    """RE2 options: errors go to the caller (never logged to stderr), case as asked."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not case_insensitive
    return options


def compile_bytes(pattern: str, *, case_insensitive: bool = False) -> Pattern:
    """A built-in expression, compiled by RE2 to match ASCII bytes (:attr:`Views.raw`)."""
    return re2.compile(pattern.encode("ascii"), re2_options(case_insensitive=case_insensitive))


def compile_text(pattern: str, *, case_insensitive: bool = False) -> Pattern:
    """An expression compiled by RE2 for ``str`` (values checked whole, custom rules)."""
    return re2.compile(pattern, re2_options(case_insensitive=case_insensitive))


def marker(kind: str) -> str:
    """The mask that replaces a whole match of ``kind``."""
    return f"[REDACTED:{kind}]"


_MARKER: Final = compile_text(r"\[REDACTED(?::[A-Za-z0-9_.-]*)?\]")
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
    """One (normalised) text and the derived forms its detectors and gates look at.

    ``low`` is the text with A-Z lower-cased; ``raw`` its bytes with every non-ASCII
    character replaced by ``?`` (so byte offsets are character offsets), ``lowb`` the same
    lower-cased: the built-in expressions match these. ``shape`` and ``flat`` are for gates.
    Each derived form is made when first asked for.
    """

    __slots__ = ("_flat", "_low", "_lowb", "_raw", "_shape", "text")

    def __init__(self, text: str, low: str | None = None) -> None:
        self.text = text
        self._low = low
        self._raw: bytes | None = None
        self._lowb: bytes | None = None
        self._shape: bytes | None = None
        self._flat: bytes | None = None

    @property
    def low(self) -> str:
        if self._low is None:
            self._low = ascii_lower(self.text)
        return self._low

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.text.encode("ascii", "replace")
        return self._raw

    @property
    def lowb(self) -> bytes:
        if self._lowb is None:
            self._lowb = self.raw.lower()
        return self._lowb

    @property
    def shape(self) -> bytes:
        if self._shape is None:
            self._shape = self.raw.translate(_SHAPE)
        return self._shape

    @property
    def flat(self) -> bytes:
        if self._flat is None:
            self._flat = self.raw.translate(_FLAT, b" -")
        return self._flat


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

    def find(self, views: Views) -> list[Span]:
        """Every match of the rule's detectors in ``views.text`` (gates are not consulted)."""
        if len(self.detectors) == 1:
            return self.detectors[0][1](views)
        return [span for _, find in self.detectors for span in find(views)]


# --- helpers for detectors and checks ----------------------------------------------------------


def search_all(pattern: Pattern, raw: bytes, group: int = 1) -> list[tuple[int, int]]:
    """The spans of ``group`` in the matches of ``pattern`` over ``raw``, left to right.

    Each search starts at the end of the previous group (not of the whole match), so the
    edge character a match consumed can be the edge of the next one. Linear: RE2, and the
    group of a built-in expression never ends where it starts.
    """
    out: list[tuple[int, int]] = []
    pos = 0
    search = pattern.search
    while (m := search(raw, pos)) is not None:
        start, end = m.span(group)
        out.append((start, end))
        pos = end if end > pos else pos + 1
    return out


class Edged:
    """An expression that must stand alone: not after a character of ``before``, not before
    one of ``after`` (RE2 character-class bodies, such as ``A-Za-z0-9``).

    Compiled with no capture group and without the edge before it, so RE2 finds each
    candidate with its DFA alone, jumping between the occurrences of a leading literal
    (``AKIA``, ``eyJ``...). The edge after it is consumed (so RE2 still prefers a shorter
    match that has its edge, as a lookahead would) and trimmed off; the edge before it is
    checked here. A candidate refused for its edge before is searched again from its end
    when ``inner`` says no match can start inside it (its characters are all of
    ``before``), else from its next character (a bounded body). Linear either way.
    """

    __slots__ = ("after", "before", "inner", "pattern")

    def __init__(
        self,
        body: str,
        *,
        before: str = "",
        after: str = "",
        inner: bool = True,
        case_insensitive: bool = False,
    ) -> None:
        trail = f"(?:[^{after}]|$)" if after else ""
        self.pattern = compile_bytes(f"(?:{body}){trail}", case_insensitive=case_insensitive)
        self.before = _byte_class(before)
        self.after = _byte_class(after)
        self.inner = inner

    def spans(self, raw: bytes) -> list[tuple[int, int]]:
        """The spans of the bodies in ``raw``, left to right."""
        out: list[tuple[int, int]] = []
        pos = 0
        search, before, after = self.pattern.search, self.before, self.after
        while (m := search(raw, pos)) is not None:
            start, end = m.span()
            if after and end > start and raw[end - 1] not in after:
                end -= 1  # the edge character after the body
            if start > 0 and raw[start - 1] in before:
                pos = end if self.inner else start + 1
                continue
            out.append((start, end))
            pos = end if end > pos else pos + 1
        return out


def _byte_class(chars: str) -> frozenset[int]:
    if not chars:
        return frozenset()
    member = compile_bytes(f"[{chars}]")
    return frozenset(b for b in range(128) if member.fullmatch(bytes([b])) is not None)


def regex_finder(pattern: Edged, mask: str) -> Finder:
    """The spans of ``pattern`` in ``raw``, each masked with ``mask``."""

    def find(views: Views) -> list[Span]:
        return [(a, b, mask) for a, b in pattern.spans(views.raw)]

    return find


def keyword_gate(keywords: tuple[str, ...]) -> Gate:
    """The gate of a keyword finder: one of ``keywords`` is in the lower-cased text."""

    if len(keywords) == 1:
        [keyword] = keywords

        def gate_one(views: Views) -> bool:
            return keyword in views.low

        return gate_one

    def gate(views: Views) -> bool:
        low = views.low
        return any(keyword in low for keyword in keywords)  # several: rare, a loop is fine

    return gate


def keyword_finder(
    keywords: tuple[str, ...],
    tail: str,
    mask: str,
    *,
    word_start: bool = True,
    accept: Callable[[str], object] | None = None,
) -> Finder:
    """Group 1 of ``tail`` right after one of ``keywords`` (ASCII case-insensitive).

    One RE2 expression, ``keyword`` then ``tail``, over ``lowb``: a text full of keywords
    that lead nowhere costs one pass. With ``word_start`` the keyword must not follow a
    letter, digit or ``_``. ``accept`` is given the original text of the group and may
    veto it.
    """
    words = "|".join(keywords)
    lead = "(?:^|[^a-z0-9_])" if word_start else ""
    pattern = compile_bytes(f"{lead}(?:{words}){tail}")

    def find(views: Views) -> list[Span]:
        spans = search_all(pattern, views.lowb)
        if accept is None:
            return [(a, b, mask) for a, b in spans]
        text = views.text
        return [(a, b, mask) for a, b in spans if accept(text[a:b])]

    return find


def is_word(char: str) -> bool:
    """True for a word character (alphanumeric or ``_``)."""
    return char.isalnum() or char == "_"


def as_int(value: object) -> int | None:
    """``value`` if it is an ``int`` (and not a ``bool``), else None."""
    return value if type(value) is int else None


def fullmatches(pattern: Pattern, value: object) -> bool:
    """True if ``value`` is a string whose normal form ``pattern`` (:func:`compile_text`)
    matches whole."""
    return isinstance(value, str) and pattern.fullmatch(normalise(value)) is not None
