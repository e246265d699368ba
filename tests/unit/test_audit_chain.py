"""The audit hash chain: canonical bytes, linking, and naming each kind of tampering."""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Sequence

import msgspec
import pytest

from mas.audit import (
    GENESIS,
    AuditDraft,
    AuditRecord,
    Problem,
    Unreadable,
    Violation,
    canonical,
    key_from_env,
    link,
    link_many,
    payload_digest,
    record_hash,
    verify,
)
from mas.errors import ConfigError

KEY = b"k" * 32
T0 = 1_795_510_800.123  # 2026-11-24T09:00:00.123Z


def drafts(n: int) -> list[AuditDraft]:
    return [
        AuditDraft(
            time=T0 + i,
            decision="DLP_REDACTED" if i % 3 == 0 else "ALLOWED",
            message_id=f"m{i}",
            sender_id="ping",
            sender_instance_id="abc",
            target_id="pong",
            message_type="patient_message",
            correlation_id=f"c{i}",
            violations=(Violation("ssn-1", "ssn", "redact", "high", "$.ssn"),)
            if i % 3 == 0
            else (),
            latency_ms=1.25,
            payload_sha256=payload_digest(b'{"i": %d}' % i),
        )
        for i in range(1, n + 1)
    ]


def chain(n: int = 10, key: bytes | None = None) -> list[AuditRecord]:
    return link_many(None, drafts(n), key)


def rehash(record: AuditRecord, key: bytes | None = None, **changes: object) -> AuditRecord:
    """The record with ``changes``, its hash recomputed (what a forger without the key does)."""
    changed = msgspec.structs.replace(record, **changes)
    return msgspec.structs.replace(changed, hash=record_hash(changed, key))


# --- canonical encoding and linking ------------------------------------------------------


def test_canonical_bytes_are_sorted_compact_json_without_the_hash() -> None:
    draft = AuditDraft(
        time=1.5,
        decision="ALLOWED",
        message_id="m1",
        violations=(Violation("r1", "ssn", "redact", "high", "$.ssn"),),
    )
    record = link(None, draft, None)
    assert canonical(record) == (
        b'{"correlation_id":"","decision":"ALLOWED","latency_ms":0.0,"message_id":"m1",'
        b'"message_type":"","payload_sha256":"","prev_hash":"' + GENESIS.encode() + b'",'
        b'"reason":"","sender_id":"","sender_instance_id":"","seq":1,"server_id":"",'
        b'"target_id":"","time":1.5,"violations":[{"action":"redact","path":"$.ssn",'
        b'"rule_id":"r1","severity":"high","type":"ssn"}]}'
    )
    assert record.hash == "5097e8e50bc989f1eaa108109811ddefb73a8d1c146d49d658da660ee525c7fb"


def test_canonical_bytes_do_not_depend_on_key_order_or_the_hash() -> None:
    record = chain(3)[2]
    fields = msgspec.to_builtins(record)
    shuffled = dict(reversed(list(fields.items())))
    decoded = msgspec.json.decode(msgspec.json.encode(shuffled), type=AuditRecord)
    assert canonical(decoded) == canonical(record)
    assert canonical(msgspec.structs.replace(record, hash="x")) == canonical(record)
    assert canonical(record) == canonical(record)


def test_hash_is_sha256_or_hmac_of_the_canonical_bytes() -> None:
    plain, keyed = chain(1)[0], chain(1, KEY)[0]
    assert plain.hash == hashlib.sha256(canonical(plain)).hexdigest()
    assert keyed.hash == hmac.new(KEY, canonical(keyed), hashlib.sha256).hexdigest()
    assert plain.hash != keyed.hash


def test_link_starts_at_genesis_and_each_record_names_the_previous_hash() -> None:
    records = chain(4)
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    assert link(records[-1], drafts(1)[0], None).seq == 5


