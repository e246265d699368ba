"""The built-in DLP rules: detectors, key classes and cheap gates (pure, no I/O).

:mod:`mas.policy.dlp` documents what each rule matches and which mistakes remain; this
module implements them. A rule has up to two parts:

- *Detectors* over text (string values and dict keys): ``find(text, low)`` returns
  ``[(start, end, mask), ...]``, where ``low`` is ``text`` lower-cased in ASCII (same length).
  A detector may have a *gate*: a necessary condition that costs a C-level substring test
  (on the lower-cased text or on a byte "shape" of it), so the detector's own expression
  runs only on text that could match.
- A *key-aware* part: a class of dict keys (``key_flag``, see :func:`classify_key`) and a
  ``check(value) -> mask | None`` for the value stored under such a key.

Every expression runs in linear time (bounded or possessive repetitions) and starts with a
literal wherever possible, so the engine jumps between candidates instead of trying every
position; case-insensitive keywords are found with ``str.find`` on ``low``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Action = Literal["block", "redact", "alert"]
Severity = Literal["low", "medium", "high", "critical"]
Span = tuple[int, int, str]  # start, end, and the mask that replaces text[start:end]
Finder = Callable[[str, str], list[Span]]  # (text, ascii-lower-cased text) -> spans
ValueCheck = Callable[[object], "str | None"]

# Key classes (bit flags) computed once per distinct key by classify_key().
SECRET: Final = 1
SSN_KEY: Final = 2
CVV_KEY: Final = 4
AWS_SECRET_KEY: Final = 8
MRN_KEY: Final = 16
INSURANCE_KEY: Final = 32
ICD_KEY: Final = 64


def marker(kind: str) -> str:
    """The mask that replaces a whole match of ``kind``."""
    return f"[REDACTED:{kind}]"


_MARKER: Final = re.compile(r"\[REDACTED(?::[A-Za-z0-9_.-]*)?\]")
_ASCII_LOWER: Final = {c: c + 32 for c in range(0x41, 0x5B)}


def is_marker(value: str) -> bool:
    """True for a value that is exactly a redaction marker (already masked, not a secret)."""
    return _MARKER.fullmatch(value) is not None


def ascii_lower(text: str) -> str:
    """``text`` with A-Z lower-cased and nothing else changed (offsets stay valid)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


# --- Views: what the gates look at -----------------------------------------------------------


def _table(mapping: dict[int, int], default: int) -> bytes:
    return bytes(mapping.get(i, default) for i in range(256))


_DIGITS: Final = range(0x30, 0x3A)
# Shape: digit -> '9', A-Z -> 'A', a-z -> 'a', space . - -> '-', ( ) + kept, all else '_'.
_SHAPE: Final = _table(
    {
        **dict.fromkeys(_DIGITS, ord("9")),
        **dict.fromkeys(range(0x41, 0x5B), ord("A")),
        **dict.fromkeys(range(0x61, 0x7B), ord("a")),
        **dict.fromkeys(b" .-", ord("-")),
        **{c: c for c in b"()+"},
    },
    ord("_"),
)
# Flat: digit -> '9', all else '_', spaces and dashes deleted (see Views).
_FLAT: Final = _table(dict.fromkeys(_DIGITS, ord("9")), ord("_"))


class Views:
    """One text and the cheap derived forms its gates test."""

    __slots__ = ("flat", "low", "shape", "text")

    def __init__(self, text: str, low: str) -> None:
        raw = text.encode("utf-8", "surrogatepass")
        self.text = text
        self.low = low
        self.shape = raw.translate(_SHAPE)
        self.flat = raw.translate(_FLAT, b" -")


Gate = Callable[[Views], bool]
Detector = tuple["Gate | None", Finder]


@dataclass(frozen=True, slots=True)
class Rule:
    """One DLP rule: text detectors, a key-aware check, or both."""

    id: str
    type: str
    action: Action
    severity: Severity
    description: str
    detectors: tuple[Detector, ...] = ()
    key_flag: int = 0
    check: ValueCheck | None = None
    per_value: bool = False  # custom pattern: run on each string alone, never on joined text

    def find(self, text: str, low: str) -> list[Span]:
        """Every match of the rule's detectors in ``text`` (gates are not consulted)."""
        if len(self.detectors) == 1:
            return self.detectors[0][1](text, low)
        return [span for _, find in self.detectors for span in find(text, low)]


# --- Helpers ----------------------------------------------------------------------------------


def _regex_finder(pattern: re.Pattern[str], mask: str, back: int = 0) -> Finder:
    """Matches of ``pattern``; a match starting at an anchor reaches ``back`` characters left."""

    def find(text: str, low: str) -> list[Span]:
        return [(m.start() - back, m.end(), mask) for m in pattern.finditer(text)]

    return find


