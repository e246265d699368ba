"""The built-in DLP detectors and value checks, card numbers apart (pure, no I/O).

One section per rule: its expressions, its ``find_*`` detector over text and its ``check_*``
for the value under a key of its class, and, at the end, the ``*_DETECTORS`` tuples (each
detector with its gate) that :mod:`mas.policy.dlp_rules` puts in the table of default rules.
Payment cards and security codes are in :mod:`mas.policy.dlp_cards`. :mod:`mas.policy.dlp`
documents what each rule matches and which mistakes remain.

Every expression runs in linear time (bounded or possessive repetitions) and starts with a
literal wherever possible, so the engine jumps between candidates instead of trying every
position; case-insensitive keywords are found with ``str.find`` on ``low``.
"""

from __future__ import annotations

import re
from typing import Final

from mas.policy.dlp_rule import (
    Detector,
    Span,
    Views,
    as_int,
    fullmatches,
    is_marker,
    is_word,
    keyword_finder,
    marker,
    regex_finder,
)

# --- ssn --------------------------------------------------------------------------------------

# Anchored on the first dash; the lookbehinds check the three-digit area and its left edge.
_SSN: Final = re.compile(r"-(?<=[0-9]{3}-)(?<![0-9-][0-9]{3}-)([0-9]{2})-([0-9]{4})(?![0-9-])")
_SSN_VALUE: Final = re.compile(r"\s*([0-9]{3})[ -]?([0-9]{2})[ -]?([0-9]{4})\s*")


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def find_ssn(text: str, low: str) -> list[Span]:
    out: list[Span] = []
    for m in _SSN.finditer(text):
        start = m.start() - 3
        if _ssn_ok(text[start : m.start()], m[1], m[2]):
            out.append((start, m.end(), "***-**-" + m[2]))
    return out


def check_ssn(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        if not 0 <= number <= 999_999_999:
            return None
        digits = f"{number:09d}"
        area, group, serial = digits[:3], digits[3:5], digits[5:]
    elif isinstance(value, str) and (m := _SSN_VALUE.fullmatch(value)) is not None:
        area, group, serial = m[1], m[2], m[3]
    else:
        return None
    return "***-**-" + serial if _ssn_ok(area, group, serial) else None


# --- email ------------------------------------------------------------------------------------

# Found from each '@': the local part is the run of local-part characters just before it (at
# most 64), the domain dot-separated labels ending in an alphabetic top-level label.
_EMAIL_LOCAL: Final = re.compile(r"[A-Za-z0-9._%+-]{1,64}+\Z")
_EMAIL_DOMAIN: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9])"
)
_EMAIL_MASK: Final = marker("email")


def find_emails(text: str, low: str) -> list[Span]:
    out: list[Span] = []
    at = text.find("@")
    while at >= 0:
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
        domain = _EMAIL_DOMAIN.match(text, at + 1) if local is not None else None
        if local is not None and domain is not None:
            out.append((local.start(), domain.end(), _EMAIL_MASK))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)
    return out


# --- phone ------------------------------------------------------------------------------------

# E.164: '+', a country code, 8-15 digits in all, at most two separators between digits.
_E164: Final = re.compile(r"\+(?<![\w+]\+)[1-9](?:[ .()-]{0,2}[0-9]){7,14}+(?![0-9])", re.ASCII)
# NANP with separators: [1 ]area exchange line, area as "(415) " or "415-"; never bare digits.
_NANP: Final = re.compile(
    r"[(0-9](?<![\w+(.-].)"
    r"(?:(?<=1)[ .-]?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])"
    r"|(?<=\()[2-9][0-9]{2}\) ?"
    r"|(?<=[2-9])[0-9]{2}[ .-])"
    r"[2-9][0-9]{2}[ .-][0-9]{4}(?![\w-])",
    re.ASCII,
)
_PHONE_MASK: Final = marker("phone")


def _gate_nanp(v: Views) -> bool:
    shape = v.shape
    return b"999-999-9999" in shape or b"999)999-9999" in shape or b"999)-999-9999" in shape


# --- aws_access_key, aws_secret_key -----------------------------------------------------------

_AWS_ACCESS: Final = re.compile(r"A[KS]IA(?<![A-Za-z0-9]....)[A-Z0-9]{16}(?![A-Za-z0-9])")
_AWS_SECRET_TAIL: Final = re.compile(
    r"[_-]?secret[_-]?(?:access[_-]?)?key[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
    r"([a-z0-9/+]{40})(?![a-z0-9/+=])",
    re.ASCII,
)
_AWS_SECRET_VALUE: Final = re.compile(r"\s*[A-Za-z0-9/+]{40}\s*")
_AWS_SECRET_MASK: Final = marker("aws_secret_key")


def check_aws_secret(value: object) -> str | None:
    return _AWS_SECRET_MASK if fullmatches(_AWS_SECRET_VALUE, value) else None


# --- private_key ------------------------------------------------------------------------------