def test_link_refuses_times_json_cannot_hold() -> None:
    with pytest.raises(ValueError, match="finite"):
        link(None, AuditDraft(time=float("nan"), decision="ALLOWED"), None)
    with pytest.raises(ValueError, match="finite"):
        link(None, AuditDraft(time=1.0, decision="ALLOWED", latency_ms=float("inf")), None)


def test_payload_digest_is_sha256_hex() -> None:
    assert payload_digest(b"{}") == hashlib.sha256(b"{}").hexdigest()


# --- untouched chains --------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_untouched_chain_verifies(key: bytes | None) -> None:
    records = chain(10, key)
    report = verify(records, key, expected_head=(10, records[-1].hash))
    assert report.ok and report.problem is None
    assert report.checked == 10
    assert report.first_seq == 1
    assert report.head == (10, records[-1].hash)


def test_empty_chain_verifies() -> None:
    report = verify([], None)
    assert report.ok and report.checked == 0 and report.head is None


def test_wrong_key_fails_as_edited_at_seq_1() -> None:
    records = chain(5, KEY)
    for key in (b"w" * 32, None):
        report = verify(records, key)
        assert not report.ok and report.problem is not None
        assert (report.problem.kind, report.problem.seq) == ("edited", 1)
        assert "key" in report.problem.detail


def test_records_after_the_expected_head_are_accepted() -> None:
    records = chain(10)
    assert verify(records, None, expected_head=(8, records[7].hash)).ok


# --- tampering -----------------------------------------------------------------------------


def problem_of(
    records: Sequence[AuditRecord | Unreadable],
    key: bytes | None = None,
    *,
    expected_head: tuple[int, str] | None = None,
    allow_later_start: bool = False,
) -> Problem:
    report = verify(records, key, expected_head=expected_head, allow_later_start=allow_later_start)
    assert not report.ok and report.problem is not None
    return report.problem


def test_edited_field_is_named_at_its_seq() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[4] = msgspec.structs.replace(chain(10)[4], target_id="mallory")
    problem = problem_of(records)
    assert (problem.kind, problem.seq, problem.index) == ("edited", 5, 4)
    assert "record 5" in problem.detail
    assert verify(records, None).checked == 4


def test_edit_with_recomputed_hash_is_caught_by_the_next_record() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[4] = rehash(chain(10)[4], target_id="mallory")
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("edited", 5)
    assert "recomputed" in problem.detail


def test_edit_with_recomputed_hash_but_without_the_key_fails_its_own_hash() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10, KEY))
    records[4] = rehash(chain(10, KEY)[4], None, target_id="mallory")
    assert (problem_of(records, KEY).kind, problem_of(records, KEY).seq) == ("edited", 5)


def test_deleted_record_is_named() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    del records[4]
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("deleted", 5)
    assert "record 5 is missing" in problem.detail


def test_deleted_run_of_records_is_named_from_its_first_seq() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    del records[4:7]
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("deleted", 5)
    assert "records 5 to 7 are missing" in problem.detail


def test_inserted_forged_record_is_named() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    forged = rehash(chain(10)[4], target_id="mallory", prev_hash="ab" * 32)
    records.insert(4, forged)
    problem = problem_of(records)
    assert (problem.kind, problem.seq, problem.index) == ("inserted", 5, 4)


def test_inserted_forged_record_with_any_seq_is_named_by_its_claimed_seq() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records.insert(4, rehash(chain(10)[4], seq=42, prev_hash="ab" * 32))
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("inserted", 42)


def test_inserted_record_with_a_bad_keyed_hash_is_named_inserted() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10, KEY))
    records.insert(4, msgspec.structs.replace(chain(10, KEY)[4], hash="f" * 64))
    problem = problem_of(records, KEY)
    assert (problem.kind, problem.seq) == ("inserted", 5)


