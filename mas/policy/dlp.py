"""Data loss prevention: scan a structured payload for secrets and personal data.

Pure: no Trio, no I/O. :meth:`DlpScanner.from_config` compiles every rule once;
:meth:`DlpScanner.scan` walks a payload and returns a :class:`ScanResult`: the decision, the
violations (rule, type, action, severity and JSON path, never the matched text) and the
payload to deliver.

What is scanned
    Every string value and every dict key, recursively through dicts and lists (tuples count
    as lists). Numbers, booleans and ``None`` never match a text rule: the JSON number
    ``123456789`` is not an SSN, ``1700000000123`` is neither a card nor a phone. Key-aware
    rules look at the value under a key of their class, a few of them also at an integer
    (``{"cvv": 123}``, ``{"ssn": 123456789}``). Other types (bytes, datetimes, objects) are
    not JSON and fail closed (``scan_unsupported``). Keywords and key names are compared
    ASCII case-insensitively.

Default rules: id (type when different), default action, severity: what matches
    secret_field (password), block, critical: any non-blank string under a secret-named key
        (below), unless it is exactly a redaction marker such as ``[REDACTED:password]``.
    ssn, redact, high: ``ddd-dd-dddd`` with area not 000, 666 or 9xx, group not 00, serial
        not 0000; under an ssn-named key (``ssn*``, ``*ssn``, ``*socialsecurity*``) also
        ``ddddddddd``, ``ddd dd dddd`` or an integer.
    email, alert, medium: ``local@domain.tld``, at most 64 local-part characters, an
        alphabetic top-level label.
    phone, alert, low: NANP with separators (``415-555-0123``, ``415.555.0123``, ``(415)
        555-0123``, ``1 415 555 0123``; area and exchange start with 2-9), or ``+`` and 8-15
        digits with at most two of `` .()-`` between digits (E.164).
    credit_card, block, critical: 13-19 digits, single spaces or dashes allowed between them,
        with a Visa, Mastercard, Amex, Discover, JCB, Diners or UnionPay prefix and length,
        Luhn valid.
    cvv, block, critical: 3-4 digits (or an integer up to 9999) under a key ending in cvv,
        cvc, cvv2, cvc2 or securitycode.
    aws_access_key, block, critical: ``AKIA`` or ``ASIA`` and 16 of [A-Z0-9].
    aws_secret_key, block, critical: 40 of [A-Za-z0-9/+] under a key naming aws and secret
        (or ending in secretaccesskey), or after ``aws_secret_access_key=`` in text.
    private_key, block, critical: ``-----BEGIN ... PRIVATE KEY-----`` (RSA, EC, DSA, OPENSSH,
        ENCRYPTED, PGP ... BLOCK) through its END line, or to the end of the text.
    jwt, block, high: three base64url segments joined by dots, the first ``eyJ...``.
    api_key, block, high: starting a token, ``sk_live_``, ``sk_test_``, ``rk_live_`` or
        ``rk_test_`` + 16; ``sk-`` + 20; ``ghp_``, ``gho_``, ``ghu_``, ``ghs_`` or ``ghr_``
        + 36; ``github_pat_`` + 22; ``xox`` + one of abposr + ``-`` + 15; ``AIza`` + 35;
        ``glpat-`` + 20; ``npm_`` + 36.
    password, block, high: ``password``, ``passwd``, ``passphrase``, ``pwd`` or the word
        ``pass``, then ``:`` or ``=`` (quotes allowed around), then 4+ characters.
    medical_record_number, redact, high: ``MRN`` or ``medical record number`` (``num``,
        ``no``) then 6-10 digits; under an mrn-named key such a value or integer.
    health_insurance_id, redact, high: a Medicare MBI (``1EG4-TE5-MK73``: 11 characters of
        the MBI alphabet, upper case, dashes optional); or ``member``, ``subscriber``,
        ``insurance``, ``medicare``, ``medicaid`` or ``policy`` with ``id``,
        ``no``, ``num``, ``number`` or ``#``, then 6-20 of [A-Za-z0-9-] holding a digit;
        under a key ending in memberid, subscriberid, insuranceid, insurancenumber,
        policynumber, medicareid, medicaidid, mbi... such a value.
    icd10, alert, low: a dotted upper-case code (``E11.9``, ``J45.20``, ``S72.001A``); an
        undotted one (``E119``) only after ``ICD``, ``ICD-10``, ``ICD-10-CM`` or
        ``diagnosis``, ``code`` optional; under an icd10/diagnosis_code/dx key such a code.

    Secret-named keys, compared with ``-``, ``_``, ``.`` and spaces removed: those ending in
    password, passwd, passphrase, pwd, secret, secretkey, secretaccesskey, apikey, token,
    authorization, privatekey, credential(s), cookie or signingkey, and exactly auth, pass
    and pin; not the pagination tokens pagetoken, nextpagetoken, prevpagetoken, nexttoken,
    continuationtoken.

Mistakes that remain
    False positives: any string under a secret-named key (``{"auth": "none"}``,
    ``{"session_token": "n/a"}``); ``password: required`` in prose; dotted codes such as
    ``B12.5`` or ``C13.2`` (icd10 only alerts); an 11-character upper-case code that happens
    to fit the MBI alphabet; ``+`` then 8-15 digits in arithmetic; any Luhn-valid number with
    a card prefix (one random 16-digit number in ten passes Luhn); an id after ``policy
    number`` for any kind of insurance.
    False negatives: card numbers with other separators (dots, slashes) or split across
    strings; SSNs written with spaces or without separators outside an ssn-named key; phone
    numbers without separators, or national formats outside NANP without ``+``; lower-case
    MBIs and ICD codes in text; ``password is hunter2`` (no ``:`` or ``=``) and passwords of
    under 4 characters in text; secrets inside a list under a secret-named key (``{"api_keys":
    [...]}``); vendor tokens not listed; anything encoded (base64, URL-encoding, spelled out).

Actions and decisions
    Any ``block`` gives ``DLP_BLOCKED`` (``data`` is the input, not to be delivered); else any
    ``redact`` gives ``DLP_REDACTED`` and a redacted copy (unchanged sub-objects are shared
    with the input); else any ``alert`` gives ``ALERT``; else ``ALLOWED``. Unless redacted,
    ``data`` is the input object itself. Cards keep their last four digits
    (``************1111``), SSNs too (``***-**-6789``); every other match becomes
    ``[REDACTED:<type>]``, overlapping matches of different rules ``[REDACTED]``. Text rules
    mask only the match (``MRN: [REDACTED:medical_record_number]``); a key-aware match
    replaces the whole value. A key with a redact match is delivered masked; keys that mask
    to the same text get ``#2``, ``#3``... in dict order. A redacted string is scanned again
    and masked again, at most three rounds, then replaced by ``[REDACTED]``, so no redact
    match survives. Violations are reported once per (rule, path); a path shows a matched key
    fully masked, so the audit never holds the matched text.

Configuration (:class:`mas.config.DlpConfig`)
    ``merge_strategy: replace`` drops every default rule; ``append`` keeps them and adds the
    custom ``rules`` (a custom rule with a default rule's id replaces it). ``disable_defaults``
    removes default rules by id or by type. ``policy_overrides`` maps a rule id or a type to
    an action; an id wins over a type. Custom rules with ``enabled: false`` are ignored;
    ``case_insensitive`` compiles with ``re.IGNORECASE``; custom rules match each string on
    its own. ``ValueError``, naming the rule or name: an unknown name in
    ``disable_defaults`` or ``policy_overrides``, a duplicate or reserved (``scan_*``) custom
    id, a pattern that does not compile or that matches the empty string.

Bounds (fail closed)
    Python's ``re`` cannot be interrupted inside a match, so no single call sees more than
    :data:`SCAN_WINDOW_CHARS` plus twice :data:`WINDOW_OVERLAP_CHARS` of text: a longer
    string is scanned whole, in overlapping windows (a match longer than the overlap that
    crosses a window edge can be missed). The built-in expressions run in linear time; a
    custom pattern that backtracks catastrophically can still run long inside one window,
    and the budget notices only when that call returns. The budget (:data:`DEFAULT_BUDGET`,
    or ``scan(..., budget=)``) is checked on the scanner's clock (``time.perf_counter``)
    between containers, chunks, windows and strings; once it is spent the result is
    ``DLP_BLOCKED`` with a ``scan_budget`` violation. Containers nested deeper than
    :data:`MAX_DEPTH` give ``DLP_BLOCKED`` with ``scan_depth``. A run of digits that would
    take more than ``MAX_CARD_CHECKS`` candidate card checks counts as a card whole.

How it stays fast
    Phase 1 collects every key and string, tries the key-aware rules (key classes are cached
    per key), joins the strings with NUL into chunks of one window and runs each detector once
    per chunk, behind its gate. A clean payload ends there: ``ALLOWED``. Otherwise phase 2
    walks again with paths, runs the rules that fired on the strings they fired in, reports
    and redacts. ``benchmarks/dlp_micro.py`` measures it.
"""

