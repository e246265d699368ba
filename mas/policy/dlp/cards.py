"""DLP payment-card detectors: card numbers (IIN prefix, length, Luhn) and security codes.

Pure, no I/O. :func:`find_cards` finds runs of 13-19 digits (single spaces or dashes between
them) that :func:`card_ok` accepts; :func:`check_cvv` is the key-aware check under a cvv-named
key. :data:`CARD_DETECTORS` is the ``credit_card`` rule's detector, behind its gate.
"""

from __future__ import annotations

from typing import Final

from mas.policy.dlp.rule import (
    Detector,
    Span,
    Views,
    as_int,
    compile_bytes,
    compile_text,
    fullmatches,
    marker,
)

# A maximal run of digits with single spaces or dashes between them, at least 13 digits:
# the leftmost, longest match starts where a run starts (RE2, linear).
_CARD_RUN: Final = compile_bytes(r"[0-9](?:[ -]?[0-9]){12,}")
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


def find_cards(views: Views) -> list[Span]:
    out: list[Span] = []
    checks = 0
    for m in _CARD_RUN.finditer(views.raw):
        run, base = m.group().decode(), m.start()
        if len(run) <= 19 and run.isdigit():
            if card_ok(run):
                out.append((base, m.end(), _card_mask(run)))
            continue
        # Windows of whole groups holding 13-19 digits; the longest valid one from each group.
        groups: list[tuple[int, int, str]] = []
        offset = 0
        for part in run.replace("-", " ").split(" "):
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

_CVV_VALUE: Final = compile_text(r"[\t\n\v\f\r ]*[0-9]{3,4}[\t\n\v\f\r ]*")
_CVV_MASK: Final = marker("cvv")


def check_cvv(value: object) -> str | None:
    number = as_int(value)
    if number is not None:
        return _CVV_MASK if 0 <= number <= 9999 else None
    return _CVV_MASK if fullmatches(_CVV_VALUE, value) else None


# --- the detector -----------------------------------------------------------------------------


def _gate_card(v: Views) -> bool:
    return b"9999999999999" in v.flat


CARD_DETECTORS: Final[tuple[Detector, ...]] = ((_gate_card, find_cards),)