def test_forged_record_linked_to_its_predecessor_shows_as_a_second_record_with_that_seq() -> None:
    original = chain(10)
    forged = rehash(original[4], target_id="mallory")  # links to record 4, claims seq 5
    records: list[AuditRecord | Unreadable] = [*original[:4], forged, *original[4:]]
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("inserted", 5)
    assert "both follow the same record" in problem.detail


def test_duplicated_record_is_named_inserted() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records.insert(4, records[3])
    assert (problem_of(records).kind, problem_of(records).seq) == ("inserted", 4)


@pytest.mark.parametrize(
    ("order", "seq"),
    [
        ([1, 2, 3, 5, 4, 6, 7, 8, 9, 10], 4),  # swap 4 and 5
        ([1, 2, 3, 4, 5, 6, 7, 8, 10, 9], 9),  # swap the last two
        ([1, 2, 3, 5, 6, 7, 4, 8, 9, 10], 4),  # 4 moved later
        ([1, 2, 3, 8, 4, 5, 6, 7, 9, 10], 4),  # 8 moved earlier
    ],
)
def test_reordered_records_are_named(order: list[int], seq: int) -> None:
    original = chain(10)
    records: list[AuditRecord | Unreadable] = [original[i - 1] for i in order]
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("reordered", seq)
    assert "out of order" in problem.detail


def test_truncated_tail_is_named_against_the_expected_head() -> None:
    records = chain(10)
    head = (10, records[-1].hash)
    problem = problem_of(list(records[:7]), expected_head=head)
    assert (problem.kind, problem.seq, problem.index) == ("truncated", 8, 7)
    assert "records 8 to 10 were cut from the end" in problem.detail
    assert verify(records[:7], None).ok  # without a head, a cut tail cannot be seen


def test_empty_trail_with_a_head_is_truncated() -> None:
    records = chain(2)
    problem = problem_of([], expected_head=(2, records[-1].hash))
    assert (problem.kind, problem.seq) == ("truncated", 1)


def test_replaced_last_record_differs_from_the_head() -> None:
    records = chain(10)
    problem = problem_of(list(records), expected_head=(10, "f" * 64))
    assert (problem.kind, problem.seq) == ("edited", 10)


def test_bad_genesis_is_named() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[0] = rehash(chain(10)[0], prev_hash="1" * 64)
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("bad_genesis", 1)


def test_later_record_claiming_genesis_is_a_bad_genesis() -> None:
    records: list[AuditRecord | Unreadable] = [rehash(chain(10)[3], prev_hash=GENESIS)]
    problem = problem_of(records, allow_later_start=True)
    assert (problem.kind, problem.seq) == ("bad_genesis", 4)


def test_chain_starting_late_is_deleted_unless_allowed() -> None:
    records = chain(10)[3:]
    problem = problem_of(list(records))
    assert (problem.kind, problem.seq) == ("deleted", 1)
    assert "records 1 to 3 are missing" in problem.detail
    report = verify(records, None, allow_later_start=True)
    assert report.ok and report.first_seq == 4 and report.checked == 7


def test_unreadable_entry_is_edited_at_its_position() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[4] = Unreadable("audit.jsonl line 5", "malformed JSON")
    problem = problem_of(records)
    assert (problem.kind, problem.seq, problem.index) == ("edited", 5, 4)
    assert "audit.jsonl line 5" in problem.detail


# --- the key -------------------------------------------------------------------------------


def test_key_from_env_uses_the_raw_value_as_utf8() -> None:
    assert key_from_env(None, {}) is None
    assert key_from_env("AUDIT_KEY", {"AUDIT_KEY": " sécret-sécret-sécret "}) == (
        " sécret-sécret-sécret ".encode()
    )


