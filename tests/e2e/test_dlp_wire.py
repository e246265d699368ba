"""DLP on the wire: each way around the scan that issue 14 found, through a real server.

A hostile client speaks the protocol directly (``rawclient``), so nothing of the SDK stands
between the bypass and the server; what the server delivered or recorded is read back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from rawclient import RawSession, sessions

from mas.audit.record import AuditRecord
from mas.config import MasConfig
from mas.server import MasServer
from mas.testing import TestPKI, make_config, open_test_server

PAIR = [{"type": "allow_bidirectional", "agents": ["a", "b"]}]
CARD = "4111111111111111"


async def _records(server: MasServer) -> list[AuditRecord]:
    await server.audit.flush()
    return await server.store.audit_records()


async def _send(
    session: RawSession, data: Any, *, message_type: str = "note", target_id: str = "b"
) -> tuple[str, str]:
    """Send over the stream fast path; the refusal's (code, reason), ("", "") if accepted."""
    data_json = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    result = await session.call(
        "send", target_id=target_id, message_type=message_type, data_json=data_json
    )
    return result.error.code, result.error.message


def _config(**dlp: Any) -> MasConfig:
    return make_config(["a", "b"], PAIR, gateway={"dlp": dlp} if dlp else {})


def _recorded_text(records: list[AuditRecord]) -> str:
    return json.dumps([f"{r.target_id} {r.message_type} {r.correlation_id}" for r in records])


async def test_a_secret_in_the_message_type_is_blocked_and_never_recorded(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                refused = await _send(
                    a, {"n": 1}, message_type="card 4111 1111 1111 1111 pw=hunter2x"
                )
                assert refused == ("PERMISSION_DENIED", "dlp_blocked")
                # a redact rule's match cannot be masked in a type: it blocks too
                assert await _send(a, {}, message_type="ssn 123-45-6789") == (
                    "PERMISSION_DENIED",
                    "dlp_blocked",
                )
            records = await _records(server)
    blocked = [r for r in records if r.decision == "DLP_BLOCKED"]
    assert len(blocked) == 2
    assert {(v.rule_id, v.path) for v in blocked[0].violations} == {
        ("credit_card", "message_type"),
        ("password", "message_type"),
    }
    recorded = _recorded_text(records)
    assert "4111" not in recorded
    assert "hunter2x" not in recorded
    assert "123-45" not in recorded
    assert "*" * 12 + "1111" in recorded


async def test_client_chosen_ids_are_masked_in_the_records(pki: TestPKI) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert (await _send(a, {}, target_id=CARD))[0] != ""
                reply = await a.call(
                    "reply",
                    correlation_id="4111-1111-1111-1111",
                    message_type="note",
                    data_json="{}",
                )
                assert reply.error.code != ""
            records = await _records(server)
    recorded = _recorded_text(records)
    assert "4111" not in recorded
    assert recorded.count("*" * 12 + "1111") == 2
    assert any(r.correlation_id.startswith("*") for r in records)


SECRET_VALUES = [
    {"password": 84712093},
    {"pin": 4921},
    {"password": ["hunter2222"]},
    {"password": {"value": "hunter2222"}},
    {"token": {"v": "eyJhbGciOi"}},
    {"api_key": ["sk-notlisted"]},
    {"secret": 12.5},
    {"password": {"hunter2222": None}},
    {"card_number": 4111111111111111},
    {"n": [1, 2, 4111111111111111]},
    {"n": 4111111111111111.0},
]


@pytest.mark.parametrize("data", SECRET_VALUES, ids=lambda d: json.dumps(d))
async def test_a_secret_of_any_json_type_is_blocked(pki: TestPKI, data: dict[str, Any]) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert await _send(a, data) == ("PERMISSION_DENIED", "dlp_blocked")


SPELLINGS = [
    {"p\u0430ssword": "hunter2222"},  # a Cyrillic a
    {"\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44": "hunter2222"},  # fullwidth
    {"pass\u200bword": "hunter2222"},  # zero-width space
    {"\u0440\u0456n": "4921"},  # Cyrillic er and i: pin
    {"api\u00adkey": "abc123"},  # soft hyphen
    {"\u03c4oken": "abc123"},  # Greek tau
]


@pytest.mark.parametrize("data", SPELLINGS, ids=lambda d: ascii(next(iter(d))))
async def test_a_secret_key_spelled_with_look_alikes_is_blocked(
    pki: TestPKI, data: dict[str, Any]
) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert await _send(a, data) == ("PERMISSION_DENIED", "dlp_blocked")


FULLWIDTH_CARD = "".join(chr(0xFF10 + int(d)) for d in CARD)
UNICODE_TEXTS = [
    FULLWIDTH_CARD,
    "4111\u200b1111\u200b1111\u200b1111",  # zero-width space
    "\u2060".join(CARD),  # a word joiner after every digit
    "4111\u00ad1111\u00ad1111\u00ad1111",  # soft hyphen
    "4111\u00a01111\u00a01111\u00a01111",  # no-break space
    "\u0664\u0661\u0661\u0661" + "1" * 12,  # Arabic-Indic digits
    "-----BEGIN\u00a0RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "key akiaiosfodnn7example here",  # a lower-cased AWS key id
    "p\u200bassword=hunter2x",
]


@pytest.mark.parametrize("text", UNICODE_TEXTS, ids=ascii)
async def test_unicode_disguises_are_seen_through(pki: TestPKI, text: str) -> None:
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert await _send(a, {"note": text}) == ("PERMISSION_DENIED", "dlp_blocked")


async def test_redaction_masks_the_original_text_around_a_disguised_match(pki: TestPKI) -> None:
    # 123-45-6789 in fullwidth digits
    fullwidth_ssn = "\uff11\uff12\uff13-\uff14\uff15-\uff16\uff17\uff18\uff19"
    note = f"caf\u00e9 \u2014 ssn {fullwidth_ssn}\u200b, r\u00e9sum\u00e9 \u00e0 jour"
    with trio.fail_after(20):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, b):
                assert await _send(a, {"note": note}) == ("", "")
                delivery = await b.next_delivery()
    delivered = json.loads(delivery.envelope_json)["data"]["note"]
    assert delivered == "caf\u00e9 \u2014 ssn ***-**-6789\u200b, r\u00e9sum\u00e9 \u00e0 jour"


