"""The DLP scanner: default rules, key-aware rules, redaction, config merging, bounds."""

from __future__ import annotations

import copy
import itertools
import random
import string
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mas.policy.dlp as dlp
import mas.policy.dlp.bounds as dlp_bounds
import mas.policy.dlp.scanner as dlp_scanner
from mas.config import DlpConfig, DlpRule
from mas.config.gateway import DLP_DEFAULT_RULES
from mas.policy.dlp import CLOCK_EVERY, MAX_DEPTH, SCAN_WINDOW_CHARS, DlpScanner, ScanResult
from mas.policy.dlp.defaults import DEFAULT_RULES, brand_ok, card_ok, luhn_ok

DEFAULT = DlpScanner.from_config(DlpConfig())
ALL_IDS = [rule.id for rule in DEFAULT_RULES]
REDACT_ALL = DlpScanner.from_config(
    DlpConfig(policy_overrides=dict.fromkeys(ALL_IDS, "redact")), budget=30.0
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


def scan(data: dict[str, Any], scanner: DlpScanner = DEFAULT, **kw: Any) -> ScanResult:
    return scanner.scan(data, **kw)


def rule_ids(result: ScanResult) -> set[str]:
    return {v.rule_id for v in result.violations}


def text_hits(text: str, scanner: DlpScanner = DEFAULT) -> set[str]:
    return rule_ids(scanner.scan({"t": text}))


def scanner_with(**config: Any) -> DlpScanner:
    return DlpScanner.from_config(DlpConfig(**config))


# --- every default rule: positive and negative cases ----------------------------------------

POSITIVE_TEXT = [
    ("ssn", "SSN 123-45-6789 on file"),
    ("email", "write to jane.doe+dlp@mail.example.co.uk today"),
    ("phone", "call (415) 555-0123"),
    ("phone", "call 415.555.0123 or 415 555 0123"),
    ("phone", "call 1-800-555-0199"),
    ("phone", "ring +44 20 7946 0958"),
    ("phone", "ring +14155550123"),
    ("credit_card", "card 4111 1111 1111 1111 exp 12/29"),
    ("credit_card", "card 5555-5555-5555-4444"),
    ("credit_card", "amex 378282246310005"),
    ("credit_card", "discover 6011111111111117"),
    ("credit_card", "ref 12 4111 1111 1111 1111"),
    ("aws_access_key", "key AKIAIOSFODNN7EXAMPLE in env"),
    ("aws_access_key", "key=ASIAIOSFODNN7EXAMPLE"),
    ("aws_secret_key", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}"),
    ("private_key", PEM),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk"),
    ("jwt", f"Authorization: Bearer {JWT}"),
    ("api_key", "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("api_key", "openai sk-proj-abcdefghijklmnopqrstuvwx"),
    ("api_key", "gh ghp_" + "a1B2c3D4e5" * 4),
    ("api_key", "slack xoxb-1234567890-abcdefghij"),
    ("api_key", "google AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("password", "login with password=swordfish"),
    ("password", "PWD: s3cr3t!"),
    ("password", 'config {"passphrase": "correct-horse"}'),
    ("password", "db_password = hunter22"),
    ("password", "user=bob&pass=abcd1234"),
    ("medical_record_number", "MRN: 12345678"),
    ("medical_record_number", "patient_mrn=1234567"),
    ("medical_record_number", "Medical Record Number 0012345"),
    ("health_insurance_id", "MBI 1EG4-TE5-MK73"),
    ("health_insurance_id", "MBI 1EG4TE5MK73"),
    ("health_insurance_id", "Member ID: XYZ123456789"),
    ("health_insurance_id", "policy number: AB-1234567"),
    ("icd10", "diagnosed E11.9 last year"),
    ("icd10", "codes J45.20, S72.001A"),
    ("icd10", "COVID U07.1"),
    ("icd10", "ICD-10: E119"),
    ("icd10", "diagnosis code K219"),
]

NEGATIVE_TEXT = [
    ("ssn", "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000"),
    ("ssn", "1123-45-6789 123-45-67890 123-45-6789-1 on 2024-01-15"),
    ("email", "@mention user@localhost a@b foo@bar.c"),
    ("phone", "4155550123 1700000000123 555-0123, +12 34 x, 415-055-0123"),
    ("phone", "+1234567 is too short"),
    ("credit_card", "4111 1111 1111 1112 and 4111111111111112"),
    ("credit_card", "1234567812345670 has a Luhn but no brand"),
    ("credit_card", "41111111111111111111 is twenty digits"),
    ("credit_card", "4111.1111.1111.1111 uses dots"),
    ("aws_access_key", "AKIAIOSFODNN7EXAMPL XAKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_key", f"some {AWS_SECRET} without a label"),
    ("private_key", "-----BEGIN PUBLIC KEY-----\nMIIB\n-----BEGIN CERTIFICATE-----"),
    ("jwt", "eyJhbGciOiJIUzI1NiJ9 alone, or eyJ.x.y"),
    ("api_key", "sk_live_short task-force-alpha-bravo-charlie ghp_" + "a" * 35),
    ("api_key", "xsk-abcdefghijklmnopqrstuvwx"),
    ("password", "password: abc and password=******** and a password reset link"),
    ("password", "bypass=1234 passport: X1234567 compass=north"),
    ("password", "password=[REDACTED:password]"),
    ("medical_record_number", "MRN: 12345 and mrna 1234567 and MRN 12345678901"),
    ("health_insurance_id", "1SG4-TE5-MK73 1eg4te5mk73 member id: pending member: 123456"),
    ("icd10", "version 3.2, e11.9, A1.2, E11.9.3, E119, v1.2.3, Q4.2"),
]


@pytest.mark.parametrize(("rule_id", "text"), POSITIVE_TEXT)
def test_default_rule_matches(rule_id: str, text: str) -> None:
    assert rule_id in text_hits(text)


@pytest.mark.parametrize(("rule_id", "text"), NEGATIVE_TEXT)
def test_default_rule_does_not_match(rule_id: str, text: str) -> None:
    assert rule_id not in text_hits(text)


def test_every_default_rule_has_positive_and_negative_cases() -> None:
    key_cases = {
        "secret_field",
        "cvv",
        "ssn",
        "aws_secret_key",
        "medical_record_number",
        "health_insurance_id",
        "icd10",
    }
    covered = {rule for rule, _ in POSITIVE_TEXT} | key_cases
    assert covered == set(ALL_IDS)
    assert {rule for rule, _ in NEGATIVE_TEXT} | {"secret_field", "cvv"} == set(ALL_IDS)


def test_the_config_names_exactly_the_default_rules() -> None:
    """``disable_defaults`` and ``policy_overrides`` are checked against the config's list."""
    assert {rule.id: rule.type for rule in DEFAULT_RULES} == dict(DLP_DEFAULT_RULES)


def test_module_docstring_lists_every_default_rule_and_its_action() -> None:
    doc = dlp.__doc__ or ""
    for rule in DEFAULT_RULES:
        kind = f" ({rule.type})" if rule.type != rule.id else ""
        assert f"\n    {rule.id}{kind}, {rule.action}, {rule.severity}:" in doc, rule.id


@pytest.mark.parametrize(
    ("data", "rule_id"),
    [
        ({"password": "hunter2222"}, "secret_field"),
        ({"api_key": "Zq8xN2vL5mK9pR3tW7yB1cF4hJ6dG0sA"}, "secret_field"),
        ({"X-Api-Key": "abc"}, "secret_field"),
        ({"client_secret": "x"}, "secret_field"),
        ({"refresh-token": "r1"}, "secret_field"),
        ({"Authorization": "Basic Ym9iOnNlY3JldA=="}, "secret_field"),
        ({"auth": "none"}, "secret_field"),
        ({"user": {"credentials": "bob:pw"}}, "secret_field"),
        ({"cvv": "123"}, "cvv"),
        ({"card_cvc": 4567}, "cvv"),
        ({"security_code": " 123 "}, "cvv"),
        ({"aws_secret_access_key": AWS_SECRET}, "aws_secret_key"),
        ({"awsSecret": AWS_SECRET}, "aws_secret_key"),
        ({"ssn": "123456789"}, "ssn"),
        ({"customer_ssn": 123456789}, "ssn"),
        ({"SSN": "123 45 6789"}, "ssn"),
        ({"mrn": "00123456"}, "medical_record_number"),
        ({"patientMRN": 1234567}, "medical_record_number"),
        ({"member_id": "W123456789"}, "health_insurance_id"),
        ({"medicare_number": 123456789}, "health_insurance_id"),
        ({"icd10": "e11.9"}, "icd10"),
        ({"diagnosis_code": "J4520"}, "icd10"),
    ],
)
def test_key_aware_rule_matches(data: dict[str, Any], rule_id: str) -> None:
    assert rule_id in rule_ids(scan(data))


@pytest.mark.parametrize(
    "data",
    [
        {"password": ""},
        {"password": "   "},
        {"password": "[REDACTED:password]"},
        {"password": None, "pin": False, "token": [], "secret": {}, "api_key": ["", " "]},
        {"is_secret": True},
        {"page_token": "abc", "next_token": "def"},
        {"tokens_in": 812, "token_type": "Bearer", "author": "x"},
        {"cvv": "12345", "note": "123"},
        {"cvv": True},
        {"aws_secret_name": "prod/db", "aws_region": "us-east-1"},
        {"ssn": "12345678", "classname": "123456789"},
        {"count": 123456789, "ts": 1700000000123},
        {"mrn": "12345", "medical_record": "n/a"},
        {"member_id": "abc", "policy": "strict"},
        {"icd10": "diabetes"},
    ],
)
def test_key_aware_rule_does_not_match(data: dict[str, Any]) -> None:
    result = scan(data)
    assert result.decision == "ALLOWED", result.violations
    assert result.data is data


# --- keys, escapes, numbers ---------------------------------------------------------------


def test_secret_named_keys_block() -> None:
    assert scan({"password": "hunter2222"}).decision == "DLP_BLOCKED"
    alphabet = string.ascii_letters + string.digits
    token = "".join(random.Random(7).choice(alphabet) for _ in range(32))
    result = scan({"api_key": token})
    assert result.decision == "DLP_BLOCKED"
    assert result.violations[0].path == "$.api_key"


def test_email_after_an_escaped_newline_is_redacted_when_overridden() -> None:
    scanner = scanner_with(policy_overrides={"email": "redact"})
    data = {"note": "line1\nuser@example.com"}
    result = scanner.scan(data)
    assert result.decision == "DLP_REDACTED"
    assert result.data == {"note": "line1\n[REDACTED:email]"}
    assert "user@example.com" not in msgspec.json.encode(result.data).decode()
    assert data == {"note": "line1\nuser@example.com"}  # the input is never changed


def test_a_key_that_matches_is_redacted() -> None:
    result = scan({"123-45-6789": "x"})
    assert result.decision == "DLP_REDACTED"
    assert result.data == {"***-**-6789": "x"}
    assert [(v.rule_id, v.path) for v in result.violations] == [("ssn", "$['***-**-6789']")]


def test_keys_that_mask_alike_are_told_apart_in_order() -> None:
    data = {"123-45-6789": 1, "***-**-6789": 2, "876-54-6789": 3}
    result = scan(data)
    assert list(result.data) == ["***-**-6789#2", "***-**-6789", "***-**-6789#3"]
    assert list(result.data.values()) == [1, 2, 3]


def test_numbers_that_are_no_card_are_never_matched_by_text_rules() -> None:
    for data in ({"count": 123456789}, {"ts": 1700000000123}, {"n": [4111111111111112, 1.5]}):
        result = scan(data)
        assert result.decision == "ALLOWED"
        assert result.data is data


def test_the_digits_of_a_number_are_a_card() -> None:
    for data in ({"n": [4111111111111111, 1.5]}, {"card_number": 4111111111111111.0}):
        result = scan(data)
        assert result.decision == "DLP_BLOCKED"
        assert [v.rule_id for v in result.violations] == ["credit_card"]


def test_the_same_digits_in_a_string_are_matched() -> None:
    assert scan({"n": "4111111111111111"}).decision == "DLP_BLOCKED"


def test_paths_name_the_place_and_never_the_secret() -> None:
    data = {
        "user": {"cards": ["a", "b", "4111 1111 1111 1111"]},
        "odd key": "jane@example.com",
        "bob@example.com": "hi",
        "list": [[{"ssn": "123-45-6789"}]],
    }
    result = scan(data)
    paths = {(v.rule_id, v.path) for v in result.violations}
    assert paths == {
        ("credit_card", "$.user.cards[2]"),
        ("email", "$['odd key']"),
        ("email", "$['[REDACTED:email]']"),
        ("ssn", "$.list[0][0].ssn"),
    }
    encoded = msgspec.json.encode(result.violations).decode()
    for secret in ("4111", "jane@", "bob@", "123-45"):
        assert secret not in encoded


def test_an_alert_keeps_the_payload_object() -> None:
    data = {"note": "mail me: a.b@example.org"}
    result = scan(data)
    assert result.decision == "ALERT"
    assert result.data is data
    assert result.violations == (dlp.Violation("email", "email", "alert", "medium", "$.note"),)


def test_clean_payloads_are_allowed_unchanged() -> None:
    data = {"i": 1, "text": "benchmark payload: the quick brown fox jumps over the lazy dog"}
    result = scan(data)
    assert result == ScanResult("ALLOWED", (), data)
    assert result.data is data


def test_block_wins_over_redact_and_alert() -> None:
    data = {"a": "123-45-6789", "b": "x@example.com", "c": "4111111111111111"}
    result = scan(data)
    assert result.decision == "DLP_BLOCKED"
    assert rule_ids(result) == {"ssn", "email", "credit_card"}
    assert result.data is data


def test_redaction_copies_only_what_changes() -> None:
    data = {"keep": {"x": [1, 2]}, "change": {"ssn_text": "SSN 123-45-6789", "n": 1}}
    snapshot = copy.deepcopy(data)
    result = scan(data)
    assert result.decision == "DLP_REDACTED"
    assert result.data["keep"] is data["keep"]
    assert result.data["change"] == {"ssn_text": "SSN ***-**-6789", "n": 1}
    assert data == snapshot


# --- masks, Luhn ----------------------------------------------------------------------------


def test_luhn_and_brand() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert luhn_ok("79927398713")
    assert brand_ok("4111111111111111")
    assert brand_ok("4222222222222")  # 13-digit Visa
    assert not brand_ok("42222222222222")  # 14 digits: no Visa length
    assert not brand_ok("1234567812345670")
    assert card_ok("378282246310005")
    assert not card_ok("37828224631000")


def test_masks_keep_the_last_four_digits() -> None:
    cards = scanner_with(policy_overrides={"credit_card": "redact"})
    result = cards.scan({"c": "pay 4111-1111-1111-1111 now", "d": "5555555555554444"})
    assert result.data == {"c": "pay ************1111 now", "d": "************4444"}
    assert scan({"s": "123-45-6789"}).data == {"s": "***-**-6789"}
    assert scan({"ssn": 123456789}).data == {"ssn": "***-**-6789"}


def test_other_masks_name_the_type() -> None:
    result = REDACT_ALL.scan({"t": f"see {JWT} and MRN 1234567", "cvv": 123})
    assert result.data == {
        "t": "see [REDACTED:jwt] and MRN [REDACTED:medical_record_number]",
        "cvv": "[REDACTED:cvv]",
    }


def test_a_whole_private_key_block_is_masked() -> None:
    result = REDACT_ALL.scan({"k": f"before\n{PEM}\nafter"})
    assert result.data == {"k": "before\n[REDACTED:private_key]\nafter"}


# --- configuration --------------------------------------------------------------------------


def test_policy_overrides_by_id_and_by_type() -> None:
    by_id = scanner_with(policy_overrides={"credit_card": "alert"})
    assert by_id.scan({"c": "4111111111111111"}).decision == "ALERT"
    by_type = scanner_with(policy_overrides={"password": "alert"})  # secret_field is type password
    assert by_type.scan({"password": "x"}).decision == "ALERT"
    both = scanner_with(policy_overrides={"password": "alert", "secret_field": "redact"})
    assert both.scan({"password": "x"}).data == {"password": "[REDACTED:password]"}


def test_disable_defaults_by_id_or_type() -> None:
    scanner = scanner_with(disable_defaults=["email", "credit_card"])
    assert scanner.scan({"a": "x@example.com", "c": "4111111111111111"}).decision == "ALLOWED"
    assert "email" not in {r.id for r in scanner.rules}
    no_passwords = scanner_with(disable_defaults=["password"])  # the type: both rules go
    assert not {"password", "secret_field"} & {r.id for r in no_passwords.rules}


def test_append_adds_custom_rules_to_the_defaults() -> None:
    rule = DlpRule(id="ticket", type="ticket", pattern=r"TCK-\d{6}", action="redact")
    scanner = scanner_with(rules=[rule])
    result = scanner.scan({"t": "see TCK-123456 and 123-45-6789"})
    assert result.data == {"t": "see [REDACTED:ticket] and ***-**-6789"}
    assert [r.id for r in scanner.rules] == [*ALL_IDS, "ticket"]


def test_replace_uses_only_the_custom_rules() -> None:
    rule = DlpRule(id="ticket", type="ticket", pattern=r"TCK-\d{6}", action="alert")
    scanner = scanner_with(merge_strategy="replace", rules=[rule])
    assert [r.id for r in scanner.rules] == ["ticket"]
    assert scanner.scan({"password": "x", "c": "4111111111111111"}).decision == "ALLOWED"
    assert scanner.scan({"t": "TCK-000001"}).decision == "ALERT"


def test_a_custom_rule_with_a_default_id_replaces_it() -> None:
    rule = DlpRule(id="email", type="email", pattern=r"@corp\.example", action="block")
    scanner = scanner_with(rules=[rule])
    assert scanner.scan({"a": "x@other.org"}).decision == "ALLOWED"
    assert scanner.scan({"a": "x@corp.example"}).decision == "DLP_BLOCKED"


def test_disabled_custom_rules_are_ignored() -> None:
    rule = DlpRule(id="ticket", type="ticket", pattern=r"TCK-\d{6}", enabled=False)
    scanner = scanner_with(rules=[rule])
    assert "ticket" not in {r.id for r in scanner.rules}
    assert scanner.scan({"t": "TCK-123456"}).decision == "ALLOWED"


def test_case_insensitive_custom_rule() -> None:
    sensitive = DlpRule(id="proj", type="codename", pattern="bluebird")
    insensitive = DlpRule(id="proj", type="codename", pattern="bluebird", case_insensitive=True)
    assert scanner_with(rules=[sensitive]).scan({"t": "BlueBird"}).decision == "ALLOWED"
    result = scanner_with(rules=[insensitive]).scan({"t": "Project BlueBird"})
    assert result.decision == "DLP_BLOCKED"
    assert result.violations[0].type == "codename"


def test_custom_rules_see_each_string_on_its_own() -> None:
    anchored = DlpRule(id="whole", type="whole", pattern=r"^secret$", action="alert")
    scanner = scanner_with(merge_strategy="replace", rules=[anchored])
    result = scanner.scan({"a": "x", "b": ["y", "secret"]})
    assert [(v.rule_id, v.path) for v in result.violations] == [("whole", "$.b[1]")]


def test_a_bad_custom_pattern_raises_naming_the_rule() -> None:
    rule = DlpRule(id="broken", type="x", pattern="ok")
    msgspec.structs.force_setattr(rule, "pattern", "(unclosed")  # past DlpRule's own check
    with pytest.raises(ValueError, match=r"'broken'.*not supported by the linear-time engine"):
        scanner_with(rules=[rule])


@pytest.mark.parametrize("pattern", ["a*", "(?:x)?", r"\b", "x|"])
def test_a_pattern_matching_the_empty_string_is_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"'empty'.*empty string"):
        scanner_with(rules=[DlpRule(id="empty", type="x", pattern=pattern)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"disable_defaults": ["emial"]}, "'emial'"),
        ({"policy_overrides": {"crdit_card": "alert"}}, "'crdit_card'"),
        ({"rules": [DlpRule(id="a", type="x", pattern="x")] * 2}, "'a'.*duplicate"),
        ({"rules": [DlpRule(id="scan_budget", type="x", pattern="x")]}, "reserved"),
    ],
)
def test_config_mistakes_are_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        scanner_with(**config)


