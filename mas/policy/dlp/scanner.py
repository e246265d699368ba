"""The DLP scanner: :class:`DlpScanner` and the :class:`ScanResult` it returns.

Pure: no Trio, no I/O. What it scans, its rules, configuration and bounds are described in
:mod:`mas.policy.dlp`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, cast

import msgspec

from mas.config import DlpConfig
from mas.policy.dlp.bounds import (
    DEFAULT_BUDGET,
    SCAN_WINDOW_CHARS,
    Budget,
    ScanStop,
)
from mas.policy.dlp.collect import Collector, Ranges, normalised
from mas.policy.dlp.compile import effective_rules
from mas.policy.dlp.keys import KeyRules
from mas.policy.dlp.rule import Rule
from mas.policy.dlp.walk import Violation, Walk

Decision = Literal["ALLOWED", "ALERT", "DLP_REDACTED", "DLP_BLOCKED"]


class ScanResult(msgspec.Struct, frozen=True):
    """The outcome of one scan; encodes as JSON for the audit log as it is."""

    decision: Decision
    violations: tuple[Violation, ...]
    data: dict[str, Any]  # to deliver: the input itself unless redacted


_KEY_CACHE_SIZE: Final = 8_192  # distinct keys whose classes a scanner remembers
_SHOWN_CACHE_SIZE: Final = 4_096  # distinct client-chosen fields whose masked form it remembers
_NONE: Final[tuple[Violation, ...]] = ()


class DlpScanner:
    """An immutable set of compiled DLP rules. Build it with :meth:`from_config`.

    The only state that changes is a bounded cache of key classes; a scanner is meant for
    one thread (the server's Trio thread), like every pure policy object in ``mas``.
    """

    __slots__ = (
        "_budget",
        "_clock",
        "_collector",
        "_key_cache",
        "_keys",
        "_redact",
        "_rules",
        "_shown",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._rules = tuple(rules)
        self._budget = budget
        self._clock = clock
        self._keys = KeyRules(self._rules, cache_size=_KEY_CACHE_SIZE)
        self._key_cache = self._keys.cache  # the same dict, at most _KEY_CACHE_SIZE keys
        self._collector = Collector(self._rules, self._keys)
        self._redact = tuple(r for r in self._collector.text_rules if r.action == "redact")
        self._shown: dict[str, str] = {}  # shown() answers, at most _SHOWN_CACHE_SIZE

    @classmethod
    def from_config(
        cls,
        config: DlpConfig,
        *,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ) -> DlpScanner:
        """Merge the default rules with ``config`` and compile the custom patterns once.

        Raises ``ValueError`` naming the rule or name at fault (see the module docstring).
        """
        return cls(effective_rules(config), budget=budget, clock=clock)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The effective rules, in the order they are applied."""
        return self._rules

    def scan(
        self,
        data: dict[str, Any],
        *,
        message_type: str | None = None,
        budget: float | None = None,
    ) -> ScanResult:
        """Scan ``data`` (and ``message_type``, when given) and decide; never raises for a
        JSON-shaped payload.

        A match in ``message_type`` is reported at the path ``message_type`` (no ``$``), and
        a redact match there blocks: the type is delivered as it is or not at all.
        ``budget`` (seconds) replaces the scanner's time budget for this call; the module
        docstring says when a spent budget is noticed.
        """
        meter = Budget(self._clock, self._budget if budget is None else budget)
        collector = self._collector
        walk: Walk | None = None
        delivered: object = data
        try:
            texts: list[str] = []
            if message_type:
                texts.append(message_type)
            ranges: Ranges = {}
            key_hit = collector.collect(data, 1, texts, ranges, meter)
            fired, hot, hot_at = collector.fire(texts, meter)
            if key_hit or fired:
                walk = Walk(self._keys, fired, self._redact, hot, hot_at, ranges, meter)
                if message_type:
                    walk.field(message_type, "message_type")
                delivered = walk.visit(data, None, 0)
            if collector.value_rules and texts and meter.over():
                raise ScanStop("scan_budget", "$")  # a custom pattern may have run long
        except ScanStop as stop:
            found = walk.violations if walk is not None else []
            found.append(Violation(stop.rule_id, stop.rule_id, "block", "critical", stop.path))
            return ScanResult("DLP_BLOCKED", tuple(found), data)
        if walk is None:
            return ScanResult("ALLOWED", _NONE, data)
        violations = tuple(walk.violations)
        actions = {v.action for v in violations}
        if "block" in actions:
            return ScanResult("DLP_BLOCKED", violations, data)
        if "redact" in actions:
            return ScanResult("DLP_REDACTED", violations, cast("dict[str, Any]", delivered))
        return ScanResult("ALERT" if actions else "ALLOWED", violations, data)

    def shown(self, text: str) -> str:
        """``text`` with every match of a text rule masked (any action): a client-chosen
        field (message type, target id, correlation id) as the audit trail may record it.

        Remembers the last :data:`_SHOWN_CACHE_SIZE` distinct answers. A text of more than
        :data:`SCAN_WINDOW_CHARS` characters, or one whose scan runs out of budget, is
        shown as ``[REDACTED]``.
        """
        cached = self._shown.get(text)
        if cached is not None:
            return cached
        if len(text) > SCAN_WINDOW_CHARS:
            return "[REDACTED]"
        meter = Budget(self._clock, self._budget)
        try:
            texts = [normalised(text, meter)]
            fired, hot, hot_at = self._collector.fire(texts, meter)
            out = text
            if fired:
                walk = Walk(self._keys, fired, self._redact, hot, hot_at, {}, meter)
                out = walk.field(text, "field")
        except ScanStop:
            out = "[REDACTED]"
        if len(self._shown) >= _SHOWN_CACHE_SIZE:
            self._shown.clear()
        self._shown[text] = out
        return out

    def key_flags(self, key: str) -> int:
        """The classes of ``key`` that an active key-aware rule cares about (cached)."""
        return self._keys.flags(key)
