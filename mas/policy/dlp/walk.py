"""Phase 2 of a DLP scan: walk with paths, report violations, build the redacted copy.

Pure, no I/O. Runs only when phase 1 (:mod:`mas.policy.dlp.collect`) found something: it
skips the containers in which nothing fired, runs the rules that fired on the strings they
fired in, reports each (rule, JSON path) once and masks what the redact rules matched. The
rules match the normalised text; their spans are mapped back to the original characters
(:class:`mas.policy.dlp.text.Normalised`), which are what is masked.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

import msgspec

from mas.policy.dlp.bounds import (
    CONTAINER_UNITS,
    ITEM_UNITS,
    MAX_DEPTH,
    SCALARS,
    Budget,
    ScanStop,
    find,
)
from mas.policy.dlp.collect import Ranges, number_text
from mas.policy.dlp.keys import KeyRules
from mas.policy.dlp.rule import Action, Rule, Span, Views, compile_text
from mas.policy.dlp.text import Normalised, normalise

REDACT_ROUNDS: Final = 3  # re-mask a redacted string at most this often, then mask it whole
WHOLE: Final = "[REDACTED]"  # the mask of a text whose match could not be placed
_IDENT: Final = compile_text(r"[A-Za-z_][A-Za-z0-9_]*")

Path = tuple[Any, str | int] | None  # (parent, key or index), rendered only when reported
Found = list[tuple[Rule, list[Span]]]  # the rules that match a text, and where


class Violation(msgspec.Struct, frozen=True):
    """One rule that matched at one place. Never holds the matched text.

    A plain frozen msgspec Struct, so it encodes as JSON for the audit log as it is.
    """

    rule_id: str
    type: str
    action: Action
    severity: str
    path: str  # JSON path: $.user.cards[2], $['odd key']; a key match has the key's own path


def segment(key: object) -> str:
    """The JSON-path step for a dict key."""
    if isinstance(key, str) and _IDENT.fullmatch(key):
        return "." + key
    text = str(key).replace("\\", "\\\\").replace("'", "\\'")
    return f"['{text}']"


def render(path: Path) -> str:
    """``path`` as a JSON path: ``$.user.cards[2]``, ``$['odd key']``."""
    steps: list[str] = []
    while path is not None:
        path, step = path
        steps.append(f"[{step}]" if type(step) is int else segment(step))
    return "$" + "".join(reversed(steps))


def apply_masks(text: str, spans: list[Span]) -> str:
    """``text`` with each span replaced by its mask; overlapping spans merge into one."""
    merged: list[list[Any]] = []
    for start, end, mask in sorted(spans):
        last = merged[-1] if merged else None
        if last is not None and start < last[1]:
            if end > last[1]:
                last[1] = end
                if mask != last[2]:
                    last[2] = "[REDACTED]"
        else:
            merged.append([start, end, mask])
    parts: list[str] = []
    pos = 0
    for start, end, mask in merged:
        parts += (text[pos:start], mask)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


class Walk:
    """Phase 2 over one payload; ``violations`` holds what it reported so far."""

    __slots__ = (
        "budget",
        "hot",
        "hot_at",
        "key_cache",
        "keys",
        "ranges",
        "redact_rules",
        "rules",
        "seen",
        "violations",
    )

    def __init__(
        self,
        keys: KeyRules,
        rules: tuple[Rule, ...],
        redact_rules: tuple[Rule, ...],
        hot: set[str],
        hot_at: list[int],
        ranges: Ranges,
        budget: Budget,
    ) -> None:
        self.keys = keys
        self.key_cache = keys.cache
        self.rules = rules  # the text rules that fired in phase 1
        self.redact_rules = redact_rules  # every text rule that redacts, to re-scan masked text
        self.hot = hot
        self.hot_at = hot_at
        self.ranges = ranges
        self.budget = budget
        self.violations: list[Violation] = []
        self.seen: set[tuple[str, str]] = set()

    def report(self, rule: Rule, path: Path) -> None:
        where = render(path)
        if (rule.id, where) not in self.seen:
            self.seen.add((rule.id, where))
            self.violations.append(Violation(rule.id, rule.type, rule.action, rule.severity, where))

    def is_hot(self, text: str) -> bool:
        """True if a rule fired in ``text`` in phase 1 (which saw it normalised)."""
        return (text if text.isascii() else normalise(text)) in self.hot

    def find(self, text: str) -> Found:
        if not self.is_hot(text):
            return []
        return self.search(text, self.rules)

    def search(self, text: str, rules: tuple[Rule, ...]) -> Found:
        """Where each of ``rules`` matches ``text``, in offsets of ``text`` itself."""
        norm = None if text.isascii() else Normalised(text)
        views = Views(text if norm is None else norm.text)
        found = []
        for rule in rules:
            spans = find(rule, views, self.budget)
            if spans:
                found.append((rule, spans))
        if norm is None or not norm.changed or not found:
            return found
        mapped: Found = []
        for rule, spans in found:
            places = []
            for start, end, mask in spans:
                place = norm.span(start, end)
                places.append((0, len(text), WHOLE) if place is None else (*place, mask))
            mapped.append((rule, places))
        return mapped

    def redact(self, text: str, found: Found) -> str | None:
        """``text`` with its redact-rule matches masked until none is left; None if none."""
        spans = [span for rule, spans in found if rule.action == "redact" for span in spans]
        if not spans:
            return None
        for _ in range(REDACT_ROUNDS):
            text = apply_masks(text, spans)
            spans = [span for _, found in self.search(text, self.redact_rules) for span in found]
            if not spans:
                return text
        return WHOLE

    def field(self, text: str, name: str) -> str:
        """Report the matches in a message field (``message_type``...) at the path ``name``.

        A field cannot be masked in what is delivered, so a redact match there counts as a
        block. Returns the field with every match masked, for the records.
        """
        found = self.find(text)
        spans = []
        for rule, places in found:
            if (rule.id, name) not in self.seen:
                self.seen.add((rule.id, name))
                action = "block" if rule.action == "redact" else rule.action
                self.violations.append(Violation(rule.id, rule.type, action, rule.severity, name))
            spans += places
        return apply_masks(text, spans) if spans else text

    def visit(self, value: object, path: Path, depth: int) -> object:
        """``value``, or its redacted copy; reports what it finds at ``path``."""
        if isinstance(value, str):
            found = self.find(value)
            if not found:
                return value
            for rule, _ in found:
                self.report(rule, path)
            redacted = self.redact(value, found)
            return value if redacted is None else redacted
        if type(value) is int or type(value) is float:
            digits = number_text(value)
            found = self.find(digits) if digits is not None else []
            if not found or digits is None:
                return value
            for rule, _ in found:
                self.report(rule, path)
            redacted = self.redact(digits, found)  # a masked number is delivered as text
            return value if redacted is None else redacted
        if self.clean(value):
            return value
        if isinstance(value, dict):
            return self.mapping(value, path, depth + 1)
        if isinstance(value, (list, tuple)):
            if depth + 1 > MAX_DEPTH:
                raise ScanStop("scan_depth", render(path))
            if self.budget.spent(CONTAINER_UNITS + ITEM_UNITS * len(value)):
                raise ScanStop("scan_budget", render(path))
            items = [self.visit(item, (path, i), depth + 1) for i, item in enumerate(value)]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items
        if isinstance(value, SCALARS):
            return value
        raise ScanStop("scan_unsupported", render(path))

    def clean(self, value: object) -> bool:
        """True for a container in which phase 1 found nothing (no rule fired under it)."""
        where = self.ranges.get(id(value))
        if where is None or where[2]:
            return False
        i = bisect_left(self.hot_at, where[0])
        return i == len(self.hot_at) or self.hot_at[i] >= where[1]

    def mapping(self, obj: dict[Any, Any], path: Path, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise ScanStop("scan_depth", render(path))
        if self.budget.spent(CONTAINER_UNITS + ITEM_UNITS * len(obj)):
            raise ScanStop("scan_budget", render(path))
        names: dict[Any, tuple[Any, Any, Found]] = {}
        if any(type(key) is str and self.is_hot(key) for key in obj):
            names = self.rename(obj)
        out: dict[Any, Any] = {}
        changed = False
        cache = self.key_cache
        keys = self.keys
        for key, value in obj.items():
            name, shown, found = names.get(key, (key, key, []))
            here = (path, shown if isinstance(shown, str) else str(shown))
            for rule, _ in found:
                self.report(rule, here)
            replacement = None
            flags = cache.get(key) if type(key) is str else 0
            if flags is None:
                flags = keys.flags(key)
            if name is not key:  # the delivered name's classes too, so a re-scan agrees
                flags |= keys.flags(name)
            for rule, flag, check in keys.checks if flags else ():
                mask = check(value) if flag & flags else None
                if mask is not None:
                    self.report(rule, here)
                    if rule.action == "redact" and replacement is None:
                        replacement = mask
            new_value = self.visit(value, here, depth)
            if replacement is not None:
                new_value = replacement
            changed = changed or new_value is not value or name is not key
            out[name] = new_value
        return out if changed else obj

    def rename(self, obj: dict[Any, Any]) -> dict[Any, tuple[Any, Any, Found]]:
        """For each matched key: its delivered name, its name in paths, and the matches.

        A key masked by a redact rule is delivered as the first free name of ``mask``,
        ``mask#2``, ``mask#3``...; in paths a matched key always appears fully masked.
        """
        found_keys = {key: self.find(key) for key in obj if isinstance(key, str)}
        masked = {key: self.redact(key, found) for key, found in found_keys.items() if found}
        taken = {key for key in obj if masked.get(key) is None}
        names = {}
        for key, found in found_keys.items():
            if not found:
                continue
            new_key = masked[key]
            name = key
            if new_key is not None:
                name, n = new_key, 2
                while name in taken:
                    name, n = f"{new_key}#{n}", n + 1
                taken.add(name)
            shown = name
            if new_key is None or any(rule.action != "redact" for rule, _ in found):
                shown = apply_masks(key, [span for _, spans in found for span in spans])
            names[key] = (name, shown, found)
        return names
