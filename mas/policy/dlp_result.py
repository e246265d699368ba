"""What a DLP scan returns: the :class:`ScanResult` and its :class:`Violation` records.

Plain frozen msgspec Structs, so a result encodes as JSON for the audit log as it is.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from mas.policy.dlp_rule import Action

Decision = Literal["ALLOWED", "ALERT", "DLP_REDACTED", "DLP_BLOCKED"]


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