def _keyword_finder(
    keywords: tuple[str, ...],
    tail: re.Pattern[str],
    mask: str,
    *,
    word_start: bool = True,
    accept: Callable[[str], object] | None = None,
) -> Finder:
    """Group 1 of ``tail`` matched on ``low`` right after a keyword (ASCII case-insensitive).

    ``accept`` is given the original text of the group and may veto it.
    """

    def find(text: str, low: str) -> list[Span]:
        out: list[Span] = []
        for keyword in keywords:
            pos = low.find(keyword)
            while pos >= 0:
                end = pos + len(keyword)
                if not word_start or pos == 0 or not _is_word(low[pos - 1]):
                    m = tail.match(low, end)
                    if m is not None and (accept is None or accept(text[m.start(1) : m.end(1)])):
                        out.append((m.start(1), m.end(1), mask))
                pos = low.find(keyword, end)
        return out

    return find


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _as_int(value: object) -> int | None:
    return value if type(value) is int else None


def _fullmatch(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


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
    number = _as_int(value)
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


# --- credit_card ------------------------------------------------------------------------------

# A maximal run of digits with single spaces or dashes between them, at least 13 digits.
_CARD_RUN: Final = re.compile(r"[0-9](?<![0-9].)(?:[ -]?[0-9]){12,}+")
_SEPARATOR: Final = re.compile(r"[ -]")
_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
MAX_CARD_CHECKS: Final = 10_000  # candidate windows per text; past that the run is flagged


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a string of ASCII digits."""
    rev = digits[::-1]
    total = sum(map(int, rev[0::2])) + sum(_DOUBLED[int(c)] for c in rev[1::2])
    return total % 10 == 0


def brand_ok(digits: str) -> bool:
    """True if the number has a major network's IIN prefix and one of its lengths."""
    n = len(digits)
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    p2, p3, p4 = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 in (62, 65) or 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # Discover, UnionPay, JCB
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    return False


def card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and brand_ok(digits) and luhn_ok(digits)


def _card_mask(digits: str) -> str:
    return "*" * (len(digits) - 4) + digits[-4:]


def find_cards(text: str, low: str) -> list[Span]:
    out: list[Span] = []
    checks = 0
    for m in _CARD_RUN.finditer(text):
        run, base = m.group(), m.start()
        if len(run) <= 19 and run.isdigit():
            if card_ok(run):
                out.append((base, m.end(), _card_mask(run)))
            continue
        # Windows of whole groups holding 13-19 digits; the longest valid one from each group.
        groups: list[tuple[int, int, str]] = []
        offset = 0
        for part in _SEPARATOR.split(run):
            groups.append((offset, offset + len(part), part))
            offset += len(part) + 1
        i = 0
        while i < len(groups):
            digits, best, best_digits = "", -1, ""
            for j in range(i, len(groups)):
                digits += groups[j][2]
                if len(digits) > 19:
                    break
                if len(digits) >= 13:
                    checks += 1
                    if card_ok(digits):
                        best, best_digits = j, digits
            if checks > MAX_CARD_CHECKS:  # adversarial digit soup: fail closed on the run
                out.append((base, m.end(), marker("credit_card")))
                break
            if best < 0:
                i += 1
                continue
            out.append((base + groups[i][0], base + groups[best][1], _card_mask(best_digits)))
            i = best + 1
    return out


# --- cvv (key-aware only) ---------------------------------------------------------------------

_CVV_VALUE: Final = re.compile(r"\s*[0-9]{3,4}\s*")
_CVV_MASK: Final = marker("cvv")


def check_cvv(value: object) -> str | None:
    number = _as_int(value)
    if number is not None:
        return _CVV_MASK if 0 <= number <= 9999 else None
    return _CVV_MASK if _fullmatch(_CVV_VALUE, value) else None


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
    return _AWS_SECRET_MASK if _fullmatch(_AWS_SECRET_VALUE, value) else None


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
                bare_word = (
                    not (pos and _is_word(low[pos - 1])) and not low[end : end + 1].isalpha()
                )
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
    number = _as_int(value)
    if number is not None:
        return _MRN_MASK if 100_000 <= number <= 9_999_999_999 else None
    return _MRN_MASK if _fullmatch(_MRN_VALUE, value) else None


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
    number = _as_int(value)
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
    return _ICD_MASK if _fullmatch(_ICD_VALUE, value) else None


# --- key classes ------------------------------------------------------------------------------

SECRET_SUFFIXES: Final = (
    *("password", "passwd", "passphrase", "pwd", "secret", "secretkey", "secretaccesskey"),
    *("apikey", "token", "authorization", "privatekey", "credential", "credentials"),
    *("cookie", "signingkey"),
)
SECRET_NAMES: Final = frozenset({"auth", "pass", "pin"})
NOT_SECRET: Final = frozenset(
    {"pagetoken", "nextpagetoken", "prevpagetoken", "nexttoken", "continuationtoken"}
)
_CVV_SUFFIXES: Final = ("cvv", "cvc", "cvv2", "cvc2", "securitycode")
_INSURANCE_SUFFIXES: Final = (
    *("memberid", "subscriberid", "insuranceid", "insurancenumber", "policynumber", "mbi"),
    *("medicareid", "medicarenumber", "medicaidid", "medicaidnumber"),
)
_ICD_NAMES: Final = frozenset(
    {"icd", "icd10", "icd10cm", "icdcode", "icd10code", "diagnosiscode", "dx", "dxcode"}
)
_KEY_NOISE: Final = str.maketrans("", "", "-_ .")


def classify_key(key: str) -> int:
    """The key classes of ``key``: ASCII case-insensitive, ``-``, ``_``, ``.``, space ignored."""
    norm = ascii_lower(key).translate(_KEY_NOISE)
    if norm.startswith("[redacted"):
        return 0
    flags = 0
    if (norm.endswith(SECRET_SUFFIXES) or norm in SECRET_NAMES) and norm not in NOT_SECRET:
        flags |= SECRET
    if norm.startswith("ssn") or norm.endswith("ssn") or "socialsecurity" in norm:
        flags |= SSN_KEY
    if norm.endswith(_CVV_SUFFIXES):
        flags |= CVV_KEY
    if ("aws" in norm and "secret" in norm) or norm.endswith("secretaccesskey"):
        flags |= AWS_SECRET_KEY
    if norm.endswith("mrn") or "medicalrecord" in norm:
        flags |= MRN_KEY
    if norm.endswith(_INSURANCE_SUFFIXES):
        flags |= INSURANCE_KEY
    if norm in _ICD_NAMES:
        flags |= ICD_KEY
    return flags


# --- the table --------------------------------------------------------------------------------


def _gate_card(v: Views) -> bool:
    return b"9999999999999" in v.flat


def _gate_mbi(v: Views) -> bool:
    return b"AA99" in v.shape


def _gate_e164(v: Views) -> bool:
    return "+" in v.text


_PHONE: Final[tuple[Detector, ...]] = (
    (_gate_e164, _regex_finder(_E164, _PHONE_MASK)),
    (_gate_nanp, _regex_finder(_NANP, _PHONE_MASK)),
)
_AWS_SECRET: Final[tuple[Detector, ...]] = (
    (None, _keyword_finder(("aws",), _AWS_SECRET_TAIL, _AWS_SECRET_MASK, word_start=False)),
)
_MRN: Final[tuple[Detector, ...]] = (
    (None, _keyword_finder(("mrn",), _MRN_TAIL, _MRN_MASK, word_start=False)),
    (None, _keyword_finder(("medical",), _MEDICAL_RECORD_TAIL, _MRN_MASK)),
)
_MEMBER_WORDS: Final = ("member", "subscriber", "insurance", "medicare", "medicaid", "policy")
_INSURANCE: Final[tuple[Detector, ...]] = (
    (_gate_mbi, _regex_finder(_MBI, _INSURANCE_MASK)),
    (
        None,
        _keyword_finder(_MEMBER_WORDS, _MEMBER_ID_TAIL, _INSURANCE_MASK, accept=_HAS_DIGIT.search),
    ),
)
_ICD: Final[tuple[Detector, ...]] = (
    (None, _regex_finder(_ICD_DOTTED, _ICD_MASK, back=3)),
    (None, _keyword_finder(("icd", "diagnosis"), _ICD_TAIL, _ICD_MASK, accept=_ICD_CODE.fullmatch)),
)
_AWS_ACCESS_FINDER: Final = _regex_finder(_AWS_ACCESS, marker("aws_access_key"))


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
        ((None, find_ssn),), SSN_KEY, check_ssn,
    ),
    _rule("email", "alert", "medium", "e-mail address", ((None, find_emails),)),
    _rule("phone", "alert", "low", "NANP or E.164 telephone number", _PHONE),
    _rule(
        "credit_card", "block", "critical", "payment card number, IIN and Luhn checked",
        ((_gate_card, find_cards),),
    ),
    _rule(
        "cvv", "block", "critical", "card security code under a cvv-named key",
        key_flag=CVV_KEY, check=check_cvv,
    ),
    _rule(
        "aws_access_key", "block", "critical", "AWS access key id",
        ((None, _AWS_ACCESS_FINDER),),
    ),
    _rule(
        "aws_secret_key", "block", "critical", "AWS secret access key",
        _AWS_SECRET, AWS_SECRET_KEY, check_aws_secret,
    ),
    _rule(
        "private_key", "block", "critical", "PEM or PGP private key block",
        ((None, find_private_keys),),
    ),
    _rule("jwt", "block", "high", "JSON web token", ((None, _regex_finder(_JWT, marker("jwt"))),)),
    _rule("api_key", "block", "high", "vendor API key", ((None, find_api_keys),)),
    _rule(
        "password", "block", "high", "password=... or password: ... in text",
        ((None, find_passwords),),
    ),
    _rule(
        "medical_record_number", "redact", "high", "MRN then 6-10 digits",
        _MRN, MRN_KEY, check_mrn,
    ),
    _rule(
        "health_insurance_id", "redact", "high", "Medicare MBI, or a labelled member/policy id",
        _INSURANCE, INSURANCE_KEY, check_insurance,
    ),
    _rule(
        "icd10", "alert", "low", "ICD-10 code, dotted or after ICD/diagnosis",
        _ICD, ICD_KEY, check_icd,
    ),
)  # fmt: skip