@pytest.mark.parametrize(
    ("env", "words"),
    [({}, "not set"), ({"AUDIT_KEY": ""}, "empty"), ({"AUDIT_KEY": "short"}, "5 bytes")],
)
def test_key_from_env_refuses_a_missing_empty_or_short_key(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        key_from_env("AUDIT_KEY", env)
    assert "AUDIT_KEY" in str(info.value)


def test_non_ascii_hash_is_edited_not_an_error() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(3))
    records[1] = msgspec.structs.replace(chain(3)[1], hash="é" * 64)
    assert (problem_of(records).kind, problem_of(records).seq) == ("edited", 2)
    original = chain(3)
    assert problem_of(original, expected_head=(3, "é")).kind == "edited"


def test_unreadable_first_entry_of_a_late_start_names_the_seq_it_stands_in_for() -> None:
    records: list[AuditRecord | Unreadable] = [Unreadable("a line 1", "bad"), *chain(10)[5:]]
    problem = problem_of(records, allow_later_start=True)
    assert (problem.kind, problem.seq, problem.index) == ("edited", 5, 0)


def test_relinking_a_record_uses_only_its_draft_fields() -> None:
    first = chain(2)
    again = link(None, first[1], None)
    assert again.seq == 1 and again.message_id == first[1].message_id


def test_checked_counts_only_records_before_a_rewritten_one() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[4] = rehash(chain(10)[4], target_id="mallory")
    report = verify(records, None)
    assert report.checked == 4 and report.problem is not None and report.problem.index == 4


def test_record_whose_link_was_rewritten_is_edited() -> None:
    records: list[AuditRecord | Unreadable] = list(chain(10))
    records[4] = rehash(chain(10)[4], prev_hash="cd" * 32)
    problem = problem_of(records)
    assert (problem.kind, problem.seq) == ("edited", 5)
    assert "does not link to record 4" in problem.detail


def test_record_going_backwards_is_inserted() -> None:
    original = chain(10)
    records: list[AuditRecord | Unreadable] = [*original[:6], original[1], *original[6:]]
    problem = problem_of(records)
    assert (problem.kind, problem.seq, problem.index) == ("inserted", 2, 6)


def test_first_record_with_seq_zero_is_a_bad_genesis() -> None:
    problem = problem_of([rehash(chain(1)[0], seq=0)], allow_later_start=True)
    assert (problem.kind, problem.seq) == ("bad_genesis", 0)


def test_one_record_cut_from_the_end_and_an_empty_head() -> None:
    records = chain(3)
    problem = problem_of(records[:2], expected_head=(3, records[2].hash))
    assert "record 3 was cut from the end" in problem.detail
    assert verify([], None, expected_head=(0, GENESIS)).ok


# --- keyed chains: a record rewritten without the key ----------------------------------------


def test_a_record_edited_and_rehashed_without_the_key_is_caught() -> None:
    key = b"an audit key of 32 bytes, really"
    records = link_many(None, [AuditDraft(time=1.0 + i, decision="ALLOWED") for i in range(6)], key)
    forged = msgspec.structs.replace(records[2], decision="AUTHZ_DENIED")
    rewritten = records[:2] + link_many(records[1], [forged, *records[3:]], None)
    report = verify(rewritten, key)
    assert not report.ok and report.problem is not None
    assert report.problem.kind == "edited" and report.problem.seq == 3
    assert "recomputed without the key" in report.problem.detail


def test_an_unkeyed_prefix_is_counted_and_a_wholly_unkeyed_chain_is_not_proven() -> None:
    from mas.cli.audit.files import unkeyed_verdict

    key = b"an audit key of 32 bytes, really"
    drafts = [AuditDraft(time=1.0 + i, decision="ALLOWED") for i in range(6)]
    old = link_many(None, drafts[:3], None)
    mixed = old + link_many(old[-1], drafts[3:], key)
    report = verify(mixed, key)
    assert report.ok and report.unkeyed == 3 and unkeyed_verdict(report) is None
    everything_rehashed = link_many(None, drafts, None)
    report = verify(everything_rehashed, key)
    assert report.ok and report.unkeyed == 6
    verdict = unkeyed_verdict(report)
    assert verdict is not None and "NOT PROVEN" in verdict