async def test_a_backtracking_custom_pattern_cannot_stall_the_scan(pki: TestPKI) -> None:
    # On a backtracking engine, ^(a+)+$ against "aaa...a!" takes seconds and the scan
    # fails closed on its budget; on RE2 it is a plain non-match.
    config = _config(rules=[{"id": "as", "type": "as", "pattern": "^(a+)+$", "action": "block"}])
    with trio.fail_after(30):
        async with open_test_server(config, pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert await _send(a, {"note": "a" * 26 + "!"}) == ("", "")
                assert await _send(a, {"note": "a" * 26}) == ("PERMISSION_DENIED", "dlp_blocked")
            records = await _records(server)
    blocked = [r for r in records if r.decision == "DLP_BLOCKED"]
    assert [v.rule_id for r in blocked for v in r.violations] == ["as"]


async def test_a_text_full_of_password_keywords_is_blocked_by_its_rule(pki: TestPKI) -> None:
    # 66 KB of "pwd=" took 4.6 s (one pass per keyword); now it is one pass, and the rule
    # (not the budget) blocks it.
    with trio.fail_after(30):
        async with open_test_server(_config(), pki) as server:
            async with sessions(server, pki, "a", "b") as (a, _b):
                assert await _send(a, {"note": "pwd=" * 16_500}) == (
                    "PERMISSION_DENIED",
                    "dlp_blocked",
                )
            records = await _records(server)
    blocked = [r for r in records if r.decision == "DLP_BLOCKED"]
    assert [v.rule_id for r in blocked for v in r.violations] == ["password"]
