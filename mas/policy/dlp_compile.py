"""DLP configuration: merge the default rules with a :class:`~mas.config.DlpConfig`.

Pure, no I/O. :func:`effective_rules` applies ``merge_strategy``, ``disable_defaults``,
custom ``rules`` and ``policy_overrides`` (the module docstring of :mod:`mas.policy.dlp` says
how) and compiles every custom pattern once; a mistake is a ``ValueError`` naming the rule or
name at fault.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from mas.config import DlpConfig
from mas.config.gateway import compile_pattern
from mas.policy.dlp_rule import Finder, Rule, Span, Views, marker
from mas.policy.dlp_rules import DEFAULT_RULES

RESERVED: Final = ("scan_budget", "scan_depth", "scan_unsupported")  # ids of the bounds


def effective_rules(config: DlpConfig) -> list[Rule]:
    """The rules ``config`` asks for, in the order they are applied."""
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
        if spec.id in RESERVED:
            raise ValueError(f"DLP rule {spec.id!r}: reserved id")
        custom_ids.add(spec.id)
        if not spec.enabled:
            continue
        finder = custom_finder(spec.id, spec.type, spec.pattern, spec.case_insensitive)
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
    return [
        replace(rule, action=overrides.get(rule.id, overrides.get(rule.type, rule.action)))
        for rule in rules.values()
    ]


def custom_finder(rule_id: str, kind: str, pattern: str, case_insensitive: bool) -> Finder:
    """The detector of a custom rule; ``ValueError`` if ``pattern`` is unusable."""
    try:
        compiled = compile_pattern(pattern, case_insensitive=case_insensitive)
    except ValueError as exc:
        raise ValueError(f"DLP rule {rule_id!r}: {exc}") from None
    for probe in ("", "a", "0", " ", "a b-1@x.y\n"):
        if any(m.end() == m.start() for m in compiled.finditer(probe)):
            raise ValueError(f"DLP rule {rule_id!r}: pattern matches the empty string")
    mask = marker(kind)

    def find(views: Views) -> list[Span]:
        return [
            (m.start(), m.end(), mask) for m in compiled.finditer(views.text) if m.end() > m.start()
        ]

    return find
