"""The built-in DLP detectors and value checks, card numbers apart (pure, no I/O).

One section per rule: its expressions, its ``find_*`` detector over text and its ``check_*``
for the value under a key of its class, and, at the end, the ``*_DETECTORS`` tuples (each
detector with its gate) that :mod:`mas.policy.dlp.defaults` puts in the table of default rules.
Payment cards and security codes are in :mod:`mas.policy.dlp.cards`. :mod:`mas.policy.dlp`
documents what each rule matches and which mistakes remain.

Every expression runs on RE2 over the ASCII bytes of the normalised text (``Views.raw`` or
``lowb``), in time linear in the text; a character an edge condition looks at is consumed
outside group 1, the span reported (see :mod:`mas.policy.dlp.rule`). Keywords are found with
``str.find`` on ``low``, and each keyword's tail is anchored and bounded, so a text full of
keywords costs a bounded amount per keyword.
"""

from __future__ import annotations

from typing import Final

from mas.policy.dlp.rule import (
    Detector,
    Edged,
    Span,
    Views,
    as_int,
    compile_bytes,
    compile_text,
    fullmatches,
    is_marker,
    keyword_finder,
    keyword_gate,
    marker,
    regex_finder,
)
from mas.policy.dlp.text import normalise

_WS: Final = r"\t\n\v\f\r "  # ASCII white space, as Python's \s with re.ASCII

# --- ssn --------------------------------------------------------------------------------------

# ddd-dd-dddd with neither a digit nor a dash on either side.
_SSN: Final = Edged(r"[0-9]{3}-[0-9]{2}-[0-9]{4}", before="0-9-", after="0-9-")
_SSN_VALUE: Final = compile_text(rf"[{_WS}]*([0-9]{{3}})[ -]?([0-9]{{2}})[ -]?([0-9]{{4}})[{_WS}]*")


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def find_ssn(views: Views) -> list[Span]:
    out: list[Span] = []
    text = views.text
    for start, end in _SSN.spans(views.raw):
        serial = text[end - 4 : end]
        if _ssn_ok(text[start : start + 3], text[start + 4 : start + 6], serial):
            out.append((start, end, "***-**-" + serial))
    return out


def check_ssn(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        if not 0 <= number <= 999_999_999:
            return None
        digits = f"{number:09d}"
        area, group, serial = digits[:3], digits[3:5], digits[5:]
    elif isinstance(value, str) and (m := _SSN_VALUE.fullmatch(normalise(value))) is not None:
        area, group, serial = m[1], m[2], m[3]
    else:
        return None
    return "***-**-" + serial if _ssn_ok(area, group, serial) else None


# --- email ------------------------------------------------------------------------------------

# The local part (at most 64 local-part characters: the leftmost match starts at the run's
# start, or 64 before the '@'), the domain dot-separated labels ending in an alphabetic
# top-level label.
_EMAIL_DOMAIN: Final = Edged(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}", after="A-Za-z0-9"
)
_EMAIL_LOCAL: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-"
)
_EMAIL_MASK: Final = marker("email")


