"""Refusals in the audit trail: bounded client strings, repeats coalesced per window."""

from __future__ import annotations

from mas.audit.record import AuditDraft
from mas.audit.refusals import MAX_FIELD_CHARS, RefusalCoalescer, bound_fields, bounded


def _denied(sender: str = "a", reason: str = "not_authorized", **fields: str) -> AuditDraft:
    return AuditDraft(time=1.0, decision="AUTHZ_DENIED", reason=reason, sender_id=sender, **fields)


def test_long_client_strings_are_cut_marked_and_told_apart() -> None:
    one, other = "x" * 500_000, "x" * 499_999 + "y"
    draft = bound_fields(_denied(target_id=one, correlation_id=other, message_type="t"))
    assert len(draft.target_id) < MAX_FIELD_CHARS
    assert "…[cut sha256:" in draft.target_id
    assert draft.target_id != draft.correlation_id  # same start, different hash
    assert draft.message_type == "t"


def test_short_strings_are_kept_whole() -> None:
    draft = _denied(target_id="b" * MAX_FIELD_CHARS)
    assert bound_fields(draft) is draft
    assert bounded("z" * MAX_FIELD_CHARS) == "z" * MAX_FIELD_CHARS


def test_repeats_in_a_window_become_one_record_with_their_count() -> None:
    coalescer = RefusalCoalescer(interval=60.0)
    assert coalescer.admit(_denied(), 0.0) == [_denied()]
    for n in range(1, 300):
        assert coalescer.admit(_denied(), float(n) / 10) == []
    assert coalescer.next_deadline() == 60.0
    assert coalescer.due(59.9) == []
    [summary] = coalescer.due(60.0)
    assert summary.reason == "not_authorized;repeated=299"
    assert coalescer.next_deadline() is None
    # A new window opens with the next refusal, recorded at once.
    assert coalescer.admit(_denied(), 61.0) == [_denied()]


def test_a_refusal_after_the_window_brings_the_summary_with_it() -> None:
    coalescer = RefusalCoalescer(interval=10.0)
    coalescer.admit(_denied(), 0.0)
    coalescer.admit(_denied(), 1.0)
    out = coalescer.admit(_denied(), 11.0)
    assert [d.reason for d in out] == ["not_authorized;repeated=1", "not_authorized"]


def test_each_identity_and_reason_has_its_own_window() -> None:
    coalescer = RefusalCoalescer(interval=10.0)
    assert coalescer.admit(_denied("a"), 0.0)
    assert coalescer.admit(_denied("b"), 0.0)
    assert coalescer.admit(_denied("a", reason="rate_limited"), 0.0)
    assert coalescer.admit(_denied("a"), 1.0) == []


def test_decisions_that_are_not_coalesced_always_pass() -> None:
    coalescer = RefusalCoalescer(interval=10.0)
    draft = AuditDraft(time=1.0, decision="DLP_BLOCKED", reason="dlp_blocked", sender_id="a")
    assert coalescer.admit(draft, 0.0) == [draft]
    assert coalescer.admit(draft, 0.1) == [draft]


def test_close_all_flushes_every_count() -> None:
    coalescer = RefusalCoalescer(interval=10.0)
    for sender in ("a", "b"):
        coalescer.admit(_denied(sender), 0.0)
        coalescer.admit(_denied(sender), 0.5)
    assert sorted(d.sender_id for d in coalescer.close_all()) == ["a", "b"]
    assert coalescer.close_all() == []