from __future__ import annotations

import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from itertools import accumulate
from typing import Any, Final, Literal, cast

import msgspec

from mas.config import DlpConfig
from mas.policy.dlp_rules import (
    DEFAULT_RULES,
    Finder,
    Rule,
    Span,
    Views,
    ascii_lower,
    classify_key,
    marker,
)

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_DEPTH",
    "SCAN_WINDOW_CHARS",
    "WINDOW_OVERLAP_CHARS",
    "DlpScanner",
    "Rule",
    "ScanResult",
    "Violation",
]

DEFAULT_BUDGET: Final = 0.050  # seconds of scanning per message before failing closed
MAX_DEPTH: Final = 64  # nested containers; deeper payloads fail closed (and bound recursion)
SCAN_WINDOW_CHARS: Final = 65_536  # longest text one regular-expression call is given
WINDOW_OVERLAP_CHARS: Final = 1_024  # overlap between the windows over a longer string
_KEY_CACHE_SIZE: Final = 8_192  # distinct keys whose classes a scanner remembers
_REDACT_ROUNDS: Final = 3  # re-mask a redacted string at most this often, then mask it whole
_RESERVED: Final = ("scan_budget", "scan_depth", "scan_unsupported")

Decision = Literal["ALLOWED", "ALERT", "DLP_REDACTED", "DLP_BLOCKED"]
Action = Literal["block", "redact", "alert"]