def test_overrides_may_name_custom_rules_and_types() -> None:
    rule = DlpRule(id="ticket", type="ticket_no", pattern=r"TCK-\d{6}")
    scanner = scanner_with(rules=[rule], policy_overrides={"ticket_no": "alert"})
    assert scanner.scan({"t": "TCK-123456"}).decision == "ALERT"


# --- bounds: budget, depth, size, types -----------------------------------------------------


class SteppingClock:
    """A clock that advances ``step`` seconds every time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class CountingClock:
    """A clock that reads ``values`` in turn (the last one for ever) and counts its readings."""

    def __init__(self, *values: float) -> None:
        self.values = values or (0.0,)
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.values[min(self.reads, len(self.values)) - 1]


# Readings happen once per CLOCK_EVERY characters of text (or a window, whichever is more):
# these 50 strings of about 1.2 * CLOCK_EVERY characters give at least 6 readings.
LONG_SCAN = {f"k{i}": {"text": "nothing to see " * (CLOCK_EVERY // 12)} for i in range(50)}


def test_an_exceeded_budget_fails_closed() -> None:
    scanner = DlpScanner.from_config(DlpConfig(), clock=SteppingClock(0.01), budget=0.05)
    result = scanner.scan(LONG_SCAN)
    assert result.decision == "DLP_BLOCKED"
    assert result.violations[-1].rule_id == "scan_budget"
    assert result.violations[-1].action == "block"
    assert result.data is LONG_SCAN


def test_the_budget_can_be_set_per_call() -> None:
    scanner = DlpScanner.from_config(DlpConfig(), clock=SteppingClock(0.01))
    assert scanner.scan(LONG_SCAN, budget=100.0).decision == "ALLOWED"
    assert scanner.scan(LONG_SCAN, budget=0.02).decision == "DLP_BLOCKED"


def test_an_exceeded_budget_in_the_second_phase_keeps_what_was_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dlp_bounds.Budget, "every", 1)  # read the clock at every charge
    reads = itertools.count()
    # Phase 1 reads the clock at the start, at each of the 3 dicts and after each text rule
    # on the one chunk; phase 2 at each dict and after each rule run on a string: the root
    # dict, "a", then dict "b" is over budget.
    phase_1 = 4 + sum(1 for rule in DEFAULT_RULES if rule.detectors)
    scanner = DlpScanner.from_config(
        DlpConfig(), clock=lambda: 0.0 if next(reads) < phase_1 + 2 else 10.0, budget=1.0
    )
    data = {"a": "x@example.com", "b": {"c": {"d": "y@example.com"}}}
    result = scanner.scan(data)
    assert result.decision == "DLP_BLOCKED"
    assert [(v.rule_id, v.path) for v in result.violations] == [
        ("email", "$.a"),
        ("scan_budget", "$.b"),
    ]


def test_the_second_phase_is_timed_too() -> None:
    long = "y@example.com " * (CLOCK_EVERY // 10)
    data = {"a": "x@example.com", "b": [long] * 20}
    # Phase 1 charges the same for text of the same lengths, matching or not.
    clean = {"a": "x_example.com", "b": [long.replace("@", "_")] * 20}
    counting = CountingClock()
    DlpScanner.from_config(DlpConfig(), clock=counting, budget=1.0).scan(clean)
    phase_1 = counting.reads
    # The second reading in phase 2 comes at the latest after b[1], each string costs more
    # than CLOCK_EVERY.
    clock = CountingClock(*[0.0] * (phase_1 + 1), 10.0)
    result = DlpScanner.from_config(DlpConfig(), clock=clock, budget=1.0).scan(data)
    assert result.decision == "DLP_BLOCKED"
    assert (result.violations[0].rule_id, result.violations[0].path) == ("email", "$.a")
    assert result.violations[-1].rule_id == "scan_budget"
    assert len(result.violations) <= 3
    assert clock.reads == phase_1 + 2


def small_payload() -> dict[str, Any]:
    return {"i": 1, "text": "benchmark payload: the quick brown fox jumps over the lazy dog"}


def clean_2kb_payload() -> dict[str, Any]:
    note = "Shipped from the east warehouse on Tuesday, two days late; carrier Northwind."
    data = {
        "task": {"title": "Summarise quarterly shipping delays", "tags": ["q4", "report"]},
        "items": [{"sku": f"BK-{i:04d}", "qty": i, "note": note} for i in range(18)],
        "metrics": {"tokens_in": 812, "latency_ms": 41.7, "sampled": True},
    }
    assert len(msgspec.json.encode(data)) >= 2048
    return data


def test_a_small_payload_reads_the_clock_once() -> None:
    clock = CountingClock()
    scanner = DlpScanner.from_config(DlpConfig(), clock=clock)
    assert scanner.scan(small_payload()).decision == "ALLOWED"
    assert clock.reads == 1  # the start; no scan work since has reached CLOCK_EVERY
    clock.reads = 0
    assert scanner.scan(clean_2kb_payload()).decision == "ALLOWED"
    assert clock.reads <= 2
    clock.reads = 0
    assert scanner.scan({"a": "x@example.com", "b": [1, 2]}).decision == "ALERT"
    assert clock.reads == 1


def test_with_custom_rules_the_clock_is_read_at_the_end_too() -> None:
    rule = DlpRule(id="ticket", type="ticket_no", pattern=r"TCK-\d{6}")
    counting = CountingClock()
    scanner = scanner_with(rules=[rule])
    assert DlpScanner(scanner.rules, clock=counting).scan(small_payload()).decision == "ALLOWED"
    assert counting.reads == 2
    # A custom pattern may backtrack for long inside one call: the reading at the end
    # notices it even on a small payload.
    late = DlpScanner(scanner.rules, clock=CountingClock(0.0, 10.0), budget=1.0)
    result = late.scan(small_payload())
    assert result.decision == "DLP_BLOCKED"
    assert [v.rule_id for v in result.violations] == ["scan_budget"]


MEGABYTE = 1 << 20
LARGE_PAYLOADS = {
    "many strings": {"rows": [{"n": i, "text": "lorem ipsum " * 85} for i in range(1024)]},
    "one string": {"text": "lorem ipsum dolor sit amet " * (MEGABYTE // 27)},
}


@pytest.mark.parametrize("name", sorted(LARGE_PAYLOADS))
def test_a_large_payload_is_timed_as_it_goes(name: str) -> None:
    data = LARGE_PAYLOADS[name]
    size = len(msgspec.json.encode(data))
    assert size >= MEGABYTE
    counting = CountingClock()
    assert DlpScanner.from_config(DlpConfig(), clock=counting).scan(data).decision == "ALLOWED"
    # About one reading per CLOCK_EVERY characters of text.
    assert counting.reads >= size // (2 * CLOCK_EVERY)
    # A clock that jumps past the deadline after the start stops it at the next reading.
    late = CountingClock(0.0, 10.0)
    result = DlpScanner.from_config(DlpConfig(), clock=late, budget=1.0).scan(data)
    assert result.decision == "DLP_BLOCKED"
    assert [v.rule_id for v in result.violations] == ["scan_budget"]
    assert late.reads == 2


def test_a_tiny_real_budget_on_a_big_payload_fails_closed() -> None:
    data = {"rows": [{"text": f"row {i} " + "lorem ipsum " * 20} for i in range(2000)]}
    assert scan(data, budget=1e-9).decision == "DLP_BLOCKED"


def nested(depth: int, leaf: Any, *, as_list: bool = False) -> dict[str, Any]:
    """``depth`` containers, the outermost a dict, around ``leaf``."""
    value = leaf
    for _ in range(depth - 1):
        value = [value] if as_list else {"n": value}
    return {"n": value}


@pytest.mark.parametrize("as_list", [False, True])
def test_deep_nesting_fails_closed(as_list: bool) -> None:
    ok = nested(MAX_DEPTH, "x", as_list=as_list)
    assert scan(ok).decision == "ALLOWED"
    too_deep = nested(MAX_DEPTH + 1, "x", as_list=as_list)
    result = scan(too_deep)
    assert result.decision == "DLP_BLOCKED"
    assert [v.rule_id for v in result.violations] == ["scan_depth"]


def test_deep_nesting_fails_closed_in_the_second_phase_too() -> None:
    data = {"a": "x@example.com", "b": nested(MAX_DEPTH, "y@example.com")}
    result = scan(data)
    assert result.decision == "DLP_BLOCKED"
    assert result.violations[-1].rule_id == "scan_depth"


def test_a_cycle_fails_closed() -> None:
    data: dict[str, Any] = {"a": 1}
    data["self"] = data
    assert scan(data).decision == "DLP_BLOCKED"


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_values_that_are_not_json_fail_closed(value: object) -> None:
    result = scan({"v": value})
    assert result.decision == "DLP_BLOCKED"
    assert result.violations[-1].rule_id == "scan_unsupported"


def test_tuples_and_int_keys_are_scanned_as_json_would_encode_them() -> None:
    assert scan({"t": ("a", "4111111111111111")}).decision == "DLP_BLOCKED"
    assert scan({1: "x@example.com"}).decision == "ALERT"


@pytest.mark.parametrize("where", [0, SCAN_WINDOW_CHARS - 8, 100_000, 199_990])
def test_long_strings_are_scanned_whole_in_windows(where: int) -> None:
    card = "4111111111111111"
    text = "x " * 100_000
    text = text[:where] + " " + card + " " + text[where:]
    result = REDACT_ALL.scan({"long": text})
    assert rule_ids(result) == {"credit_card"}
    assert card not in result.data["long"]
    assert len(result.data["long"]) == len(text)


def test_many_strings_are_chunked_without_missing_any() -> None:
    rows = [f"row {i} " + "lorem ipsum " * 30 for i in range(500)]
    rows[250] += " 123-45-6789"
    rows[499] += " x@example.com"
    result = scan({"rows": rows})
    assert {(v.rule_id, v.path) for v in result.violations} == {
        ("ssn", "$.rows[250]"),
        ("email", "$.rows[499]"),
    }


def test_a_match_running_into_the_next_string_hides_nothing() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----"
    result = scan({"a": [pem, "x" + pem], "b": ["password=ab", "password=cdef"]})
    assert {(v.rule_id, v.path) for v in result.violations} == {
        ("private_key", "$.a[0]"),
        ("private_key", "$.a[1]"),
        ("password", "$.b[1]"),
    }


def test_an_adversarial_digit_run_is_bounded() -> None:
    soup = " ".join(["4"] * 50_000)
    result = REDACT_ALL.scan({"s": soup}, budget=30.0)
    assert result.decision in {"DLP_REDACTED", "DLP_BLOCKED"}


def test_scan_results_encode_as_json() -> None:
    result = scan({"s": "123-45-6789"})
    decoded = msgspec.json.decode(msgspec.json.encode(result), type=ScanResult)
    assert decoded == result


# --- properties -----------------------------------------------------------------------------

TEXT = st.text(alphabet=string.ascii_letters + string.digits + " @-.+()_:=#/\n", max_size=40)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True),
    TEXT,
)
JSONISH = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(TEXT, children, max_size=5)
    ),
    max_leaves=25,
)
PAYLOADS = st.dictionaries(TEXT, JSONISH, max_size=6)


@settings(max_examples=200, deadline=None)
@given(PAYLOADS)
def test_the_scanner_never_crashes(data: dict[str, Any]) -> None:
    for scanner in (DEFAULT, REDACT_ALL):
        result = scanner.scan(data, budget=30.0)
        assert result.decision in {"ALLOWED", "ALERT", "DLP_REDACTED", "DLP_BLOCKED"}
        assert not {v.rule_id for v in result.violations} & {"scan_budget", "scan_depth"}
        if result.decision != "DLP_REDACTED":
            assert result.data is data


def luhn_complete(prefix_and_body: str) -> str:
    for check in "0123456789":
        if luhn_ok(prefix_and_body + check):
            return prefix_and_body + check
    raise AssertionError  # pragma: no cover


CARDS = st.sampled_from(["4", "51", "55", "2221", "6011", "3530"]).flatmap(
    lambda prefix: st.builds(
        lambda body: luhn_complete(prefix + body),
        st.text(alphabet=string.digits, min_size=15 - len(prefix), max_size=15 - len(prefix)),
    )
)


def grouped(card: str, sep: str) -> str:
    return sep.join(card[i : i + 4] for i in range(0, len(card), 4)) if sep else card


CARD_TEXT = st.builds(grouped, CARDS.filter(card_ok), st.sampled_from(["", " ", "-"]))
SSNS = st.builds(
    lambda a, g, s: f"{a:03d}-{g:02d}-{s:04d}",
    st.integers(1, 899).filter(lambda a: a != 666),
    st.integers(1, 99),
    st.integers(1, 9999),
)
EMAILS = st.builds(
    lambda local, domain, tld: f"{local}@{domain}.{tld}",
    st.text(alphabet=string.ascii_lowercase + string.digits + "._+-", min_size=1, max_size=12),
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12),
    st.sampled_from(["com", "org", "io", "co"]),
)
SECRETS = st.one_of(CARD_TEXT, SSNS, EMAILS)


@st.composite
def payloads_with_secrets(draw: st.DrawFn) -> tuple[dict[str, Any], list[str]]:
    data = draw(PAYLOADS)
    secrets = draw(st.lists(SECRETS, min_size=1, max_size=4))
    for secret in secrets:
        text = f"{draw(TEXT)} {secret} {draw(TEXT)}"
        slot = draw(st.integers(0, 3))
        if slot == 0:
            data[text] = draw(SCALARS)  # in a key
        elif slot == 1:
            data.setdefault("deep", {})
            if isinstance(data["deep"], dict):
                data["deep"][draw(TEXT)] = [draw(JSONISH), text]
            else:
                data[draw(TEXT)] = text
        else:
            data[draw(TEXT)] = text
    return data, secrets


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads_with_secrets())
def test_redaction_leaves_no_match_behind(case: tuple[dict[str, Any], list[str]]) -> None:
    data, secrets = case
    result = REDACT_ALL.scan(data)
    assert result.decision == "DLP_REDACTED"
    again = REDACT_ALL.scan(result.data)
    assert again.violations == ()
    assert again.decision == "ALLOWED"
    delivered = msgspec.json.encode(result.data).decode()
    for secret in secrets:
        assert f" {secret} " not in delivered  # as inserted, with a space on each side


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(TEXT, st.builds(lambda a, s, b: f"{a} {s} {b}", TEXT, SECRETS, TEXT))))
def test_joined_scanning_agrees_with_scanning_each_string(texts: list[str]) -> None:
    together = {(v.rule_id, v.path) for v in DEFAULT.scan({"a": texts}).violations}
    alone: set[tuple[str, str]] = set()
    for i, text in enumerate(texts):
        found = DEFAULT.scan({"a": [text]}).violations
        alone |= {(v.rule_id, v.path.replace("[0]", f"[{i}]")) for v in found}
    assert together == alone


def test_key_classes_are_cached_within_bounds() -> None:
    scanner = DlpScanner.from_config(DlpConfig())
    for i in range(dlp_scanner._KEY_CACHE_SIZE + 10):
        scanner.scan({f"key{i}": 1})
    assert len(scanner._key_cache) <= dlp_scanner._KEY_CACHE_SIZE


# --- normalisation, look-alike keys, adjacent matches, fields (issue 14) ----------------------


def test_a_normalised_match_maps_back_to_the_original_characters() -> None:
    from mas.policy.dlp.text import Normalised, normalise

    original = "x\u200b\uff11\uff12\u00ady"  # x, zero-width space, fullwidth 1 2, soft hyphen, y
    text = Normalised(original)
    assert text.text == normalise(original) == "x12y"
    assert text.span(1, 3) == (2, 4)  # "12" is the two fullwidth digits, not the format chars
    assert text.span(0, 4) == (0, 6)
    assert Normalised("plain").span(1, 3) == (1, 3)


@pytest.mark.parametrize(
    "key",
    ["p\u0430ssword", "\uff30\uff21\uff33\uff33\uff37\uff2f\uff32\uff24", "pass\u2060word",
     "API\u00adKEY", "\u0391pi_key", "t\u03bfken", "\U0001d429\U0001d41a\U0001d42c\U0001d42c"],
)  # fmt: skip
def test_look_alike_spellings_of_secret_keys_are_secret_keys(key: str) -> None:
    from mas.policy.dlp.keys import SECRET, classify_key

    assert classify_key(key) & SECRET


def test_matches_one_separator_apart_are_all_found() -> None:
    result = scan(
        {"a": "123-45-6789 234-56-7890", "b": "akia1234567890abcdef AKIA1234567890ABCDEF"}
    )
    assert result.decision == "DLP_BLOCKED"
    redacted = scanner_with(policy_overrides={"aws_access_key": "redact"}).scan(
        {"a": "123-45-6789 234-56-7890", "b": "AKIA1234567890ABCDEF AKIA0987654321ABCDEF"}
    )
    assert redacted.data == {
        "a": "***-**-6789 ***-**-7890",
        "b": "[REDACTED:aws_access_key] [REDACTED:aws_access_key]",
    }


def test_shown_masks_every_match_of_a_field_whatever_its_action() -> None:
    assert DEFAULT.shown("ping") == "ping"
    assert DEFAULT.shown("to jane@example.com") == "to [REDACTED:email]"
    assert DEFAULT.shown("4111 1111 1111 1111") == "************1111"
    assert DEFAULT.shown("x" * (SCAN_WINDOW_CHARS + 1)) == "[REDACTED]"


def test_the_message_type_is_scanned_and_a_redact_match_there_blocks() -> None:
    result = DEFAULT.scan({"n": 1}, message_type="ssn 123-45-6789")
    assert result.decision == "DLP_BLOCKED"
    assert [(v.rule_id, v.action, v.path) for v in result.violations] == [
        ("ssn", "block", "message_type")
    ]
    assert DEFAULT.scan({"n": 1}, message_type="mail jane@example.com").decision == "ALERT"
