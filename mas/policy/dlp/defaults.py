"""The table of built-in DLP rules, :data:`DEFAULT_RULES` (pure, no I/O).

:mod:`mas.policy.dlp` documents what each rule matches and which mistakes remain. The parts
live in their own modules, and this module re-exports their public names (it used to hold
them all):

- :mod:`mas.policy.dlp.rule`: the rule model (``Rule``, spans, detectors, gates' ``Views``),
- :mod:`mas.policy.dlp.detectors`: the detectors and value checks of each rule,
- :mod:`mas.policy.dlp.cards`: card numbers (``luhn_ok``, ``brand_ok``, ``card_ok``) and CVVs,
- :mod:`mas.policy.dlp.keys`: the key classes (``classify_key``) of the key-aware rules.
"""

from __future__ import annotations

from typing import Final

from mas.policy.dlp.cards import (
    CARD_DETECTORS,
    MAX_CARD_CHECKS,
    brand_ok,
    card_ok,
    check_cvv,
    find_cards,
    luhn_ok,
)
from mas.policy.dlp.detectors import (
    API_KEY_DETECTORS,
    AWS_ACCESS_DETECTORS,
    AWS_SECRET_DETECTORS,
    EMAIL_DETECTORS,
    ICD_DETECTORS,
    INSURANCE_DETECTORS,
    JWT_DETECTORS,
    MRN_DETECTORS,
    PASSWORD_DETECTORS,
    PHONE_DETECTORS,
    PRIVATE_KEY_DETECTORS,
    SSN_DETECTORS,
    check_aws_secret,
    check_icd,
    check_insurance,
    check_mrn,
    check_secret,
    check_ssn,
    find_api_keys,
    find_emails,
    find_passwords,
    find_private_keys,
    find_ssn,
)
from mas.policy.dlp.keys import (
    AWS_SECRET_KEY,
    CVV_KEY,
    ICD_KEY,
    INSURANCE_KEY,
    MRN_KEY,
    NOT_SECRET,
    SECRET,
    SECRET_NAMES,
    SECRET_SUFFIXES,
    SSN_KEY,
    classify_key,
)
from mas.policy.dlp.rule import (
    Action,
    Detector,
    Finder,
    Gate,
    Rule,
    Severity,
    Span,
    ValueCheck,
    Views,
    ascii_lower,
    is_marker,
    marker,
)

__all__ = [
    "AWS_SECRET_KEY",
    "CVV_KEY",
    "DEFAULT_RULES",
    "ICD_KEY",
    "INSURANCE_KEY",
    "MAX_CARD_CHECKS",
    "MRN_KEY",
    "NOT_SECRET",
    "SECRET",
    "SECRET_NAMES",
    "SECRET_SUFFIXES",
    "SSN_KEY",
    "Action",
    "Detector",
    "Finder",
    "Gate",
    "Rule",
    "Severity",
    "Span",
    "ValueCheck",
    "Views",
    "ascii_lower",
    "brand_ok",
    "card_ok",
    "check_aws_secret",
    "check_cvv",
    "check_icd",
    "check_insurance",
    "check_mrn",
    "check_secret",
    "check_ssn",
    "classify_key",
    "find_api_keys",
    "find_cards",
    "find_emails",
    "find_passwords",
    "find_private_keys",
    "find_ssn",
    "is_marker",
    "luhn_ok",
    "marker",
]


def _rule(
    rule_id: str,
    action: Action,
    severity: Severity,
    description: str,
    detectors: tuple[Detector, ...] = (),
    key_flag: int = 0,
    check: ValueCheck | None = None,
    kind: str = "",
) -> Rule:
    return Rule(rule_id, kind or rule_id, action, severity, description, detectors, key_flag, check)


DEFAULT_RULES: Final[tuple[Rule, ...]] = (
    _rule(
        "secret_field", "block", "critical", "string under a secret-named key",
        key_flag=SECRET, check=check_secret, kind="password",
    ),
    _rule(
        "ssn", "redact", "high", "US social security number",
        SSN_DETECTORS, SSN_KEY, check_ssn,
    ),
    _rule("email", "alert", "medium", "e-mail address", EMAIL_DETECTORS),
    _rule("phone", "alert", "low", "NANP or E.164 telephone number", PHONE_DETECTORS),
    _rule(
        "credit_card", "block", "critical", "payment card number, IIN and Luhn checked",
        CARD_DETECTORS,
    ),
    _rule(
        "cvv", "block", "critical", "card security code under a cvv-named key",
        key_flag=CVV_KEY, check=check_cvv,
    ),
    _rule(
        "aws_access_key", "block", "critical", "AWS access key id",
        AWS_ACCESS_DETECTORS,
    ),
    _rule(
        "aws_secret_key", "block", "critical", "AWS secret access key",
        AWS_SECRET_DETECTORS, AWS_SECRET_KEY, check_aws_secret,
    ),
    _rule(
        "private_key", "block", "critical", "PEM or PGP private key block",
        PRIVATE_KEY_DETECTORS,
    ),
    _rule("jwt", "block", "high", "JSON web token", JWT_DETECTORS),
    _rule("api_key", "block", "high", "vendor API key", API_KEY_DETECTORS),
    _rule(
        "password", "block", "high", "password=... or password: ... in text",
        PASSWORD_DETECTORS,
    ),
    _rule(
        "medical_record_number", "redact", "high", "MRN then 6-10 digits",
        MRN_DETECTORS, MRN_KEY, check_mrn,
    ),
    _rule(
        "health_insurance_id", "redact", "high", "Medicare MBI, or a labelled member/policy id",
        INSURANCE_DETECTORS, INSURANCE_KEY, check_insurance,
    ),
    _rule(
        "icd10", "alert", "low", "ICD-10 code, dotted or after ICD/diagnosis",
        ICD_DETECTORS, ICD_KEY, check_icd,
    ),
)  # fmt: skip
