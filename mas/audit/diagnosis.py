"""What is wrong with a broken audit chain, in words an auditor understands (pure).

:func:`mas.audit.chain.verify` walks a chain and calls these helpers at the
first record that does not fit; they look ahead in the rest of the input (once,
in constant memory) to tell the kinds of tampering apart.

Classification (the first problem, in input order, is reported)
    edited       a record's hash does not match its content, or an entry is not
                 a record; a record rewritten with a recomputed hash, seen where
                 the next record holds another hash for it; the record at the
                 head's seq is not the head's
    inserted     a record the chain passes by: a bad-hash record whose successor
                 links around it; an unlinked record whose seq a later, linked
                 record holds; a record nothing links to or from; any repeated
                 or backward seq (a reorder first shows as a jump ahead, below)
    reordered    the seq jumps ahead, the skipped record comes later (still
                 linked to the one before the gap), and the record out of place
                 is linked to or from later records
    deleted      the seq jumps ahead and the skipped seq never comes; or the
                 input starts after seq 1 with no anchor, or later than right
                 after its anchor (the last record rotated away or trimmed)
    truncated    the input ends before the seq of ``expected_head``
    bad_genesis  the first record is seq 1 without the ``GENESIS`` prev_hash,
                 has a seq below 1, or is later but claims ``GENESIS``

With a key, a record whose hash is plain SHA-256 after a keyed record is
edited (recomputed by someone without the key); at the start of the chain it
is accepted and counted (written before keys were default). A first record
that does not link to its anchor, or an anchor's record with another hash,
is edited too.

Records after the expected head are accepted: a writer records its head after
the records themselves, so a crash in between leaves the head behind.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Literal

import msgspec

from mas.audit.record import GENESIS, AuditRecord

ProblemKind = Literal["edited", "deleted", "inserted", "reordered", "truncated", "bad_genesis"]


class Unreadable(msgspec.Struct, frozen=True):
    """An entry of an audit trail that does not decode as a record (reported as edited)."""

    where: str  # "audit.jsonl line 7"
    detail: str  # why it does not decode


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The first thing wrong with a chain, for an auditor.

    ``seq`` is the seq of the record concerned (the missing or expected one
    for ``deleted``, ``reordered`` and ``truncated``); ``index`` is the 0-based
    position in the input where the problem shows (the input length for
    ``truncated``).
    """

    kind: ProblemKind
    seq: int
    detail: str
    index: int = 0


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :func:`mas.audit.chain.verify`.

    ``checked`` counts the records found sound before the first problem (all
    of them when ``ok``); ``first_seq`` and ``head`` (seq, hash) are the first
    and last records accepted before it, None when there are none.
    ``unkeyed`` counts the first records hashed with plain SHA-256 although
    verification had a key (written before the chain was keyed).
    """

    ok: bool
    checked: int
    problem: Problem | None = None
    first_seq: int | None = None
    head: tuple[int, str] | None = None
    unkeyed: int = 0  # leading records hashed without the key though a key was given


Entry = AuditRecord | Unreadable


def same_digest(a: str, b: str) -> bool:
    """Constant-time equality of two hex digests (any text, never raising)."""
    return hmac.compare_digest(a.encode(), b.encode())


def unreadable_problem(
    entry: Unreadable, anchor: AuditRecord | None, index: int, rest: Iterator[Entry]
) -> Problem:
    """An entry that does not decode: edited, at the seq it stands in for."""
    if anchor is None:
        nxt = next(rest, None)
        seq = nxt.seq - 1 if isinstance(nxt, AuditRecord) and nxt.seq > 1 else 1
    else:
        seq = anchor.seq + 1
    return _problem(
        "edited",
        seq,
        index,
        f"{entry.where} (record {seq}) is not a valid audit record: {entry.detail}",
    )


def _problem(kind: ProblemKind, seq: int, index: int, detail: str) -> Problem:
    return Problem(kind=kind, seq=seq, index=index, detail=detail)


def _follows(record: Entry | None, seq: int, prev_hash: str) -> bool:
    return isinstance(record, AuditRecord) and record.seq == seq and record.prev_hash == prev_hash


def bad_hash_problem(
    record: AuditRecord,
    anchor: AuditRecord | None,
    index: int,
    key: bytes | None,
    rest: Iterator[Entry],
) -> Problem:
    """A record whose hash does not match its content: edited, or inserted if skipped over."""
    seq = record.seq if anchor is None else anchor.seq + 1
    prev_hash = GENESIS if anchor is None else anchor.hash
    nxt = next(rest, None)
    if (anchor is not None or seq == 1) and _follows(nxt, seq, prev_hash):
        return _problem(
            "inserted",
            record.seq,
            index,
            f"a record claiming seq {record.seq} was inserted: its hash does not match its"
            f" content, and the record after it links directly to "
            + ("the start of the chain" if anchor is None else f"record {anchor.seq}"),
        )
    hint = ""
    if index == 0:
        hint = (
            " (or the HMAC key is not the one the trail was written with)"
            if key
            else " (or the trail was written with an HMAC key: check it with that key)"
        )
    return _problem(
        "edited",
        seq,
        index,
        f"record {seq}'s hash does not match its content: it was altered after it was"
        f" written{hint}",
    )


def start_problem(record: AuditRecord, index: int, allow_later_start: bool) -> Problem | None:
    """What is wrong with the first record of the input, if anything."""
    if record.seq < 1:
        return _problem(
            "bad_genesis",
            record.seq,
            index,
            f"the first record has seq {record.seq}; seqs start at 1",
        )
    if record.seq == 1 and record.prev_hash != GENESIS:
        return _problem(
            "bad_genesis",
            1,
            index,
            f"record 1 does not start the chain: its prev_hash is {record.prev_hash[:16]}...,"
            " not the genesis value (64 zeros)",
        )
    if record.seq > 1 and record.prev_hash == GENESIS:
        return _problem(
            "bad_genesis",
            record.seq,
            index,
            f"record {record.seq} claims to start the chain (genesis prev_hash), but the"
            " chain starts at seq 1",
        )
    if record.seq > 1 and not allow_later_start:
        missing = "record 1 is" if record.seq == 2 else f"records 1 to {record.seq - 1} are"
        return _problem(
            "deleted", 1, index, f"the trail starts at record {record.seq}: {missing} missing"
        )
    return None


def removed_problem(record: AuditRecord, index: int, removed: tuple[int, str]) -> Problem | None:
    """The first record against the anchor: the (seq, hash) of the last record removed."""
    removed_seq, removed_hash = removed
    if record.seq > removed_seq + 1:
        first = removed_seq + 1
        missing = (
            f"record {first} is"
            if record.seq == first + 1
            else f"records {first} to {record.seq - 1} are"
        )
        gone = (
            "no record was rotated away or trimmed"
            if removed_seq <= 0
            else f"records up to {removed_seq} were rotated away or trimmed"
        )
        return _problem(
            "deleted",
            first,
            index,
            f"the trail starts at record {record.seq}, but its anchor records that {gone}:"
            f" {missing} missing (deleted, not rotated)",
        )
    if record.seq == removed_seq + 1 and not same_digest(record.prev_hash, removed_hash):
        return _problem(
            "edited",
            record.seq,
            index,
            f"record {record.seq} does not link to record {removed_seq} as its anchor records"
            " it: the first records were replaced",
        )
    return None


def removed_mismatch_problem(seq: int, count: int) -> Problem:
    """The record at the anchor's seq is still there, with another hash than the anchor's."""
    return _problem(
        "edited",
        seq,
        count,
        f"record {seq} is not the record the anchor recorded as rotated away (its hash"
        " differs): it was replaced",
    )


def unkeyed_problem(record: AuditRecord, index: int) -> Problem:
    """A record hashed without the key after keyed records: rewritten by someone keyless."""
    return _problem(
        "edited",
        record.seq,
        index,
        f"record {record.seq}'s hash is plain SHA-256, but the records before it are"
        " HMAC-keyed: it was altered and its hash recomputed without the key",
    )


def link_problem(
    anchor: AuditRecord, record: AuditRecord, index: int, rest: Iterator[Entry]
) -> Problem:
    """Classify a record with a sound hash that does not continue the chain at ``anchor``."""
    expected = anchor.seq + 1
    if record.seq <= anchor.seq:
        twin = (
            f"; it and record {anchor.seq} both follow the same record"
            if record.seq == anchor.seq and record.prev_hash == anchor.prev_hash
            else ""
        )
        return _problem(
            "inserted",
            record.seq,
            index,
            f"a record with seq {record.seq} appears after record {anchor.seq}: seqs must"
            f" rise by one, so it is a copy or a forgery{twin}",
        )
    successor_at: int | None = None
    chained = False  # a later record links to `record`, or `record` to a later one
    nxt: Entry | None = None
    for offset, entry in enumerate(rest, start=index + 1):
        if nxt is None:
            nxt = entry
        if not isinstance(entry, AuditRecord):
            continue
        if successor_at is None and _follows(entry, expected, anchor.hash):
            successor_at = offset
        chained = chained or entry.prev_hash == record.hash or entry.hash == record.prev_hash
        if successor_at is not None and (chained or record.seq == expected):
            break
    if record.seq == expected:
        if successor_at is not None:
            return _problem(
                "inserted",
                record.seq,
                index,
                f"a record claiming seq {record.seq} does not link to record {anchor.seq},"
                f" and the genuine record {record.seq} comes after it: it was inserted",
            )
        if _follows(nxt, record.seq + 1, record.hash):
            return _problem(
                "edited",
                anchor.seq,
                index - 1,
                f"record {anchor.seq} was altered and its hash recomputed: record"
                f" {record.seq} holds a different hash for it",
            )
        return _problem(
            "edited",
            record.seq,
            index,
            f"record {record.seq} does not link to record {anchor.seq}: it was replaced or"
            " altered and its hash recomputed",
        )
    if successor_at is None:
        missing = (
            f"record {expected} is"
            if record.seq == expected + 1
            else f"records {expected} to {record.seq - 1} are"
        )
        return _problem(
            "deleted",
            expected,
            index,
            f"{missing} missing: record {anchor.seq} is followed by record {record.seq}",
        )
    if chained:
        return _problem(
            "reordered",
            expected,
            index,
            f"records are out of order: record {record.seq} stands where record {expected}"
            f" belongs, and record {expected} appears further on",
        )
    return _problem(
        "inserted",
        record.seq,
        index,
        f"a record claiming seq {record.seq} was inserted after record {anchor.seq}: it does"
        f" not link to it, no record links to it, and record {expected} comes after it",
    )


def head_problem(
    last: AuditRecord | None, hash_at_head: str | None, head: tuple[int, str], count: int
) -> Problem | None:
    """Compare a sound chain ending at ``last`` with the head recorded elsewhere.

    ``hash_at_head`` is the hash of the chain's record with the head's seq, if
    it was read; ``count`` is how many entries were read.
    """
    head_seq, head_hash = head
    if last is None:
        if head_seq <= 0:
            return None
        return _problem(
            "truncated", 1, count, f"the trail is empty, but its head records seq {head_seq}"
        )
    if last.seq < head_seq:
        missing = (
            f"record {head_seq} was"
            if last.seq + 1 == head_seq
            else f"records {last.seq + 1} to {head_seq} were"
        )
        return _problem(
            "truncated",
            last.seq + 1,
            count,
            f"the trail ends at record {last.seq}, but its head records seq {head_seq}:"
            f" {missing} cut from the end",
        )
    if hash_at_head is not None and not same_digest(hash_at_head, head_hash):
        return _problem(
            "edited",
            head_seq,
            count,
            f"record {head_seq} is not the record the head recorded (its hash differs):"
            " it was replaced",
        )
    return None