class Violation(msgspec.Struct, frozen=True):
    """One rule that matched at one place. Never holds the matched text."""

    rule_id: str
    type: str
    action: Action
    severity: str
    path: str  # JSON path: $.user.cards[2], $['odd key']; a key match has the key's own path


class ScanResult(msgspec.Struct, frozen=True):
    """The outcome of one scan."""

    decision: Decision
    violations: tuple[Violation, ...]
    data: dict[str, Any]  # to deliver: the input itself unless redacted


class _Stop(Exception):
    """Stop scanning and fail closed."""

    def __init__(self, rule_id: str, path: str) -> None:
        super().__init__(rule_id)
        self.rule_id = rule_id
        self.path = path


_NONE: Final[tuple[Violation, ...]] = ()
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALARS: Final = (int, float, type(None))  # never text-scanned (bool is an int)


def _segment(key: object) -> str:
    """The JSON-path step for a dict key."""
    if isinstance(key, str) and _IDENT.fullmatch(key):
        return "." + key
    text = str(key).replace("\\", "\\\\").replace("'", "\\'")
    return f"['{text}']"


def _apply(text: str, spans: list[Span]) -> str:
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


def _windows(n: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, keep-from) of the overlapping windows over a string of length ``n``."""
    for keep in range(0, n, SCAN_WINDOW_CHARS):
        start = max(0, keep - WINDOW_OVERLAP_CHARS)
        yield start, min(n, keep + SCAN_WINDOW_CHARS + WINDOW_OVERLAP_CHARS), keep


def _find(
    rule: Rule, text: str, low: str, clock: Callable[[], float], deadline: float
) -> list[Span]:
    """``rule.find`` over ``text``, one window at a time when ``text`` is long.

    A match counts in the window where it starts; each window reaches
    :data:`WINDOW_OVERLAP_CHARS` into its neighbours for context.
    """
    if len(text) <= SCAN_WINDOW_CHARS:
        return rule.find(text, low)
    spans: list[Span] = []
    for start, end, keep in _windows(len(text)):
        if clock() > deadline:
            raise _Stop("scan_budget", "$")
        for a, b, mask in rule.find(text[start:end], low[start:end]):
            if keep <= a + start < keep + SCAN_WINDOW_CHARS:
                spans.append((a + start, b + start, mask))
    return spans


def _custom_finder(rule_id: str, kind: str, pattern: str, case_insensitive: bool) -> Finder:
    try:
        compiled = re.compile(pattern, re.IGNORECASE if case_insensitive else 0)
    except (re.error, TypeError) as exc:
        raise ValueError(f"DLP rule {rule_id!r}: pattern does not compile: {exc}") from None
    for probe in ("", "a", "0", " ", "a b-1@x.y\n"):
        if any(m.end() == m.start() for m in compiled.finditer(probe)):
            raise ValueError(f"DLP rule {rule_id!r}: pattern matches the empty string")
    mask = marker(kind)

    def find(text: str, low: str) -> list[Span]:
        return [(m.start(), m.end(), mask) for m in compiled.finditer(text) if m.end() > m.start()]

    return find


class DlpScanner:
    """An immutable set of compiled DLP rules. Build it with :meth:`from_config`.

    The only state that changes is a bounded cache of key classes; a scanner is meant for
    one thread (the server's Trio thread), like every pure policy object in ``mas``.
    """

    __slots__ = (
        "_budget",
        "_chunk_rules",
        "_clock",
        "_key_cache",
        "_key_mask",
        "_key_rules",
        "_redact_rules",
        "_rules",
        "_text_rules",
        "_value_rules",
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
        self._text_rules = tuple(r for r in self._rules if r.detectors)
        self._chunk_rules = tuple(r for r in self._text_rules if not r.per_value)
        self._value_rules = tuple(r for r in self._text_rules if r.per_value)
        self._redact_rules = tuple(r for r in self._text_rules if r.action == "redact")
        self._key_rules = tuple(
            (r, r.key_flag, r.check) for r in self._rules if r.key_flag and r.check is not None
        )
        self._key_mask = 0
        for _, flag, _ in self._key_rules:
            self._key_mask |= flag
        self._key_cache: dict[str, int] = {}

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
        default_names = {r.id for r in DEFAULT_RULES} | {r.type for r in DEFAULT_RULES}
        for name in config.disable_defaults:
            if name not in default_names:
                raise ValueError(f"DLP disable_defaults: no default rule {name!r}")
        rules: dict[str, Rule] = {}
        if config.merge_strategy == "append":
            disabled = set(config.disable_defaults)
            for rule in DEFAULT_RULES:
                if rule.id not in disabled and rule.type not in disabled:
                    rules[rule.id] = rule
        custom_ids: set[str] = set()
        for spec in config.rules:
            if spec.id in custom_ids:
                raise ValueError(f"DLP rule {spec.id!r}: duplicate id")
            if spec.id in _RESERVED:
                raise ValueError(f"DLP rule {spec.id!r}: reserved id")
            custom_ids.add(spec.id)
            if not spec.enabled:
                continue
            finder = _custom_finder(spec.id, spec.type, spec.pattern, spec.case_insensitive)
            rules[spec.id] = Rule(
                spec.id,
                spec.type,
                spec.action,
                spec.severity,
                spec.description,
                ((None, finder),),
                per_value=True,
            )
        known = default_names | custom_ids | {spec.type for spec in config.rules}
        for name in config.policy_overrides:
            if name not in known:
                raise ValueError(f"DLP policy_overrides: no rule or type {name!r}")
        overrides = config.policy_overrides
        merged = [
            replace(rule, action=overrides.get(rule.id, overrides.get(rule.type, rule.action)))
            for rule in rules.values()
        ]
        return cls(merged, budget=budget, clock=clock)

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
        """Scan ``data`` and decide; never raises for a JSON-shaped payload.

        ``message_type`` is accepted for per-type policy; today every rule applies to every
        type. ``budget`` (seconds) replaces the scanner's time budget for this call.
        """
        deadline = self._clock() + (self._budget if budget is None else budget)
        walk: _Walk | None = None
        try:
            texts: list[str] = []
            ranges: dict[int, tuple[int, int, bool]] = {}
            key_hit = self._collect(data, 1, texts, ranges, deadline)
            fired, hot, hot_at = self._fire(texts, deadline)
            if not key_hit and not fired:
                return ScanResult("ALLOWED", _NONE, data)
            walk = _Walk(self, fired, hot, hot_at, ranges, deadline)
            delivered = walk.visit(data, None, 0)
        except _Stop as stop:
            found = walk.violations if walk is not None else []
            found.append(Violation(stop.rule_id, stop.rule_id, "block", "critical", stop.path))
            return ScanResult("DLP_BLOCKED", tuple(found), data)
        violations = tuple(walk.violations)
        actions = {v.action for v in violations}
        if "block" in actions:
            return ScanResult("DLP_BLOCKED", violations, data)
        if "redact" in actions:
            return ScanResult("DLP_REDACTED", violations, cast("dict[str, Any]", delivered))
        return ScanResult("ALERT" if actions else "ALLOWED", violations, data)

    def key_flags(self, key: str) -> int:
        """The classes of ``key`` that an active key-aware rule cares about (cached)."""
        flags = self._key_cache.get(key)
        if flags is None:
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            flags = self._key_cache[key] = classify_key(key) & self._key_mask
        return flags

    # --- phase 1: collect every string, try key-aware rules, run the detectors on chunks ---

    def _collect(
        self,
        obj: Any,
        depth: int,
        texts: list[str],
        ranges: dict[int, tuple[int, int, bool]],
        deadline: float,
    ) -> bool:
        """Append every key and string under ``obj`` to ``texts``; True on a key-aware match.

        ``ranges`` maps each container (by id) to the slice of ``texts`` under it and
        whether a key-aware rule matched under it, so that phase 2 can skip clean subtrees.
        """
        if depth > MAX_DEPTH:
            raise _Stop("scan_depth", "$")
        if self._clock() > deadline:
            raise _Stop("scan_budget", "$")
        first = len(texts)
        hit = False
        append = texts.append
        if isinstance(obj, dict):
            cache = self._key_cache
            for key, value in obj.items():
                if type(key) is str:
                    append(key)
                    flags = cache.get(key)
                    if flags is None:
                        flags = self.key_flags(key)
                    if flags and self._key_hit(flags, value):
                        hit = True
                else:
                    hit = self._other(key, depth, texts, ranges, deadline) or hit
                kind = type(value)
                if kind is str:
                    append(value)
                elif kind is dict or kind is list:
                    hit = self._collect(value, depth + 1, texts, ranges, deadline) or hit
                elif not (kind is int or kind is float or kind is bool or value is None):
                    hit = self._other(value, depth, texts, ranges, deadline) or hit
        else:
            for value in obj:
                kind = type(value)
                if kind is str:
                    append(value)
                elif kind is dict or kind is list:
                    hit = self._collect(value, depth + 1, texts, ranges, deadline) or hit
                elif not (kind is int or kind is float or kind is bool or value is None):
                    hit = self._other(value, depth, texts, ranges, deadline) or hit
        ranges[id(obj)] = (first, len(texts), hit)
        return hit

    def _other(
        self,
        value: object,
        depth: int,
        texts: list[str],
        ranges: dict[int, tuple[int, int, bool]],
        deadline: float,
    ) -> bool:
        if isinstance(value, str):
            texts.append(str(value))
            return False
        if isinstance(value, (dict, list, tuple)):
            return self._collect(value, depth + 1, texts, ranges, deadline)
        if isinstance(value, _SCALARS):
            return False
        raise _Stop("scan_unsupported", "$")

    def _key_hit(self, flags: int, value: object) -> bool:
        return any(flag & flags and check(value) for _, flag, check in self._key_rules)

    def _fire(
        self, texts: list[str], deadline: float
    ) -> tuple[tuple[Rule, ...], set[str], list[int]]:
        """The text rules that match somewhere; the strings they match in, and where."""
        fired: set[str] = set()
        hot: set[str] = set()
        hot_at: set[int] = set()  # indexes into texts
        clock = self._clock
        for chunk, batch, base in self._chunks(texts) if self._chunk_rules else ():
            low = ascii_lower(chunk)
            views = Views(chunk, low)
            starts: list[int] | None = None
            for rule in self._chunk_rules:
                for gate, find in rule.detectors:
                    spans = find(chunk, low) if gate is None or gate(views) else None
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
            if clock() > deadline:
                raise _Stop("scan_budget", "$")
        for index, text in enumerate(texts) if self._value_rules else ():
            low = ascii_lower(text)
            for rule in self._value_rules:
                if _find(rule, text, low, clock, deadline):
                    fired.add(rule.id)
                    hot.add(text)
                    hot_at.add(index)
            if clock() > deadline:
                raise _Stop("scan_budget", "$")
        return tuple(r for r in self._text_rules if r.id in fired), hot, sorted(hot_at)

    def _chunks(self, texts: list[str]) -> Iterator[tuple[str, list[str], int]]:
        """``texts`` joined by NUL into chunks of about one window: (chunk, strings, index).

        No built-in rule matches a NUL or across one (it is not a word, digit, separator or
        space character to any of them), so a rule matches a chunk where it matches one of
        the chunk's strings. A string longer than a window is its own chunks, one per window.
        """
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
                for start, end, _ in _windows(len(text)):
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


Path = tuple[Any, str | int] | None  # (parent, key or index), rendered only when reported


def _render(path: Path) -> str:
    steps: list[str] = []
    while path is not None:
        path, step = path
        steps.append(f"[{step}]" if type(step) is int else _segment(step))
    return "$" + "".join(reversed(steps))


class _Walk:
    """Phase 2: walk with paths, report violations, build the redacted copy."""

    __slots__ = (
        "clock",
        "deadline",
        "hot",
        "hot_at",
        "key_cache",
        "ranges",
        "rules",
        "scanner",
        "seen",
        "violations",
    )

    def __init__(
        self,
        scanner: DlpScanner,
        rules: tuple[Rule, ...],
        hot: set[str],
        hot_at: list[int],
        ranges: dict[int, tuple[int, int, bool]],
        deadline: float,
    ) -> None:
        self.scanner = scanner
        self.rules = rules
        self.hot = hot
        self.hot_at = hot_at
        self.ranges = ranges
        self.deadline = deadline
        self.clock = scanner._clock
        self.key_cache = scanner._key_cache
        self.violations: list[Violation] = []
        self.seen: set[tuple[str, str]] = set()

    def report(self, rule: Rule, path: Path) -> None:
        where = _render(path)
        if (rule.id, where) not in self.seen:
            self.seen.add((rule.id, where))
            self.violations.append(Violation(rule.id, rule.type, rule.action, rule.severity, where))

    def find(self, text: str) -> list[tuple[Rule, list[Span]]]:
        if text not in self.hot:
            return []
        if self.clock() > self.deadline:
            raise _Stop("scan_budget", "$")
        low = ascii_lower(text)
        found = []
        for rule in self.rules:
            spans = _find(rule, text, low, self.clock, self.deadline)
            if spans:
                found.append((rule, spans))
        return found

    def redact(self, text: str, found: list[tuple[Rule, list[Span]]]) -> str | None:
        """``text`` with its redact-rule matches masked until none is left; None if none."""
        spans = [span for rule, spans in found if rule.action == "redact" for span in spans]
        if not spans:
            return None
        for _ in range(_REDACT_ROUNDS):
            text = _apply(text, spans)
            low = ascii_lower(text)
            spans = [
                span
                for rule in self.scanner._redact_rules
                for span in _find(rule, text, low, self.clock, self.deadline)
            ]
            if not spans:
                return text
        return "[REDACTED]"

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
        if self.clean(value):
            return value
        if isinstance(value, dict):
            return self.mapping(value, path, depth + 1)
        if isinstance(value, (list, tuple)):
            if depth + 1 > MAX_DEPTH:
                raise _Stop("scan_depth", _render(path))
            items = [self.visit(item, (path, i), depth + 1) for i, item in enumerate(value)]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items
        if isinstance(value, _SCALARS):
            return value
        raise _Stop("scan_unsupported", _render(path))

    def clean(self, value: object) -> bool:
        """True for a container in which phase 1 found nothing (no rule fired under it)."""
        where = self.ranges.get(id(value))
        if where is None or where[2]:
            return False
        i = bisect_left(self.hot_at, where[0])
        return i == len(self.hot_at) or self.hot_at[i] >= where[1]

    def mapping(self, obj: dict[Any, Any], path: Path, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise _Stop("scan_depth", _render(path))
        if self.clock() > self.deadline:
            raise _Stop("scan_budget", _render(path))
        names: dict[Any, tuple[Any, Any, list[tuple[Rule, list[Span]]]]] = {}
        if not self.hot.isdisjoint(obj):
            names = self.rename(obj)
        out: dict[Any, Any] = {}
        changed = False
        cache = self.key_cache
        for key, value in obj.items():
            name, shown, found = names.get(key, (key, key, []))
            here = (path, shown if isinstance(shown, str) else str(shown))
            for rule, _ in found:
                self.report(rule, here)
            replacement = None
            flags = cache.get(key) if type(key) is str else 0
            if flags is None:
                flags = self.scanner.key_flags(key)
            if name is not key:  # the delivered name's classes too, so a re-scan agrees
                flags |= self.scanner.key_flags(name)
            for rule, flag, check in self.scanner._key_rules if flags else ():
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

    def rename(
        self, obj: dict[Any, Any]
    ) -> dict[Any, tuple[Any, Any, list[tuple[Rule, list[Span]]]]]:
        """For each matched key: its delivered name, its name in paths, and the matches.

        A key masked by a redact rule is delivered as the first free name of ``mask``,
        ``mask#2``, ``mask#3``...; in paths a matched key always appears fully masked.
        """
        found_keys = {
            key: self.find(key) for key in obj if isinstance(key, str) and key in self.hot
        }
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
                shown = _apply(key, [span for _, spans in found for span in spans])
            names[key] = (name, shown, found)
        return names
