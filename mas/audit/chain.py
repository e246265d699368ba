"""The audit hash chain (pure): link drafts into records, verify a sequence of records.

Canonical encoding
    A record's canonical bytes are the compact msgspec JSON of the record
    without its ``hash`` field, keys sorted at every level (violations too),
    every field present even at its default, floats as msgspec writes them
    (shortest round-trip form), strings as UTF-8. The record's ``hash`` is
    SHA-256 of those bytes, or HMAC-SHA256 with the key when one is given.
    The canonical bytes hold ``seq`` and ``prev_hash``, so each hash covers the
    previous record's hash and the whole record.

Verification reads the records once, in order, and reports the first problem;
:mod:`mas.audit.diagnosis` says how each kind of tampering is told apart.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from mas.audit.diagnosis import (
    Problem,
    Unreadable,
    VerifyReport,
    bad_hash_problem,
    head_problem,
    link_problem,
    removed_mismatch_problem,
    removed_problem,
    same_digest,
    start_problem,
    unkeyed_problem,
    unreadable_problem,
)
from mas.audit.record import GENESIS, AuditDraft, AuditRecord
from mas.errors import ConfigError

__all__ = [
    "GENESIS",
    "MIN_KEY_BYTES",
    "canonical",
    "key_from_env",
    "key_id",
    "link",
    "link_many",
    "record_hash",
    "verify",
]

MIN_KEY_BYTES: Final = 16  # shorter HMAC keys are refused as too easy to guess

_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def canonical(record: AuditDraft) -> bytes:
    """The canonical JSON bytes of ``record`` without its ``hash`` field."""
    fields: dict[str, Any] = msgspec.to_builtins(record)
    fields.pop("hash", None)
    return _ENCODER.encode(fields)


def record_hash(record: AuditDraft, key: bytes | None) -> str:
    """HMAC-SHA256 (with ``key``) or SHA-256 (without) of the canonical bytes, in hex."""
    data = canonical(record)
    if key is not None:
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hashlib.sha256(data).hexdigest()


def link(
    prev: AuditRecord | None, draft: AuditDraft, key: bytes | None, server_id: str = ""
) -> AuditRecord:
    """The record that places ``draft`` right after ``prev`` (or first, after ``GENESIS``).

    ``server_id`` names the server that decided, when the draft names none.
    Raises ValueError when ``time`` or ``latency_ms`` is not finite (JSON cannot hold it).
    """
    if not (math.isfinite(draft.time) and math.isfinite(draft.latency_ms)):
        raise ValueError("audit time and latency_ms must be finite numbers")
    fields = {name: getattr(draft, name) for name in AuditDraft.__struct_fields__}
    if not draft.server_id:
        fields["server_id"] = server_id
    unsigned = AuditRecord(
        **fields,
        seq=1 if prev is None else prev.seq + 1,
        prev_hash=GENESIS if prev is None else prev.hash,
        hash="",
    )
    return msgspec.structs.replace(unsigned, hash=record_hash(unsigned, key))


def link_many(
    prev: AuditRecord | None, drafts: Iterable[AuditDraft], key: bytes | None, server_id: str = ""
) -> list[AuditRecord]:
    """Link ``drafts`` in order after ``prev`` (see :func:`link`); returns the new records.

    The one place a store links its chain (memory, SQLite and Redis call it with the
    chain's last record): the last record returned is the chain's new head.
    """
    records: list[AuditRecord] = []
    for draft in drafts:
        prev = link(prev, draft, key, server_id)
        records.append(prev)
    return records


def key_id(key: bytes | None) -> str:
    """A short public name of ``key`` ("none" for no key) that does not reveal it."""
    if key is None:
        return "none"
    return hmac.new(key, b"mas audit key id", hashlib.sha256).hexdigest()[:16]


def key_from_env(name: str | None, env: Mapping[str, str]) -> bytes | None:
    """The HMAC key held in environment variable ``name``; None when no variable is named.

    The key is the variable's value exactly, as UTF-8 bytes (not hex-decoded, not
    trimmed). Raises ConfigError when the variable is unset, empty or shorter
    than ``MIN_KEY_BYTES`` bytes: a named key that is not there must not
    silently turn into an unkeyed chain.
    """
    if name is None:
        return None
    value = env.get(name)
    if not value:
        raise ConfigError(
            f"the audit HMAC key variable ${name} is {'empty' if value == '' else 'not set'};"
            f" set it to a secret of at least {MIN_KEY_BYTES} characters, or remove"
            " gateway.audit.hmac_key_env to use the key file kept next to the store"
        )
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the audit HMAC key in ${name} is {len(key)} bytes long;"
            f" use at least {MIN_KEY_BYTES} (random) characters"
        )
    return key


def verify(
    records: Iterable[AuditRecord | Unreadable],
    key: bytes | None,
    *,
    expected_head: tuple[int, str] | None = None,
    allow_later_start: bool = False,
    removed: tuple[int, str] | None = None,
) -> VerifyReport:
    """Check that ``records`` form one unbroken chain, and report the first problem.

    ``expected_head`` is the (seq, hash) of the last record as recorded
    elsewhere (a store's head, a sink's ``.head`` file); a chain that ends
    before it is truncated. ``removed`` is the (seq, hash) of the last record
    rotated away or trimmed, as recorded elsewhere (the anchor): the chain must
    start right after it (or before it, holding it), and a chain that starts
    later had records deleted. Without an anchor a chain must start at seq 1,
    unless ``allow_later_start``. The input is read once, in order, in constant
    memory; see the module docstring for the classes.

    With a ``key``, records whose plain SHA-256 matches are accepted only as the
    chain's first records (written before the chain was keyed; counted in
    ``VerifyReport.unkeyed``): an unkeyed record after a keyed one had its hash
    recomputed by someone without the key.
    """
    rest = iter(records)
    anchor: AuditRecord | None = None
    first_seq: int | None = None
    hash_at_head: str | None = None
    hash_at_removed: str | None = None
    checked = 0
    unkeyed = 0

    def report(problem: Problem | None) -> VerifyReport:
        sound = checked if problem is None else min(checked, problem.index)
        head = None if anchor is None else (anchor.seq, anchor.hash)
        return VerifyReport(
            ok=problem is None,
            checked=sound,
            problem=problem,
            first_seq=first_seq,
            head=head,
            unkeyed=min(unkeyed, sound),
        )

    for index, entry in enumerate(rest):
        if isinstance(entry, Unreadable):
            return report(unreadable_problem(entry, anchor, index, rest))
        if not same_digest(entry.hash, record_hash(entry, key)):
            if key is None or not same_digest(entry.hash, record_hash(entry, None)):
                return report(bad_hash_problem(entry, anchor, index, key, rest))
            if unkeyed < checked:  # a keyed record came before it
                return report(unkeyed_problem(entry, index))
            unkeyed += 1
        if anchor is None:
            problem = start_problem(entry, index, allow_later_start or removed is not None)
            if problem is None and removed is not None:
                problem = removed_problem(entry, index, removed)
        elif entry.seq == anchor.seq + 1 and entry.prev_hash == anchor.hash:
            problem = None
        else:
            problem = link_problem(anchor, entry, index, rest)
        if problem is not None:
            return report(problem)
        anchor = entry
        first_seq = entry.seq if first_seq is None else first_seq
        checked += 1
        if expected_head is not None and entry.seq == expected_head[0]:
            hash_at_head = entry.hash
        if removed is not None and entry.seq == removed[0]:
            hash_at_removed = entry.hash
    if (
        removed is not None
        and hash_at_removed is not None
        and not same_digest(hash_at_removed, removed[1])
    ):
        return report(removed_mismatch_problem(removed[0], checked))
    return report(
        None
        if expected_head is None
        else head_problem(anchor, hash_at_head, expected_head, checked)
    )
