"""Audit record types (pure): what the gateway decides, and what the chain stores.

An :class:`AuditDraft` is one decision as the gateway or router produces it.
:func:`mas.audit.chain.link` turns it into an :class:`AuditRecord` by adding its
place in the hash chain (``seq``, ``prev_hash``, ``hash``). Both are frozen
msgspec Structs that refuse unknown fields, so a line of an audit file with an
extra or misspelt key does not decode (and is reported as edited).

Times are wall-clock seconds since the Unix epoch; ``latency_ms`` is in
milliseconds. Both must be finite: JSON has no NaN or infinity.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, get_args

import msgspec

Decision = Literal[
    "ALLOWED",
    "ALERT",
    "DLP_REDACTED",
    "DLP_BLOCKED",
    "RATE_LIMITED",
    "CIRCUIT_OPEN",
    "AUTHZ_DENIED",
    "AUTHN_DENIED",
    "INVALID",
    "DELIVERED",
    "NACKED",
    "DLQ",
    "EXPIRED",
    "DLQ_REPLAYED",
    "DLQ_LISTED",
    "CONTROL",
]

GENESIS: Final = "0" * 64  # prev_hash of record 1: the chain starts from nothing
DECISIONS: Final[tuple[str, ...]] = get_args(Decision)  # every decision value, in order


class Violation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One DLP finding: which rule matched where, and what was done about it.

    ``path`` locates the finding in the payload (``$.patient.ssn``); the
    matched text itself is never recorded.
    """

    rule_id: str
    type: str
    action: str
    severity: str
    path: str


class AuditDraft(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One decision about one message, before it takes its place in the chain."""

    time: float  # wall-clock seconds since the epoch
    decision: Decision
    reason: str = ""  # the stable reason token of a denial (``not_authorized``, ...)
    message_id: str = ""
    sender_id: str = ""
    sender_instance_id: str = ""
    target_id: str = ""
    message_type: str = ""
    correlation_id: str = ""
    violations: tuple[Violation, ...] = ()
    latency_ms: float = 0.0  # time spent in the gateway pipeline
    payload_sha256: str = ""  # payload_digest() of the delivered payload bytes
    server_id: str = ""  # which server decided (several may share one store)


class AuditRecord(AuditDraft, frozen=True, kw_only=True):
    """A draft as stored: the draft plus its place in the chain.

    ``seq`` counts from 1; ``prev_hash`` is the ``hash`` of record ``seq - 1``
    (``GENESIS`` for record 1); ``hash`` covers every other field.
    """

    seq: int
    prev_hash: str
    hash: str


def payload_digest(data_json: bytes) -> str:
    """The SHA-256 of the delivered payload bytes, as 64 lowercase hex digits."""
    return hashlib.sha256(data_json).hexdigest()


def dlq_listed(now: float, operator: str, count: int, agent_id: str | None) -> AuditDraft:
    """The record of a dead-letter listing (``mas dlq list``), by the server or the CLI."""
    return AuditDraft(
        time=now,
        decision="DLQ_LISTED",
        reason=f"listed by {operator or 'an operator'} ({count} message(s))",
        target_id=agent_id or "",
    )


def dlq_replayed(
    now: float, operator: str, message_id: str, target_id: str, was: str
) -> AuditDraft:
    """The record of one replayed dead letter (``was``: why it had been dead-lettered)."""
    return AuditDraft(
        time=now,
        decision="DLQ_REPLAYED",
        reason=f"replayed by {operator or 'an operator'} (was: {was})",
        message_id=message_id,
        target_id=target_id,
    )
