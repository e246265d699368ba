"""DLP key classes: which dict keys a key-aware rule looks under (pure, no I/O).

:func:`classify_key` maps a key to its classes (bit flags such as :data:`SECRET`) after
folding it (:func:`mas.policy.dlp.text.fold_key`: normalised, format characters dropped,
Cyrillic and Greek look-alikes made Latin, lower-cased) and removing the separators ``-``,
``_``, ``.`` and space: ``p\\u0430ssword`` (a Cyrillic a), fullwidth ``\\uff50\\uff41...``
and ``pass\\u200bword`` are all ``password``. :class:`KeyRules` holds a
scanner's key-aware rules with a bounded cache of the classes of the keys it has seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from mas.policy.dlp.rule import Rule, ValueCheck
from mas.policy.dlp.text import fold_key

# Key classes (bit flags) computed once per distinct key by classify_key().
SECRET: Final = 1
SSN_KEY: Final = 2
CVV_KEY: Final = 4
AWS_SECRET_KEY: Final = 8
MRN_KEY: Final = 16
INSURANCE_KEY: Final = 32
ICD_KEY: Final = 64

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
    """The key classes of ``key``, folded, with ``-``, ``_``, ``.`` and space ignored."""
    norm = fold_key(key).translate(_KEY_NOISE)
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


KeyCheck = tuple[Rule, int, ValueCheck]  # a key-aware rule, its key class, its value check


class KeyRules:
    """A scanner's key-aware rules, and a bounded cache of key classes.

    ``flags(key)`` is the classes of ``key`` that one of the rules cares about; the cache of
    them is the only state that changes (like the scanner, meant for one thread).
    """

    __slots__ = ("cache", "cache_size", "checks", "mask")

    def __init__(self, rules: Iterable[Rule], *, cache_size: int) -> None:
        self.checks: tuple[KeyCheck, ...] = tuple(
            (r, r.key_flag, r.check) for r in rules if r.key_flag and r.check is not None
        )
        self.mask = 0
        for _, flag, _ in self.checks:
            self.mask |= flag
        self.cache: dict[str, int] = {}
        self.cache_size = cache_size

    def flags(self, key: str) -> int:
        """The classes of ``key`` that an active key-aware rule cares about (cached)."""
        flags = self.cache.get(key)
        if flags is None:
            if len(self.cache) >= self.cache_size:
                self.cache.clear()
            flags = self.cache[key] = classify_key(key) & self.mask
        return flags

    def hit(self, flags: int, value: object) -> bool:
        """True if a rule of one of the classes ``flags`` matches ``value``."""
        return any(flag & flags and check(value) for _, flag, check in self.checks)