def find_emails(views: Views) -> list[Span]:
    """From each '@' that a domain follows, back over at most 64 local-part characters."""
    raw = views.raw
    out: list[Span] = []
    for at, end in _EMAIL_DOMAIN.spans(raw):
        start = at
        while start > 0 and at - start < 64 and raw[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start < at:
            out.append((start, end, _EMAIL_MASK))
    return out


# --- phone ------------------------------------------------------------------------------------

# E.164: '+', a country code, 8-15 digits in all, at most two separators between digits.
_E164: Final = Edged(r"\+[1-9](?:[ .()-]{0,2}[0-9]){7,14}", before="A-Za-z0-9_+", after="0-9")
# NANP with separators: [1 ]area exchange line, area as "(415) " or "415-"; never bare digits.
_NANP: Final = Edged(
    r"(?:1[ .-]?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])"
    r"|\([2-9][0-9]{2}\) ?"
    r"|[2-9][0-9]{2}[ .-])"
    r"[2-9][0-9]{2}[ .-][0-9]{4}",
    before="A-Za-z0-9_+(.-",
    after="A-Za-z0-9_-",
    inner=False,
)
_PHONE_MASK: Final = marker("phone")


def _gate_nanp(v: Views) -> bool:
    shape = v.shape
    return b"999-999-9999" in shape or b"999)999-9999" in shape or b"999)-999-9999" in shape


# --- aws_access_key, aws_secret_key -----------------------------------------------------------

# Either case: a lower-cased key id is still one.
_AWS_ACCESS: Final = Edged(
    r"A[KS]IA[A-Z0-9]{16}", before="A-Za-z0-9", after="A-Za-z0-9", case_insensitive=True
)
_AWS_SECRET_TAIL: Final = (
    rf"[_-]?secret[_-]?(?:access[_-]?)?key[\"']?[{_WS}]{{0,3}}[:=][{_WS}]{{0,3}}[\"']?"
    r"([a-z0-9/+]{40})(?:[^a-z0-9/+=]|$)"
)
_AWS_SECRET_VALUE: Final = compile_text(rf"[{_WS}]*[A-Za-z0-9/+]{{40}}[{_WS}]*")
_AWS_SECRET_MASK: Final = marker("aws_secret_key")


def check_aws_secret(value: object) -> str | None:
    return _AWS_SECRET_MASK if fullmatches(_AWS_SECRET_VALUE, value) else None


# --- private_key ------------------------------------------------------------------------------

_PEM_BEGIN: Final = compile_bytes(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----")
_PEM_END: Final = compile_bytes(r"-----END (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----")
_PEM_MASK: Final = marker("private_key")


def find_private_keys(views: Views) -> list[Span]:
    """The whole block, BEGIN line to END line (or to the end of an unterminated text)."""
    out: list[Span] = []
    raw = views.raw
    pos = 0
    while (begin := _PEM_BEGIN.search(raw, pos)) is not None:
        end = _PEM_END.search(raw, begin.end())
        pos = end.end() if end is not None else len(raw)
        out.append((begin.start(), pos, _PEM_MASK))
    return out


# --- jwt, api_key -----------------------------------------------------------------------------

_JWT: Final = Edged(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*", before="A-Za-z0-9_.-"
)
# A vendor prefix starting a token, then the key's characters.
_API_VENDOR: Final = Edged(
    r"(?:[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|npm_[A-Za-z0-9]{36,}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{15,}"
    r"|glpat-[A-Za-z0-9_-]{20,})",
    before="A-Za-z0-9_-",
)
_API_GOOGLE: Final = Edged(r"AIza[A-Za-z0-9_-]{35}", before="A-Za-z0-9_-", after="A-Za-z0-9_-")
_API_MASK: Final = marker("api_key")


def find_api_keys(views: Views) -> list[Span]:
    raw = views.raw
    out = [(a, b, _API_MASK) for a, b in _API_GOOGLE.spans(raw)]
    out += [(a, b, _API_MASK) for a, b in _API_VENDOR.spans(raw)]
    return out


# --- password (free text, and the secret-named keys) -----------------------------------------

# password, passwd, passphrase or pwd anywhere, or pass or pw as a word; then optional quote,
# ':' or '=', optional quote, a value of 4+ characters (matched on lowb).
# The whole match is found first with no capture group (RE2's DFA alone, fast however long
# the value), then where its value starts by matching the bounded lead again.
_PASSWORD_LEAD: Final = (
    r"(?:pass(?:word|wd|phrase)|pwd|(?:^|[^a-z0-9_])(?:pass|pw))"
    rf"[\"']?[{_WS}]{{0,3}}[:=][{_WS}]{{0,3}}[\"']?"
)
_PASSWORD: Final = compile_bytes(rf"{_PASSWORD_LEAD}[^{_WS}\"',;&\x00]{{4,}}")
_PASSWORD_AT: Final = compile_bytes(_PASSWORD_LEAD)
_PASSWORD_LEAD_CHARS: Final = 20  # longest lead: a word edge, passphrase, quotes, spaces
_PASSWORD_MASK: Final = marker("password")


def find_passwords(views: Views) -> list[Span]:
    """After password, passwd, passphrase or pwd anywhere, or ``pass`` or ``pw`` as a word.

    A value is not one when it is only asterisks or exactly a redaction marker (already
    masked). The next search starts after the value found (a value runs to the next
    separator, and what lies inside it is masked with it), so ``pwd=pwd=pwd=...`` costs
    one pass.
    """
    text, lowb = views.text, views.lowb
    out: list[Span] = []
    pos = 0
    while (m := _PASSWORD.search(lowb, pos)) is not None:
        begin, stop = m.span()
        lead = _PASSWORD_AT.match(lowb[begin : begin + _PASSWORD_LEAD_CHARS])
        start = begin + (lead.end() if lead is not None else 0)
        value = text[start:stop]
        if value.strip("*") and not is_marker(value):
            out.append((start, stop, _PASSWORD_MASK))
        pos = stop
    return out


def check_secret(value: object) -> str | None:
    """Anything under a secret-named key is a secret, whatever its JSON type.

    A non-blank string that is not exactly a redaction marker, any number, and a list or
    object holding one of these (as a value or as a key, at any depth) is; ``None``, a
    boolean, a blank string and an empty or all-blank container are not.
    """
    return _PASSWORD_MASK if _holds_secret(value, 0) else None


_SECRET_DEPTH: Final = 64  # nested containers looked into; deeper counts as a secret


def _holds_secret(value: object, depth: int) -> bool:
    if isinstance(value, str):
        return bool(value.strip()) and not is_marker(value)
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, float)):
        return True
    if depth >= _SECRET_DEPTH:
        return True  # fail closed; the scan itself stops at this depth too
    if isinstance(value, dict):
        return any(
            _holds_secret(k, depth + 1) or _holds_secret(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return any(_holds_secret(item, depth + 1) for item in value)
    return True  # not JSON: the scan fails closed on it anyway


# --- medical_record_number --------------------------------------------------------------------

_MRN_TAIL: Final = rf"[{_WS}:#=-]{{0,4}}([0-9]{{6,10}})(?:[^0-9]|$)"
_MEDICAL_RECORD_TAIL: Final = (
    rf"[ _-]?record[ _-]?(?:number|num|no)\b\.?[{_WS}:#=-]{{0,4}}([0-9]{{6,10}})(?:[^0-9]|$)"
)
_MRN_VALUE: Final = compile_text(
    rf"[{_WS}]*(?:MRN[{_WS}:#-]{{0,3}})?[A-Z]{{0,3}}[0-9]{{6,10}}[{_WS}]*", case_insensitive=True
)
_MRN_MASK: Final = marker("medical_record_number")


def check_mrn(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        return _MRN_MASK if 100_000 <= number <= 9_999_999_999 else None
    return _MRN_MASK if fullmatches(_MRN_VALUE, value) else None


# --- health_insurance_id ----------------------------------------------------------------------

_MBI_L: Final = "AC-HJKMNP-RT-Y"  # letters of a Medicare MBI: A-Z except S, L, O, I, B, Z
_MBI: Final = Edged(
    rf"[1-9][{_MBI_L}][{_MBI_L}0-9][0-9]-?[{_MBI_L}][{_MBI_L}0-9][0-9]-?[{_MBI_L}]{{2}}[0-9]{{2}}",
    before="A-Za-z0-9",
    after="A-Za-z0-9",
    inner=False,
)
_MEMBER_ID_TAIL: Final = (
    r"[ _-]?(?:(?:id|no|num|number)\b\.?|#)"
    rf"[{_WS}:#=-]{{0,4}}([a-z0-9][a-z0-9-]{{4,18}}[a-z0-9])(?:[^a-z0-9-]|$)"
)
_INSURANCE_VALUE: Final = compile_text(
    rf"[{_WS}]*[A-Za-z0-9][A-Za-z0-9 -]{{4,28}}[A-Za-z0-9][{_WS}]*"
)
_INSURANCE_MASK: Final = marker("health_insurance_id")


def check_insurance(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        return _INSURANCE_MASK if number >= 100_000 else None
    if isinstance(value, str):
        value = normalise(value)
        if _INSURANCE_VALUE.fullmatch(value) and _has_digit(value):
            return _INSURANCE_MASK
    return None


def _has_digit(text: str) -> bool:
    return any(c in text for c in "0123456789")


# --- icd10 ------------------------------------------------------------------------------------

# An upper-case letter, a digit, a digit or letter, a dot and 1-4 more, standing alone.
_ICD_DOTTED: Final = Edged(
    r"[A-Z][0-9][0-9A-Z]\.[0-9A-Z]{1,4}", before="A-Za-z0-9_.", after="A-Za-z0-9_.", inner=False
)
# After the keyword (and "10", "cm", "code"), at least one separator, then the code.
_ICD_TAIL: Final = (
    rf"(?:[ -]?10(?:[ -]?cm)?)?(?:[ _-]?code)?[{_WS}:#=-]{{1,4}}"
    r"([a-z][0-9][0-9a-z](?:\.?[0-9a-z]{1,4})?)(?:[^a-z0-9]|$)"
)
_ICD_CODE: Final = compile_text(r"[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{1,4})?")
_ICD_VALUE: Final = compile_text(
    rf"[{_WS}]*[A-Z][0-9][0-9A-Z](?:\.?[0-9A-Z]{{1,4}})?[{_WS}]*", case_insensitive=True
)
_ICD_MASK: Final = marker("icd10")


def check_icd(value: object) -> str | None:
    return _ICD_MASK if fullmatches(_ICD_VALUE, value) else None


# --- the detectors, with their gates ---------------------------------------------------------


def _gate_ssn(v: Views) -> bool:
    return b"999-99-9999" in v.shape


def _gate_email(v: Views) -> bool:
    return "@" in v.text


def _gate_aws_access(v: Views) -> bool:
    low = v.low
    return "akia" in low or "asia" in low


def _gate_private_key(v: Views) -> bool:
    return "-----BEGIN" in v.text


def _gate_jwt(v: Views) -> bool:
    return "eyJ" in v.text


def _gate_api_key(v: Views) -> bool:
    low = v.low
    if "aiza" in low:
        return True
    if "_" not in low and "-" not in low:  # every other vendor prefix holds one
        return False
    return (
        "k_live_" in low
        or "k_test_" in low
        or "sk-" in low
        or "xox" in low
        or "ghp_" in low
        or "gho_" in low
        or "ghu_" in low
        or "ghs_" in low
        or "ghr_" in low
        or "github_pat_" in low
        or "npm_" in low
        or "glpat-" in low
    )


def _gate_password(v: Views) -> bool:
    low = v.low
    return "pw" in low or "pass" in low


def _gate_icd_dotted(v: Views) -> bool:
    shape = v.shape
    return b"A99-" in shape or b"A9A-" in shape


def _gate_mbi(v: Views) -> bool:
    return b"AA99" in v.shape


def _gate_e164(v: Views) -> bool:
    return "+" in v.text


def _accept_member_id(value: str) -> bool:
    return _has_digit(value)


_MEMBER_WORDS: Final = ("member", "subscriber", "insurance", "medicare", "medicaid", "policy")

SSN_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_ssn, find_ssn),)
EMAIL_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_email, find_emails),)
PHONE_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_e164, regex_finder(_E164, _PHONE_MASK)),
    (_gate_nanp, regex_finder(_NANP, _PHONE_MASK)),
)
AWS_ACCESS_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_aws_access, regex_finder(_AWS_ACCESS, marker("aws_access_key"))),
)
AWS_SECRET_DETECTORS: Final[tuple[Detector, ...]] = (
    (
        keyword_gate(("aws",)),
        keyword_finder(("aws",), _AWS_SECRET_TAIL, _AWS_SECRET_MASK, word_start=False),
    ),
)
PRIVATE_KEY_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_private_key, find_private_keys),)
JWT_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_jwt, regex_finder(_JWT, marker("jwt"))),)
API_KEY_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_api_key, find_api_keys),)
PASSWORD_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_password, find_passwords),)
MRN_DETECTORS: Final[tuple[Detector, ...]] = (
    (keyword_gate(("mrn",)), keyword_finder(("mrn",), _MRN_TAIL, _MRN_MASK, word_start=False)),
    (keyword_gate(("medical",)), keyword_finder(("medical",), _MEDICAL_RECORD_TAIL, _MRN_MASK)),
)
INSURANCE_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_mbi, regex_finder(_MBI, _INSURANCE_MASK)),
    (
        keyword_gate(_MEMBER_WORDS),
        keyword_finder(_MEMBER_WORDS, _MEMBER_ID_TAIL, _INSURANCE_MASK, accept=_accept_member_id),
    ),
)
ICD_DETECTORS: Final[tuple[Detector, ...]] = (
    (_gate_icd_dotted, regex_finder(_ICD_DOTTED, _ICD_MASK)),
    (
        keyword_gate(("icd", "diagnosis")),
        keyword_finder(("icd", "diagnosis"), _ICD_TAIL, _ICD_MASK, accept=_ICD_CODE.fullmatch),
    ),
)