_PEM_BEGIN: Final = re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END: Final = re.compile(r"-----END (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----")
_PEM_MASK: Final = marker("private_key")


def find_private_keys(text: str, low: str) -> list[Span]:
    """The whole block, BEGIN line to END line (or to the end of an unterminated text)."""
    out: list[Span] = []
    pos = 0
    while (begin := _PEM_BEGIN.search(text, pos)) is not None:
        end = _PEM_END.search(text, begin.end())
        pos = end.end() if end is not None else len(text)
        out.append((begin.start(), pos, _PEM_MASK))
    return out


# --- jwt, api_key -----------------------------------------------------------------------------

_JWT: Final = re.compile(
    r"eyJ(?<![A-Za-z0-9_.-]...)[A-Za-z0-9_-]{2,}+\.[A-Za-z0-9_-]{2,}+\.[A-Za-z0-9_-]*+"
)
# Anchored on the '_' or '-' after a vendor prefix; the prefix must start a token.
_T: Final = "(?<![A-Za-z0-9_-])"
_API_UNDERSCORE: Final = re.compile(
    rf"_(?:(?<={_T}[sr]k_)(?:live|test)_[A-Za-z0-9]{{16,}}+"
    rf"|(?<={_T}gh[pousr]_)[A-Za-z0-9]{{36,}}+"
    rf"|(?<={_T}github_)pat_[A-Za-z0-9_]{{22,}}+"
    rf"|(?<={_T}npm_)[A-Za-z0-9]{{36,}}+)"
)
_API_DASH: Final = re.compile(
    rf"-(?:(?<={_T}sk-)[A-Za-z0-9_-]{{20,}}+"
    rf"|(?<={_T}xox[abposr]-)[A-Za-z0-9-]{{15,}}+"
    rf"|(?<={_T}glpat-)[A-Za-z0-9_-]{{20,}}+)"
)
_API_GOOGLE: Final = re.compile(r"AIza(?<![A-Za-z0-9_-]....)[A-Za-z0-9_-]{35}(?![A-Za-z0-9_-])")
_API_MASK: Final = marker("api_key")


def find_api_keys(text: str, low: str) -> list[Span]:
    out = [(m.start(), m.end(), _API_MASK) for m in _API_GOOGLE.finditer(text)]
    for pattern in (_API_UNDERSCORE, _API_DASH):
        for m in pattern.finditer(text):
            start = m.start()
            while start > 0 and _is_token(text[start - 1]):  # back to the vendor prefix
                start -= 1
            out.append((start, m.end(), _API_MASK))
    return out


def _is_token(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in "_-")


# --- password (free text, and the secret-named keys) -----------------------------------------

