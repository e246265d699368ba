"""DLP configuration: merge the default rules with a :class:`~mas.config.DlpConfig`.

Pure, no I/O. :func:`effective_rules` applies ``merge_strategy``, ``disable_defaults``,
custom ``rules`` and ``policy_overrides`` (the module docstring of :mod:`mas.policy.dlp` says
how) and compiles every custom pattern once. A :class:`~mas.config.DlpConfig` checks its own
names when it is built (an unknown name, a duplicate or reserved id), so a mistake is a config
error with its ``mas.yaml`` path; a pattern is compiled here again
(:func:`mas.config.gateway.compile_rule_pattern`), so one set past that check is still refused.
"""

from __future__ import annotations

from dataclasses import replace

from mas.config import DlpConfig
from mas.config.gateway import compile_rule_pattern
from mas.policy.dlp.defaults import DEFAULT_RULES
from mas.policy.dlp.rule import Finder, Rule, Span, Views, marker


def effective_rules(config: DlpConfig) -> list[Rule]:
    """The rules ``config`` asks for, in the order they are applied."""
    rules: dict[str, Rule] = {}
    if config.merge_strategy == "append":
        disabled = set(config.disable_defaults)
        for rule in DEFAULT_RULES:
            if rule.id not in disabled and rule.type not in disabled:
                rules[rule.id] = rule
    for spec in config.rules:
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
    overrides = config.policy_overrides
    return [
        replace(rule, action=overrides.get(rule.id, overrides.get(rule.type, rule.action)))
        for rule in rules.values()
    ]


def custom_finder(rule_id: str, kind: str, pattern: str, case_insensitive: bool) -> Finder:
    """The detector of a custom rule; ``ValueError`` if ``pattern`` is unusable."""
    compiled = compile_rule_pattern(rule_id, pattern, case_insensitive=case_insensitive)
    mask = marker(kind)

    def find(views: Views) -> list[Span]:
        return [
            (m.start(), m.end(), mask) for m in compiled.finditer(views.text) if m.end() > m.start()
        ]

    return find
