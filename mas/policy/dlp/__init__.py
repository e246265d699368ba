"""Data loss prevention: scan a structured payload for secrets and personal data.

Pure: no Trio, no I/O. :meth:`DlpScanner.from_config` compiles every rule once;
:meth:`DlpScanner.scan` walks a payload and returns a :class:`ScanResult`: the decision, the
violations (rule, type, action, severity and JSON path, never the matched text) and the
payload to deliver.

What is scanned
    Every string value, every dict key and the digits of every integer (and of a float
    with no fraction: ``4111111111111111.0``), recursively through dicts and lists (tuples
    count as lists), and the message type when one is given. The digits of a number are
    plain digits to the text rules, so a number can be a card (``{"n": 4111111111111111}``)
    but never an SSN or a phone (those need separators): ``123456789`` is not an SSN,
    ``1700000000123`` is neither a card nor a phone. Booleans and ``None`` are never
    matched. Key-aware rules look at the value under a key of their class, a few of them
    also at an integer (``{"cvv": 123}``, ``{"ssn": 123456789}``). Other types (bytes,
    datetimes, objects) are not JSON and fail closed (``scan_unsupported``). Keywords and
    key names are compared case-insensitively.

    Text is normalised before any rule sees it (:mod:`mas.policy.dlp.text`), character by
    character: format characters (Unicode Cf: zero-width space, word joiner, soft hyphen,
    bidi marks) are dropped, any script's decimal digits become ASCII digits, everything
    else becomes its NFKC form (fullwidth letters and digits, no-break spaces). Key names
    are also folded for the key classes: Cyrillic and Greek letters that look Latin become
    Latin. Matches are mapped back to the original characters, which are what redaction
    masks; a changed text longer than :data:`mas.policy.dlp.text.MAP_LIMIT` characters whose
    redact match cannot be placed is masked whole (``[REDACTED]``).

    A match in the message type is reported at the path ``message_type``; a redact rule
    matching there blocks (a type is delivered as it is or not at all).
    :meth:`DlpScanner.shown` masks every match in a client-chosen field, for the records.

Default rules: id (type when different), default action, severity: what matches
    secret_field (password), block, critical: anything under a secret-named key (below),
        whatever its JSON type: a non-blank string that is not exactly a redaction marker
        such as ``[REDACTED:password]``, any number, a list or object holding one of these
        as a value or a key, at any depth. ``None``, booleans, blank strings and empty or
        all-blank containers are not secrets.
    ssn, redact, high: ``ddd-dd-dddd`` with area not 000, 666 or 9xx, group not 00, serial
        not 0000; under an ssn-named key (``ssn*``, ``*ssn``, ``*socialsecurity*``) also
        ``ddddddddd``, ``ddd dd dddd`` or an integer.
    email, alert, medium: ``local@domain.tld``, at most 64 local-part characters, an
        alphabetic top-level label.
    phone, alert, low: NANP with separators (``415-555-0123``, ``415.555.0123``, ``(415)
        555-0123``, ``1 415 555 0123``; area and exchange start with 2-9), or ``+`` and 8-15
        digits with at most two of `` .()-`` between digits (E.164).
    credit_card, block, critical: 13-19 digits, single spaces or dashes allowed between them,
        with a Visa, Mastercard, Amex, Discover, JCB, Diners or UnionPay prefix and length,
        Luhn valid.
    cvv, block, critical: 3-4 digits (or an integer up to 9999) under a key ending in cvv,
        cvc, cvv2, cvc2 or securitycode.
    aws_access_key, block, critical: ``AKIA`` or ``ASIA`` and 16 of [A-Z0-9], in either case
        (a lower-cased key id is still one), standing alone.
    aws_secret_key, block, critical: 40 of [A-Za-z0-9/+] under a key naming aws and secret
        (or ending in secretaccesskey), or after ``aws_secret_access_key=`` in text.
    private_key, block, critical: ``-----BEGIN ... PRIVATE KEY-----`` (RSA, EC, DSA, OPENSSH,
        ENCRYPTED, PGP ... BLOCK) through its END line, or to the end of the text.
    jwt, block, high: three base64url segments joined by dots, the first ``eyJ...``.
    api_key, block, high: starting a token, ``sk_live_``, ``sk_test_``, ``rk_live_`` or
        ``rk_test_`` + 16; ``sk-`` + 20; ``ghp_``, ``gho_``, ``ghu_``, ``ghs_`` or ``ghr_``
        + 36; ``github_pat_`` + 22; ``xox`` + one of abposr + ``-`` + 15; ``AIza`` + 35;
        ``glpat-`` + 20; ``npm_`` + 36.
    password, block, high: ``password``, ``passwd``, ``passphrase``, ``pwd`` or the words
        ``pass`` and ``pw``, then ``:`` or ``=`` (quotes allowed around), then 4+ characters.
    medical_record_number, redact, high: ``MRN`` or ``medical record number`` (``num``,
        ``no``) then 6-10 digits; under an mrn-named key such a value or integer.
    health_insurance_id, redact, high: a Medicare MBI (``1EG4-TE5-MK73``: 11 characters of
        the MBI alphabet, upper case, dashes optional); or ``member``, ``subscriber``,
        ``insurance``, ``medicare``, ``medicaid`` or ``policy`` with ``id``,
        ``no``, ``num``, ``number`` or ``#``, then 6-20 of [A-Za-z0-9-] holding a digit;
        under a key ending in memberid, subscriberid, insuranceid, insurancenumber,
        policynumber, medicareid, medicaidid, mbi... such a value.
    icd10, alert, low: a dotted upper-case code (``E11.9``, ``J45.20``, ``S72.001A``); an
        undotted one (``E119``) only after ``ICD``, ``ICD-10``, ``ICD-10-CM`` or
        ``diagnosis``, ``code`` optional; under an icd10/diagnosis_code/dx key such a code.

    Secret-named keys, folded (above) and compared with ``-``, ``_``, ``.`` and spaces
    removed: those ending in
    password, passwd, passphrase, pwd, secret, secretkey, secretaccesskey, apikey, token,
    authorization, privatekey, credential(s), cookie or signingkey, and exactly auth, pass
    and pin; not the pagination tokens pagetoken, nextpagetoken, prevpagetoken, nexttoken,
    continuationtoken.

Mistakes that remain
    False positives: anything under a secret-named key (``{"auth": "none"}``,
    ``{"session_token": "n/a"}``, ``{"pin_attempts": 3}`` is not one, ``{"pin": 0}`` is);
    ``password: required`` in prose; a 20-character token starting ``asia`` or ``akia``
    in any case; a JSON number that is a Luhn-valid card number; dotted codes such as
    ``B12.5`` or ``C13.2`` (icd10 only alerts); an 11-character upper-case code that happens
    to fit the MBI alphabet; ``+`` then 8-15 digits in arithmetic; any Luhn-valid number with
    a card prefix (one random 16-digit number in ten passes Luhn); an id after ``policy
    number`` for any kind of insurance.
    False negatives: card numbers with other separators (dots, slashes) or split across
    strings; SSNs written with spaces or without separators outside an ssn-named key; phone
    numbers without separators, or national formats outside NANP without ``+``; lower-case
    MBIs and ICD codes in text; ``password is hunter2`` (no ``:`` or ``=``) and passwords of
    under 4 characters in text; vendor tokens not listed; look-alike letters in values
    (only key names are folded); the digits of a float with a fraction; anything encoded
    (base64, URL-encoding, spelled out).

Actions and decisions
    Any ``block`` gives ``DLP_BLOCKED`` (``data`` is the input, not to be delivered); else any
    ``redact`` gives ``DLP_REDACTED`` and a redacted copy (unchanged sub-objects are shared
    with the input); else any ``alert`` gives ``ALERT``; else ``ALLOWED``. Unless redacted,
    ``data`` is the input object itself. Cards keep their last four digits
    (``************1111``), SSNs too (``***-**-6789``); every other match becomes
    ``[REDACTED:<type>]``, overlapping matches of different rules ``[REDACTED]``. Text rules
    mask only the match (``MRN: [REDACTED:medical_record_number]``); a key-aware match
    replaces the whole value. A key with a redact match is delivered masked; keys that mask
    to the same text get ``#2``, ``#3``... in dict order. A redacted string is scanned again
    and masked again, at most three rounds, then replaced by ``[REDACTED]``, so no redact
    match survives. Violations are reported once per (rule, path); a path shows a matched key
    fully masked, so the audit never holds the matched text.

Configuration (:class:`mas.config.DlpConfig`)
    ``merge_strategy: replace`` drops every default rule; ``append`` keeps them and adds the
    custom ``rules`` (a custom rule with a default rule's id replaces it). ``disable_defaults``
    removes default rules by id or by type. ``policy_overrides`` maps a rule id or a type to
    an action; an id wins over a type. Custom rules with ``enabled: false`` are ignored;
    ``case_insensitive`` compiles case-insensitively; custom rules match each (normalised)
    string on its own. Custom patterns are RE2 syntax (:func:`mas.config.gateway.
    compile_pattern`). ``ValueError``, naming the rule or name: an unknown name in
    ``disable_defaults`` or ``policy_overrides``, a duplicate or reserved (``scan_*``) custom
    id, a pattern RE2 does not compile (backreferences, lookaround, possessive repetition,
    counts over 1000) or that matches the empty string. The config refuses each of these
    itself (:class:`mas.config.DlpConfig` and :class:`mas.config.DlpRule` check them when
    built, so loading ``mas.yaml`` reports them with their path); the scanner compiles the
    patterns again.

Bounds (fail closed)
    Every expression, built-in and custom, runs on RE2, in time linear in the text: no
    input and no custom pattern can make a match backtrack. No single detector call sees
    more than :data:`SCAN_WINDOW_CHARS` plus twice :data:`WINDOW_OVERLAP_CHARS` of text
    (and so its cost is bounded, and the budget is read between calls): a longer
    string is scanned whole, in overlapping windows (a match longer than the overlap that
    crosses a window edge can be missed). Containers nested deeper than :data:`MAX_DEPTH`
    give ``DLP_BLOCKED`` with ``scan_depth``. A run of digits that would take more than
    ``MAX_CARD_CHECKS`` candidate card checks counts as a card whole.

    The time budget (:data:`DEFAULT_BUDGET`, or ``scan(..., budget=)``) is measured on the
    scanner's clock (``time.perf_counter`` unless one is given; the gateway gives
    ``time.thread_time``, a system call). So that timing costs in proportion to the work,
    the clock is read when the scan starts, then only once about :data:`CLOCK_EVERY` units
    of work were done since the last reading (a unit is about one character of text run
    through the rules; a container counts as 32 plus 8 per item), between containers,
    strings, windows and rules; and, when custom rules ran, once more at the end of the
    scan. The first reading past the deadline gives ``DLP_BLOCKED`` with a ``scan_budget``
    violation. So a scan runs past its budget by at most the work between two readings
    (about 8 KB of text, 100 us, or one rule over one window when that is more) before the
    budget notices, and a payload with less work than that (a clean 2 KB message) is timed
    only at its start: it is never stopped by the budget unless custom rules ran.
    Normalising a changed text is charged too, a window at a time.
    ``benchmarks/dlp_worst.py`` measures the worst payloads found against the gateway's
    budget: the slowest reach it and are blocked up to about 0.1 s past it (one object of
    60,000 keys is charged once, before its keys are visited).

How it stays fast
    Phase 1 (:mod:`mas.policy.dlp.collect`) collects every key and string, tries the
    key-aware rules (key classes are cached per key), joins the strings with NUL into chunks
    of one window and runs each detector once per chunk, behind its gate. A clean payload
    ends there: ``ALLOWED``. Otherwise phase 2 (:mod:`mas.policy.dlp.walk`) walks again with
    paths, runs the rules that fired on the strings they fired in, reports and redacts.
    ``benchmarks/dlp_micro.py`` measures it.

Modules
    This package's face is its ``__init__``: :class:`DlpScanner`, :class:`ScanResult`,
    :class:`Violation` and the bounds' constants. The scanner and its result are in
    :mod:`mas.policy.dlp.scanner`, the rule model in :mod:`mas.policy.dlp.rule`, the default
    rules in :mod:`mas.policy.dlp.defaults` (their detectors in :mod:`mas.policy.dlp.detectors`
    and :mod:`mas.policy.dlp.cards`, key classes in :mod:`mas.policy.dlp.keys`, text
    normalisation in :mod:`mas.policy.dlp.text`), config merging in
    :mod:`mas.policy.dlp.compile`, limits and the budget in :mod:`mas.policy.dlp.bounds`, the
    two phases of a scan in :mod:`mas.policy.dlp.collect` and :mod:`mas.policy.dlp.walk`
    (which reports each :class:`Violation`).
"""

from mas.policy.dlp.bounds import (
    CLOCK_EVERY,
    DEFAULT_BUDGET,
    MAX_DEPTH,
    SCAN_WINDOW_CHARS,
    WINDOW_OVERLAP_CHARS,
)
from mas.policy.dlp.rule import Action, Rule
from mas.policy.dlp.scanner import Decision, DlpScanner, ScanResult
from mas.policy.dlp.walk import Violation

__all__ = [
    "CLOCK_EVERY",
    "DEFAULT_BUDGET",
    "MAX_DEPTH",
    "SCAN_WINDOW_CHARS",
    "WINDOW_OVERLAP_CHARS",
    "Action",
    "Decision",
    "DlpScanner",
    "Rule",
    "ScanResult",
    "Violation",
]