# After the keyword: optional quote, ':' or '=', optional quote, a value of 4+ characters
# that is not already a redaction marker.
_PASSWORD_TAIL: Final = re.compile(
    r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?(?!\[redacted)([^\s\"',;&\x00]{4,}+)", re.ASCII
)
_PASSWORD_MASK: Final = marker("password")


def find_passwords(text: str, low: str) -> list[Span]:
    """After password, passwd, passphrase or pwd anywhere, or ``pass`` as a word."""
    out: list[Span] = []
    for keyword in ("pass", "pwd"):
        pos = low.find(keyword)
        while pos >= 0:
            end = pos + len(keyword)
            if keyword == "pass":
                suffix = next((s for s in ("word", "wd", "phrase") if low.startswith(s, end)), "")
                end += len(suffix)
                bare_word = not (pos and is_word(low[pos - 1])) and not low[end : end + 1].isalpha()
                if not suffix and not bare_word:
                    pos = low.find(keyword, end)
                    continue
            m = _PASSWORD_TAIL.match(low, end)
            if m is not None and text[m.start(1) : m.end(1)].strip("*"):  # not already masked
                out.append((m.start(1), m.end(1), _PASSWORD_MASK))
            pos = low.find(keyword, end)
    return out


def check_secret(value: object) -> str | None:
    if isinstance(value, str) and value.strip() and not is_marker(value):
        return _PASSWORD_MASK
    return None


# --- medical_record_number --------------------------------------------------------------------

_MRN_TAIL: Final = re.compile(r"(?![a-z])[\s:#=-]{0,4}([0-9]{6,10})(?![0-9])", re.ASCII)
_MEDICAL_RECORD_TAIL: Final = re.compile(
    r"[ _-]?record[ _-]?(?:number|num|no)\b\.?[\s:#=-]{0,4}([0-9]{6,10})(?![0-9])", re.ASCII
)
_MRN_VALUE: Final = re.compile(r"\s*(?:MRN[\s:#-]{0,3})?[A-Z]{0,3}[0-9]{6,10}\s*", re.IGNORECASE)
_MRN_MASK: Final = marker("medical_record_number")


def check_mrn(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        return _MRN_MASK if 100_000 <= number <= 9_999_999_999 else None
    return _MRN_MASK if fullmatches(_MRN_VALUE, value) else None


# --- health_insurance_id ----------------------------------------------------------------------

_MBI_L: Final = "AC-HJKMNP-RT-Y"  # letters of a Medicare MBI: A-Z except S, L, O, I, B, Z
_MBI: Final = re.compile(
    rf"[1-9](?<![A-Za-z0-9].)[{_MBI_L}][{_MBI_L}0-9][0-9]-?[{_MBI_L}][{_MBI_L}0-9][0-9]-?"
    rf"[{_MBI_L}]{{2}}[0-9]{{2}}(?![A-Za-z0-9])"
)
_MEMBER_ID_TAIL: Final = re.compile(
    r"[ _-]?(?:(?:id|no|num|number)\b\.?|\#)"
    r"[\s:#=-]{0,4}([a-z0-9][a-z0-9-]{4,18}[a-z0-9])(?![a-z0-9-])",
    re.ASCII,
)
_INSURANCE_VALUE: Final = re.compile(r"\s*[A-Za-z0-9][A-Za-z0-9 -]{4,28}[A-Za-z0-9]\s*")
_HAS_DIGIT: Final = re.compile(r"[0-9]")
_INSURANCE_MASK: Final = marker("health_insurance_id")


def check_insurance(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        return _INSURANCE_MASK if number >= 100_000 else None
    if isinstance(value, str) and _INSURANCE_VALUE.fullmatch(value) and _HAS_DIGIT.search(value):
        return _INSURANCE_MASK
    return None


# --- icd10 ------------------------------------------------------------------------------------

# Anchored on the dot: an upper-case letter, a digit and a digit or letter before it.
_ICD_DOTTED: Final = re.compile(
    r"\.(?<=(?<![A-Za-z0-9_.])[A-Z][0-9][0-9A-Z]\.)[0-9A-Z]{1,4}+(?![A-Za-z0-9_.])"
)
_ICD_TAIL: Final = re.compile(
    r"(?:[ -]?10(?:[ -]?cm)?)?(?:[ _-]?code)?(?![a-z])[\s:#=-]{0,4}"
    r"([a-z][0-9][0-9a-z](?:\.?[0-9a-z]{1,4})?)(?![a-z0-9])",
    re.ASCII,
)
_ICD_CODE: Final = re.compile(r"[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?")
_ICD_VALUE: Final = re.compile(r"\s*[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?\s*", re.IGNORECASE)
_ICD_MASK: Final = marker("icd10")


def check_icd(value: object) -> str | None:
    return _ICD_MASK if fullmatches(_ICD_VALUE, value) else None


# --- the detectors, with their gates ---------------------------------------------------------


def _gate_mbi(v: Views) -> bool:
    return b"AA99" in v.shape


def _gate_e164(v: Views) -> bool:
    return "+" in v.text


_MEMBER_WORDS: Final = ("member", "subscriber", "insurance", "medicare", "medicaid", "policy")

SSN_DETECTORS: Final[tuple[Detector, ...]] = ((None, find_ssn),)
EMAIL_DETECTORS: Final[tuple[Detector, ...]] = ((None, find_emails),)
PHONE_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_e164, regex_finder(_E164, _PHONE_MASK)),
    (_gate_nanp, regex_finder(_NANP, _PHONE_MASK)),
)
AWS_ACCESS_DETECTORS: Final[tuple[Detector, ...]] = (
    (None, regex_finder(_AWS_ACCESS, marker("aws_access_key"))),
)
AWS_SECRET_DETECTORS: Final[tuple[Detector, ...]] = (
    (None, keyword_finder(("aws",), _AWS_SECRET_TAIL, _AWS_SECRET_MASK, word_start=False)),
)
PRIVATE_KEY_DETECTORS: Final[tuple[Detector, ...]] = ((None, find_private_keys),)
JWT_DETECTORS: Final[tuple[Detector, ...]] = ((None, regex_finder(_JWT, marker("jwt"))),)
API_KEY_DETECTORS: Final[tuple[Detector, ...]] = ((None, find_api_keys),)
PASSWORD_DETECTORS: Final[tuple[Detector, ...]] = ((None, find_passwords),)
MRN_DETECTORS: Final[tuple[Detector, ...]] = (
    (None, keyword_finder(("mrn",), _MRN_TAIL, _MRN_MASK, word_start=False)),
    (None, keyword_finder(("medical",), _MEDICAL_RECORD_TAIL, _MRN_MASK)),
)
INSURANCE_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_mbi, regex_finder(_MBI, _INSURANCE_MASK)),
    (
        None,
        keyword_finder(_MEMBER_WORDS, _MEMBER_ID_TAIL, _INSURANCE_MASK, accept=_HAS_DIGIT.search),
    ),
)
ICD_DETECTORS: Final[tuple[Detector, ...]] = (
    (None, regex_finder(_ICD_DOTTED, _ICD_MASK, back=3)),
    (None, keyword_finder(("icd", "diagnosis"), _ICD_TAIL, _ICD_MASK, accept=_ICD_CODE.fullmatch)),
)
