"""The one refusal vocabulary: ``Reason`` spellings, the reason-to-status table, ``Refusal``.

docs/compatibility.md is the contract with the seed's system: every row of its tables is
checked against ``refusal.STATUS`` here, and every refusal the table knows must be listed
there (the interop test then meets each one with a stock grpcio client).
"""

from __future__ import annotations

import re
from pathlib import Path

from mas import identity
from mas.errors import Reason, RejectedError, rejected_error
from mas.server.refusal import STATUS, Refusal
from mas.store import base

COMPATIBILITY = Path(__file__).parents[2] / "docs" / "compatibility.md"
ROW = re.compile(r"^\| `([A-Z_]+)` \| `([^`]+)` \|", re.MULTILINE)


def _documented() -> dict[str, str]:
    rows: dict[str, str] = {}
    for code, reason in ROW.findall(COMPATIBILITY.read_text()):
        token = reason.split(" /", 1)[0]  # "unknown method /<service>/<method>"
        assert rows.setdefault(token, code) == code, f"{token} is documented with two codes"
        rows[token] = code
    return rows


def test_every_reason_has_its_own_spelling() -> None:
    # A StrEnum member with another's value becomes its alias silently: none may.
    assert len(Reason.__members__) == len(Reason)
    assert all(re.fullmatch(r"[a-z_]+( method)?", reason.value) for reason in Reason)


def test_the_status_table_is_the_documented_one_row_for_row() -> None:
    documented = _documented()
    assert {reason.value: code for reason, code in STATUS.items()} == documented


def test_a_refusal_takes_its_code_from_the_table_and_says_its_reason() -> None:
    refusal = Refusal(Reason.RATE_LIMITED, retry_after=1.5)
    assert (refusal.code, refusal.message, refusal.retry_after) == (
        "RESOURCE_EXHAUSTED",
        "rate_limited",
        1.5,
    )
    assert str(refusal) == "RESOURCE_EXHAUSTED rate_limited"
    unknown = Refusal(Reason.UNKNOWN_METHOD, detail="/svc/Nope")
    assert (unknown.code, unknown.message) == ("UNIMPLEMENTED", "unknown method /svc/Nope")
    assert type(refusal.message) is str  # a plain string goes on the wire


def test_the_store_and_identity_reasons_are_members() -> None:
    assert set(identity.REASONS).issubset(Reason)
    assert all(STATUS[Reason(reason)] == "UNAUTHENTICATED" for reason in identity.REASONS)
    refused = {
        base.UNKNOWN_CORRELATION: "INVALID_ARGUMENT",
        base.CORRELATION_EXPIRED: "FAILED_PRECONDITION",
        base.NOT_THE_TARGET: "PERMISSION_DENIED",
        base.STORE_UNAVAILABLE: "UNAVAILABLE",
        base.STORE_NOT_DURABLE: "UNAVAILABLE",
    }
    for reason, code in refused.items():
        assert isinstance(reason, Reason)
        assert STATUS[reason] == code


def test_the_client_reads_every_refusal_back_as_a_rejected_error() -> None:
    for reason, code in STATUS.items():
        error = rejected_error(code, reason.value)
        assert isinstance(error, RejectedError)
        assert (error.code, error.reason) == (code, reason)
